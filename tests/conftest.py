"""Shared fixtures of the test suite: what the kernel offers, real cgroups, and the real agent.

- ``kernel_caps``: `sensorium.bpf.probe.probe_kernel()` of the running kernel (session scoped).
- ``needs``: ``needs("fentry", "bpf_lsm")`` inside a test skips it with a reason naming what is
  missing and saying that the VM lane (scripts/vm/lane.sh) runs it. The marker
  ``@pytest.mark.needs("lsm")`` does the same before the test starts, and marks the test ``vm`` so the
  lane selects it. Inside the lane's guests (SENSORIUM_IN_VM is set) a missing hook that those kernels
  are known to have FAILS the test instead: a lane whose tests skip would pass vacuously.
- ``cgroup2_dir`` / ``v1_memory_cgroup``: a fresh cgroup ``sensorium-test-<random>`` under the cgroup2
  mount (``/sys/fs/cgroup/unified`` on this hybrid host, ``/sys/fs/cgroup`` on a pure cgroup2 node) or
  under the v1 memory hierarchy, removed after the test with everything still inside killed.
- ``agent``: ``agent(config_dict) -> AgentHandle`` runs ``.venv/bin/sensorium run --config <tmp yaml>``,
  waits for a stderr line containing "ready" and stops it with SIGTERM (SIGKILL after 10 s) at teardown.
  Then every event it wrote (stdout, file exporters) is decoded with Tetragon's protobuf messages
  (tests/tetragon_schema.py): strictly in the default format, Tetragon's fields only in ``extended``; a
  line that does not decode as Tetragon's export would fails the test. The session's summary lists the
  kinds of events checked. SENSORIUM_SCHEMA_CHECK=0 turns the check off.

The helpers behind them live in tests/sensorium_testlib.py, importable from any test module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sensorium_testlib import (
    IN_VM,
    VM_LANE_HAS,
    VM_LANE_SOME,
    AgentHandle,
    Cgroup,
    _kernel_caps,
    cgroup2_mount,
    check_needs,
    make_cgroup,
    start_agent,
    v1_memory_mount,
)

# --------------------------------------------------------------------------------------------------
# kernel capabilities

@pytest.fixture(scope="session")
def kernel_caps() -> Any:
    """The running kernel's capabilities (sensorium.bpf.probe.KernelCapabilities)."""
    return _kernel_caps()


@pytest.fixture
def needs() -> Callable[..., None]:
    """``needs("fentry", "bpf_lsm")``: skip/fail as `check_needs` does."""
    return check_needs


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers the markers; registering here too keeps --strict-markers happy when
    # the suite runs from a wheel or another rootdir.
    config.addinivalue_line("markers", "vm: meant for the VM lane")
    config.addinivalue_line("markers", "needs(*caps): needs kernel capabilities (skipped with the reason)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test that needs a hook the lane's kernels have is lane material: mark it `vm` so that
    # `-m vm` (scripts/vm/lane.sh) selects it without every author remembering both markers.
    for item in items:
        for m in item.iter_markers("needs"):
            if any(str(a) in VM_LANE_HAS | VM_LANE_SOME for a in m.args):
                item.add_marker(pytest.mark.vm)
                break


def pytest_runtest_setup(item: pytest.Item) -> None:
    names: list[str] = []
    for m in item.iter_markers("needs"):
        names.extend(str(a) for a in m.args)
    if names:
        check_needs(*names)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"sensorium: kernel {os.uname().release}" + (" (VM lane guest)" if IN_VM else "")]


# --------------------------------------------------------------------------------------------------
# cgroups

@pytest.fixture
def cgroup2_dir() -> Iterator[Cgroup]:
    """A new cgroup2 cgroup for this test (removed after, its processes killed)."""
    mp = cgroup2_mount()
    if mp is None:
        pytest.skip("no cgroup2 mount on this machine")
    yield from make_cgroup(mp, 2)


@pytest.fixture
def v1_memory_cgroup() -> Iterator[Cgroup]:
    """A new cgroup in the v1 memory hierarchy for this test (removed after, its processes killed)."""
    mp = v1_memory_mount()
    if mp is None:
        pytest.skip("no cgroup v1 memory hierarchy mounted (a pure cgroup2 node)")
    yield from make_cgroup(mp, 1)


# --------------------------------------------------------------------------------------------------
# the real agent

@pytest.fixture
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., AgentHandle]]:
    """``agent(config: dict, *, args=(), env=None, ready_timeout=60) -> AgentHandle``.

    Writes `config` as YAML, starts ``.venv/bin/sensorium run --config <it>`` in its own process
    group, and returns once a stderr line contains "ready". Every agent started is stopped at
    teardown (SIGTERM, SIGKILL after 10 s)."""
    started: list[AgentHandle] = []

    def start(config: dict[str, Any], *, args: tuple[str, ...] | list[str] = (),
              env: dict[str, str] | None = None, ready_timeout: float = 60.0) -> AgentHandle:
        return start_agent(tmp_path_factory.mktemp("agent"), config, args=args, env=env,
                           ready_timeout=ready_timeout, started=started)

    yield start
    for h in started:
        h.stop()
    _check_event_schema(started)


# --------------------------------------------------------------------------------------------------
# every event the suite's agents write, decoded with Tetragon's own messages

def _check_event_schema(handles: list[AgentHandle]) -> None:
    import tetragon_schema
    import yaml

    for h in handles:
        try:
            config = yaml.safe_load(h.config_path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        tetragon_schema.check_agent_run(config, h.stdout_path)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    import tetragon_schema

    for fmt, seen in tetragon_schema.SEEN.items():
        if seen:
            terminalreporter.write_line(
                f"events decoded with Tetragon's messages ({fmt} format): "
                + ", ".join(f"{k} x{n}" for k, n in sorted(seen.items())))

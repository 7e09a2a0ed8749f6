"""Policy transactions and persistent enforcement with BPF LSM programs: the twins of
tests/test_policy_transactions.py and tests/test_persistent_enforcement.py for a kernel where the lsm sensor
serves file_open with an ``lsm/file_open`` program rather than fanotify (the VM lane: stock Debian kernels
booted with ``lsm=...,bpf``). This host refuses BPF LSM programs (EPERM), so here they are skipped with the
reason; the ``needs`` marker marks them ``vm`` for scripts/vm/lane.sh:

    scripts/vm/run.sh backports tests/test_enforcement_bpf_lsm.py -m vm

A failure at the last step is real: the second document hooks ``path_truncate``, whose BPF trampoline the
test filled to the kernel's limit with programs that allow everything, so its attach fails with E2BIG after
everything before it was attached. Every block names the pid of the test's exerciser and a file the test
made.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from enforcement_helpers import (
    Exerciser,
    FullAttachPoint,
    Loop,
    cli,
    figure,
    file_open_policy,
    lsm_block_policy,
    new_pin_root,
    pins_under,
    policy_list,
    remove_pins,
)

from sensorium.policy import PolicyError

pytestmark = [pytest.mark.kernel, pytest.mark.needs("bpf_lsm", "lsm")]

# Rounds of the failing transaction: each loads and verifies two LSM programs, ~13 s under the lane's
# emulation, so 5 rounds (the opens loop runs through all of them).
ROUNDS = 5


def truncate_policy(name: str, path: Path, pid: int) -> str:
    return lsm_block_policy(name, "path_truncate", "path", path, pid)


@pytest.fixture
def exerciser(cgroup2_dir) -> Iterator[Exerciser]:
    ex = Exerciser(cgroup2_dir)
    yield ex
    ex.close()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    f = tmp_path / "secret"
    f.write_text("s")
    return f


@pytest.fixture
def full_truncate() -> Iterator[None]:
    full = FullAttachPoint.lsm_hook("path_truncate")
    try:
        yield
    finally:
        full.close()


@pytest.fixture
def lsm() -> Iterator[tuple[Any, Any]]:
    from sensorium.plugins import PluginRegistry
    from sensorium.policy_manager import PolicyManager
    from sensorium_sensors.lsm.plugin import LsmSensor
    from sensorium_sensors.lsm.testing import LsmTestContext

    ctx = LsmTestContext()
    sensor = LsmSensor(ctx)
    sensor.start()
    pm = PolicyManager(PluginRegistry().discover(), {"lsm": sensor})
    try:
        yield pm, ctx
    finally:
        pm.unload_all()
        sensor.stop()


def lsm_events(ctx: Any, policy: str) -> list[Any]:
    with ctx._lock:
        return [e for e in ctx.events
                if e.kind == "process_lsm" and e.as_dict()["process_lsm"]["policy_name"] == policy]


def test_a_transaction_failing_at_its_last_attach_never_blocked_an_open_nor_reported_one(lsm, exerciser, secret,
                                                                                        tmp_path, full_truncate):
    pm, ctx = lsm
    text = file_open_policy("first", secret, exerciser.pid) + "---\n" + truncate_policy("second", tmp_path / "t",
                                                                                       exerciser.pid)
    with Loop(lambda: exerciser.open(secret)) as loop:
        time.sleep(0.2)
        for _ in range(ROUNDS):
            with pytest.raises(PolicyError) as ei:
                pm.add(text, "two-docs.yaml")
            assert "path_truncate" in str(ei.value) and "Argument list too long" in str(ei.value), str(ei.value)
            assert pm.list() == []
        time.sleep(0.2)
    assert loop.total > 0 and loop.counts == {"ok": loop.total}, loop.counts
    assert lsm_events(ctx, "first") == []
    figure("vm.txn.open_bpf_lsm", failed=ROUNDS, exercised=loop.total, enforced=0,
           result=f"{ROUNDS} failed adds of two documents (file_open Override served by BPF LSM; a path_truncate "
                  f"hook whose trampoline is full): 0 of {loop.total} opens refused, 0 events",
           )
    # The same document alone: the loop's open is refused and reported (the zero above is not blindness).
    pm.add(file_open_policy("first", secret, exerciser.pid), "first.yaml")
    [row] = pm.list()
    assert [h["mechanism"] for h in row["hooks"]] == ["bpf_lsm"]
    assert exerciser.open(secret) == "EPERM"
    ctx.wait_events(lambda e: e.kind == "process_lsm", 1)
    pm.delete("first")
    assert exerciser.open(secret) == "ok"


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = new_pin_root()
    yield root
    remove_pins(root)
    assert not root.exists(), f"pins left under {root}"


def test_kill_9_leaves_the_bpf_lsm_block_and_a_restart_restores_it_without_a_gap(agent, tmp_path, pin_root, exerciser,
                                                                                  secret):
    cfg = {"plugins": {"allow": ["lsm", "stdout"]}, "sensors": {"lsm": {"enabled": True}},
           "api": {"socket": str(tmp_path / "api.sock")},
           "enforcement": {"persist": True, "state_dir": str(tmp_path / "state"), "pin_dir": str(pin_root)}}
    h = agent(cfg)
    f = tmp_path / "p.yaml"
    f.write_text(file_open_policy("persist-lsm", secret, exerciser.pid))
    cli(tmp_path / "api.sock", "policy", "add", str(f))
    [row] = policy_list(tmp_path / "api.sock")
    assert row["persistent"] is True and [h_["mechanism"] for h_ in row["hooks"]] == ["bpf_lsm"], json.dumps(row)
    assert exerciser.open(secret) == "EPERM"
    os.killpg(h.proc.pid, signal.SIGKILL)
    h.proc.wait(30)
    results = [exerciser.open(secret) for _ in range(20)]
    assert results == ["EPERM"] * 20
    assert any(p.name.startswith("link") for p in pins_under(pin_root))
    figure("vm.persist.kill9", refused=results.count("EPERM"), tried=len(results),
           result=f"agent killed with SIGKILL: {results.count('EPERM')} of {len(results)} opens refused after it died "
                  "(lsm/file_open program held by its pin)")
    with Loop(lambda: exerciser.open(secret)) as loop:
        agent(cfg)
        [row] = policy_list(tmp_path / "api.sock")
        time.sleep(0.5)
    assert loop.total > 0 and loop.counts == {"EPERM": loop.total}, loop.counts
    assert row["state"] == "enabled" and row["persistent"] is True and len(row["replaced"]) == 1
    st = json.loads(cli(tmp_path / "api.sock", "status", "--json").stdout)["enforcement"]
    restored = [r["policy"] for r in st["start"]["restored"]]
    assert restored == ["persist-lsm"]
    figure("vm.persist.restart", restored=len(restored), kept=1, exercised=loop.total, let_through=0,
           result=f"kill -9, then a new agent: {len(restored)} of 1 kept API policies restored before ready; "
                  f"{loop.total} of {loop.total} opens refused while the agent was down and starting")
    cli(tmp_path / "api.sock", "policy", "delete", "persist-lsm")
    assert exerciser.open(secret) == "ok"
    assert pins_under(pin_root) == []

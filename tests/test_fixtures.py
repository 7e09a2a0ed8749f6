"""The shared fixtures of tests/conftest.py do what they promise: cgroups really hold the processes
started in them and are removed with everything inside killed; the agent fixture starts the real
agent, sees its "ready" line, reads its events and stops it."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from sensorium_testlib import _make_cgroup, cgroup2_mount, check_needs, v1_memory_mount


def _cgroup_line(pid: int, v2: bool) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if v2 and hid == "0":
            return path
        if not v2 and "memory" in ctrls.split(","):
            return path
    raise AssertionError(f"no {'cgroup2' if v2 else 'memory'} line for {pid}")


@pytest.mark.parametrize("version", [2, 1])
def test_cgroup_holds_its_processes_and_is_removed_with_them(version: int) -> None:
    mount = cgroup2_mount() if version == 2 else v1_memory_mount()
    if mount is None:
        pytest.skip(f"no cgroup{' v1 memory' if version == 1 else '2'} mount here")
    gen = _make_cgroup(mount, version)
    cg = next(gen)
    assert cg.path.parent == mount and re.fullmatch(r"sensorium-test-[0-9a-f]{8}", cg.path.name)
    assert cg.id == os.stat(cg.path).st_ino
    out = cg.run(["cat", "/proc/self/cgroup"], capture_output=True, text=True, check=True).stdout
    assert f"/{cg.path.name}" in out
    sleeper = cg.popen(["sleep", "600"])
    try:
        deadline = time.monotonic() + 5
        while sleeper.pid not in cg.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sleeper.pid in cg.pids()
        assert _cgroup_line(sleeper.pid, version == 2).endswith(f"/{cg.path.name}")
        (cg.path / "child").mkdir()  # nested cgroups are removed too
    finally:
        gen.close()  # the fixture's teardown
    assert sleeper.wait(timeout=10) == -9, "the process left in the cgroup was not killed"
    assert not cg.path.exists()


def test_needs_skips_naming_the_missing_capability(kernel_caps) -> None:
    with pytest.raises(pytest.skip.Exception, match="lacks no_such_capability"):
        check_needs("no_such_capability")
    have = [n for n in ("tracepoint", "ringbuf", "btf") if kernel_caps.has(n)]
    assert have, "this kernel has none of tracepoint, ringbuf, btf?"
    check_needs(*have)  # present: no skip
    lacking = [n for n in ("fentry", "lsm", "kprobe") if not kernel_caps.has(n)]
    if lacking and not os.environ.get("SENSORIUM_IN_VM"):
        with pytest.raises(pytest.skip.Exception, match="runs in the VM lane"):
            check_needs(lacking[0])


def test_agent_fixture_starts_reads_and_stops_the_real_agent(agent, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    events = tmp_path / "events.jsonl"
    h = agent({
        "node_name": "fixture-test",
        "plugins": {"allow": ["exec", "file"]},
        "api": {"enabled": False},
        "exporters": [{"type": "file", "path": str(events), "flush_interval_ms": 50}],
    })
    assert any("ready" in line for line in h.stderr_lines)
    marker = f"fixture-{secrets.token_hex(6)}"
    subprocess.run(["/bin/echo", marker], check=True, stdout=subprocess.DEVNULL)
    ev = h.wait_for(lambda e: marker in str(e), path=events, timeout=30)
    assert "process_exec" in ev, ev
    assert h.stop() == 0, h.stderr_tail()

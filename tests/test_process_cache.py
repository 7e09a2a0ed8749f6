"""The process cache: exec_id, parent linkage, fork/exit bookkeeping, bounded memory, /proc scan."""

from __future__ import annotations

import base64
import gc
import os
import subprocess
import sys
import time
import tracemalloc

import pytest

from sensorium.process import ProcessCache, make_exec_id, parse_container_id

# Synthetic pids above the kernel's pid_max limit (4194304), so the /proc fallback can never find them.
BASE = 10_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def cache(**kw) -> ProcessCache:
    kw.setdefault("proc_root", None)
    return ProcessCache("node-a", **kw)


def info(ppid: int, binary: str = "/usr/bin/true", args: list[str] | None = None, **kw) -> dict:
    return {"ppid": ppid, "binary": binary, "args": args or [], "cwd": "/tmp", "uid": 1000, **kw}


def test_exec_id_is_base64_of_node_ktime_pid() -> None:
    c = cache()
    proc, _ = c.on_exec(BASE + 1, 123456789, info(0))
    assert proc["exec_id"] == make_exec_id("node-a", 123456789, BASE + 1)
    assert base64.b64decode(proc["exec_id"]).decode() == f"node-a:123456789:{BASE + 1}"


def test_exec_links_to_parent_and_returns_tetragon_fields() -> None:
    c = cache()
    parent, _ = c.on_exec(BASE + 1, 100, info(0, "/bin/bash"))
    child, p = c.on_exec(BASE + 2, 200, info(BASE + 1, "/bin/ls", ["-l", "/tmp"], tid=BASE + 2))
    assert child["parent_exec_id"] == parent["exec_id"]
    assert p is not None and p["exec_id"] == parent["exec_id"] and p["binary"] == "/bin/bash"
    assert child["binary"] == "/bin/ls" and child["arguments"] == "-l /tmp"
    assert child["pid"] == BASE + 2 and child["tid"] == BASE + 2 and child["uid"] == 1000
    assert child["flags"].split()[0] == "execve"
    assert child["start_time"].endswith("Z")
    assert p["refcnt"] == 2  # itself + one live child


def test_fork_without_exec_clones_parent_with_own_exec_id() -> None:
    c = cache()
    parent, _ = c.on_exec(BASE + 1, 100, info(0, "/usr/bin/python3", ["worker.py"]))
    c.on_fork(BASE + 1, BASE + 5, 300)
    proc, par = c.get(BASE + 5)
    assert proc is not None and par is not None
    assert proc["binary"] == "/usr/bin/python3" and proc["arguments"] == "worker.py"
    assert proc["exec_id"] != parent["exec_id"] and proc["exec_id"] == make_exec_id("node-a", 300, BASE + 5)
    assert proc["parent_exec_id"] == parent["exec_id"]
    assert proc["pid"] == BASE + 5 and "clone" in proc["flags"]
    # ... and when it exits, the exit names the same exec_id and parent
    ex, expar = c.on_exit(BASE + 5, 400)
    assert ex["exec_id"] == proc["exec_id"] and expar["exec_id"] == parent["exec_id"]


def test_exec_after_fork_gets_new_exec_id_and_clone_flag() -> None:
    c = cache()
    parent, _ = c.on_exec(BASE + 1, 100, info(0, "/bin/sh"))
    c.on_fork(BASE + 1, BASE + 2, 150)
    forked, _ = c.get(BASE + 2)
    child, p = c.on_exec(BASE + 2, 160, info(BASE + 1, "/bin/true"))
    assert child["exec_id"] != forked["exec_id"]
    assert child["parent_exec_id"] == parent["exec_id"] and p["exec_id"] == parent["exec_id"]
    assert child["flags"] == "execve clone"
    assert c.get_by_exec_id(forked["exec_id"]) is None or c.get(BASE + 2)[0]["exec_id"] == child["exec_id"]


def test_an_event_gets_the_image_that_ran_at_its_time() -> None:
    clock = Clock()
    c = cache(clock=clock, exited_grace_s=30.0)
    c.on_exec(BASE + 1, 100, info(0, "/bin/sh"))
    c.on_fork(BASE + 1, BASE + 2, 150)
    forked, _ = c.get(BASE + 2)
    assert c.image_start(BASE + 2) == 0  # one image so far: every event gets it
    c.on_exec(BASE + 2, 160, info(BASE + 1, "/bin/cat"))
    c.on_exec(BASE + 2, 170, info(BASE + 1, "/bin/true"))
    assert c.image_start(BASE + 2) == 170
    # an event between fork and the first exec is the clone's; between the execs, cat's; after, true's
    assert c.get(BASE + 2, 155)[0]["exec_id"] == forked["exec_id"]
    assert c.get(BASE + 2, 165)[0]["binary"] == "/bin/cat"
    assert c.get(BASE + 2, 175)[0]["binary"] == "/bin/true"
    assert c.get(BASE + 2)[0]["binary"] == "/bin/true"
    assert c.get(BASE + 2, 10)[0]["binary"] == "/bin/true"  # older than anything known: the current image
    # after exit, late events still find their image; once the grace is over the earlier ones are gone
    c.on_exit(BASE + 2, 180)
    assert c.get(BASE + 2, 165)[0]["binary"] == "/bin/cat"
    clock.t += 31
    c.sweep()
    assert c.get(BASE + 2, 165) == (None, None) and c.image_start(BASE + 2) == 0
    assert c._earlier == {}  # nothing kept for freed images


def test_exit_keeps_entry_for_grace_then_frees_it() -> None:
    clock = Clock()
    c = cache(exited_grace_s=30.0, clock=clock)
    proc, _ = c.on_exec(BASE + 1, 100, info(0))
    ex, _ = c.on_exit(BASE + 1, 200)
    assert ex["exec_id"] == proc["exec_id"] and ex["refcnt"] == 0
    # Late events (drained from another ring after the exit record) still resolve by pid and exec_id.
    assert c.get(BASE + 1)[0]["exec_id"] == proc["exec_id"]
    assert c.get_by_exec_id(proc["exec_id"]) is not None
    clock.t += 31
    c.sweep()
    assert c.get_by_exec_id(proc["exec_id"]) is None and len(c) == 0
    assert c.get(BASE + 1) == (None, None)


def test_exited_parent_lives_while_children_reference_it() -> None:
    clock = Clock()
    c = cache(exited_grace_s=1.0, clock=clock)
    parent, _ = c.on_exec(BASE + 1, 100, info(0, "/bin/sh"))
    c.on_exec(BASE + 2, 200, info(BASE + 1, "/bin/sleep"))
    c.on_exit(BASE + 1, 300)
    clock.t += 10
    c.sweep()
    # the orphaned child's events still carry their parent
    _proc, par = c.get(BASE + 2)
    assert par is not None and par["exec_id"] == parent["exec_id"] and par["refcnt"] == 1
    c.on_exit(BASE + 2, 400)
    clock.t += 10
    c.sweep()
    assert len(c) == 0, c.stats()


def test_pid_reuse_gets_distinct_exec_ids() -> None:
    c = cache(exited_grace_s=0)
    a, _ = c.on_exec(BASE + 1, 100, info(0, "/bin/a"))
    c.on_exit(BASE + 1, 150)
    b, _ = c.on_exec(BASE + 1, 200, info(0, "/bin/b"))
    assert a["exec_id"] != b["exec_id"]
    assert c.get(BASE + 1)[0]["binary"] == "/bin/b"


def test_exit_of_unknown_pid_is_a_counted_miss() -> None:
    c = cache()
    assert c.on_exit(BASE + 99, 1) == (None, None)
    assert c.stats()["misses"] == 1


@pytest.mark.slow
def test_size_bounded_and_memory_flat_under_100k_exec_exit_pairs() -> None:
    max_size = 1024
    c = cache(max_size=max_size, exited_grace_s=3600.0)  # grace never expires: only eviction bounds it
    root, _ = c.on_exec(BASE, 1, info(0, "/sbin/init"))

    def storm(start: int, n: int) -> None:
        for i in range(start, start + n):
            pid = BASE + 1 + (i % 3_000_000)
            c.on_fork(BASE, pid, 10 + 3 * i)
            c.on_exec(pid, 11 + 3 * i, info(BASE, "/usr/bin/true", ["x" * 20, str(i)]))
            c.on_exit(pid, 12 + 3 * i)
            assert len(c) <= max_size

    storm(0, 80_000)  # warm up: the cache is full from here on
    tracemalloc.start()
    try:
        storm(80_000, 5_000)  # the entries alive at the first snapshot are traced too
        gc.collect()
        before = tracemalloc.take_snapshot()
        storm(85_000, 15_000)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    st = c.stats()
    assert len(c) <= max_size and st["size"] == len(c)
    assert st["execs"] == 100_001 and st["exits"] == 100_000 and st["forks"] == 100_000
    assert st["evictions"] > 0 and st["evictions_live"] == 0  # only exited entries were evicted
    # the long-lived parent of the whole storm is still there, and the storm leaked nothing
    assert c.get(BASE)[0]["exec_id"] == root["exec_id"]
    assert grown < 64 * 1024, f"memory grew by {grown} bytes over 15k exec/exit pairs"


def test_live_entries_evicted_last_and_counted() -> None:
    c = cache(max_size=10)
    for i in range(20):
        c.on_exec(BASE + i, 100 + i, info(0))
    assert len(c) == 10 and c.stats()["evictions_live"] == 10
    assert c.get(BASE + 19)[0] is not None and c.get(BASE)[0] is None


def test_scan_proc_reads_running_processes_with_parents() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "scan-marker", "two words"],
                             stdin=subprocess.PIPE, cwd="/tmp")
    try:
        c = ProcessCache("node-a")
        n = c.scan_proc()
        assert n >= 3 and len(c) == n
        proc, parent = c.get(child.pid)
        assert proc is not None, c.stats()
        assert proc["binary"] == os.path.realpath(sys.executable)
        assert proc["arguments"] == "-c import sys; sys.stdin.read() scan-marker two words"
        assert proc["cwd"] == "/tmp" and "procFS" in proc["flags"]
        assert parent is not None and parent["pid"] == os.getpid()
        assert proc["parent_exec_id"] == parent["exec_id"] == c.get(os.getpid())[0]["exec_id"]
        assert proc["ns"]["pid"]["is_host"] is True
        assert "cgroup" in proc and proc["cgroup"]["path"].startswith("/")
    finally:
        child.communicate(b"")


def test_pid_missing_from_cache_is_read_from_proc_on_demand() -> None:
    c = ProcessCache("node-a")
    proc, parent = c.get(os.getpid())
    assert proc is not None and proc["pid"] == os.getpid() and "procFS" in proc["flags"]
    assert parent is not None and parent["pid"] == os.getppid()


@pytest.mark.parametrize("path,expected", [
    ("/kubepods/besteffort/pod1f2e/" + "a" * 64, "a" * 64),
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/cri-containerd-" + "b" * 64 + ".scope",
     "b" * 64),
    ("/kubepods.slice/kubepods-pod12.slice/crio-" + "c" * 64 + ".scope", "c" * 64),
    ("/kubepods.slice/kubepods-pod12.slice/crio-conmon-" + "c" * 64 + ".scope", None),
    ("/docker/" + "d" * 64, "d" * 64),
    ("/system.slice/docker-" + "e" * 64 + ".scope", "e" * 64),
    ("/machine.slice/libpod-" + "f" * 64 + ".scope/container", "f" * 64),
    ("/user.slice/user-0.slice/session-1.scope", None),
    ("/", None),
    ("", None),
])
def test_parse_container_id(path: str, expected: str | None) -> None:
    assert parse_container_id(path) == expected


def test_reap_dead_retires_processes_whose_exit_was_lost() -> None:
    p = subprocess.Popen(["/bin/sleep", "30"])
    c = ProcessCache("node-a", exited_grace_s=0)
    proc, _ = c.get(p.pid)
    assert proc is not None and c.reap_dead() == 0
    p.kill()
    p.wait()
    assert c.reap_dead() == 0  # its exit record may still be in the ring: not yet
    assert c.reap_dead() == 1
    assert c.get(p.pid) == (None, None) and c.stats()["reaped"] == 1


def test_cgroup_resolver_finds_new_cgroups_by_parent_and_by_rescan() -> None:
    import uuid
    from pathlib import Path

    from sensorium.process import CgroupResolver

    res = CgroupResolver(rescan_interval_s=3600)
    if res.v2_root is None or os.geteuid() != 0:
        pytest.skip("needs root and a mounted cgroup2 hierarchy")
    root = Path(res.v2_root)
    a = root / f"sensorium-test-{uuid.uuid4().hex[:8]}"
    a.mkdir()
    b = a / "child"
    try:
        assert res.resolve("v2", a.stat().st_ino) == f"/{a.name}"  # first use: a scan
        scans = res.scans
        b.mkdir()
        # a cgroup made after the scan, under a known parent: joined from the parent's path, no scan
        assert res.resolve("v2", b.stat().st_ino, "child", a.stat().st_ino) == f"/{a.name}/child"
        assert res.scans == scans
        b.rmdir()
        b.mkdir()
        # no name/parent given, but an id newer than the last scan: rescanned at once despite the interval
        time.sleep(0.05)
        assert res.resolve("v2", b.stat().st_ino) == f"/{a.name}/child" and res.scans == scans + 1
    finally:
        for d in (b, a):
            if d.exists():
                d.rmdir()


@pytest.mark.parametrize(("cached", "seen", "same"), [
    ("/usr/bin/cat", "/usr/bin/cat", True),
    # a container's binary: the exec sensor's path inside its root, /proc/<pid>/exe under the host's path
    ("/usr/bin/cat", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs/usr/bin/cat", True),
    ("/usr/sbin/runc", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs/usr/bin/cat", False),
    ("/usr/bin/python3.11", "/usr/bin/cat", False),
    ("cat", "/usr/bin/cat", False),  # not a path: never a match by suffix
    ("", "/usr/bin/cat", False),
    (None, "/usr/bin/cat", False),
])
def test_same_image(cached, seen, same) -> None:
    from sensorium.process import same_image

    assert same_image(cached, seen) is same


def test_exec_pending_only_for_a_clone_running_another_binary() -> None:
    from sensorium.process import exec_pending

    clone = {"binary": "/usr/bin/python3.11", "flags": "clone"}
    assert exec_pending(clone, "/usr/bin/cat")  # exec'd, its record not read yet: wait for it
    assert not exec_pending(clone, "/usr/bin/python3.11")  # a fork that did not exec: it is the clone
    # an exec'd or scanned entry is used as it is, whatever the binary looks like from here
    assert not exec_pending({"binary": "/usr/bin/cat", "flags": "execve clone"}, "/usr/bin/python3.11")
    assert not exec_pending({"binary": "/usr/bin/cat", "flags": "procFS"}, "/run/x/rootfs/usr/bin/cat")

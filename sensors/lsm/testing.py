"""Test helpers for the lsm sensor: a scratch cgroup2 directory, processes started inside a cgroup, a policy
view bounded to cgroups (`scoped`), and a direct sensor context. Every blocking rule a test loads is scoped
to a cgroup the test made, so it can never hit the test runner; `scratch_cgroup` kills stragglers and
removes the directory at exit (tests/conftest.py's ``cgroup2_dir`` / ``v1_memory_cgroup`` do the same).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from .rules import cgroup2_root

__all__ = ["scratch_cgroup", "run_in_cgroup", "popen_in_cgroup", "scoped", "LsmTestContext", "POLICY_HEAD"]

POLICY_HEAD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"


@contextlib.contextmanager
def scratch_cgroup(prefix: str = "sensorium-lsm-test") -> Iterator[str]:
    """A fresh cgroup2 directory (absolute path); processes left in it are killed, then it is removed."""
    root = cgroup2_root()
    path = os.path.join(root, f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        for _ in range(50):
            try:
                pids = [int(p) for p in open(os.path.join(path, "cgroup.procs")).read().split()]
            except OSError:
                pids = []
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, 9)
                except OSError:
                    pass
            time.sleep(0.02)
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def scoped(view: Any, *cgroups: str | os.PathLike[str], host: bool = False) -> Any:
    """``view`` (a `PolicyView`) bounded to the given cgroup directories, of the cgroup2 or the v1 memory
    hierarchy (`sensorium.scope.scope_of_directories`). No directory and no ``host``: ``Scope()``."""
    from sensorium.scope import scope_of_directories

    return dataclasses.replace(view, scope=scope_of_directories([os.fspath(c) for c in cgroups], host=host))


def _enter(cgroup: str | os.PathLike[str]) -> Any:
    procs = os.path.join(os.fspath(cgroup), "cgroup.procs")  # same file name in v1 and cgroup2

    def pre() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return pre


def run_in_cgroup(cgroup: str | os.PathLike[str] | None, argv: Sequence[str], timeout: float = 20,
                  **kw: Any) -> subprocess.CompletedProcess:
    """Run ``argv`` to completion, placed in ``cgroup`` (None: where the caller is) before it execs."""
    return subprocess.run(list(argv), preexec_fn=_enter(cgroup) if cgroup else None, capture_output=True,
                          text=True, timeout=timeout, **kw)


def popen_in_cgroup(cgroup: str | os.PathLike[str] | None, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
    # the child must join the cgroup between fork and exec; pre() only writes one file and takes no lock
    return subprocess.Popen(list(argv), preexec_fn=_enter(cgroup) if cgroup else None, **kw)  # noqa: PLW1509


class LsmTestContext:
    """A real `SensorContext` without the agent: real builds, real kernel; events collected in a list."""

    node_name = "test-node"

    def __init__(self, config: dict[str, Any] | None = None, process_cache: Any = None) -> None:
        import logging

        from sensorium.bpf.probe import probe_kernel

        self.log = logging.getLogger("sensorium.test.lsm")
        self.kernel = probe_kernel()
        self.process_cache = process_cache
        self.config = dict(config or {})
        self.events: list[Any] = []
        self._lock = threading.Lock()

    def build(self, probe: Any) -> Any:
        from sensorium.bpf.build import build_object

        return build_object(probe)

    def open_object(self, path: Any) -> Any:
        from sensorium.bpf.libbpf import BpfObject

        return BpfObject.open(path)

    def add_ring_buffer(self, bpf_map: Any, decode: Any, *, native_drain: bool = False) -> Any:
        """As the agent does: drain the ring on a short timer from one reader thread; returns its handle."""
        from sensorium.bpf.ringbuf import RingBufferReader

        if not hasattr(self, "_reader"):
            self._reader = RingBufferReader()
            self._reader_lock = threading.Lock()
            self._reader_stop = threading.Event()

            def loop() -> None:
                while not self._reader_stop.is_set():
                    with self._reader_lock:
                        try:
                            self._reader.poll(0)
                        except Exception:
                            self.log.exception("test ring")
                    self._reader_stop.wait(0.02)

            threading.Thread(target=loop, daemon=True, name="lsm-test-ring").start()
        return self._reader.add(bpf_map, lambda recs: self.emit(decode(recs)), native_drain=native_drain)

    def emit(self, events: Any) -> None:
        with self._lock:
            self.events.extend(events)

    def make_event(self, kind: str, body: Any, ktime_ns: int | None = None) -> Any:
        from sensorium.events import Event, ktime_to_wall_ns

        t = ktime_to_wall_ns(ktime_ns) if ktime_ns is not None else time.time_ns()
        return Event(kind, body, self.node_name, t)

    def wait_events(self, pred: Any, n: int = 1, timeout: float = 5.0) -> list[Any]:
        """At least ``n`` events satisfying ``pred`` (raises TimeoutError with what arrived)."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                got = [e for e in self.events if pred(e)]
            if len(got) >= n:
                return got
            if time.monotonic() > end:
                raise TimeoutError(f"{len(got)}/{n} matching events; all: {[e.as_dict() for e in self.events][-5:]}")
            time.sleep(0.02)

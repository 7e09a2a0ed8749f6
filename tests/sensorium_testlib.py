"""Helpers shared by the test suite, importable from any test module: ``from sensorium_testlib import ...``.

(``from conftest import ...`` is ambiguous: tests/k8s and tests/vm have conftests of their own.)
tests/conftest.py turns these into fixtures; see docs/testing.md.

- `check_needs(*caps)`: skip (on a host lacking them) or fail (inside the VM lane) unless the kernel has them.
- `cgroup2_mount()`, `v1_memory_mount()`, `make_cgroup(parent, version)` (a generator: next() creates,
  close() kills what is inside and removes it), `Cgroup`.
- `AgentHandle`, `start_agent(workdir, config, ...)`: the real agent as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Set by scripts/vm/run.sh inside a lane guest (its value is the guest's kernel release).
IN_VM: str | None = os.environ.get("SENSORIUM_IN_VM") or None

# What BOTH lane kernels (Debian 6.1 and 6.12 booted with lsm=...,bpf) were measured to have.
# A test needing one of these is lane material; inside the lane its absence is a failure, not a skip.
VM_LANE_HAS = frozenset({
    "btf", "bpf_lsm", "kprobes", "tracefs", "bpffs", "cgroup2",
    "tracepoint", "raw_tp", "tp_btf", "kprobe", "fentry", "fexit", "fmod_ret", "lsm",
    "uprobe", "cgroup_sock_addr", "ringbuf",
})
# What only some lane kernels have: kprobe_multi needs CONFIG_FPROBE, which Debian's 6.1 lacks
# (attach fails with EOPNOTSUPP) and 6.12 has. Lane material too, but skipped where absent.
VM_LANE_SOME = frozenset({"kprobe_multi"})


_CAPS: Any = None


def _kernel_caps() -> Any:
    global _CAPS
    if _CAPS is None:
        try:
            from sensorium.bpf.probe import probe_kernel
        except ImportError as e:  # the probe module is part of the bpf layer; say so plainly
            pytest.fail(f"sensorium.bpf.probe.probe_kernel is not importable: {e}")
        _CAPS = probe_kernel()
    return _CAPS


def _missing(caps: Any, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not caps.has(n)]


def _why(caps: Any, name: str) -> str:
    pt = getattr(caps, "program_types", {}) or {}
    res = pt.get(name)
    err = getattr(res, "error", None) if res is not None else None
    return f"{name} ({err})" if err else name


def check_needs(*names: str) -> None:
    """Skip (on a host lacking them) or fail (inside the VM lane) unless the kernel has all `names`.

    `names` are KernelCapabilities.has() keys: program types (fentry, lsm, kprobe, ...) or
    btf, bpf_lsm, kprobes, tracefs, bpffs, cgroup2."""
    caps = _kernel_caps()
    missing = _missing(caps, names)
    if not missing:
        return
    release = getattr(caps, "release", os.uname().release)
    what = ", ".join(_why(caps, n) for n in missing)
    if IN_VM and any(n in VM_LANE_HAS for n in missing):
        pytest.fail(f"VM lane kernel {release} lacks {what}, which the lane's kernels are expected to have")
    lane = (" (runs in the VM lane: make test-vm)"
            if not IN_VM and all(n in VM_LANE_HAS | VM_LANE_SOME for n in missing) else "")
    pytest.skip(f"kernel {release} lacks {what}{lane}")


# --------------------------------------------------------------------------------------------------
# cgroups

def _mounts() -> list[tuple[str, str, str]]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            p = line.split()
            if len(p) >= 4:
                out.append((p[1].encode().decode("unicode_escape"), p[2], p[3]))
    return out


def cgroup2_mount() -> Path | None:
    """The cgroup2 mount point: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a pure one."""
    points = [mp for mp, fs, _ in _mounts() if fs == "cgroup2"]
    for pref in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if pref in points:
            return Path(pref)
    return Path(points[0]) if points else None


def v1_memory_mount() -> Path | None:
    for mp, fs, opts in _mounts():
        if fs == "cgroup" and "memory" in opts.split(","):
            return Path(mp)
    return None


@dataclass
class Cgroup:
    """A cgroup directory made for one test. ``os.fspath(cg)`` is its path; ``cg.id`` its inode
    number (the cgroup id BPF reports for cgroup2)."""

    path: Path
    version: int

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def id(self) -> int:
        return os.stat(self.path).st_ino

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"  # same name in v1 and v2

    def add(self, pid: int) -> None:
        """Move process `pid` into this cgroup."""
        self.procs_file.write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        return [int(x) for x in self.procs_file.read_text().split()]

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen:
        """Start `argv` already inside this cgroup (a shell moves itself in, then execs argv), so
        not even its first instruction runs elsewhere."""
        wrapper = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs_file), *argv]
        return subprocess.Popen(wrapper, **kw)

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        """Like subprocess.run, inside this cgroup."""
        kw.setdefault("timeout", 60)
        wrapper = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs_file), *argv]
        return subprocess.run(wrapper, **kw)


def _kill_and_remove(path: Path) -> None:
    """Kill everything in `path` and below, then remove the directories, deepest first."""
    if not path.exists():
        return
    dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    dirs.append(path)
    kill_file = path / "cgroup.kill"  # cgroup2, Linux 5.14+: kills the whole subtree atomically
    if kill_file.exists():
        try:
            kill_file.write_text("1\n")
        except OSError:
            pass
    deadline = time.monotonic() + 10
    for d in dirs:
        while True:
            try:
                pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {pids} survive SIGKILL in {d}")
            time.sleep(0.02)
        for _ in range(200):  # rmdir races with the exit of the last task (EBUSY for a moment)
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise RuntimeError(f"cannot remove cgroup {d}")


def _make_cgroup(parent: Path, version: int) -> Iterator[Cgroup]:
    path = parent / f"sensorium-test-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield Cgroup(path, version)
    finally:
        _kill_and_remove(path)


make_cgroup = _make_cgroup


# --------------------------------------------------------------------------------------------------
# the real agent

SENSORIUM_BIN = REPO / ".venv" / "bin" / "sensorium"


@dataclass
class AgentHandle:
    """A running ``sensorium run``. Its stdout goes to ``stdout_path`` (JSON lines with the stdout
    exporter); its stderr lines are collected in ``stderr_lines`` and copied to ``stderr_path``."""

    proc: subprocess.Popen
    config_path: Path
    stdout_path: Path
    stderr_path: Path
    stderr_lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
        """The JSON objects written so far, one per line, to `path` (default: the agent's stdout).
        A last line still being written (no newline yet) is left for the next call."""
        p = Path(path) if path is not None else self.stdout_path
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for raw in data.split(b"\n")[:-1]:
            line = raw.strip()
            if line:
                out.append(json.loads(line))
        return out

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                 path: str | os.PathLike[str] | None = None, timeout: float = 15.0) -> dict[str, Any]:
        """Poll `events(path)` until one satisfies `predicate`; return it. AssertionError on timeout
        (with the number of events seen and the agent's stderr tail), or when the agent died."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events(path)
            for ev in evs:
                if predicate(ev):
                    return ev
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited ({self.proc.returncode}) before the event came; "
                                     f"stderr tail:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching event within {timeout}s ({len(evs)} events seen); "
                                     f"stderr tail:\n{self.stderr_tail()}")
            time.sleep(0.05)

    def stderr_tail(self, n: int = 30) -> str:
        return "\n".join(self.stderr_lines[-n:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL (the whole process group) after `timeout` s. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode


def _read_stderr(h: AgentHandle) -> None:
    assert h.proc.stderr is not None
    with open(h.stderr_path, "w", encoding="utf-8", errors="replace") as copy:
        for raw in h.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            h.stderr_lines.append(line)
            copy.write(line + "\n")
            copy.flush()
            if "ready" in line:
                h._ready.set()


def start_agent(workdir: Path, config: dict[str, Any], *, args: tuple[str, ...] | list[str] = (),
                env: dict[str, str] | None = None, ready_timeout: float = 60.0,
                started: list[AgentHandle] | None = None) -> AgentHandle:
    """Start ``.venv/bin/sensorium run --config <workdir>/config.yaml`` (see the `agent` fixture)."""
    import yaml

    if IN_VM:  # the lane emulates the CPU: everything takes about ten times longer there
        ready_timeout *= 8
    d = workdir
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "config.yaml"
    # Each agent gets its own API socket, so agents of concurrent tests never take each other's.
    config = {**config, "api": {"socket": str(d / "api.sock"), **config.get("api", {})}}
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    exe = str(SENSORIUM_BIN) if SENSORIUM_BIN.exists() else None
    argv = ([exe] if exe else [sys.executable, "-m", "sensorium.cli"]) + ["run", "--config", str(cfg), *args]
    stdout_path = d / "stdout.jsonl"
    with open(stdout_path, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
                                cwd=d, env={**os.environ, **(env or {})}, start_new_session=True)
    h = AgentHandle(proc, cfg, stdout_path, d / "stderr.log")
    h._reader = threading.Thread(target=_read_stderr, args=(h,), name=f"agent-stderr-{proc.pid}", daemon=True)
    h._reader.start()
    if started is not None:
        started.append(h)  # registered before waiting: a caller can stop it even if ready never comes
    deadline = time.monotonic() + ready_timeout
    while not h._ready.wait(0.05):
        if proc.poll() is not None:
            h._reader.join(5)
            raise AssertionError(f"agent exited with {proc.returncode} before it was ready: "
                                 f"{' '.join(argv)}\nstderr:\n{h.stderr_tail(60)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"agent not ready after {ready_timeout}s (no stderr line with 'ready'); "
                                 f"stderr:\n{h.stderr_tail(60)}")
    return h


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``where`` (made here) with the mount ``options`` for the block, unmounted after;
    skips the test where this machine does not let it mount."""
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def feed(runner: Any, events: list[Any], batch: int, pause_s: float) -> tuple[threading.Thread, threading.Event]:
    """Submit ``events`` to an exporter runner in batches of ``batch``, ``pause_s`` apart, from a thread of its own
    (started here): a stream that is still flowing while the test breaks its target. The event is set after the
    last batch."""
    done = threading.Event()

    def produce() -> None:
        for i in range(0, len(events), batch):
            runner.submit(events[i:i + batch])
            time.sleep(pause_s)
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    return t, done


class DecoderContext:
    """The least `SensorContext` a sensor's decoder needs, for feeding it records without a kernel: an empty process
    cache that never reads /proc, and plain events."""

    node_name = "n"

    def __init__(self) -> None:
        from sensorium.process import ProcessCache

        self.process_cache = ProcessCache("n", proc_root=None)

    def make_event(self, kind: str, body: dict, ktime_ns: int | None = None) -> Any:
        from sensorium.events import Event

        return Event(kind, body, self.node_name, ktime_ns or 0)

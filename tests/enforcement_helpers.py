"""Helpers of the transaction and persistent-enforcement tests: real processes that exercise a block over
and over, the CLI against a real agent, a private pin root in bpffs that is always removed, and programs
that fill a kernel attach point so that a real attach fails at a chosen step.

Every blocking rule these tests load names the pid of a process the test started (``matchPIDs``) and a
port of a server or a file the test made: nothing else on the machine can be refused, the test runner
included.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sensorium_testlib import REPO

CLI = [str(REPO / ".venv" / "bin" / "sensorium")] if (REPO / ".venv" / "bin" / "sensorium").exists() else \
    [sys.executable, "-c", "from sensorium.cli import main; main()"]

# A process that stays alive (in a test cgroup) and, for each line it reads, either connects to the port on
# it ("c PORT") or opens the file on it ("o PATH"), printing the outcome: the same process throughout, so a
# block that names its pid is exercised before, during and after an agent restart.
EXERCISER = r"""
import errno, os, socket, sys
for line in sys.stdin:
    what, arg = line.split(" ", 1)
    arg = arg.rstrip("\n")
    try:
        if what == "c":
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", int(arg)))
            finally:
                s.close()
        else:
            os.close(os.open(arg, os.O_RDONLY))
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"""


class Exerciser:
    """The long-lived process of `EXERCISER`, started inside ``cgroup`` (a `sensorium_testlib.Cgroup`)."""

    def __init__(self, cgroup: Any) -> None:
        self.proc = cgroup.popen([sys.executable, "-c", EXERCISER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, bufsize=1)
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _ask(self, line: str) -> str:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            out = self.proc.stdout.readline().strip()
        if not out:
            raise AssertionError(f"the exerciser (pid {self.pid}) died: {self.proc.poll()}")
        return out

    def connect(self, port: int) -> str:
        """``ok``, ``EPERM``, ``ECONNREFUSED``..."""
        return self._ask(f"c {port}")

    def open(self, path: str | os.PathLike[str]) -> str:
        return self._ask(f"o {os.fspath(path)}")

    def close(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait(5)


class Loop:
    """Runs ``step()`` (an `Exerciser` call) back to back on a thread and counts its outcomes, so a test can
    assert what happened during an operation: ``with Loop(lambda: ex.connect(port)) as loop: ...``."""

    def __init__(self, step: Any) -> None:
        self.step = step
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="exercise-loop", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                r = self.step()
                self.counts[r] = self.counts.get(r, 0) + 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def __enter__(self) -> Loop:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(30)
        if self.error is not None:
            raise AssertionError(f"the exercise loop failed: {self.error}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Server:
    """A loopback TCP server that accepts and closes every connection (an exercise loop connects thousands
    of times: a queue nobody accepts from would fill and turn connects into timeouts)."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self._t = threading.Thread(target=self._run, name="test-server", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._t.join(5)


def cli(sock: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args, "--socket", str(sock)], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, f"sensorium {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def policy_list(sock: Path) -> list[dict[str, Any]]:
    return json.loads(cli(sock, "policy", "list", "--json").stdout)


def connect_lsmhooks(port: int, selector: str = "") -> str:
    """A policy spec's ``lsmhooks:`` section: socket_connect to ``port`` refused (EPERM); ``selector``: more keys of
    its one selector (e.g. matchPIDs)."""
    return f"""  lsmhooks:
  - hook: socket_connect
    args:
    - {{index: 0, type: sock}}
    - {{index: 1, type: sockaddr}}
    selectors:
    - matchArgs:
      - {{index: 1, operator: DPort, values: ["{port}"]}}
{selector}      matchActions:
      - {{action: Override, argError: -1}}
"""


def connect_policy(name: str, port: int, pid: int) -> str:
    """socket_connect to ``port`` refused (EPERM) for the process ``pid`` only."""
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
""" + connect_lsmhooks(port, f"""      matchPIDs:
      - {{operator: In, followForks: false, isNamespacePID: false, values: [{pid}]}}
""")


def lsm_block_policy(name: str, hook: str, arg_type: str, path: str | os.PathLike[str], pid: int) -> str:
    """The lsm ``hook`` on ``path`` (its argument 0, of ``arg_type``) refused (EPERM) for the process ``pid``
    only."""
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  lsmhooks:
  - hook: {hook}
    args:
    - {{index: 0, type: {arg_type}}}
    selectors:
    - matchArgs:
      - {{index: 0, operator: Equal, values: ["{os.fspath(path)}"]}}
      matchPIDs:
      - {{operator: In, followForks: false, isNamespacePID: false, values: [{pid}]}}
      matchActions:
      - {{action: Override, argError: -1}}
"""


def file_open_policy(name: str, path: str | os.PathLike[str], pid: int) -> str:
    """file_open of ``path`` refused (EPERM) for the process ``pid`` only."""
    return lsm_block_policy(name, "file_open", "file", path, pid)


def missing_function_policy(name: str) -> str:
    """A kprobe on a kernel function that exists on no kernel: refused by the kernel's BTF."""
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: sensorium_no_such_function_{secrets.token_hex(3)}
    syscall: false
    args:
    - {{index: 0, type: int}}
"""


def new_pin_root() -> Path:
    """A pin root of this test's own, in a bpffs instance of its own: a fresh mount (mode 0700) on a
    temporary directory, so nothing the test pins can appear under the machine's /sys/fs/bpf, and
    `remove_pins` unmounts it (a bpffs mount holds the kernel's own progs.debug/maps.debug too)."""
    import subprocess
    import tempfile

    mnt = Path(tempfile.mkdtemp(prefix="sensorium-bpffs-"))
    r = subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        mnt.rmdir()
        raise RuntimeError(f"cannot mount a private bpffs on {mnt}: {r.stderr.strip()}")
    return mnt / f"sensorium-test-{secrets.token_hex(4)}"


def pins_under(root: Path) -> list[Path]:
    """Every pinned object (link or map) under ``root``."""
    out: list[Path] = []
    for d, _dirs, files in os.walk(root):
        out.extend(Path(d) / f for f in files)
    return sorted(out)


def remove_pins(root: Path) -> None:
    """Remove everything under ``root`` (unpinned links detach: no block can outlive the test), then the
    private bpffs mount `new_pin_root` made for it."""
    import subprocess

    from sensorium.persistence import remove_pin_tree

    remove_pin_tree(root)
    mnt = root.parent
    if mnt.name.startswith("sensorium-bpffs-") and os.path.ismount(mnt):
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
        mnt.rmdir()


def figure(name: str, *, result: str, **numbers: Any) -> None:
    """Store a figure of these tests in build/reliability/enforcement.json (`reliability_figures.record`: with
    the running test's id), from which scripts/reliability_doc.py writes docs/reliability.md. ``result`` is
    the sentence the doc shows; ``numbers`` the counts it sums (``failed``, ``enforced``, ``exercised``...)."""
    from reliability_figures import record

    record(name, {"result": result, **numbers}, section="enforcement", note=f"Linux {os.uname().release}")


def wait_until(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Attach points filled to the kernel's limit, so that a real attach of ours fails where a test wants it.

# struct bpf_prog_load_opts (libbpf 1.x): the probe's own definition
from sensorium.bpf.probe import _ProgLoadOpts  # noqa: E402


class _LinkCreateOpts(ctypes.Structure):  # struct bpf_link_create_opts, enough of it for cgroup/tracing links
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 64)]


PROG_CGROUP_SOCK_ADDR, PROG_LSM = 18, 29
ATTACH_CGROUP_INET4_CONNECT, ATTACH_CGROUP_INET6_CONNECT, ATTACH_LSM_MAC = 10, 11, 27
BPF_CGROUP_MAX_PROGS = 64   # kernel/bpf/cgroup.c: programs one cgroup takes per attach type
BPF_MAX_TRAMP_LINKS = 38    # include/linux/bpf.h (x86_64): programs one trampoline (an LSM hook) takes


def _insns(r0: int) -> bytes:
    # r0 = r0; exit: "allow" for both a sock_addr program (1) and an LSM program (0)
    return bytes([0xB7, 0, 0, 0]) + r0.to_bytes(4, "little") + bytes([0x95, 0, 0, 0, 0, 0, 0, 0])


def _load(prog_type: int, attach_type: int, r0: int, btf_id: int = 0) -> int:
    from sensorium.bpf.libbpf import lib

    code = _insns(r0)
    opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts), expected_attach_type=attach_type, attach_btf_id=btf_id)
    insns = ctypes.create_string_buffer(code, len(code))
    fd = lib().bpf_prog_load(prog_type, b"sens_test_fill", b"GPL", insns, len(code) // 8, ctypes.byref(opts))
    if fd < 0:
        raise OSError(-fd, f"loading a filler program: {os.strerror(-fd)}")
    return fd


def _link(prog_fd: int, target_fd: int, attach_type: int) -> int:
    from sensorium.bpf.libbpf import lib

    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts))
    fd = lib().bpf_link_create(prog_fd, target_fd, attach_type, ctypes.byref(opts))
    if fd < 0:
        raise OSError(-fd, f"attaching a filler program: {os.strerror(-fd)}")
    return fd


class FullAttachPoint:
    """Programs that let everything through, attached until the kernel takes no more: a cgroup's connect6
    programs (64), or an LSM hook's trampoline (38). The next attach there fails (E2BIG): a real failure
    at a chosen step. ``close()`` detaches them all."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    @classmethod
    def cgroup_connect6(cls, cgroup_dir: str | os.PathLike[str]) -> FullAttachPoint:
        self = cls()
        cg = os.open(os.fspath(cgroup_dir), os.O_RDONLY | os.O_DIRECTORY)
        try:
            prog = _load(PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_INET6_CONNECT, 1)
            self.fds.append(prog)
            self._fill(lambda: _link(prog, cg, ATTACH_CGROUP_INET6_CONNECT), BPF_CGROUP_MAX_PROGS)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(cg)
        return self

    @classmethod
    def lsm_hook(cls, hook: str) -> FullAttachPoint:
        from sensorium.bpf.probe import _Btf  # the vmlinux BTF lookup the probe uses

        self = cls()
        btf_id = _Btf().find(f"bpf_lsm_{hook}", 12)  # BTF_KIND_FUNC
        if btf_id < 0:
            raise OSError(errno.ENOENT, f"no bpf_lsm_{hook} in the kernel's BTF")
        try:
            for _ in range(BPF_MAX_TRAMP_LINKS + 8):
                prog = _load(PROG_LSM, ATTACH_LSM_MAC, 0, btf_id)  # one program per link: a trampoline
                self.fds.append(prog)                              # takes each program once
                try:
                    self.fds.append(_link(prog, 0, ATTACH_LSM_MAC))
                except OSError as exc:
                    if exc.errno == errno.E2BIG:
                        return self
                    raise
            raise AssertionError(f"the trampoline of {hook} took more than {BPF_MAX_TRAMP_LINKS + 8} programs")
        except BaseException:
            self.close()
            raise

    def _fill(self, attach: Any, limit: int) -> None:
        for _ in range(limit + 8):
            try:
                self.fds.append(attach())
            except OSError as exc:
                if exc.errno == errno.E2BIG:
                    return
                raise
        raise AssertionError(f"the attach point took more than {limit + 8} programs")

    def close(self) -> None:
        for fd in reversed(self.fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for line in data.split(b"\n")[:-1]:
        if line.strip():
            yield json.loads(line)

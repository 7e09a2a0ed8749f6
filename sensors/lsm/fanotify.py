"""fanotify permission events: the file_open / bprm_check_security fallback where BPF LSM cannot load.

One fanotify group (FAN_CLASS_CONTENT) per sensor, with FAN_OPEN_PERM / FAN_OPEN_EXEC_PERM marks on the
protected files only (inode marks; a directory mark with FAN_EVENT_ON_CHILD for a Prefix rule or a file
that does not exist yet), so opens of every other file never leave the kernel. A dedicated thread reads
the permission events, decides from the rules (scope cgroup, then selectors, in user space) and answers
the kernel at once; the events to export are built after the answer, never before it.

What the kernel does when the agent cannot answer (measured in tests/test_lsm_fanotify.py and written up
in docs/enforcement.md): when the group's fd is closed (agent exits or is killed) every pending and future
open is allowed (fail-open); while the agent is alive but not answering (stopped, stuck) the opener waits,
killable, and no timeout applies.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno as _errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["FanotifyGuard", "FanRule", "FanDecision", "FAN_OPEN_PERM", "FAN_OPEN_EXEC_PERM", "MAX_DIR_MARKS",
           "fanotify_available"]

FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_CONTENT = 0x04
FAN_UNLIMITED_QUEUE = 0x10
FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
FAN_MARK_ADD = 0x01
FAN_MARK_REMOVE = 0x02
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100
IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_ONLYDIR = 0x01000000
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000
_INOTIFY_EV = struct.Struct("=iIII")
_META = struct.Struct("=IBBHQii")       # struct fanotify_event_metadata (24 bytes)
_RESPONSE = struct.Struct("=iI")        # struct fanotify_response

MAX_DIR_MARKS = 2048   # directories one Prefix rule may mark (each routes its children's opens to the agent)

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        lib.fanotify_mark.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


def fanotify_init() -> int:
    fd = _lib().fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE,
                              os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fanotify_init(FAN_CLASS_CONTENT): {os.strerror(e)}")
    return fd


def fanotify_available() -> tuple[bool, str]:
    """Whether permission events can be used here (CONFIG_FANOTIFY_ACCESS_PERMISSIONS, CAP_SYS_ADMIN)."""
    try:
        fd = fanotify_init()
    except OSError as exc:
        return False, str(exc)
    os.close(fd)
    return True, ""


def _mark(fd: int, flags: int, mask: int, path: str) -> None:
    if _lib().fanotify_mark(fd, flags, mask, AT_FDCWD, os.fsencode(path)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fanotify_mark({path}): {os.strerror(e)}")


@dataclasses.dataclass(eq=False)
class FanRule:
    """One hook of one policy served by fanotify.

    decide(pid, path, facts_factory) -> FanVerdict | None is provided by the sensor (selectors, scope, mode).
    marks: (path, mask) pairs; a mask with FAN_EVENT_ON_CHILD is a directory mark.
    """

    kind_mask: int                              # FAN_OPEN_PERM or FAN_OPEN_EXEC_PERM
    marks: tuple[tuple[str, int], ...]
    decide: Callable[[int, str], FanDecision | None]
    # False while the rule's policy transaction is not committed: its marks are placed, every open they
    # route here is allowed without a decision or an event (`sensorium.hookspecs.PreparedSection`).
    active: bool = True


@dataclasses.dataclass
class FanDecision:
    """What a rule decided for one call; ``deny`` answers the kernel, ``kill`` is a signal to send first."""

    rule: FanRule
    pid: int
    path: str
    deny: bool
    kill: int = 0            # signal number to send to pid (0: none)
    post: bool = True
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def plan_marks(kind_mask: int, equal: Iterable[str], prefix: Iterable[str]) -> list[tuple[str, int]]:
    """Marks that make every open of the given files (Equal) and of paths under the prefixes (Prefix)
    reach the agent, while other files stay unmarked. Raises ValueError naming a path that cannot be
    guarded."""
    marks: dict[str, int] = {}
    for v in equal:
        if os.path.lexists(v):
            real = os.path.realpath(v)
            marks[real] = marks.get(real, 0) | kind_mask | (FAN_ONDIR if os.path.isdir(real) else 0)
        else:
            parent = os.path.dirname(v.rstrip("/")) or "/"
            if not os.path.isdir(parent):
                raise ValueError(f"cannot guard {v!r}: neither it nor its directory {parent!r} exists")
            # The file may be created later: watch its directory's children.
            marks[os.path.realpath(parent)] = marks.get(parent, 0) | kind_mask | FAN_EVENT_ON_CHILD
    for p in prefix:
        if p.rstrip("/") == "":
            raise ValueError("a Prefix of '/' would route every open on the host through the agent; name a directory")
        top = p if (p.endswith("/") and os.path.isdir(p)) else (os.path.dirname(p) or "/")
        if not os.path.isdir(top):
            raise ValueError(f"cannot guard prefix {p!r}: directory {top!r} does not exist")
        dirs = [top]
        # Directories under `top` whose paths can carry the prefix get their own child marks.
        for root, subdirs, _files in os.walk(top):
            keep = []
            for d in subdirs:
                full = os.path.join(root, d)
                if (full + "/").startswith(p) or full.startswith(p) or p.startswith(full + "/"):
                    keep.append(d)
                    if (full + "/").startswith(p) or full.startswith(p):
                        dirs.append(full)
            subdirs[:] = keep
            if len(dirs) > MAX_DIR_MARKS:
                raise ValueError(f"prefix {p!r} covers more than {MAX_DIR_MARKS} directories; name a narrower prefix")
        for d in dirs:
            real = os.path.realpath(d)
            marks[real] = marks.get(real, 0) | kind_mask | FAN_EVENT_ON_CHILD
    return sorted(marks.items())


class FanotifyGuard:
    """The fanotify group, its marks (reference-counted across rules) and the deciding thread."""

    def __init__(self, on_decisions: Callable[[list[FanDecision]], None], log: logging.Logger | None = None) -> None:
        self._on_decisions = on_decisions
        self.log = log or logging.getLogger("sensorium.sensor.lsm.fanotify")
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._rules: list[FanRule] = []
        self._marks: dict[str, dict[int, int]] = {}   # path -> {mask: refcount}
        # A file replaced by rename (or deleted and created again) is a new inode without our mark: an
        # inotify watch on its directory puts the mark back on whatever appears under the name.
        self._ino_fd = -1
        self._dir_wd: dict[str, int] = {}             # directory -> watch descriptor
        self._wd_dir: dict[int, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._self_pid = os.getpid()
        self.stats = {"events": 0, "denied": 0, "allowed": 0, "errors": 0, "max_answer_us": 0, "marks": 0,
                      "remarked": 0}

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._fd >= 0:
            return
        self._fd = fanotify_init()
        self._ino_fd = _lib().inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
        if self._ino_fd < 0:
            self._ino_fd = -1  # re-marking is best effort; enforcement does not depend on it
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sensorium-lsm-fanotify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the group: the kernel removes every mark and allows whatever is pending."""
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for fd in (self._fd, self._wake_r, self._wake_w, self._ino_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._wake_r = self._wake_w = self._ino_fd = -1
        with self._lock:
            self._rules.clear()
            self._marks.clear()
            self._dir_wd.clear()
            self._wd_dir.clear()

    @property
    def running(self) -> bool:
        return self._fd >= 0

    # ---- rules and marks --------------------------------------------------------------------------

    def _mask_of(self, path: str) -> int:
        m = 0
        for mask, n in self._marks.get(path, {}).items():
            if n > 0:
                m |= mask
        return m

    def add_rule(self, rule: FanRule) -> None:
        """Register ``rule`` and add its marks; on a mark failure nothing of the rule stays."""
        if self._fd < 0:
            self.start()
        with self._lock:
            done: list[tuple[str, int]] = []
            try:
                for path, mask in rule.marks:
                    before = self._mask_of(path)
                    self._marks.setdefault(path, {})
                    self._marks[path][mask] = self._marks[path].get(mask, 0) + 1
                    done.append((path, mask))
                    after = self._mask_of(path)
                    if after != before:
                        _mark(self._fd, FAN_MARK_ADD, after, path)
            except OSError:
                self._release(done)
                raise
            self._rules.append(rule)
            self.stats["marks"] = sum(1 for p in self._marks if self._mask_of(p))
            self._sync_watches()

    def _release(self, marks: Sequence[tuple[str, int]]) -> None:
        for path, mask in marks:
            before = self._mask_of(path)
            counts = self._marks.get(path, {})
            counts[mask] = counts.get(mask, 1) - 1
            if counts.get(mask, 0) <= 0:
                counts.pop(mask, None)
            after = self._mask_of(path)
            gone = before & ~after
            if gone:
                try:
                    _mark(self._fd, FAN_MARK_REMOVE, gone, path)
                except OSError:
                    pass  # the inode was replaced or removed: its mark went with it
            if not counts:
                self._marks.pop(path, None)

    def remove_rule(self, rule: FanRule) -> None:
        with self._lock:
            if rule not in self._rules:
                return
            self._rules.remove(rule)
            if self._fd >= 0:
                self._release(rule.marks)
            self.stats["marks"] = sum(1 for p in self._marks if self._mask_of(p))
            self._sync_watches()

    def _file_marks(self) -> dict[str, int]:
        """Inode marks on files (not directory child marks): path -> mask."""
        out = {}
        for path in self._marks:
            m = self._mask_of(path)
            if m and not m & FAN_EVENT_ON_CHILD:
                out[path] = m
        return out

    def _sync_watches(self) -> None:
        """One inotify watch per directory holding a marked file (called with the lock held)."""
        if self._ino_fd < 0:
            return
        want = {os.path.dirname(p) or "/" for p in self._file_marks()}
        for d in list(self._dir_wd):
            if d not in want:
                wd = self._dir_wd.pop(d)
                self._wd_dir.pop(wd, None)
                _lib().inotify_rm_watch(self._ino_fd, wd)
        for d in want - set(self._dir_wd):
            wd = _lib().inotify_add_watch(self._ino_fd, os.fsencode(d), IN_CREATE | IN_MOVED_TO | IN_ONLYDIR)
            if wd >= 0:
                self._dir_wd[d] = wd
                self._wd_dir[wd] = d

    def _on_inotify(self) -> None:
        try:
            buf = os.read(self._ino_fd, 64 * 1024)
        except OSError:
            return
        off = 0
        with self._lock:
            files = self._file_marks()
            while off + _INOTIFY_EV.size <= len(buf):
                wd, _mask, _cookie, nlen = _INOTIFY_EV.unpack_from(buf, off)
                name = buf[off + _INOTIFY_EV.size: off + _INOTIFY_EV.size + nlen].split(b"\0", 1)[0]
                off += _INOTIFY_EV.size + nlen
                d = self._wd_dir.get(wd)
                if d is None or not name:
                    continue
                path = os.path.join(d, os.fsdecode(name))
                mask = files.get(path)
                if mask:
                    try:
                        _mark(self._fd, FAN_MARK_ADD, mask, path)
                        self.stats["remarked"] += 1
                    except OSError as exc:
                        self.stats["errors"] += 1
                        self.log.error("re-marking %s: %s", path, exc)

    # ---- deciding ---------------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        if self._ino_fd >= 0:
            poller.register(self._ino_fd, select.POLLIN)
        while not self._stop.is_set():
            try:
                ready = poller.poll(1000)
            except InterruptedError:
                continue
            if not ready or self._stop.is_set():
                continue
            if self._ino_fd >= 0 and any(fd == self._ino_fd for fd, _ev in ready):
                self._on_inotify()
            if not any(fd == self._fd for fd, _ev in ready):
                continue
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in (_errno.EINTR, _errno.EAGAIN):
                    continue
                self.log.error("fanotify read failed: %s", exc)
                self.stats["errors"] += 1
                time.sleep(0.01)
                continue
            decisions: list[FanDecision] = []
            off = 0
            while off + _META.size <= len(buf):
                event_len, vers, _r, _mlen, mask, fd, pid = _META.unpack_from(buf, off)
                if event_len < _META.size or vers != FANOTIFY_METADATA_VERSION:
                    self.stats["errors"] += 1
                    break
                off += event_len
                t0 = time.monotonic_ns()
                try:
                    decisions.extend(self._answer(mask, fd, pid))
                finally:
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                us = (time.monotonic_ns() - t0) // 1000
                if us > self.stats["max_answer_us"]:
                    self.stats["max_answer_us"] = us
            posted = [d for d in decisions if d.post]
            if posted:
                try:
                    self._on_decisions(posted)
                except Exception:  # exporting must never stop the answering thread
                    self.stats["errors"] += 1
                    self.log.exception("building lsm events")

    def _respond(self, fd: int, response: int) -> None:
        try:
            os.write(self._fd, _RESPONSE.pack(fd, response))
        except OSError as exc:
            # ENOENT: the opener was killed meanwhile and the kernel dropped the event.
            if exc.errno != _errno.ENOENT:
                self.stats["errors"] += 1
                self.log.error("fanotify response failed: %s", exc)

    def _answer(self, mask: int, fd: int, pid: int) -> list[FanDecision]:
        self.stats["events"] += 1
        if fd == FAN_NOFD or fd < 0:
            return []  # queue overflow marker: nothing to answer
        decisions: list[FanDecision] = []
        deny = False
        try:
            if pid != self._self_pid:  # the agent must never block itself
                path = os.readlink(f"/proc/self/fd/{fd}")
                with self._lock:
                    rules = [r for r in self._rules if r.kind_mask & mask and r.active]
                for r in rules:
                    try:
                        d = r.decide(pid, path)
                    except Exception:  # a broken rule must still let the kernel get an answer
                        self.stats["errors"] += 1
                        self.log.exception("fanotify rule failed; allowing")
                        continue
                    if d is not None:
                        decisions.append(d)
                        deny = deny or d.deny
        except OSError as exc:
            self.stats["errors"] += 1
            self.log.error("fanotify event for pid %d: %s; allowing", pid, exc)
        for d in decisions:
            if d.kill:
                try:
                    os.kill(d.pid, d.kill)
                except OSError:
                    pass
        self._respond(fd, FAN_DENY if deny else FAN_ALLOW)
        self.stats["denied" if deny else "allowed"] += 1
        return decisions

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"running": self.running, "rules": len(self._rules), **self.stats}

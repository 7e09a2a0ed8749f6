"""Persistent enforcement (agent config ``enforcement.persist``): where pins and kept policies live on disk.

Two places, both owned by one agent:

* the **pin root** in bpffs (default ``/sys/fs/bpf/sensorium``): one directory per policy generation,
  ``<key>@<generation>/<section>/...`` (no ``.`` in any name: bpffs refuses it), holding the links and maps
  that the sensors pinned for the policy's enforcing hooks (`sensorium.hookspecs.PolicyView.pin_dir`). A pinned
  link stays attached while its pin exists, whatever happens to the agent; removing the files lifts the block.
* the **state directory** (default ``/var/lib/sensorium``): ``policies/`` keeps every policy added through the
  API (its document, mode, enabled or not) so that a restarted agent loads it again before it says ready;
  ``pins/`` describes each pinned generation (which policy, which agent pid, when) for the report a restarted
  agent gives. Every file is written atomically (a temporary file, fsync, rename, fsync of the directory):
  a crash leaves the old version or the new one, never half of one.

Both are trusted only when they are the agent's own: a directory (not a symbolic link) owned by the agent's
user and writable by nobody else, and files read without following links, owned by the agent, not
writable by others, within a size cap and of the expected shape. What fails these checks gets a one-line
reason: the state directory itself stops the start (`EnforcementStore.check`: nothing is changed, so what
a previous agent pinned keeps enforcing); a kept policy file is not loaded and its pins are kept
(adopted: failing closed) until ``policy delete`` lifts them; an entry of the pin root that is not a
generation is left alone and reported.

A restarted agent loads its policies again (kept ones, the directory, CRDs) into **new** generations and
removes the old generation of each policy once the new one is active: both enforce for that moment, so the
block never lapses. See `sensorium.policy_manager.PolicyManager` for when, and docs/enforcement.md for what each
mechanism keeps.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sensorium.bpf.probe import BPFFS, ensure_bpffs

__all__ = ["EnforcementStore", "PinnedGeneration", "UntrustedFile", "bpffs_of", "remove_pin_tree", "atomic_write",
           "read_owned", "owned_dir_problem"]

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/sensorium")
DEFAULT_STATE_DIR = Path("/var/lib/sensorium")
_GEN = re.compile(r"^(?P<key>[^@]+)@(?P<gen>[0-9a-f]+)$")
# A kept record holds one policy document (yamlsrc caps policies at 1 MiB; JSON escapes can grow it a few
# times) plus a few fields; a pin description is far smaller. Anything bigger was not written by the agent
# (`keep_policy` refuses to write one).
MAX_RECORD_BYTES = 8 << 20
MAX_META_BYTES = 64 << 10
RECORD_STATES = ("enabled", "disabled")
RECORD_MODES = ("enforcement", "monitoring")


class UntrustedFile(Exception):
    """A file or directory of the state directory or pin root that the agent will not use (the message
    names the path and why, in one line)."""


def owned_dir_problem(path: Path) -> str | None:
    """None when ``path`` is a directory of the agent's own (not a link, owned by this user, writable by
    nobody else); else why not, one line."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        try:
            to = os.readlink(path)
        except OSError:
            to = "?"
        return f"{path} is a symbolic link (to {to}), not a directory of the agent's own"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    return _owner_problem(path, st)


def _owner_problem(path: Path | str, st: os.stat_result) -> str | None:
    uid = os.geteuid()
    if st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by the agent's user (uid {uid})"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def read_owned(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of the agent's own, read without following a symbolic link. Raises
    `UntrustedFile` naming the path and the reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            try:
                to = os.readlink(path)
            except OSError:
                to = "?"
            raise UntrustedFile(f"{path} is a symbolic link (to {to}), not a file the agent wrote") from None
        raise UntrustedFile(f"{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFile(f"{path} is not a regular file")
        problem = _owner_problem(path, st)
        if problem is not None:
            raise UntrustedFile(problem)
        if st.st_size > limit:
            raise UntrustedFile(f"{path} is {st.st_size} bytes, more than the {limit} the agent writes")
        chunks, total = [], 0
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            total += len(b)
            if total > limit:
                raise UntrustedFile(f"{path} is more than the {limit} bytes the agent writes")
            chunks.append(b)
        return b"".join(chunks)
    except OSError as exc:
        raise UntrustedFile(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UntrustedFile(f"{path}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UntrustedFile(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UntrustedFile(f"{path}: not a record the agent wrote (nested too deep)") from None


def parse_record(path: Path, data: bytes) -> dict[str, Any]:
    """A kept-policy record, checked field by field (`UntrustedFile` naming the field otherwise)."""
    rec = _json(path, data)
    if not isinstance(rec, dict):
        raise UntrustedFile(f"{path}: not a kept policy record (a JSON object was expected)")
    if rec.get("version") != 1:
        raise UntrustedFile(f"{path}: field 'version': {rec.get('version')!r} is not 1")
    for field in ("key", "text"):
        if not isinstance(rec.get(field), str) or not rec[field]:
            raise UntrustedFile(f"{path}: field {field!r}: a non-empty string is required")
    if rec.get("file") is not None and not isinstance(rec["file"], str):
        raise UntrustedFile(f"{path}: field 'file': a string or null is required")
    if rec.get("mode") not in RECORD_MODES:
        raise UntrustedFile(f"{path}: field 'mode': {rec.get('mode')!r} is not one of {', '.join(RECORD_MODES)}")
    if rec.get("state") not in RECORD_STATES:
        raise UntrustedFile(f"{path}: field 'state': {rec.get('state')!r} is not one of {', '.join(RECORD_STATES)}")
    if not isinstance(rec.get("time", 0), (int, float)) or isinstance(rec.get("time"), bool):
        raise UntrustedFile(f"{path}: field 'time': a number is required")
    if path.name != f"{_hash(rec['key'])}.json":
        raise UntrustedFile(f"{path}: holds policy {rec['key']!r}, whose record is named {_hash(rec['key'])}.json")
    return rec


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash at any point leaves either the old or the new file."""
    d = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    _fsync_dir(path.parent)


def _under(path: Path, top: Path) -> bool:
    return os.path.abspath(path) == str(top) or os.path.abspath(path).startswith(str(top) + "/")


def bpffs_of(path: Path) -> str | None:
    """The bpffs mount point ``path`` would be under, or None when the deepest mount holding it is another
    filesystem (a pin outside bpffs is refused by the kernel)."""
    best, fstype = "", ""
    target = os.path.abspath(path)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mp = parts[1].replace("\\040", " ")
                if (target == mp or target.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                    best, fstype = mp, parts[2]
    except OSError:
        return None
    return best if fstype == "bpf" else None


def remove_pin_tree(top: Path) -> int:
    """Remove a generation's directory and every pin in it (each removed pin drops the kernel's hold on its
    link or map: an unpinned link nobody else holds detaches). Returns the number of pins removed."""
    n = 0
    if not os.path.lexists(top):
        return 0
    if os.path.islink(top) or not os.path.isdir(top):
        # Never walk through a link: it could lead to another tool's pins. (`generations` lists no such entry.)
        return 0
    for root, dirs, files in os.walk(top, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
                n += 1
            except FileNotFoundError:
                pass
        for name in dirs:
            p = os.path.join(root, name)
            try:
                if os.path.islink(p):  # os.walk lists a link to a directory among dirs, and does not enter it
                    os.unlink(p)
                else:
                    os.rmdir(p)
            except FileNotFoundError:
                pass
    try:
        os.rmdir(top)
    except FileNotFoundError:
        pass
    return n


def _safe(key: str) -> str:
    # Policy keys are Kubernetes names (a-z, 0-9, "-", "."), namespaced ones "ns/name". A file name cannot
    # hold "/", and bpffs refuses any name with a "." (EPERM: the kernel keeps those for itself); "~" and "_"
    # are in no Kubernetes name.
    return key.replace("/", "~").replace(".", "_")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class PinnedGeneration:
    """One policy generation found under the pin root."""

    key: str
    generation: str
    path: Path
    meta: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"policy": self.key, "pin_dir": str(self.path), "pinned_by_pid": self.meta.get("pid"),
                "pinned_at": self.meta.get("time"), "sections": self.meta.get("sections")}


class EnforcementStore:
    """The pin root and the state directory of one agent (see the module docstring)."""

    def __init__(self, pin_root: Path, state_dir: Path, *, refuse_non_persistent: bool = False) -> None:
        self.pin_root = Path(pin_root)
        self.state_dir = Path(state_dir)
        self.refuse_non_persistent = refuse_non_persistent
        self._last_gen = 0
        self.ignored: list[dict[str, str]] = []  # pin root entries `generations` left alone, and why

    # ---- start-up checks -------------------------------------------------------------------------

    def check(self) -> tuple[str, str] | None:
        """None when both places can be used; else (config key, reason) of the first problem. Creates what is
        missing (mode 0700) and changes nothing that exists: a state directory or pin root that is not the
        agent's own is a start error, so what a previous agent pinned stays as it is (and enforcing)."""
        keep = "; nothing was changed: what a previous agent pinned keeps enforcing"
        if bpffs_of(self.pin_root) is None and _under(self.pin_root, Path(BPFFS)):
            try:  # the persistence asked for is the reason to mount it (and to leave it mounted)
                ensure_bpffs()
            except OSError as exc:
                return ("pin_dir", f"cannot mount bpffs on {BPFFS} for {self.pin_root}: {exc.strerror}")
        if bpffs_of(self.pin_root) is None:
            return ("pin_dir", (f"{self.pin_root} is not in a bpffs mount (mount -t bpf bpf /sys/fs/bpf): "
                                "the kernel pins links and maps only there"))
        try:
            self.pin_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            return ("pin_dir", f"cannot create {self.pin_root}: {exc.strerror}")
        problem = owned_dir_problem(self.pin_root)
        if problem is not None:
            return ("pin_dir", problem + keep)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            return ("state_dir", f"cannot create {self.state_dir}: {exc.strerror}")
        for d in (self.state_dir, self.state_dir / "policies", self.state_dir / "pins"):
            if d is not self.state_dir and not os.path.lexists(d):
                try:
                    d.mkdir(mode=0o700)
                except OSError as exc:
                    return ("state_dir", f"cannot create {d}: {exc.strerror}")
            problem = owned_dir_problem(d)
            if problem is not None:
                return ("state_dir", problem + keep)
        try:
            atomic_write(self.state_dir / ".writable", b"ok\n")
            os.unlink(self.state_dir / ".writable")
        except OSError as exc:
            return ("state_dir", f"{self.state_dir} is not writable: {exc.strerror}")
        return None

    # ---- pins ------------------------------------------------------------------------------------

    def new_generation(self, key: str, sections: list[str], origin: str) -> Path:
        """A fresh, empty directory for one generation of ``key``, described in ``pins/``."""
        gen = max(time.time_ns(), self._last_gen + 1)
        self._last_gen = gen
        top = self.pin_root / f"{_safe(key)}@{gen:x}"
        top.mkdir(parents=False, exist_ok=False, mode=0o700)  # `generations` trusts only owner-only directories
        for sec in sections:
            (top / sec).mkdir(mode=0o700)
        meta = {"policy": key, "generation": f"{gen:x}", "pid": os.getpid(), "time": time.time(),
                "sections": sections, "origin": origin}
        atomic_write(self.state_dir / "pins" / f"{top.name}.json", json.dumps(meta).encode())
        return top

    def drop_generation(self, top: Path) -> int:
        """Remove a generation (its pins, its description). Returns the number of pins removed."""
        n = remove_pin_tree(top)
        _remove(self.state_dir / "pins" / f"{top.name}.json")
        return n

    def generations(self) -> list[PinnedGeneration]:
        """Every generation under the pin root, oldest first. Entries that are not one (a link, a file, a
        name of another shape) are left alone and listed in `ignored`."""
        out = []
        self.ignored = []
        try:
            names = sorted(os.listdir(self.pin_root))
        except OSError:
            return []
        for name in names:
            m = _GEN.match(name)
            path = self.pin_root / name
            if m is None:
                self.ignored.append({"path": str(path), "why": "not a policy generation (name)"})
                continue
            problem = owned_dir_problem(path)
            if problem is not None:
                self.ignored.append({"path": str(path), "why": problem})
                continue
            meta: dict[str, Any] = {}
            mf = self.state_dir / "pins" / f"{name}.json"
            try:
                got = _json(mf, read_owned(mf, MAX_META_BYTES))
                if isinstance(got, dict):
                    meta = got
            except UntrustedFile as exc:
                # The description only names the policy and the pid that pinned; the directory's name says
                # the policy too. A missing or bad description changes nothing but the report.
                meta = {"meta_error": str(exc)}
            key = m.group("key").replace("~", "/").replace("_", ".")
            if isinstance(meta.get("policy"), str) and _safe(meta["policy"]) == m.group("key"):
                key = meta["policy"]  # "." and "_" both map to "_": the description has the exact key
            out.append(PinnedGeneration(key, m.group("gen"), path, meta))
        out.sort(key=lambda g: int(g.generation, 16))
        return out

    # ---- kept policies ---------------------------------------------------------------------------

    def _policy_file(self, key: str) -> Path:
        return self.state_dir / "policies" / f"{_hash(key)}.json"

    def keep_policy(self, key: str, text: str, file: str | None, mode: str, state: str) -> None:
        """Record a policy added through the API (its one document, mode, enabled or disabled)."""
        rec = {"version": 1, "key": key, "text": text, "file": file, "mode": mode, "state": state,
               "time": time.time()}
        data = json.dumps(rec, ensure_ascii=False).encode()
        if len(data) > MAX_RECORD_BYTES:  # it would be refused at the next start: say so now
            raise OSError(errno.EFBIG, f"the record would be {len(data)} bytes, more than {MAX_RECORD_BYTES}")
        atomic_write(self._policy_file(key), data)

    def update_policy(self, key: str, **changes: Any) -> None:
        """Change the mode or state of a kept policy (nothing when it is not kept, or not readable)."""
        f = self._policy_file(key)
        try:
            rec = parse_record(f, read_owned(f, MAX_RECORD_BYTES))
        except UntrustedFile:
            if not os.path.lexists(f):
                return
            raise
        rec.update(changes)
        atomic_write(f, json.dumps(rec, ensure_ascii=False).encode())

    def forget_policy(self, key: str) -> None:
        _remove(self._policy_file(key))

    def is_kept(self, key: str) -> bool:
        """A record for ``key`` is there, readable or not (an unreadable one keeps its pins: fail closed)."""
        return os.path.lexists(self._policy_file(key))

    def kept_policies(self) -> Iterator[tuple[Path, dict[str, Any] | None, str | None]]:
        """(file, record or None, why not usable) of every kept policy, oldest first."""
        d = self.state_dir / "policies"
        try:
            files = sorted(p for p in d.iterdir() if not p.name.startswith("."))
        except OSError:
            return
        recs: list[tuple[float, Path, dict[str, Any] | None, str | None]] = []
        for f in files:
            if f.suffix != ".json":
                recs.append((0.0, f, None, f"{f}: not a kept policy record (the agent writes only *.json here)"))
                continue
            try:
                rec = parse_record(f, read_owned(f, MAX_RECORD_BYTES))
                recs.append((float(rec.get("time") or 0), f, rec, None))
            except UntrustedFile as exc:
                recs.append((0.0, f, None, str(exc)))
        for _t, f, kept, why in sorted(recs, key=lambda r: r[0]):
            yield f, kept, why

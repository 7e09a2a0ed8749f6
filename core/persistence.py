"""Persistent enforcement (agent config ``enforcement.persist``): where pins and kept policies live on disk.

Two places, both owned by one agent:

* the **pin root** in bpffs (default ``/sys/fs/bpf/sensorium``): one directory per policy generation,
  ``<key>@<generation>/<section>/...`` (no ``.`` in any name: bpffs refuses it), holding the links and maps that the sensors pinned for the policy's
  enforcing hooks (`sensorium.hookspecs.PolicyView.pin_dir`). A pinned link stays attached while its pin
  exists, whatever happens to the agent; removing the files lifts the block.
* the **state directory** (default ``/var/lib/sensorium``): ``policies/`` keeps every policy added through the
  API (its document, mode, enabled or not) so that a restarted agent loads it again before it says ready;
  ``pins/`` describes each pinned generation (which policy, which agent pid, when) for the report a restarted
  agent gives. Every file is written atomically (a temporary file, fsync, rename, fsync of the directory):
  a crash leaves the old version or the new one, never half of one.

A restarted agent loads its policies again (kept ones, the directory, CRDs) into **new** generations and
removes the old generation of each policy once the new one is active: both enforce for that moment, so the
block never lapses (Tetragon's persistent enforcement replaces its pinned state the same way). See
`sensorium.policy_manager.PolicyManager` for when, and docs/enforcement.md for what each mechanism keeps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["EnforcementStore", "PinnedGeneration", "bpffs_of", "remove_pin_tree", "atomic_write"]

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/sensorium")
DEFAULT_STATE_DIR = Path("/var/lib/sensorium")
_GEN = re.compile(r"^(?P<key>[^@]+)@(?P<gen>[0-9a-f]+)$")


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
    if not top.exists():
        return 0
    for root, dirs, files in os.walk(top, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
                n += 1
            except FileNotFoundError:
                pass
        for name in dirs:
            try:
                os.rmdir(os.path.join(root, name))
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

    # ---- start-up checks -------------------------------------------------------------------------

    def check(self) -> tuple[str, str] | None:
        """None when both places can be used; else (config key, reason) of the first problem."""
        if bpffs_of(self.pin_root) is None:
            return ("pin_dir", f"{self.pin_root} is not in a bpffs mount (mount -t bpf bpf /sys/fs/bpf): the kernel "
                               "pins links and maps only there")
        try:
            self.pin_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return ("pin_dir", f"cannot create {self.pin_root}: {exc.strerror}")
        for sub in ("policies", "pins"):
            d = self.state_dir / sub
            try:
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                return ("state_dir", f"cannot create {d}: {exc.strerror}")
            if not d.is_dir():
                return ("state_dir", f"{d} is not a directory")
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
        top.mkdir(parents=False, exist_ok=False)
        for sec in sections:
            (top / sec).mkdir()
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
        """Every generation under the pin root, oldest first."""
        out = []
        try:
            names = sorted(os.listdir(self.pin_root))
        except OSError:
            return []
        for name in names:
            m = _GEN.match(name)
            if m is None or not (self.pin_root / name).is_dir():
                continue
            meta: dict[str, Any] = {}
            try:
                meta = json.loads((self.state_dir / "pins" / f"{name}.json").read_bytes())
            except (OSError, ValueError):
                pass
            key = meta.get("policy") or m.group("key").replace("~", "/").replace("_", ".")
            out.append(PinnedGeneration(key, m.group("gen"), self.pin_root / name, meta))
        out.sort(key=lambda g: int(g.generation, 16))
        return out

    # ---- kept policies ---------------------------------------------------------------------------

    def _policy_file(self, key: str) -> Path:
        return self.state_dir / "policies" / f"{_hash(key)}.json"

    def keep_policy(self, key: str, text: str, file: str | None, mode: str, state: str) -> None:
        """Record a policy added through the API (its one document, mode, enabled or disabled)."""
        rec = {"version": 1, "key": key, "text": text, "file": file, "mode": mode, "state": state,
               "time": time.time()}
        atomic_write(self._policy_file(key), json.dumps(rec).encode())

    def update_policy(self, key: str, **changes: Any) -> None:
        """Change the mode or state of a kept policy (nothing when it is not kept)."""
        f = self._policy_file(key)
        try:
            rec = json.loads(f.read_bytes())
        except (OSError, ValueError):
            return
        rec.update(changes)
        atomic_write(f, json.dumps(rec).encode())

    def forget_policy(self, key: str) -> None:
        _remove(self._policy_file(key))

    def is_kept(self, key: str) -> bool:
        return self._policy_file(key).exists()

    def kept_policies(self) -> Iterator[tuple[Path, dict[str, Any] | None, str | None]]:
        """(file, record or None, why not readable) of every kept policy, oldest first."""
        d = self.state_dir / "policies"
        try:
            files = sorted(d.glob("*.json"))
        except OSError:
            return
        recs = []
        for f in files:
            try:
                rec = json.loads(f.read_bytes())
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or not isinstance(rec.get("key"), str):
                    raise ValueError("not a kept policy record")
                recs.append((float(rec.get("time") or 0), f, rec, None))
            except (OSError, ValueError) as exc:
                recs.append((0.0, f, None, str(exc)))
        for _t, f, rec, why in sorted(recs, key=lambda r: r[0]):
            yield f, rec, why

"""Small native helpers of our own (C sources in this repository), compiled with the system C compiler on
first use into the build cache and loaded with ctypes.

``$SENSORIUM_CC`` (else ``cc``) compiles ``<source>`` to ``<cache>/native/<hash>/<name>.so``, the hash
covering the source, the compiler's version and the flags; written atomically (tmp file + rename) like
the BPF objects (`sensorium.bpf.build`), so several processes may build at once. Callers fall back to
their Python path when `build_shared` raises, and say so in their status.
``SENSORIUM_NATIVE_DECODE=0`` tells them to use the Python path (`native_enabled`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["build_shared", "native_enabled", "RINGDRAIN_SOURCE"]

RINGDRAIN_SOURCE = Path(__file__).resolve().parent / "ringdrain.c"
_FLAGS = ("-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-std=gnu11")


def native_enabled() -> bool:
    """False when ``SENSORIUM_NATIVE_DECODE`` is 0/false/no/off (forced Python paths)."""
    return os.environ.get("SENSORIUM_NATIVE_DECODE", "1").strip().lower() not in ("0", "false", "no", "off")


def build_shared(source: Path, name: str) -> Path:
    """Compile ``source`` to a shared library (cached); RuntimeError naming what is missing or failed."""
    from sensorium.bpf.build import cache_dir

    cc = os.environ.get("SENSORIUM_CC") or "cc"
    cc_path = shutil.which(cc)
    if cc_path is None:
        raise RuntimeError(f"no C compiler ({cc!r} not on PATH)")
    ver = subprocess.run([cc_path, "--version"], capture_output=True, text=True, timeout=30).stdout
    src = source.read_bytes()
    digest = hashlib.sha256(b"\0".join([src, ver.encode(), " ".join(_FLAGS).encode()])).hexdigest()[:32]
    root = cache_dir()
    out = root / "native" / digest / f"{name}.so"
    if out.exists():
        _check_trusted(out, root)
        return out
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _check_trusted(out.parent, root)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{name}.", suffix=".so")
    os.close(fd)
    try:
        r = subprocess.run([cc_path, *_FLAGS, "-o", tmp, str(source)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed on {source.name}: {r.stderr.strip()[:500]}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _check_trusted(path: Path, root: Path) -> None:
    """The agent loads this library into a root process: refuse one that someone else could have written
    (``path`` and every directory from it up to the cache root must be ours and not group/other-writable)."""
    me = os.geteuid()
    p = path
    while True:
        st = os.lstat(p)
        if st.st_uid != me or st.st_mode & 0o022:
            raise RuntimeError(f"refusing {path}: {p} is owned by uid {st.st_uid} or writable by others "
                               f"(mode {st.st_mode & 0o777:o})")
        if p == root or p == p.parent:
            return
        p = p.parent

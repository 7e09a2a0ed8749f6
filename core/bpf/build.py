"""Compile a sensor's eBPF C program to a CO-RE object, with a content-addressed cache.

``vmlinux.h`` is generated from the kernel's BTF with bpftool and cached by the BTF's hash; objects are
compiled with clang and cached by the hash of everything that can change the output (sources, headers,
defines, flags, clang version, vmlinux.h). Both are written atomically (tmp file + rename), so several
processes may build at once. Without clang, a probe's ``prebuilt`` object is used when it ships one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from sensorium.hookspecs import ProbeSource

__all__ = ["BuildError", "INCLUDE_DIR", "cache_dir", "btf_path", "vmlinux_h", "build_object", "clang_path"]

INCLUDE_DIR: Path = Path(__file__).resolve().parent / "include"

# Bumped when the way objects are built changes in a way the key below does not see.
_CACHE_VERSION = "1"

_ARCH = {"x86_64": "x86", "aarch64": "arm64", "arm64": "arm64", "s390x": "s390", "ppc64le": "powerpc",
         "riscv64": "riscv"}

# -mcpu=v3: 32-bit sub-registers and jmp32 (kernels >= 5.1), shorter code and fewer verifier states.
_CFLAGS = ("-g", "-O2", "-target", "bpf", "-mcpu=v3", "-Wall", "-Wno-unused-function",
           "-Wno-compare-distinct-pointer-types", "-Wno-address-of-packed-member")

_SOURCE_SUFFIXES = {".c", ".h"}


class BuildError(RuntimeError):
    """A probe could not be built: names the missing tool or file, or carries clang's stderr."""


def cache_dir() -> Path:
    """$SENSORIUM_CACHE_DIR, else /var/cache/sensorium when root, else ~/.cache/sensorium (created)."""
    env = os.environ.get("SENSORIUM_CACHE_DIR")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/var/cache/sensorium")
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sensorium"
    path.mkdir(parents=True, exist_ok=True)
    return path


def btf_path() -> Path:
    """The kernel BTF to build against: $SENSORIUM_BTF or /sys/kernel/btf/vmlinux."""
    return Path(os.environ.get("SENSORIUM_BTF") or "/sys/kernel/btf/vmlinux")


def clang_path() -> str | None:
    """The clang to use: $SENSORIUM_CLANG, else `clang` on PATH; None when there is none."""
    env = os.environ.get("SENSORIUM_CLANG")
    if env:
        return env if shutil.which(env) else None
    return shutil.which("clang")


# path -> ((device, inode, size, mtime_ns), digest): every policy hook asks for its object, and hashing the
# kernel's BTF (several MB) and every header again each time was most of a cached build (seconds under
# emulation). A file that changes gets a new mtime or size, hence a new key.
_digests: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_digests_lock = threading.Lock()


def _sha256_file(path: Path) -> str:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _digests_lock:
        hit = _digests.get(str(path))
    if hit is not None and hit[0] == key:
        return hit[1]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _digests_lock:
        _digests[str(path)] = (key, digest)
    return digest


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def vmlinux_h(btf: Path | None = None) -> Path:
    """Return the path of ``vmlinux.h`` for ``btf`` (default `btf_path()`), generating it once per BTF hash.

    The file sits alone in its own directory (``<cache>/vmlinux/<hash>/vmlinux.h``) so that directory can
    be passed to clang with ``-I``.
    """
    btf = Path(btf) if btf is not None else btf_path()
    if not btf.is_file():
        raise BuildError(f"BTF file not found: {btf} (kernel built without CONFIG_DEBUG_INFO_BTF? "
                         f"set SENSORIUM_BTF to a BTF file)")
    try:
        digest = _sha256_file(btf)
    except OSError as e:
        raise BuildError(f"cannot read BTF file {btf}: {e}") from e
    out = cache_dir() / "vmlinux" / digest[:32] / "vmlinux.h"
    if out.is_file():
        return out
    bpftool = shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.access(p, os.X_OK)), None)
    if bpftool is None:
        raise BuildError("bpftool not found: install bpftool (apt-get install bpftool)")
    proc = subprocess.run([bpftool, "btf", "dump", "file", str(btf), "format", "c"],
                          capture_output=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        raise BuildError(f"bpftool btf dump file {btf} format c failed (exit {proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    _atomic_write(out, proc.stdout)
    return out


def _source_files(dirs: Iterable[Path]) -> list[tuple[str, Path]]:
    """All .c/.h files under ``dirs`` (recursively), with a stable label, deduplicated (the same file reached
    twice, e.g. through a symlink, counts once). One directory scan and one stat per file: this runs for every
    object a policy asks for, and path resolution component by component was most of its cost."""
    seen: set[tuple[int, int]] = set()
    files: list[tuple[str, Path]] = []
    for i, d in enumerate(dirs):
        if not d.is_dir():
            continue
        found: list[tuple[str, str]] = []
        for root, subdirs, names in os.walk(d, followlinks=True):
            subdirs.sort()
            for n in names:
                if os.path.splitext(n)[1] in _SOURCE_SUFFIXES:
                    full = os.path.join(root, n)
                    found.append((os.path.relpath(full, d).replace(os.sep, "/"), full))
        for label, full in sorted(found):
            try:
                st = os.stat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            files.append((f"{i}:{label}", Path(full)))
    return files


@functools.lru_cache(maxsize=8)
def _clang_version(clang: str) -> str:
    """``clang --version`` (part of every object's cache key), remembered in the cache directory per clang
    binary (path, size, mtime): a cold start of clang costs 30 s and more in the VM lane's emulated guests,
    where the objects themselves are prebuilt on the host."""
    try:
        real = os.path.realpath(clang)
        st = os.stat(real)
        key = hashlib.sha256(f"{real}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    except OSError as e:
        raise BuildError(f"cannot run clang ({clang}): {e}") from e
    memo = cache_dir() / "clang-version" / key
    try:
        return memo.read_text()
    except (OSError, UnicodeDecodeError):
        pass
    try:
        proc = subprocess.run([clang, "--version"], capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise BuildError(f"clang ({clang}) did not answer --version within 300 s") from None
    except OSError as e:
        raise BuildError(f"cannot run clang ({clang}): {e}") from e
    out = proc.stdout.decode(errors="replace")
    if proc.returncode == 0 and out:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(out)
            tmp.replace(memo)
        except OSError:
            pass  # a read-only cache: ask clang again next time
    return out


def build_object(probe: ProbeSource, btf: Path | None = None, host_include: Path | None = None) -> Path:
    """Compile ``probe`` to a BPF object (cached) and return its path.

    ``host_include`` replaces the host's header directory (`INCLUDE_DIR`): a benchmark builds an earlier
    version of the engine's headers beside the current one, in one run.

    Without clang, returns ``probe.prebuilt`` when it exists, else raises `BuildError` naming clang.
    A compile error raises `BuildError` carrying clang's stderr.
    """
    source = Path(probe.source)
    clang = clang_path()
    if clang is None:
        if probe.prebuilt is not None and Path(probe.prebuilt).is_file():
            return Path(probe.prebuilt)
        raise BuildError(f"clang not found: install clang (apt-get install clang) "
                         f"to build probe {probe.name!r} ({source})")
    if not source.is_file():
        raise BuildError(f"probe {probe.name!r}: source file not found: {source}")
    for key in probe.defines:
        # A define becomes one argv element; still refuse what could not be a C macro name.
        if not key or not (key[0].isalpha() or key[0] == "_") or not all(c.isalnum() or c == "_" for c in key):
            raise BuildError(f"probe {probe.name!r}: invalid define name {key!r}")
    header = vmlinux_h(btf)
    arch = _ARCH.get(platform.machine(), platform.machine())
    include_dirs = [Path(d) for d in probe.include_dirs]
    cmd_flags = [*_CFLAGS, f"-D__TARGET_ARCH_{arch}",
                 *(f"-D{k}={v}" if v != "" else f"-D{k}" for k, v in sorted(probe.defines.items()))]
    # Order matters: vmlinux.h first, then the host's headers, then the probe's own.
    host_inc = Path(host_include) if host_include is not None else INCLUDE_DIR
    incs = [header.parent, host_inc, source.parent, *include_dirs]

    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}\0{source.name}\0".encode())
    h.update("\0".join(cmd_flags).encode() + b"\0")
    h.update(_clang_version(clang).encode() + b"\0")
    h.update(header.parent.name.encode() + b"\0")  # the BTF hash names vmlinux.h's directory
    for label, path in _source_files([source.parent, host_inc, *include_dirs]):
        h.update(label.encode() + b"\0" + _sha256_file(path).encode() + b"\0")
    digest = h.hexdigest()[:32]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in probe.name) or "probe"
    # The file name becomes libbpf's object name (the part before the first dot): keep it the probe's.
    out = cache_dir() / "objects" / digest / f"{safe_name}.o"
    if out.is_file():
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        cmd = [clang, *cmd_flags, *(f"-I{d}" for d in incs), "-c", str(source), "-o", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=300)
        except OSError as e:
            raise BuildError(f"cannot run clang ({clang}): {e}") from e
        if proc.returncode != 0:
            raise BuildError(f"clang failed to compile probe {probe.name!r} ({source}):\n"
                             f"{proc.stderr.decode(errors='replace').strip()}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out

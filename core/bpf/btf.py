"""Kernel functions and LSM hooks from the kernel's BTF: name and typed parameters of every function
(`kernel_functions`, the kprobe sensor's check of ``call``) and of every ``bpf_lsm_<hook>`` (`lsm_hooks`).

The kernel declares one ``bpf_lsm_<hook>`` function per LSM hook (CONFIG_BPF_LSM), whatever the boot
``lsm=`` list says; its BTF prototype is the hook's signature. Policies are checked against it (the hook
exists, the argument index is in range, the declared type fits the C type) before anything is loaded,
on every kernel, including this host where BPF LSM programs themselves are refused.

A small reader of the BTF binary format (include/uapi/linux/btf.h): only FUNC -> FUNC_PROTO -> param
types are resolved. Parsed once per process per BTF file (about 0.3 s for a 120k-type vmlinux).
"""

from __future__ import annotations

import dataclasses
import struct
import threading
from pathlib import Path

__all__ = ["LsmParam", "LsmHookSig", "lsm_hooks", "kernel_functions", "DEFAULT_BTF"]

DEFAULT_BTF = Path("/sys/kernel/btf/vmlinux")

# BTF kinds
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)


@dataclasses.dataclass(frozen=True)
class LsmParam:
    """One hook parameter: its C name and type spelled like C (``struct file *``, ``int``, ``unsigned long``)."""

    name: str
    ctype: str

    @property
    def is_int(self) -> bool:
        return "*" not in self.ctype and not self.ctype.startswith(("struct ", "union "))


@dataclasses.dataclass(frozen=True)
class LsmHookSig:
    name: str
    params: tuple[LsmParam, ...]
    ret: str = "int"  # the C return type (kernel_functions; LSM hooks return int)

    def c_signature(self) -> str:
        return f"{self.name}(" + ", ".join(f"{p.ctype} {p.name}".replace("* ", "*") for p in self.params) + ")"


_cache: dict[tuple[str, str], dict[str, LsmHookSig]] = {}
_lock = threading.Lock()


def lsm_hooks(btf: Path | str | None = None) -> dict[str, LsmHookSig]:
    """``{hook name: signature}`` for every ``bpf_lsm_<hook>`` in ``btf`` (default: the running kernel's).

    Raises OSError when the BTF file cannot be read, ValueError when it is not BTF.
    """
    return _functions(btf, "bpf_lsm_")


def kernel_functions(btf: Path | str | None = None) -> dict[str, LsmHookSig]:
    """``{function name: signature}`` for every kernel function (BTF FUNC) in ``btf`` (the kprobe sensor's
    check of ``call`` and its argument types)."""
    return _functions(btf, "")


def _functions(btf: Path | str | None, prefix: str) -> dict[str, LsmHookSig]:
    if btf is None:
        try:
            from sensorium.bpf.build import btf_path  # honours $SENSORIUM_BTF (the VM lane sets it)

            btf = btf_path()
        except ImportError:
            btf = DEFAULT_BTF
    path = str(btf)
    with _lock:
        if (path, prefix) not in _cache:
            _cache[(path, prefix)] = _parse(Path(path).read_bytes(), prefix)
        return _cache[(path, prefix)]


def _parse(data: bytes, prefix: str = "bpf_lsm_") -> dict[str, LsmHookSig]:
    if len(data) < 24:
        raise ValueError("BTF file too short")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != 0xEB9F:
        raise ValueError(f"not a BTF file (magic {magic:#x})")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    base = hdr_len
    strings = data[base + str_off: base + str_off + str_len]

    def name(off: int) -> str:
        end = strings.find(b"\0", off)
        return strings[off:end].decode(errors="replace")

    # Pass 1: record every type's (kind, name_off, size_or_type, vlen, offset of its trailing data).
    types: list[tuple[int, int, int, int, int]] = [(0, 0, 0, 0, 0)]  # id 0 is void
    pos, end = base + type_off, base + type_off + type_len
    unpack = struct.Struct("<III").unpack_from
    while pos < end:
        name_off, info, st = unpack(data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        pos += 12
        types.append((kind, name_off, st, vlen, pos))
        if kind == _INT or kind == _VAR or kind == _DECL_TAG:
            pos += 4
        elif kind == _ARRAY:
            pos += 12
        elif kind in (_STRUCT, _UNION, _DATASEC, _ENUM64):
            pos += 12 * vlen
        elif kind in (_ENUM, _FUNC_PROTO):
            pos += 8 * vlen

    def spell(tid: int, depth: int = 0, pointed: bool = False) -> str:
        if tid == 0:
            return "void"
        if depth > 16 or tid >= len(types):
            return "?"
        kind, noff, st, _vlen, _p = types[tid]
        if kind == _PTR:
            return spell(st, depth + 1, True) + " *"
        if kind in (_CONST, _VOLATILE, _RESTRICT, _TYPE_TAG):
            return spell(st, depth + 1, pointed)
        if kind == _TYPEDEF:
            # Keep the typedef name for integers (size_t, umode_t...) but see through to named structs. A
            # pointer to an anonymous struct is known by the typedef's name alone (kernel_cap_t * since 6.3);
            # such a struct passed by value (bpfptr_t) keeps the bare "struct " that no type reads.
            inner = spell(st, depth + 1, pointed)
            if inner in ("struct ", "union "):
                return name(noff) if pointed else inner
            return inner if inner.startswith(("struct ", "union ")) else name(noff)
        if kind in (_STRUCT, _FWD):
            return f"struct {name(noff)}"
        if kind == _UNION:
            return f"union {name(noff)}"
        if kind in (_ENUM, _ENUM64):
            return f"enum {name(noff)}"
        if kind == _FUNC_PROTO:
            return "func"
        return name(noff) or "?"

    hooks: dict[str, LsmHookSig] = {}
    for kind, noff, st, _vlen, _p in types:
        if kind != _FUNC:
            continue
        fname = name(noff)
        if not fname.startswith(prefix):
            continue
        pkind, _pn, pst, pvlen, ppos = types[st]
        if pkind != _FUNC_PROTO:
            continue
        params = []
        for i in range(pvlen):
            pname_off, ptype = struct.unpack_from("<II", data, ppos + 8 * i)
            params.append(LsmParam(name(pname_off) or f"arg{i}", spell(ptype)))
        hook = fname[len(prefix):]
        hooks[hook] = LsmHookSig(hook, tuple(params), spell(pst))
    return hooks

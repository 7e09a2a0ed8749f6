"""Tracepoint formats from tracefs (``events/<subsys>/<event>/format``) and how to read each field.

Tetragon numbers a tracepoint's arguments by their position in the format, common fields included
(raw_syscalls/sys_enter: 4 = ``id``, 5 = ``args``). `arg_plan` turns one policy argument into an
`ArgPlan`: where the kernel reads it (record offset), how (integer, user or kernel string,
``__data_loc``, inline char array, user buffer, fd -> file path) and its JSON key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from sensorium.hooks import selectors as S
from sensorium.hooks.plan import INT_KEYS, ArgPlanError, int_plan
from sensorium.policy import ArgSpec

__all__ = ["Field", "TracepointNotFound", "tracefs_root", "read_format", "raw_tracepoint_exists", "arg_plan",
           "ArgPlanError"]

_FIELD = re.compile(r"^\s*field:(?P<decl>.+?);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")

# Field names of syscall tracepoints that are paths the kernel looks up, with their dirfd field.
PATH_FIELDS = {"filename": "dfd", "pathname": "dfd", "oldname": "olddfd", "newname": "newdfd", "path": "dfd",
               "dir_name": "dfd", "name": None, "dev_name": None}


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    ctype: str      # e.g. "const char *", "int", "__data_loc char[]", "char[16]", "unsigned long[6]"
    offset: int
    size: int
    signed: bool

    @property
    def is_pointer(self) -> bool:
        return self.ctype.rstrip().endswith("*")

    @property
    def is_char_pointer(self) -> bool:
        return self.is_pointer and re.search(r"\bchar\s*\*$", self.ctype) is not None

    @property
    def is_data_loc_str(self) -> bool:
        return self.ctype.startswith("__data_loc") and "char" in self.ctype

    @property
    def is_char_array(self) -> bool:
        return re.fullmatch(r"(const\s+)?(unsigned\s+)?char\[\d+\]", self.ctype.replace(" [", "[")) is not None


class TracepointNotFound(LookupError):
    pass


def tracefs_root() -> Path:
    for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(p, "events")):
            return Path(p)
    try:  # mount it if we can (root); the bpf layer knows how
        from sensorium.bpf.probe import ensure_mounts

        ensure_mounts()
    except Exception:  # noqa: BLE001 - mounting is only an attempt; the caller reports a missing tracefs
        pass
    return Path("/sys/kernel/tracing")


def read_format(subsys: str, event: str, root: Path | None = None) -> list[Field]:
    """The fields of ``subsys/event`` in order, common fields included."""
    if not _NAME.fullmatch(subsys) or not _NAME.fullmatch(event):
        raise TracepointNotFound(f"{subsys}/{event} is not a tracepoint name")
    root = root or tracefs_root()
    path = root / "events" / subsys / event / "format"
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not (root / "events").is_dir():
            raise TracepointNotFound(f"tracefs is not mounted at {root}") from None
        raise TracepointNotFound(f"tracepoint {subsys}/{event} does not exist (no {path})") from None
    fields = []
    for line in text.splitlines():
        m = _FIELD.match(line)
        if not m:
            continue
        decl = m.group("decl").strip()
        # "type name" or "type name[N]" -> ctype "type" / "type[N]"
        am = re.match(r"^(?P<t>.*?)(?P<n>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<arr>\[[^\]]*\])?$", decl)
        if not am:
            continue
        ctype = am.group("t").strip() + (am.group("arr") or "")
        fields.append(Field(am.group("n"), ctype, int(m.group("off")), int(m.group("size")), m.group("signed") == "1"))
    return fields


def raw_tracepoint_exists(event: str, root: Path | None = None) -> bool:
    """Whether a raw tracepoint named ``event`` exists (any subsystem has it, or BTF has btf_trace_<event>)."""
    root = root or tracefs_root()
    try:
        for sub in os.listdir(root / "events"):
            if os.path.isdir(root / "events" / sub / event):
                return True
    except OSError:
        pass
    return False


def arg_plan(fields: list[Field], subsys: str, arg: ArgSpec, field_path: str,
             positions: dict[int, int]) -> S.ArgPlan:
    """The plan of one ``args[]`` item of a (non-raw) tracepoint. ``positions`` maps format index ->
    position in the args list (for sizeArgIndex)."""
    idx = arg.index
    typ = getattr(arg, "type", "auto") or "auto"
    label = getattr(arg, "label", None)
    if idx >= len(fields):
        raise ArgPlanError(f"{field_path}.index", f"index {idx} is past the tracepoint's {len(fields)} fields "
                                                  f"({', '.join(f'{i}:{f.name}' for i, f in enumerate(fields))})")
    f = fields[idx]
    user = subsys == "syscalls"  # syscall tracepoints carry user-space pointers
    if typ == "auto":
        if f.is_data_loc_str or f.is_char_array or (f.is_char_pointer):
            typ = "string"
        elif f.size in (1, 2, 4, 8) and "[" not in f.ctype:
            typ = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}[f.size] if f.signed else \
                {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}[f.size]
        else:
            raise ArgPlanError(f"{field_path}.type", f"field {f.name} ({f.ctype}) has no automatic type; give one")
    if typ in INT_KEYS or typ == "syscall64":
        if "[" in f.ctype or f.size not in (1, 2, 4, 8):
            raise ArgPlanError(f"{field_path}.type", f"field {f.name} ({f.ctype}, {f.size} bytes) is not an integer")
        if typ == "syscall64":
            return S.ArgPlan(kind=S.ARG_INT, from_=S.FROM_CTX, offset=f.offset, json_key="syscall_id", size=8,
                             signed=False, label=label, type_name=typ)
        return int_plan(typ, S.FROM_CTX, f.offset, label, f.size)
    if typ in ("string", "filename"):
        if f.is_data_loc_str:
            return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_CTX, offset=f.offset, deref=S.DEREF_DATALOC,
                             json_key="string_arg", label=label, type_name=typ)
        if f.is_char_array:
            n = int(re.search(r"\[(\d+)\]", f.ctype).group(1))  # type: ignore[union-attr]
            return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_CTX, offset=f.offset, deref=S.DEREF_INLINE,
                             max=min(n, S.STR_MAX), json_key="string_arg", label=label, type_name=typ)
        if f.is_pointer and f.size == 8:
            resolve, dirfd = False, None
            if user and f.name in PATH_FIELDS:
                resolve = True
                dname = PATH_FIELDS[f.name]
                for g in fields:
                    if g.name == dname and g.size == 8:
                        dirfd = g.offset
            return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_CTX, offset=f.offset,
                             deref=S.DEREF_USER_STR if user else S.DEREF_KERNEL_STR, json_key="string_arg",
                             resolve=resolve, dirfd_offset=dirfd, label=label, type_name=typ)
        raise ArgPlanError(f"{field_path}.type", f"field {f.name} ({f.ctype}) is not a string")
    if typ == "char_buf":
        if not (f.is_pointer and f.size == 8):
            raise ArgPlanError(f"{field_path}.type", f"field {f.name} ({f.ctype}) is not a pointer to a buffer")
        if not user:
            raise ArgPlanError(f"{field_path}.type", "char_buf is read from user memory: only syscalls tracepoints")
        sai = getattr(arg, "sizeArgIndex", None)
        size_pos = None
        if sai is not None:
            if sai - 1 not in positions:
                raise ArgPlanError(f"{field_path}.sizeArgIndex",
                                   f"sizeArgIndex {sai} (field {sai - 1}) must also be declared in args")
            size_pos = positions[sai - 1]
        return S.ArgPlan(kind=S.ARG_BUF, from_=S.FROM_CTX, offset=f.offset, deref=S.DEREF_USER_BUF,
                         json_key="bytes_arg", size_arg=size_pos, label=label, type_name=typ)
    if typ == "fd":
        if f.size not in (4, 8) or f.is_pointer:
            raise ArgPlanError(f"{field_path}.type", f"field {f.name} ({f.ctype}) is not a file descriptor")
        return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_CTX, offset=f.offset, deref=S.DEREF_FD_PATH, size=f.size,
                         json_key="file_arg", label=label, type_name=typ)
    raise ArgPlanError(f"{field_path}.type", f"type {typ} cannot be read from a tracepoint field "
                                             f"(supported: integers, string, char_buf, fd, syscall64)")


def raw_arg_plan(arg: ArgSpec, field_path: str) -> S.ArgPlan:
    """A raw tracepoint's argument: ``args[index]`` of its TP_PROTO, as an integer, a kernel string
    pointer, or a ``linux_binprm`` (reported with its file's path)."""
    idx = arg.index
    typ = getattr(arg, "type", "auto") or "auto"
    label = getattr(arg, "label", None)
    if idx > 7:
        raise ArgPlanError(f"{field_path}.index", f"raw tracepoint argument index {idx} is past 7")
    if typ == "auto":
        typ = "uint64"
    if typ in INT_KEYS:
        return int_plan(typ, S.FROM_RAW, idx, label)
    if typ == "syscall64":
        return S.ArgPlan(kind=S.ARG_INT, from_=S.FROM_RAW, offset=idx, json_key="syscall_id", label=label,
                         type_name=typ)
    if typ == "string":
        return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_RAW, offset=idx, deref=S.DEREF_KERNEL_STR,
                         json_key="string_arg", label=label, type_name=typ)
    if typ == "linux_binprm":
        return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_RAW, offset=idx, deref=S.DEREF_BINPRM,
                         json_key="linux_binprm_arg", label=label, type_name=typ)
    raise ArgPlanError(f"{field_path}.type", f"type {typ} is not supported for raw tracepoints "
                                             f"(supported: integers, string, syscall64, linux_binprm)")

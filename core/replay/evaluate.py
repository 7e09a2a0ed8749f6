"""The kernel's selector semantics in user space, over recorded events.

Mirrors the shared hook engine (core/bpf/include/sensorium/hook/match.h and run.h): a hook's selectors are
tried in order and the first that matches decides the actions; the filters inside one selector are ANDed;
strings are compared on at most 255 bytes (the captured string, its NUL not counted) with Equal needing the
same length, Prefix/Postfix a string at least as long as the value; integers are compared as the kernel's
64-bit value (a signed argument sign-extended) with GT/LT signed or not as the argument's type; the
"Not" operators mean "none of the values". Every filter answers True, False, or `Undecided` with the
reason when the event does not carry what the kernel read (a field the recording lacks, an argument it
did not capture): a selector is False as soon as one filter is False, and undecided only otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sensorium.policy import HookSpec
from sensorium.policy_values import (
    ADDR_OPERATORS,
    PORT_OPERATORS,
    PRIV_PORT_OPERATORS,
    SOCK_FAMILIES,
    SOCK_PROTOCOLS,
    sock_value,
)
from sensorium.syscalls_x86_64 import SYSCALLS_X86_64

# The sections' models live with their sensors (sensors/<name>/schema.py) and core imports no plugin: an
# item is known by the section its model serves (`HookSpec.SECTION`).
KPROBES, TRACEPOINTS, UPROBES, LSMHOOKS = "kprobes", "tracepoints", "uprobes", "lsmhooks"


def _is(item: Any, *sections: str) -> bool:
    return isinstance(item, HookSpec) and item.SECTION in sections

STR_MAX = 255          # bytes of a string the kernel compares (SENS_STR_MAX - 1)
MASK64 = (1 << 64) - 1

# type -> (bytes, signed): what the kernel reads for an integer argument (sensors/tracepoint/tracefs.py)
INT_TYPES: dict[str, tuple[int, bool]] = {
    "int": (4, True), "int8": (1, True), "int16": (2, True), "int32": (4, True), "s8": (1, True),
    "s16": (2, True), "s32": (4, True), "uint8": (1, False), "uint16": (2, False), "uint32": (4, False),
    "u8": (1, False), "u16": (2, False), "u32": (4, False), "uint": (4, False), "int64": (8, True),
    "s64": (8, True), "long": (8, True), "uint64": (8, False), "u64": (8, False), "ulong": (8, False),
    "size_t": (8, False), "syscall64": (8, False),
}
# the JSON key of a recorded integer -> (bytes the recording kept at most, signed)
INT_KEYS = {"int_arg": (4, True), "uint_arg": (4, False), "long_arg": (8, True), "size_arg": (8, False)}
STRING_KEYS = {"string_arg"}
PATH_KEYS = {"file_arg", "path_arg", "linux_binprm_arg"}
BYTES_KEYS = {"bytes_arg", "truncated_bytes_arg"}
SOCK_KEYS = {"sock_arg", "sockaddr_arg", "skb_arg"}
# candidate type -> the recorded JSON keys that carry what the kernel would read for it
TYPE_KEYS: dict[str, set[str]] = {
    "string": STRING_KEYS, "filename": STRING_KEYS, "fd": {"file_arg"}, "file": {"file_arg"},
    "path": {"path_arg", "file_arg"}, "dentry": {"path_arg"}, "linux_binprm": {"linux_binprm_arg"},
    "char_buf": BYTES_KEYS, "sock": {"sock_arg"}, "sockaddr": {"sockaddr_arg"}, "skb": {"skb_arg"},
    "net_device": {"net_dev_arg"},
}
STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
INT_OPS = ("Equal", "NotEqual", "GT", "LT", "Mask")
SOCK_OPS = ADDR_OPERATORS + PORT_OPERATORS + PRIV_PORT_OPERATORS + ("Protocol", "Family")
NS_FIELDS = {"Uts": "uts", "Ipc": "ipc", "Mnt": "mnt", "Pid": "pid", "PidForChildren": "pid_for_children",
             "Net": "net", "Time": "time", "TimeForChildren": "time_for_children", "Cgroup": "cgroup",
             "User": "user"}
_ESCAPED_BYTE = re.compile(r"\\x[0-9a-f]{2}")


class Undecided(Exception):
    """The event does not carry what the kernel read for this filter; ``reason`` says what."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplayRefused(ValueError):
    """The policy holds something the replay cannot evaluate on any event (field: where, as policy check
    names it)."""


# ---- values -------------------------------------------------------------------------------------------

def str_match(s: bytes, op: str, values: Sequence[bytes]) -> bool:
    """sens_str_op_g: the captured string (at most 255 bytes) against the values."""
    s = s[:STR_MAX]
    neg = op.startswith("Not")
    base = op[3:] if neg else op
    base = "Equal" if base in ("Equal", "In") else base
    for v in values:
        if base == "Equal":
            hit = s == v
        elif base == "Prefix":
            hit = s.startswith(v)
        else:  # Postfix
            hit = len(s) >= len(v) and s[len(s) - len(v):] == v
        if hit:
            return not neg
    return neg


def parse_int_value(v: Any) -> int:
    """A matchArgs integer value as the kernel holds it (`sensorium.selectors._parse_int`): any base, 64 bits."""
    return int(str(v), 0) & MASK64


def int_match(ival: int, signed: bool, op: str, values: Sequence[int]) -> bool:
    """sens_match_int: ``ival`` the 64-bit value (a signed argument sign-extended)."""
    def s64(x: int) -> int:
        return x - (1 << 64) if x >> 63 else x
    if op in ("GT", "LT"):
        a, b = (s64(ival), s64(values[0])) if signed else (ival, values[0])
        return a > b if op == "GT" else a < b
    if op == "Mask":
        return any(ival & v for v in values)
    found = ival in values
    return found if op == "Equal" else not found


def _ip(text: str) -> tuple[int, bytes]:
    a = ipaddress.ip_address(text)
    return (2, a.packed + bytes(12)) if a.version == 4 else (10, a.packed)


def addr_in(family: int, addr: bytes, value: tuple[int, bytes, bytes]) -> bool:
    """sens_addr_in_g: an IPv4 CIDR also matches an IPv4-mapped IPv6 address; an IPv6 one never an IPv4."""
    vfam, net, mask = value
    if vfam != family:
        if not (vfam == 2 and family == 10 and addr[:12] == bytes(10) + b"\xff\xff"):
            return False
        addr = addr[12:16] + bytes(12)
    return all((addr[i] & mask[i]) == net[i] for i in range(16))


@dataclasses.dataclass(frozen=True)
class Sock:
    """struct sens_sock as the kernel matched it: a sockaddr's one address and port fill both ends."""

    family: int
    protocol: int
    sport: int
    dport: int
    saddr: bytes
    daddr: bytes


def _num(v: Any, names: Mapping[str, int]) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v in names:
        return names[v]
    return int(str(v))


def sock_from_json(key: str, d: Mapping[str, Any]) -> Sock:
    """Tetragon's sock_arg/sockaddr_arg/skb_arg -> the kernel's summary. Undecided if a field is missing."""
    try:
        fam = _num(d.get("family", "AF_UNSPEC"), SOCK_FAMILIES)
    except ValueError:
        raise Undecided(f"{key}.family {d.get('family')!r} is not a known family") from None
    zero = bytes(16)
    if key == "sockaddr_arg":
        if fam in (2, 10):
            if "addr" not in d:
                raise Undecided(f"{key} of family {fam} has no addr")
            _, a = _ip(d["addr"])
            port = int(d.get("port", 0))
            return Sock(fam, 0, port, port, a, a)
        return Sock(fam, 0, 0, 0, zero, zero)
    proto_field = d.get("proto") if key == "skb_arg" else d.get("protocol")
    try:
        proto = _num(proto_field if proto_field is not None else 0, SOCK_PROTOCOLS)
    except ValueError:
        raise Undecided(f"{key}.protocol {proto_field!r} is not a known protocol") from None
    if fam in (2, 10):
        try:
            _, sa = _ip(d["saddr"])
            _, da = _ip(d["daddr"])
        except (KeyError, ValueError):
            raise Undecided(f"{key} of family {fam} has no saddr/daddr") from None
        return Sock(fam, proto, int(d.get("sport", 0)), int(d.get("dport", 0)), sa, da)
    return Sock(fam, proto, 0, 0, zero, zero)


def sock_match(k: Sock, op: str, values: Sequence[Any]) -> bool:
    """sens_sock_op_g."""
    if op in PRIV_PORT_OPERATORS:
        base = {"SPortPriv": "SPort", "NotSPortPriv": "NotSPort", "NotSportPriv": "NotSPort",
                "DPortPriv": "DPort", "NotDPortPriv": "NotDPort"}[op]
        return sock_match(k, base, [(0, 1023)])
    neg = op in ("NotSAddr", "NotDAddr", "NotSPort", "NotDPort")
    if op in ADDR_OPERATORS:
        dst = op in ("DAddr", "NotDAddr")
        addr = k.daddr if dst else k.saddr
        hit = any(addr_in(k.family, addr, v) for v in values)
        return hit != neg
    field = {"SPort": k.sport, "NotSPort": k.sport, "DPort": k.dport, "NotDPort": k.dport,
             "Protocol": k.protocol, "Family": k.family}[op]
    hit = any(lo <= field <= hi for lo, hi in values)
    return hit != neg


# ---- the process tree of the recording ----------------------------------------------------------------

class ProcessTable:
    """exec_id -> (pid, binary, parent exec_id) from every process and parent object in the recording, for
    followChildren/followForks (Tetragon's events name one parent; the grandparents are found here)."""

    def __init__(self, limit: int = 1 << 18, unknown_ancestors_match: bool | None = None) -> None:
        self.procs: dict[str, tuple[int | None, str | None, str | None]] = {}
        self.exec_time: dict[str, int] = {}  # exec_id -> time of its process_exec event
        self.limit = limit
        # None: an ancestor missing from the recording makes the filter undecided; False: assume it does
        # not match (the user says so with --unknown-ancestors no-match; the report states the assumption)
        self.unknown_ancestors_match = unknown_ancestors_match

    def add(self, p: Any) -> None:
        if not isinstance(p, dict):
            return
        eid = p.get("exec_id")
        if not isinstance(eid, str) or not eid:
            return
        if self.procs.pop(eid, None) is None and len(self.procs) >= self.limit:
            old = next(iter(self.procs))  # the least recently seen: a process seen again moves to the end
            self.procs.pop(old)
            self.exec_time.pop(old, None)
        self.procs[eid] = (p.get("pid"), p.get("binary"), p.get("parent_exec_id") or None)

    def ancestors(self, proc: Mapping[str, Any],
                  parent: Mapping[str, Any] | None) -> Iterator[tuple[int | None, str | None]]:
        """(pid, binary) of the parent, grandparent... up to the root (pid 1 or no parent), nearest first, so
        that a caller can stop at the first that matches. Undecided when the next link is not in the
        recording."""
        eid = proc.get("parent_exec_id") or None
        if isinstance(parent, dict) and parent.get("exec_id"):
            eid = parent["exec_id"]
        seen: set[str] = set()
        while eid and eid not in seen and len(seen) < 4096:
            seen.add(eid)
            rec = self.procs.get(eid)
            if rec is None:
                if proc.get("pid") in (0, 1) or self.unknown_ancestors_match is False:
                    return
                raise Undecided("an ancestor of the process is not in the recording (it started before the "
                                "recording; --unknown-ancestors no-match assumes it did not match)")
            pid, binary, up = rec
            yield pid, binary
            if pid in (0, 1):
                return
            eid = up


# ---- one hook -----------------------------------------------------------------------------------------

def _syscall_name(call: str) -> str | None:
    m = re.fullmatch(r"(?:__x64_|__se_|__do_)?sys_([a-z0-9_]+)", call)
    if m:
        return m.group(1)
    if re.fullmatch(r"[a-z0-9_]+", call) and call in SYSCALLS_X86_64:
        return call
    return None


def item_keys(item: Any) -> list[tuple[str, ...]]:
    """The hook keys (`sensorium.replay.records.hook_key`) of the events a policy item produces."""
    if _is(item, KPROBES):
        name = _syscall_name(item.call)
        if not item.syscall and not item.call.startswith(("__x64_sys_", "sys_")):
            name = None
        return [("process_kprobe", f"__x64_sys_{name}" if name else item.call)]
    if _is(item, TRACEPOINTS):
        return [("process_tracepoint", item.subsystem, item.event)]
    if _is(item, UPROBES):
        return ([("process_uprobe", item.path, s) for s in item.symbols]
                + [("process_uprobe", item.path, f"+{o}") for o in item.offsets])
    if _is(item, LSMHOOKS):
        return [("process_lsm", item.hook)]
    raise ReplayRefused(f"items of type {type(item).__name__} are not replayed")


def is_syscall_item(item: Any) -> bool:
    return _is(item, KPROBES) and item_keys(item)[0][1].startswith("__x64_sys_")


@dataclasses.dataclass(frozen=True)
class ArgLayout:
    """Where the kernel read each declared argument: ``ident`` (a kprobe's or uprobe's parameter, a
    tracepoint's format field) and ``type``, in the order of the event's ``args``."""

    args: tuple[tuple[int, str], ...]

    @staticmethod
    def of(item: Any) -> ArgLayout:
        args: list[Any] = list(item.args)
        if _is(item, TRACEPOINTS):
            return ArgLayout(tuple((a.index, a.type or "auto") for a in args))
        return ArgLayout(tuple((a.index, a.type or "auto") for a in args if (a.type or "auto") != "nop"))


@dataclasses.dataclass
class ArgRef:
    """How to find and read, in a recorded event, the argument a matchArgs entry names."""

    pos: int
    ctype: str          # the candidate's type
    rtype: str | None   # the recording's type (None: unknown, the candidate's own layout is assumed)
    kprobe: bool


Filter = Callable[[dict[str, Any], "Context"], bool]


@dataclasses.dataclass
class Context:
    table: ProcessTable
    recorded_nargs: int | None  # args the recording declared for the hook (None: unknown)
    time_ns: int | None = None


def process_at(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The process as the kernel saw it at the call. An event of a forked child from before its exec can
    be joined to the process it became (its exec_id, binary, caps and namespaces are the new program's):
    when the event is older than that process's exec, the kernel saw the parent's image (a fork copies
    it), so its binary, capabilities and namespaces are the parent's; after a second exec in the same
    process the image before it is not in the recording (undecided)."""
    p = body.get("process")
    if not isinstance(p, dict):
        return {}
    t_exec = ctx.table.exec_time.get(p.get("exec_id") or "")
    if t_exec is None or ctx.time_ns is None or ctx.time_ns >= t_exec:
        return p
    if "clone" not in str(p.get("flags", "")).split():
        raise Undecided("the call came before the process's exec, and the recording does not show the program "
                        "it ran then")
    parent = body.get("parent")
    if not isinstance(parent, dict) or not parent.get("binary"):
        raise Undecided("the call came before the process's exec, and the recording has no parent to say "
                        "what it ran then")
    return {**parent, "pid": p.get("pid"), "tid": p.get("tid"), "exec_id": p.get("exec_id"),
            "parent_exec_id": parent.get("exec_id")}


@dataclasses.dataclass
class SelectorEval:
    index: int
    filters: list[tuple[str, Filter]]  # (field, test)
    actions: list[str]                 # action names, "Post" when the selector has none
    post: bool
    signal: bool
    kills: bool      # Sigkill, or Signal 9
    override: bool
    rate_limit_ns: int | None
    rate_scope: str

    def evaluate(self, body: dict[str, Any], ctx: Context) -> bool:
        """True, False, or `Undecided` (raised) when no filter is False and one cannot be decided."""
        undecided: str | None = None
        for field, f in self.filters:
            try:
                if not f(body, ctx):
                    return False
            except Undecided as u:
                undecided = undecided or f"{field}: {u.reason}"
        if undecided:
            raise Undecided(undecided)
        return True


def _arg_value(body: dict[str, Any], ref: ArgRef, ctx: Context) -> tuple[str, Any]:
    args = body.get("args")
    if not isinstance(args, list):
        raise Undecided("the event has no args")
    if ctx.recorded_nargs is not None and len(args) != ctx.recorded_nargs:
        raise Undecided(f"the event has {len(args)} arguments where {ctx.recorded_nargs} were expected (pass "
                        f"--recorded-with the policy that recorded it)")
    if ref.pos >= len(args) or not isinstance(args[ref.pos], dict):
        raise Undecided(f"the event has no argument at position {ref.pos} (pass --recorded-with the policy "
                        f"that recorded it)")
    a = args[ref.pos]
    keys = [k for k in a if k not in ("label", "error")]
    if len(keys) != 1:
        raise Undecided(f"argument {ref.pos} has no single value ({sorted(a)})")
    key = keys[0]
    if a.get("error"):
        if key in SOCK_KEYS:
            return key, None  # the kernel's rule: an unreadable address matches no socket operator
        raise Undecided(f"argument {ref.pos} was unreadable when recorded ({a['error']})")
    return key, a[key]


def _int_of(key: str, value: Any, ref: ArgRef) -> tuple[int, bool]:
    """The kernel's 64-bit value of the candidate's integer argument, and whether it compares signed."""
    if key == "syscall_id":
        if not isinstance(value, dict) or not isinstance(value.get("id"), int):
            raise Undecided("syscall_id without an id")
        v, (rsize, _) = value["id"] | (0x80000000 if value.get("abi") == "i386" else 0), (8, False)
    elif key in INT_KEYS:
        try:
            v = int(value)
        except (TypeError, ValueError):
            raise Undecided(f"{key} {value!r} is not an integer") from None
        rsize = INT_TYPES[ref.rtype][0] if ref.rtype in INT_TYPES else INT_KEYS[key][0]
    else:
        raise Undecided(f"the recording holds {key} where the policy reads an integer ({ref.ctype})")
    if ref.ctype == "auto":
        size, signed = (8, False) if ref.kprobe else ((8, False) if key == "syscall_id" else INT_KEYS[key])
    else:
        size, signed = INT_TYPES[ref.ctype]
    if size > rsize:
        raise Undecided(f"the recording kept {rsize * 8} bits of the argument, the policy compares {size * 8}")
    raw = v & ((1 << (size * 8)) - 1)
    if signed and raw >> (size * 8 - 1):
        raw -= 1 << (size * 8)
    return raw & MASK64, signed


def _bytes_of(key: str, value: Any, ref: ArgRef) -> bytes:
    if key in STRING_KEYS:
        text = value
    elif key in PATH_KEYS:
        text = value.get("path") if isinstance(value, dict) else None
    elif key == "net_dev_arg":  # a net_device: matched by its name
        text = value.get("name") if isinstance(value, dict) else None
    elif key in BYTES_KEYS:
        raw = value.get("bytes_arg") if key == "truncated_bytes_arg" and isinstance(value, dict) else value
        try:
            return base64.b64decode(raw or "", validate=True)
        except (ValueError, TypeError):
            raise Undecided(f"{key} is not base64") from None
    else:
        raise Undecided(f"the recording holds {key} where the policy reads a string ({ref.ctype})")
    if not isinstance(text, str):
        raise Undecided(f"{key} is not a string")
    if "\\x" in text and _ESCAPED_BYTE.search(text):
        raise Undecided("the string holds bytes that are not UTF-8 (the recording shows them escaped)")
    return text.encode()


def _check_kind(key: str, ref: ArgRef) -> None:
    want = TYPE_KEYS.get(ref.ctype)
    if want is not None and key not in want:
        raise Undecided(f"the recording holds {key} where the policy reads type {ref.ctype}")


def compile_match_arg(m: Any, ref: ArgRef, field: str) -> Filter:
    op = m.op
    values = list(m.values)
    if op in SOCK_OPS:
        parsed = [] if op in PRIV_PORT_OPERATORS else [sock_value(op, v) for v in values]

        def sock_filter(body: dict[str, Any], ctx: Context) -> bool:
            key, value = _arg_value(body, ref, ctx)
            if key not in SOCK_KEYS:
                raise Undecided(f"the recording holds {key} where the policy reads a socket ({ref.ctype})")
            _check_kind(key, ref)
            if value is None:
                return False
            return sock_match(sock_from_json(key, value), op, parsed)
        return sock_filter
    if ref.ctype in ("kernel_cap_t", "cap_inheritable", "cap_permitted", "cap_effective"):
        return _cap_set_filter(op, values, ref)
    int_values = None
    if ref.ctype in INT_TYPES or (ref.ctype == "auto" and ref.kprobe):
        int_values = [parse_int_value(v) for v in values]
    str_values = [str(v).encode() for v in values]

    def arg_filter(body: dict[str, Any], ctx: Context) -> bool:
        key, value = _arg_value(body, ref, ctx)
        if key in INT_KEYS or key == "syscall_id":
            if ref.ctype not in INT_TYPES and ref.ctype != "auto":
                raise Undecided(f"the recording holds {key} where the policy reads type {ref.ctype} (pass "
                                f"--recorded-with the policy that recorded it)")
            if op not in INT_OPS:
                raise Undecided(f"operator {op} on the integer argument")
            ival, signed = _int_of(key, value, ref)
            vals = int_values if int_values is not None else [parse_int_value(v) for v in values]
            return int_match(ival, signed, op, vals)
        if key in SOCK_KEYS:
            raise Undecided(f"operator {op} on a socket argument")
        _check_kind(key, ref)
        if op not in STRING_OPS:
            return False  # the kernel: GT/LT/Mask never match a string
        return str_match(_bytes_of(key, value, ref), op, str_values)
    return arg_filter


def _cap_set_filter(op: str, values: list[Any], ref: ArgRef) -> Filter:
    """A capability set (kernel_cap_t, cap_*): Tetragon's 16 hex digits against numbers or capability names."""
    from sensorium.hooks.selectors import parse_cap_mask

    masks = [parse_cap_mask(v) for v in values]
    want = f"{ref.ctype}_arg"

    def cap_filter(body: dict[str, Any], ctx: Context) -> bool:
        key, value = _arg_value(body, ref, ctx)
        if key != want:
            raise Undecided(f"the recording holds {key} where the policy reads type {ref.ctype}")
        try:
            caps = int(str(value), 16)
        except ValueError:
            raise Undecided(f"{key} {value!r} is not a capability set in hex") from None
        return int_match(caps, False, op, masks)
    return cap_filter


def compile_return(m: Any) -> Filter:
    op = m.op
    values = [parse_int_value(v) for v in m.values]

    def ret_filter(body: dict[str, Any], ctx: Context) -> bool:
        r = body.get("return")
        if not isinstance(r, dict):
            raise Undecided("the event has no return value (record with return: true)")
        raw = r.get("long_arg", r.get("size_arg"))
        if raw is None:
            raise Undecided(f"the recording kept the return value as {sorted(r)} (record it as long)")
        try:
            v = int(raw)
        except (TypeError, ValueError):
            raise Undecided(f"return value {raw!r} is not an integer") from None
        return int_match(v & MASK64, True, op, values)
    return ret_filter


def _binary(body: dict[str, Any], ctx: Context) -> bytes:
    b = process_at(body, ctx).get("binary")
    if not isinstance(b, str) or not b:
        raise Undecided("the event's process has no binary (a process cache miss when recorded)")
    return b.encode()


def compile_binaries(b: Any) -> Filter:
    op, follow = b.operator, b.followChildren
    values = [str(v).encode() for v in b.values]

    def bin_filter(body: dict[str, Any], ctx: Context) -> bool:
        if str_match(_binary(body, ctx), op, values):
            return True
        if not follow:
            return False
        for _, anc in ctx.table.ancestors(process_at(body, ctx), body.get("parent")):
            if anc is None:
                raise Undecided("an ancestor's binary is not in the recording")
            if str_match(anc.encode(), op, values):
                return True
        return False
    return bin_filter


def compile_pids(m: Any) -> Filter:
    values = set(m.values)
    follow = m.followForks and m.operator == "In"

    def pid_filter(body: dict[str, Any], ctx: Context) -> bool:
        p = process_at(body, ctx)
        pid = p.get("pid")
        if not isinstance(pid, int):
            raise Undecided("the event's process has no pid")
        if m.isNamespacePID:
            host = ((p.get("ns") or {}).get("pid") or {}).get("is_host")
            if host is not True:
                raise Undecided("isNamespacePID: the recording has the host pid only, and the process is not "
                                "in the host's pid namespace" if host is False else
                                "isNamespacePID: the recording does not say the process's pid namespace (record with "
                                "events.process_namespaces: true)")
        found = pid in values
        if not found and follow:
            if m.isNamespacePID:
                raise Undecided("followForks with isNamespacePID: ancestors' namespace pids are not recorded")
            found = any(a in values for a, _ in ctx.table.ancestors(p, body.get("parent")))
        return found if m.operator == "In" else not found
    return pid_filter


def compile_namespaces(m: Any) -> Filter:
    name = NS_FIELDS[m.namespace]
    host = "host_ns" in m.values
    inums = {int(v) for v in m.values if v != "host_ns"}

    def ns_filter(body: dict[str, Any], ctx: Context) -> bool:
        ns = process_at(body, ctx).get("ns")
        if not isinstance(ns, dict):
            raise Undecided("the event's process has no ns (namespaces): record with the agent's "
                            "events.process_namespaces: true (Tetragon: --enable-process-ns)")
        d = ns.get(name)
        if not isinstance(d, dict) or not isinstance(d.get("inum"), int):
            if name.startswith("time"):
                inum: int = 0  # the kernel reads 0 where there is no time namespace
                found = inum in inums
            else:
                raise Undecided(f"the event's process has no {name} namespace")
        else:
            found = d["inum"] in inums
            if not found and host:
                if d.get("is_host") is None:
                    raise Undecided(f"host_ns: the recording does not say whether the {name} namespace is the host's")
                found = d["is_host"] is True
        return found if m.operator == "In" else not found
    return ns_filter


def _cap_name(c: str) -> str:
    c = str(c).upper()
    return c[4:] if c.startswith("CAP_") else c


def compile_caps(m: Any) -> Filter:
    which = m.type.lower()
    wanted = {_cap_name(v) for v in m.values}

    def cap_filter(body: dict[str, Any], ctx: Context) -> bool:
        if m.isNamespaceCapability:  # the kernel: never a task of the host's user namespace
            user = (process_at(body, ctx).get("ns") or {}).get("user")
            if not isinstance(user, dict):
                raise Undecided("isNamespaceCapability: the event's process has no user namespace (ns.user)")
            if user.get("is_host"):
                return False
        cap = process_at(body, ctx).get("cap")
        if not isinstance(cap, dict):
            raise Undecided("the event's process has no cap (capability sets): record with the agent's "
                            "events.process_credentials: true (Tetragon: --enable-process-cred)")
        have = {_cap_name(c) for c in cap.get(which) or []}  # protojson leaves an empty set out
        any_set = bool(have & wanted)
        return any_set if m.operator == "In" else not any_set
    return cap_filter


def _undecided_cap_changes(body: dict[str, Any], ctx: Context) -> bool:
    raise Undecided("matchCapabilityChanges compares with the capabilities the process had at exec, which "
                    "events do not carry")


@dataclasses.dataclass
class HookEval:
    """One hook of the candidate policy (one item; several for an uprobe's symbols)."""

    name: str            # "kprobes[0] sys_openat", as the policy's status names it
    keys: list[tuple[str, ...]]
    selectors: list[SelectorEval]
    recorded_nargs: int | None

    def decide(self, body: dict[str, Any], table: ProcessTable,
               time_ns: int | None = None) -> tuple[int | None, str | None]:
        """(index of the selector whose actions the kernel takes, or None) and the undecided reason.
        No selectors: every event matches (index -1)."""
        if not self.selectors:
            return -1, None
        ctx = Context(table, self.recorded_nargs, time_ns)
        pending: str | None = None
        for s in self.selectors:
            try:
                r = s.evaluate(body, ctx)
            except Undecided as u:
                pending = pending or f"selectors[{s.index}].{u.reason}"
                continue
            if r:
                if pending:
                    return None, pending  # an earlier selector might have matched first
                return s.index, None
        return None, pending


def _actions(sel: Any) -> tuple[list[str], bool, bool, bool, bool, int | None, str]:
    acts = list(sel.matchActions)
    names = [a.action for a in acts] or ["Post"]
    post = "NoPost" not in names
    signal = any(n in ("Sigkill", "Signal") for n in names)
    kills = any(a.action == "Sigkill" or (a.action == "Signal" and a.argSig == 9) for a in acts)
    override = "Override" in names
    rl, scope = None, "thread"
    for a in acts:
        if a.action == "Post" and a.rateLimit is not None:
            rl, scope = a.rate_limit_ns, a.rateLimitScope or "thread"
    return names, post, signal, kills, override, rl, scope


def compile_item(section: str, index: int, item: Any, recorded: Any | None) -> HookEval:
    """A policy item -> its evaluator. ``recorded``: the same hook's item in the recording policy (None:
    the recording is assumed to declare the candidate's own args). ReplayRefused for what cannot be replayed."""
    from sensorium.policy_rules import hook_name

    keys = item_keys(item)
    name = hook_name(section, index, item)
    base = f"spec.{section}[{index}]"
    syscall_like = _is(item, TRACEPOINTS, UPROBES) or is_syscall_item(item)
    mine = ArgLayout.of(item)
    theirs = ArgLayout.of(recorded) if recorded is not None else mine
    kprobe = _is(item, KPROBES, UPROBES, LSMHOOKS)
    tp = _is(item, TRACEPOINTS)
    sels: list[SelectorEval] = []
    for si, sel in enumerate(item.selectors):
        field = f"{base}.selectors[{si}]"
        filters: list[tuple[str, Filter]] = []
        for mi, m in enumerate(sel.matchArgs):
            idx = m.indexes[0]
            if tp:
                if idx >= len(mine.args):
                    raise ReplayRefused(f"{field}.matchArgs[{mi}].index: index {idx} names no declared argument")
                ident, ctype = mine.args[idx]
            else:
                hits = [(i, t) for i, t in mine.args if i == idx]
                if not hits:
                    raise ReplayRefused(f"{field}.matchArgs[{mi}].index: index {idx} names no declared argument")
                ident, ctype = hits[0]
            pos = [p for p, (i, _) in enumerate(theirs.args) if i == ident]
            if not pos:
                raise ReplayRefused(f"{field}.matchArgs[{mi}].index: the recording policy does not read "
                                    f"{'field' if tp else 'parameter'} {ident} of {name}")
            rtype = theirs.args[pos[0]][1] if recorded is not None else None
            if rtype is not None and rtype != ctype and not (ctype in INT_TYPES and rtype in INT_TYPES):
                raise ReplayRefused(f"{field}.matchArgs[{mi}].index: the recording read {ident} as {rtype}, the "
                                    f"policy as {ctype}")
            _check_op_fits(m.op, ctype, f"{field}.matchArgs[{mi}].operator")
            ref = ArgRef(pos[0], ctype, rtype, kprobe)
            filters.append((f"matchArgs[{mi}]", compile_match_arg(m, ref, f"{field}.matchArgs[{mi}]")))
        for mi, m in enumerate(sel.matchReturnArgs):
            filters.append((f"matchReturnArgs[{mi}]", compile_return(m)))
        for pi, m in enumerate(sel.matchPIDs):
            filters.append((f"matchPIDs[{pi}]", compile_pids(m)))
        for ni, m in enumerate(sel.matchNamespaces):
            filters.append((f"matchNamespaces[{ni}]", compile_namespaces(m)))
        for ci, m in enumerate(sel.matchCapabilities):
            filters.append((f"matchCapabilities[{ci}]", compile_caps(m)))
        for ci in range(len(sel.matchCapabilityChanges)):
            filters.append((f"matchCapabilityChanges[{ci}]", _undecided_cap_changes))
        for bi, m in enumerate(sel.matchBinaries):
            filters.append((f"matchBinaries[{bi}]", compile_binaries(m)))
        names, post, signal, kills, override, rl, scope = _actions(sel)
        if override and syscall_like:
            ai = names.index("Override")
            raise ReplayRefused(f"{field}.matchActions[{ai}].action: Override is not implemented on tracepoint, "
                                f"syscall and uprobe hooks (the agent refuses it there too); use Sigkill, or an "
                                f"lsmhooks section")
        sels.append(SelectorEval(si, filters, names, post, signal, kills, override, rl, scope))
    return HookEval(name, keys, sels, len(theirs.args))


def _check_op_fits(op: str, ctype: str, field: str) -> None:
    """The engine's rule (sensorium.selectors): an operator must fit the argument's type."""
    from sensorium.hooks.kstructs import KTYPES  # ctypes structures: loaded when needed
    from sensorium.hooks.selectors import ops_problem

    kt = KTYPES.get(ctype)
    if kt is not None:  # a kernel structure: Tetragon's operators on it, in the planner's words
        found = ops_problem(op, kt.ops, kt.why, ctype)
        if found:
            raise ReplayRefused(f"{field}: {found[1]}")
        return
    if ctype in ("sock", "sockaddr", "skb"):
        if op not in SOCK_OPS:
            raise ReplayRefused(f"{field}: operator {op} does not apply to the {ctype} argument")
        return
    if op in SOCK_OPS:
        raise ReplayRefused(f"{field}: operator {op} applies to sock and sockaddr arguments, not to this "
                            f"{ctype} argument")
    if ctype in INT_TYPES and op not in INT_OPS:
        raise ReplayRefused(f"{field}: operator {op} does not apply to the integer argument (type {ctype}); use "
                            f"one of {', '.join(INT_OPS)}")
    if ctype in TYPE_KEYS and op not in STRING_OPS:
        raise ReplayRefused(f"{field}: operator {op} does not apply to the string argument (type {ctype}); use "
                            f"one of {', '.join(STRING_OPS)}")


__all__ = ["Undecided", "ReplayRefused", "ProcessTable", "HookEval", "SelectorEval", "compile_item", "item_keys",
           "str_match", "int_match", "sock_match", "addr_in", "sock_from_json", "parse_int_value", "STR_MAX"]

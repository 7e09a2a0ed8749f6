"""Compile TracingPolicy selectors into the kernel's form: the ``sens_cfg`` rodata of one hook object.

The C side is ``core/bpf/include/sensorium/selectors.h``; the ctypes structures below mirror its structs
byte for byte (a test compares them with the compiled object's BTF). A sensor says how to read each
argument of its hook (`ArgPlan`, built from a tracepoint's format file or a syscall's signature) and how
a selector's ``matchArgs.index`` maps to an argument position; `compile_hook` checks every limit before
anything is loaded (`SelectorError` naming the field and the limit) and returns the bytes to set.

Kernel limits here are narrower than the document model's (sensorium.policy): the checks say which.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from sensorium.bpf.records import SensoriumHdr
from sensorium.policy import CAPABILITIES, SOCK_PROTOCOLS
from sensorium.policy import sock_value as parse_sock_value
from sensorium.policy_values import TCP_STATES

__all__ = [
    "SelectorError", "ArgPlan", "CompiledHook", "compile_hook", "check_selectors", "HookCfg", "SensEvent",
    "SensArgRec", "MAX_ARGS", "MAX_SELECTORS", "MAX_MATCH_ARGS", "MAX_VALUES", "MAX_STRINGS", "STR_MAX", "MAX_NS",
    "MAX_CAPS", "HOOK_TP", "HOOK_RAW_TP", "HOOK_SYSCALL", "ARG_INT", "ARG_STR", "ARG_BUF", "FROM_CTX", "FROM_RAW",
    "FROM_SYSCALL", "FROM_RETVAL", "DEREF_NONE", "DEREF_USER_STR", "DEREF_KERNEL_STR", "DEREF_DATALOC",
    "DEREF_INLINE", "DEREF_USER_BUF", "DEREF_BINPRM", "DEREF_FD_PATH", "DEREF_FILE", "DEREF_PATH", "ACT_POST",
    "ACT_SIGKILL", "ACT_SIGNAL", "ACT_GETURL", "ACT_DNSLOOKUP", "ACT_NOTIFY", "NOTIFY_BITS",
    "EV_MONITOR", "EV_HAS_RET", "EV_SIGNAL_ERR", "ARGF_TRUNC", "ARGF_ERR",
    "CFG_CGROUP_SCOPED", "CFG_NEED_BINARY", "CFG_FOLLOW", "CFG_AT_EXIT", "REC_HOOK", "host_namespace_inums",
    "ARG_SOCK", "DEREF_SOCK", "DEREF_SOCKADDR", "DEREF_USER_SOCKADDR", "DEREF_SKB", "MAX_BINS", "SOCK_OPS",
    "SOCKADDR_OPS", "SOCKADDR_PEER_OPS", "SensSock", "render_sock", "CFG_SOCK_OWNER", "CFG_RET_TRACK",
    "CFG_RET_UNTRACK", "CFG_CAP_CHANGES", "SYSCALL_SET", "SYSSET_NR",
    "SOCK_TRACK", "SOCK_UNTRACK", "SKB_OPS", "SYSCALL_I386", "ARG_STRUCT",
    "DEREF_NETDEV", "DEREF_KCAP", "DEREF_BPF_ATTR", "DEREF_BPF_PROG", "DEREF_BPF_MAP", "DEREF_PERF_EVENT",
    "DEREF_USER_NS", "DEREF_LOAD_INFO", "DEREF_MODULE", "SensKBpfProg", "SensKBpfMap", "SensKPerfEvent",
    "SensKUserNs", "SensKModule", "KSTRUCT_MAX", "INT_OPS", "STRING_OPS", "parse_cap_mask", "ops_problem",
    "parse_sock_value", "VERIFIER_BUDGET", "EV_KSTACK", "EV_USTACK", "STACK_KERNEL", "STACK_USER", "SensStackIds"
]

# ---- mirrored constants (selectors.h) -------------------------------------------------------------
MAX_ARGS = 6
MAX_SELECTORS = 5
MAX_MATCH_ARGS = 4
MAX_VALUES = 8
MAX_STRINGS = 32
STR_MAX = 256
MAX_NS = 4
MAX_CAPS = 2
MAX_PIDF = 2
MAX_BINS = 4
DATA_MAX = 2048
SYSCALL_I386 = 0x80000000  # a syscall64 id of a 32-bit (compat) task: Tetragon's IS_32BIT

REC_HOOK = 1
HOOK_TP, HOOK_RAW_TP, HOOK_SYSCALL = 1, 2, 3
ARG_INT, ARG_STR, ARG_BUF, ARG_SOCK = 1, 2, 3, 4
ARG_STRUCT = 5  # a kernel structure's summary (a SensK* payload, by deref): reported, never matched
FROM_CTX, FROM_RAW, FROM_SYSCALL, FROM_RETVAL = 1, 2, 3, 4
(DEREF_NONE, DEREF_USER_STR, DEREF_KERNEL_STR, DEREF_DATALOC, DEREF_INLINE, DEREF_USER_BUF, DEREF_BINPRM,
 DEREF_FD_PATH) = range(8)
DEREF_FILE, DEREF_PATH = 8, 9  # a struct file * / struct path * argument (kernel functions, LSM hooks)
DEREF_SOCK, DEREF_SOCKADDR, DEREF_USER_SOCKADDR, DEREF_SKB = 10, 11, 12, 13
# Kernel structures read field by field in the kernel (sensorium.hooks.kstructs: Tetragon's BTF-described types)
DEREF_NETDEV, DEREF_KCAP = 14, 15  # struct net_device * (a string: its name), kernel_cap_t * (an integer)
DEREF_BPF_ATTR, DEREF_BPF_PROG, DEREF_BPF_MAP, DEREF_PERF_EVENT = 16, 17, 18, 19  # ARG_STRUCT
DEREF_USER_NS, DEREF_LOAD_INFO, DEREF_MODULE = 20, 21, 22  # ARG_STRUCT
KSTRUCT_MAX = 152  # SENS_KSTRUCT_MAX: the largest SensK* payload
OPS = {"Equal": 1, "NotEqual": 2, "Prefix": 3, "NotPrefix": 4, "Postfix": 5, "NotPostfix": 6, "GT": 7, "LT": 8,
       "Mask": 9, "In": 10, "NotIn": 11, "SAddr": 12, "NotSAddr": 13, "DAddr": 14, "NotDAddr": 15, "SPort": 16,
       "NotSPort": 17, "DPort": 18, "NotDPort": 19, "Protocol": 20, "Family": 21, "State": 22}
# Tetragon's privileged-port operators: the range 0:1023, no values (compiled as SPort/DPort ...).
PRIV_OPS = {"SPortPriv": "SPort", "NotSPortPriv": "NotSPort", "NotSportPriv": "NotSPort", "DPortPriv": "DPort",
            "NotDPortPriv": "NotDPort"}
ACT_POST, ACT_SIGKILL, ACT_SIGNAL = 1, 2, 4
# User-space actions (sensorium.actions): bits the kernel never reads; run.h copies the matched selector's actions
# byte into the record as it is, and the agent makes the request from the record
ACT_GETURL, ACT_DNSLOOKUP = 32, 64  # (8 is the kprobe sensor's fmod_ret Override: sensors/kprobe/kfunc.py)
ACT_NOTIFY = ACT_GETURL | ACT_DNSLOOKUP
NOTIFY_BITS = {"GetUrl": ACT_GETURL, "DnsLookup": ACT_DNSLOOKUP}
EV_MONITOR, EV_HAS_RET, EV_SIGNAL_ERR = 1, 2, 4
EV_KSTACK, EV_USTACK = 8, 16  # the record ends with a SensStackIds (hook/defs.h)
STACK_KERNEL, STACK_USER = 1, 2  # SensSelector.stacks: kernelStackTrace, userStackTrace of its Post action
ARGF_TRUNC, ARGF_ERR = 1, 2
CFG_CGROUP_SCOPED, CFG_NEED_BINARY, CFG_FOLLOW, CFG_AT_EXIT = 1, 2, 4, 8
CFG_SOCK_OWNER, CFG_RET_TRACK, CFG_RET_UNTRACK, SOCK_TRACK, SOCK_UNTRACK = 16, 32, 64, 1, 2  # hook/defs.h sockets
CFG_CAP_CHANGES = 128
# HookCfg.syscall_nr of one object serving a set of syscalls (hook/defs.h SENS_SYSCALL_SET), and the size of its
# number -> member table (SENS_SYSSET_NR; the x86_64 table ends below it)
SYSCALL_SET, SYSSET_NR = -2, 512
PID_NS, PID_FOLLOW = 1, 2
NS_IDS = {"Uts": 1, "Ipc": 2, "Mnt": 3, "Pid": 4, "PidForChildren": 5, "Net": 6, "Time": 7, "TimeForChildren": 8,
          "Cgroup": 9, "User": 10}
NS_PROC = {"Uts": "uts", "Ipc": "ipc", "Mnt": "mnt", "Pid": "pid", "PidForChildren": "pid_for_children",
           "Net": "net", "Time": "time", "TimeForChildren": "time_for_children", "Cgroup": "cgroup", "User": "user"}
CAP_SETS = {"Effective": 1, "Inheritable": 2, "Permitted": 3}
RL_SCOPES = {"thread": 1, "process": 2, "global": 3}

STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
INT_OPS = ("Equal", "NotEqual", "GT", "LT", "Mask")
# Socket operators, per argument kind (Tetragon's rule: a sockaddr has one address and port, named SAddr/SPort
# and never a protocol). SOCKADDR_PEER_OPS: a syscall's sockaddr that is the peer (connect, sendto), where
# DAddr/DPort name the same address as SAddr/SPort.
SOCK_OPS = ("SAddr", "NotSAddr", "DAddr", "NotDAddr", "SPort", "NotSPort", "DPort", "NotDPort", "SPortPriv",
            "NotSPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv", "Protocol", "Family", "State")
SKB_OPS = SOCK_OPS[:-1]  # a packet has no TCP state
SOCKADDR_OPS = ("SAddr", "NotSAddr", "SPort", "NotSPort", "SPortPriv", "NotSPortPriv", "NotSportPriv", "Family")
SOCKADDR_PEER_OPS = SOCKADDR_OPS + ("DAddr", "NotDAddr", "DPort", "NotDPort", "DPortPriv", "NotDPortPriv")


# ---- ctypes mirrors -------------------------------------------------------------------------------
class SensArg(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint8), ("src", ctypes.c_uint8), ("deref", ctypes.c_uint8),
                ("size", ctypes.c_uint8), ("is_signed", ctypes.c_uint8), ("resolve", ctypes.c_uint8),
                ("has_dirfd", ctypes.c_uint8), ("size_arg", ctypes.c_uint8), ("offset", ctypes.c_uint16),
                ("max", ctypes.c_uint16), ("dirfd_off", ctypes.c_uint16), ("ret_fd", ctypes.c_uint8),
                ("sys64", ctypes.c_uint8)]


class SensMatchArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint8), ("op", ctypes.c_uint8), ("nvals", ctypes.c_uint8), ("pad", ctypes.c_uint8),
                ("str_first", ctypes.c_uint32), ("vals", ctypes.c_uint64 * MAX_VALUES)]


class SensMatchPids(ctypes.Structure):
    _fields_ = [("op", ctypes.c_uint8), ("nvals", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 5), ("pids", ctypes.c_uint32 * MAX_VALUES)]


class SensMatchNs(ctypes.Structure):
    _fields_ = [("ns", ctypes.c_uint8), ("op", ctypes.c_uint8), ("nvals", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 5), ("inums", ctypes.c_uint32 * MAX_VALUES)]


class SensMatchCaps(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint8), ("op", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 2),
                ("userns", ctypes.c_uint32), ("mask", ctypes.c_uint64)]


class SensMatchBin(ctypes.Structure):
    _fields_ = [("op", ctypes.c_uint8), ("nvals", ctypes.c_uint8), ("follow", ctypes.c_uint8),
                ("pad", ctypes.c_uint8), ("str_first", ctypes.c_uint32)]


class SensSelector(ctypes.Structure):
    _fields_ = [("nargs", ctypes.c_uint8), ("nret", ctypes.c_uint8), ("nbins", ctypes.c_uint8),
                ("sock_act", ctypes.c_uint8), ("sock_arg", ctypes.c_uint8), ("npids", ctypes.c_uint8),
                ("ncapch", ctypes.c_uint8), ("stacks", ctypes.c_uint8), ("nns", ctypes.c_uint8),
                ("ncaps", ctypes.c_uint8), ("actions", ctypes.c_uint8), ("signal", ctypes.c_uint8),
                ("rl_scope", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3), ("rl_ns", ctypes.c_uint64),
                ("args", SensMatchArg * MAX_MATCH_ARGS), ("ret", SensMatchArg),
                ("pids", SensMatchPids * MAX_PIDF), ("ns", SensMatchNs * MAX_NS),
                ("caps", SensMatchCaps * MAX_CAPS), ("bins", SensMatchBin * MAX_BINS),
                ("capch", SensMatchCaps * MAX_CAPS)]


class SensStr(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("pad", ctypes.c_uint8 * 6), ("s", ctypes.c_char * STR_MAX)]


class HookCfg(ctypes.Structure):
    """``struct sens_hook_cfg``: the rodata ``sens_cfg`` of one hook object."""

    _fields_ = [("policy_id", ctypes.c_uint32), ("hook_id", ctypes.c_uint32), ("kind", ctypes.c_uint8),
                ("nargs", ctypes.c_uint8), ("nsel", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("syscall_nr", ctypes.c_int32), ("args", SensArg * MAX_ARGS),
                ("sel", SensSelector * MAX_SELECTORS), ("strs", SensStr * MAX_STRINGS)]


class SensEvent(ctypes.Structure):
    """``struct sens_event``: the fixed head of every hook record."""

    _fields_ = [("hdr", SensoriumHdr), ("policy_id", ctypes.c_uint32), ("hook_id", ctypes.c_uint32),
                ("retval", ctypes.c_int64), ("cgroup_id", ctypes.c_uint64), ("sel", ctypes.c_uint8),
                ("actions", ctypes.c_uint8), ("flags", ctypes.c_uint8), ("nargs", ctypes.c_uint8),
                ("data_len", ctypes.c_uint32)]


class SensStackIds(ctypes.Structure):
    """``struct sens_stack_ids``: after the arguments of a record flagged EV_KSTACK/EV_USTACK."""

    _fields_ = [("kernel", ctypes.c_int32), ("user", ctypes.c_int32)]


class SensArgRec(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint8), ("flags", ctypes.c_uint8), ("len", ctypes.c_uint16),
                ("pad", ctypes.c_uint32)]


class SensSock(ctypes.Structure):
    """``struct sens_sock``: the payload of a sock/sockaddr argument (ports host order, addresses network
    order). A sockaddr's one address and port fill both the source and destination fields."""

    _fields_ = [("family", ctypes.c_uint16), ("type", ctypes.c_uint16), ("protocol", ctypes.c_uint16),
                ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16), ("state", ctypes.c_uint16),
                ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16), ("len", ctypes.c_uint32)]


class SensKBpfProg(ctypes.Structure):
    """``struct sens_k_bpf_prog``: a union bpf_attr (BPF_PROG_LOAD) or a struct bpf_prog."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


class SensKBpfMap(ctypes.Structure):
    """``struct sens_k_bpf_map``: a struct bpf_map."""

    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


class SensKPerfEvent(ctypes.Structure):
    """``struct sens_k_perf_event``: a struct perf_event's attr (type, config, kprobe function and offset)."""

    _fields_ = [("config", ctypes.c_uint64), ("probe_offset", ctypes.c_uint64), ("type", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("kprobe_func", ctypes.c_char * 128)]


class SensKUserNs(ctypes.Structure):
    """``struct sens_k_user_ns``: a struct user_namespace."""

    _fields_ = [("level", ctypes.c_int32), ("owner", ctypes.c_uint32), ("group", ctypes.c_uint32),
                ("inum", ctypes.c_uint32)]


class SensKModule(ctypes.Structure):
    """``struct sens_k_module``: a struct load_info or struct module (sig_ok: 0 bad, 1 ok, 2 unknown)."""

    _fields_ = [("taints", ctypes.c_uint64), ("sig_ok", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("name", ctypes.c_char * 64)]


assert max(ctypes.sizeof(c) for c in (SensKBpfProg, SensKBpfMap, SensKPerfEvent, SensKUserNs, SensKModule)) \
    == KSTRUCT_MAX

RECORD_LAYOUTS: dict[str, type] = {"sens_hook_cfg": HookCfg, "sens_event": SensEvent,
                                   "sens_selector": SensSelector, "sens_arg": SensArg, "sens_sock": SensSock,
                                   "sens_match_bin": SensMatchBin, "sens_k_bpf_prog": SensKBpfProg,
                                   "sens_k_bpf_map": SensKBpfMap, "sens_k_perf_event": SensKPerfEvent,
                                   "sens_k_user_ns": SensKUserNs, "sens_k_module": SensKModule,
                                   "sens_stack_ids": SensStackIds}

_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}
_PROTO_NAMES = {v: k for k, v in SOCK_PROTOCOLS.items()}
_FAMILY_NAMES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET",
                 40: "AF_VSOCK", 44: "AF_XDP"}
_TCP_STATES = {v: k for k, v in TCP_STATES.items()}


def _addr_text(family: int, raw: bytes) -> str:
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def render_sock(key: str, data: bytes) -> dict[str, Any]:
    """A ``struct sens_sock`` payload -> Tetragon's ``sock_arg`` (KprobeSock), ``sockaddr_arg`` (KprobeSockaddr) or
    ``skb_arg`` (KprobeSkb) fields."""
    if len(data) < ctypes.sizeof(SensSock):
        return {"error": "undecodable"}
    k = SensSock.from_buffer_copy(data[:ctypes.sizeof(SensSock)])
    fam = k.family
    if key == "skb_arg":
        out0: dict[str, Any] = {"family": _FAMILY_NAMES.get(fam, str(fam)), "len": k.len}
        if fam in (socket.AF_INET, socket.AF_INET6):
            out0.update(saddr=_addr_text(fam, bytes(k.saddr)), daddr=_addr_text(fam, bytes(k.daddr)), sport=k.sport,
                        dport=k.dport, proto=k.protocol, protocol=_PROTO_NAMES.get(k.protocol, str(k.protocol)))
        return out0
    if key == "sockaddr_arg":
        out: dict[str, Any] = {"family": _FAMILY_NAMES.get(fam, str(fam))}
        if fam in (socket.AF_INET, socket.AF_INET6):
            out.update(addr=_addr_text(fam, bytes(k.saddr)), port=k.sport)
        return out
    out = {"family": _FAMILY_NAMES.get(fam, str(fam)), "type": _SOCK_TYPES.get(k.type, str(k.type)),
           "protocol": _PROTO_NAMES.get(k.protocol, str(k.protocol))}
    if fam in (socket.AF_INET, socket.AF_INET6):
        out.update(saddr=_addr_text(fam, bytes(k.saddr)), daddr=_addr_text(fam, bytes(k.daddr)), sport=k.sport,
                   dport=k.dport)
    if k.protocol == 6 and k.state in _TCP_STATES:
        out["state"] = _TCP_STATES[k.state]
    return out


# ---- plans and results ----------------------------------------------------------------------------
class SelectorError(ValueError):
    """A selector cannot be compiled for the kernel. ``field`` is the path inside the hook item
    (e.g. ``selectors[0].matchArgs[1].values``)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


@dataclasses.dataclass(frozen=True)
class ArgPlan:
    """How the kernel reads one argument, and how user space reports it.

    kind: ARG_INT / ARG_STR / ARG_BUF. from_/offset: where the raw value is (FROM_CTX byte offset,
    FROM_RAW args index, FROM_SYSCALL parameter number). deref: how data is reached (DEREF_*).
    json_key: Tetragon's KprobeArgument field (int_arg, size_arg, string_arg, bytes_arg, ...).
    resolve: a path to make absolute (dirfd at dirfd_offset, else the cwd) and normalise in the kernel.
    sock_ops: ARG_SOCK arguments: the socket operators that may name this argument; sock_ops_why says why
    the others are refused (in the error message).
    ops: when set, the only matchArgs operators this argument takes (Tetragon's for its type; () none), and
    ops_why why (in the error message): the kernel structures of `sensorium.hooks.kstructs`.
    """

    kind: int
    from_: int
    offset: int
    json_key: str
    deref: int = DEREF_NONE
    size: int = 8
    signed: bool = False
    max: int = STR_MAX
    size_arg: int | None = None  # position (in the plan list) of the length argument, for buffers
    resolve: bool = False
    dirfd_offset: int | None = None
    label: str | None = None
    type_name: str = ""
    ret_fd: bool = False  # syscall evaluated at exit: the returned fd's file path replaces the string
    sock_ops: tuple[str, ...] = ()
    sock_ops_why: str = ""
    ops: tuple[str, ...] | None = None
    ops_why: str = ""


@dataclasses.dataclass
class CompiledHook:
    cfg: HookCfg
    flags: int
    follow_binaries: dict[int, tuple[str, tuple[str, ...]]]  # selector -> (operator, values) with followChildren
    follow_pids: dict[int, tuple[bool, tuple[int, ...]]]     # selector -> (isNamespacePID, pids) with followForks
    blocking: bool
    actions: list[list[str]]
    # selector -> (GetUrl or DnsLookup, its URL or name): the request the agent makes when that selector matches
    notify: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def rodata(self) -> bytes:
        return bytes(self.cfg)


def host_namespace_inums(pid: int | str = "self") -> dict[str, int]:
    """Tetragon's ``host_ns``: the agent's own namespaces (it runs in the host's), from /proc/self/ns.
    (/proc/1/ns may be unreadable even for root inside a sandbox.)"""
    out: dict[str, int] = {}
    for name, proc in NS_PROC.items():
        try:
            out[name] = os.stat(f"/proc/{pid}/ns/{proc}").st_ino
        except OSError:
            pass
    return out


def _g(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _parse_int(v: Any, field: str, signed: bool) -> int:
    try:
        n = int(str(v), 0)
    except ValueError:
        raise SelectorError(field, f"value {v!r} is not an integer") from None
    if n < -(1 << 63) or n >= (1 << 64):
        raise SelectorError(field, f"value {v!r} does not fit 64 bits")
    return n & ((1 << 64) - 1)


class _Strings:
    def __init__(self, cfg: HookCfg) -> None:
        self.cfg, self.n = cfg, 0

    def add(self, values: Sequence[str], field: str) -> int:
        first = self.n
        if self.n + len(values) > MAX_STRINGS:
            raise SelectorError(field, f"too many string values in one hook: at most {MAX_STRINGS} in the kernel "
                                       f"(over all selectors of the hook)")
        for v in values:
            b = str(v).encode()
            if len(b) > STR_MAX - 1:
                raise SelectorError(field, f"string value of {len(b)} bytes is longer than the kernel limit "
                                           f"of {STR_MAX - 1} bytes")
            if b"\0" in b:
                raise SelectorError(field, "string values cannot contain NUL bytes")
            self.cfg.strs[self.n].len = len(b)
            self.cfg.strs[self.n].s = b
            self.n += 1
        return first


def _values_limit(values: Sequence[Any], field: str) -> None:
    if len(values) > MAX_VALUES:
        raise SelectorError(field, f"{len(values)} values: at most {MAX_VALUES} per operator in the kernel")


def _compile_match_arg(m: Any, arg_pos: int, plan: ArgPlan, out: SensMatchArg, strings: _Strings, field: str) -> None:
    op = m.op if hasattr(m, "op") else _g(m, "operator")
    values = list(_g(m, "values") or [])
    _values_limit(values, f"{field}.values")
    out.arg = arg_pos
    out.nvals = len(values)
    if plan.ops is not None:
        found = ops_problem(op, plan.ops, plan.ops_why, plan.type_name or "this")
        if found:
            raise SelectorError(f"{field}{found[0]}", found[1])
    if plan.kind == ARG_STRUCT:  # guard: every kernel structure's plan says which operators (none) apply
        raise SelectorError(field, f"matchArgs on a {plan.type_name} argument is not supported")
    if plan.kind == ARG_SOCK:
        _compile_sock_op(op, values, plan, out, strings, field)
        return
    if (op in OPS and OPS[op] >= OPS["SAddr"]) or op in PRIV_OPS:
        raise SelectorError(f"{field}.operator", f"operator {op} applies to sock and sockaddr arguments, not to "
                                                 f"this {plan.type_name or 'non-socket'} argument")
    if plan.kind == ARG_INT:
        if op not in INT_OPS:
            raise SelectorError(f"{field}.operator", f"operator {op} does not apply to the integer argument "
                                                     f"(type {plan.type_name}); use one of {', '.join(INT_OPS)}")
        out.op = OPS[op]
        for i, v in enumerate(values):
            if plan.deref == DEREF_KCAP:  # a capability set: a number, or capability names joined by ","
                try:
                    out.vals[i] = parse_cap_mask(v)
                except ValueError as e:
                    raise SelectorError(f"{field}.values[{i}]", str(e)) from None
            else:
                out.vals[i] = _parse_int(v, f"{field}.values[{i}]", plan.signed)
    else:
        if op not in STRING_OPS:
            raise SelectorError(f"{field}.operator", f"operator {op} does not apply to the string argument "
                                                     f"(type {plan.type_name}); use one of {', '.join(STRING_OPS)}")
        out.op = OPS[op]
        out.str_first = strings.add(values, f"{field}.values")


def ops_problem(op: str, ops: Sequence[str], why: str, what: str) -> tuple[str, str] | None:
    """Why operator ``op`` cannot match an argument of type ``what`` that takes only ``ops`` (``why``: the
    reason), as (field suffix after the matchArgs entry, reason); None when it can. `compile_hook` and the
    kprobe section's rules (``sensorium policy check``) refuse with these words."""
    if op in ops:
        return None
    if not ops:
        return "", f"matchArgs on a {what} argument is not supported: {why}"
    return ".operator", (f"operator {op} does not apply to the {what} argument" + (f" ({why})" if why else "") +
                         f"; use one of {', '.join(ops)}")


def parse_cap_mask(v: Any) -> int:
    """A matchArgs value of a capability set (Tetragon's parseCapabilitiesMask): a number in any base, or
    capability names joined by "," (CAP_SYS_ADMIN or SYS_ADMIN) -> the 64-bit mask. ValueError names the
    bad part."""
    text = str(v).strip()
    try:
        n = int(text, 0)
    except ValueError:
        mask = 0
        for part in text.split(","):
            name = part.strip().upper()
            bit = CAPABILITIES.get(name)
            if bit is None:
                raise ValueError(f"value {v!r} is neither a number nor capability names joined by ',' "
                                 f"({part.strip()!r} is no capability)") from None
            mask |= 1 << bit
        return mask
    if n < 0 or n >= 1 << 64:
        raise ValueError(f"value {v!r} does not fit a 64-bit capability set")
    return n


def _compile_sock_op(op: str, values: Sequence[Any], plan: ArgPlan, out: SensMatchArg, strings: _Strings,
                     field: str) -> None:
    if op not in plan.sock_ops:
        why = f" ({plan.sock_ops_why})" if plan.sock_ops_why else ""
        raise SelectorError(f"{field}.operator", f"operator {op} does not apply to the {plan.type_name} argument{why}; "
                                                 f"use one of {', '.join(plan.sock_ops)}")
    if op in PRIV_OPS:
        if values:
            raise SelectorError(f"{field}.values", f"operator {op} takes no values (it means ports 0:1023)")
        out.op, out.nvals = OPS[PRIV_OPS[op]], 1
        out.vals[0] = 0 | 1023 << 16
        return
    out.op = OPS[op]
    if op in ("SAddr", "NotSAddr", "DAddr", "NotDAddr"):
        first = strings.add([""] * len(values), f"{field}.values")  # one string slot per CIDR
        for i, v in enumerate(values):
            try:
                fam, net, mask = parse_sock_value(op, v)
            except ValueError as e:
                raise SelectorError(f"{field}.values[{i}]", str(e)) from None
            slot = strings.cfg.strs[first + i]
            slot.len = fam
            raw = bytes(net) + bytes(mask)
            ctypes.memmove(ctypes.addressof(slot) + SensStr.s.offset, raw, len(raw))
        out.str_first = first
        return
    for i, v in enumerate(values):
        try:
            lo, hi = parse_sock_value(op, v)
        except ValueError as e:
            raise SelectorError(f"{field}.values[{i}]", str(e)) from None
        out.vals[i] = lo | hi << 16


def _no_nul(values: Sequence[Any], field: str) -> None:
    if any("\0" in str(v) for v in values):
        raise SelectorError(field, "string values cannot contain NUL bytes")


def check_selectors(selectors: Sequence[Any]) -> None:
    """The kernel selectors' rules that hold whatever the hook and its arguments' types are: entry counts,
    values per operator, NUL bytes, followChildren/followForks, capability filters, action combinations.

    `compile_hook` applies them first; `sensorium.policy_rules` applies them to a policy without a kernel
    (``sensorium policy check``), so both refuse the same selectors with the same words. Raises
    `SelectorError` for the first problem (field relative to the hook item)."""
    from sensorium.hooks import caps  # (it imports this module)

    if len(selectors) > MAX_SELECTORS:
        raise SelectorError("selectors", f"{len(selectors)} selectors: at most {MAX_SELECTORS}")
    for si, sel in enumerate(selectors):
        base = f"selectors[{si}]"
        margs = list(_g(sel, "matchArgs") or [])
        if len(margs) > MAX_MATCH_ARGS:
            raise SelectorError(f"{base}.matchArgs", f"{len(margs)} entries: at most {MAX_MATCH_ARGS} in the kernel")
        for mi, m in enumerate(margs):
            field = f"{base}.matchArgs[{mi}]"
            idxs = list(m.indexes) if hasattr(m, "indexes") else [_g(m, "index")]
            if len(idxs) != 1:
                raise SelectorError(f"{field}.args", "matching several arguments at once ('args') is not supported; "
                                                     "write one matchArgs entry per argument")
            values = list(_g(m, "values") or [])
            _values_limit(values, f"{field}.values")
            _no_nul(values, f"{field}.values")
        rargs = list(_g(sel, "matchReturnArgs") or [])
        if len(rargs) > 1:
            raise SelectorError(f"{base}.matchReturnArgs", f"{len(rargs)} entries: at most 1 in the kernel")
        for m in rargs:
            values = list(_g(m, "values") or [])
            _values_limit(values, f"{base}.matchReturnArgs[0].values")
            _no_nul(values, f"{base}.matchReturnArgs[0].values")
        bins = list(_g(sel, "matchBinaries") or [])
        if len(bins) > MAX_BINS:
            raise SelectorError(f"{base}.matchBinaries", f"{len(bins)} entries: at most {MAX_BINS} in the kernel "
                                                         f"(entries are ANDed)")
        following = False
        for bi, b in enumerate(bins):
            bfield = f"{base}.matchBinaries[{bi}]"
            op, values = _g(b, "operator"), list(_g(b, "values") or [])
            _values_limit(values, f"{bfield}.values")
            _no_nul(values, f"{bfield}.values")
            if _g(b, "followChildren", False):
                if str(op).startswith("Not"):
                    raise SelectorError(f"{bfield}.followChildren",
                                        f"followChildren applies to In/Prefix/Postfix, not {op}")
                if following:
                    raise SelectorError(f"{bfield}.followChildren",
                                        "one matchBinaries entry with followChildren per selector in the kernel")
                following = True
        pids = list(_g(sel, "matchPIDs") or [])
        if len(pids) > MAX_PIDF:
            raise SelectorError(f"{base}.matchPIDs", f"{len(pids)} entries: at most {MAX_PIDF} in the kernel")
        forking = False
        for pi, p in enumerate(pids):
            field = f"{base}.matchPIDs[{pi}]"
            _values_limit(list(_g(p, "values") or []), f"{field}.values")
            if _g(p, "followForks") and _g(p, "operator") == "In":
                if forking:
                    raise SelectorError(f"{field}.followForks", "one followForks entry per selector in the kernel")
                forking = True
        nss = list(_g(sel, "matchNamespaces") or [])
        if len(nss) > MAX_NS:
            raise SelectorError(f"{base}.matchNamespaces", f"{len(nss)} entries: at most {MAX_NS} in the kernel")
        for ni, n in enumerate(nss):
            _values_limit(list(_g(n, "values") or []), f"{base}.matchNamespaces[{ni}].values")
        caps.check_caps(sel, base)
        acts = list(sel.actions) if hasattr(sel, "actions") else list(_g(sel, "matchActions") or [])
        names: list[str] = []
        signal: int | None = None
        for ai, a in enumerate(acts):
            name = _g(a, "action")
            names.append(name)
            if name == "Set":  # the usdt sensor takes its Set actions out before these checks
                raise SelectorError(f"{base}.matchActions[{ai}].action",
                                    "the Set action applies only to usdts (it overwrites a USDT argument)")
            sig = 9 if name == "Sigkill" else _g(a, "argSig") if name == "Signal" else None
            if sig is not None:
                if signal is not None and signal != sig:
                    why = ("two Signal actions with different argSig" if name == "Signal" and "Sigkill" not in names
                           else "Sigkill and Signal together")
                    raise SelectorError(f"{base}.matchActions[{ai}]", f"{why}: one signal per selector")
                signal = sig
        if "NoPost" in names and "Post" in names:
            raise SelectorError(f"{base}.matchActions", "Post and NoPost together")
        notify = [ai for ai, n in enumerate(names) if n in NOTIFY_BITS]
        if len(notify) > 1:
            raise SelectorError(f"{base}.matchActions[{notify[1]}].action",
                                "one GetUrl or DnsLookup action per selector (the event reports one action)")
        if notify and "NoPost" in names:
            raise SelectorError(f"{base}.matchActions[{notify[0]}].action",
                                f"{names[notify[0]]} with NoPost: the agent makes the request when it receives the "
                                "event, which NoPost withholds")
        if list(_g(sel, "matchReturnActions") or []):
            raise SelectorError(f"{base}.matchReturnActions", "matchReturnActions are not supported on this hook")


def compile_hook(
    *,
    policy_id: int,
    hook_id: int,
    kind: int,
    args: Sequence[ArgPlan],
    selectors: Sequence[Any],
    arg_position: Mapping[int, int],
    syscall_nr: int = -1,
    at_exit: bool = False,
    has_return: bool = False,
    cgroup_scoped: bool = False,
    host_ns: Mapping[str, int] | None = None,
    sock_positions: Mapping[int, int] | None = None,
) -> CompiledHook:
    """Build the ``sens_cfg`` of one hook.

    arg_position maps a selector's matchArgs ``index`` to the position of the argument in ``args``
    (kprobes: the declared ``args[].index``; tracepoints: the position in the list). Field paths in
    errors are relative to the hook item (``selectors[0].matchArgs[0].index``).

    sock_positions: ``{argSock (a position in the item's args list): position in args}``; None: no TrackSock.
    """
    if len(args) > MAX_ARGS:
        raise SelectorError("args", f"{len(args)} arguments: at most {MAX_ARGS} in the kernel")
    # The rules first, so a hook refused here is refused with the words `sensorium policy check` uses;
    # the bounds checks below stay as guards of the structures they fill.
    check_selectors(selectors)
    from sensorium.hooks.caps import compile_caps  # (it imports this module)

    cfg = HookCfg()
    cfg.policy_id, cfg.hook_id, cfg.kind = policy_id, hook_id, kind
    cfg.nargs, cfg.nsel, cfg.syscall_nr = len(args), len(selectors), syscall_nr
    flags = (CFG_AT_EXIT if at_exit else 0) | (CFG_CGROUP_SCOPED if cgroup_scoped else 0)
    for i, a in enumerate(args):
        d = cfg.args[i]
        d.kind, d.src, d.deref, d.size, d.is_signed = a.kind, a.from_, a.deref, a.size, int(a.signed)
        d.offset, d.max = a.offset, min(a.max, STR_MAX)
        d.resolve = int(a.resolve)
        d.has_dirfd = int(a.dirfd_offset is not None)
        d.dirfd_off = a.dirfd_offset or 0
        d.size_arg = 0xFF if a.size_arg is None else a.size_arg
        d.ret_fd = int(a.ret_fd)
        d.sys64 = int(a.type_name == "syscall64")  # a 32-bit task's id marked SYSCALL_I386, as Tetragon does
    strings = _Strings(cfg)
    follow_bins: dict[int, tuple[str, tuple[str, ...]]] = {}
    follow_pids: dict[int, tuple[bool, tuple[int, ...]]] = {}
    all_actions: list[list[str]] = []
    notify: dict[int, tuple[str, str]] = {}
    blocking = False
    ns_cache = host_ns
    for si, sel in enumerate(selectors):
        base = f"selectors[{si}]"
        out = cfg.sel[si]
        margs = list(_g(sel, "matchArgs") or [])
        if len(margs) > MAX_MATCH_ARGS:
            raise SelectorError(f"{base}.matchArgs", f"{len(margs)} entries: at most {MAX_MATCH_ARGS} in the kernel")
        out.nargs = len(margs)
        for mi, m in enumerate(margs):
            field = f"{base}.matchArgs[{mi}]"
            idxs = list(m.indexes) if hasattr(m, "indexes") else [_g(m, "index")]
            if len(idxs) != 1:
                raise SelectorError(f"{field}.args", "matching several arguments at once ('args') is not supported; "
                                                     "write one matchArgs entry per argument")
            if idxs[0] not in arg_position:
                raise SelectorError(f"{field}.index", f"index {idxs[0]} names no declared argument "
                                                      f"(declared: {sorted(arg_position)})")
            pos = arg_position[idxs[0]]
            _compile_match_arg(m, pos, args[pos], out.args[mi], strings, field)
        rargs = list(_g(sel, "matchReturnArgs") or [])
        if rargs:
            if not has_return:
                raise SelectorError(f"{base}.matchReturnArgs", "needs 'return: true'")
            if len(rargs) > 1:
                raise SelectorError(f"{base}.matchReturnArgs", f"{len(rargs)} entries: at most 1 in the kernel")
            ret_plan = ArgPlan(kind=ARG_INT, from_=FROM_RETVAL, offset=0, json_key="long_arg", signed=True,
                               type_name="return value")
            _compile_match_arg(rargs[0], 0, ret_plan, out.ret, strings, f"{base}.matchReturnArgs[0]")
            out.nret = 1
        bins = list(_g(sel, "matchBinaries") or [])
        if len(bins) > MAX_BINS:
            raise SelectorError(f"{base}.matchBinaries", f"{len(bins)} entries: at most {MAX_BINS} in the kernel "
                                                         f"(entries are ANDed)")
        out.nbins = len(bins)
        for bi, b in enumerate(bins):
            bfield = f"{base}.matchBinaries[{bi}]"
            op, values = _g(b, "operator"), list(_g(b, "values") or [])
            _values_limit(values, f"{bfield}.values")
            ob = out.bins[bi]
            ob.op = OPS[op]
            ob.nvals = len(values)
            ob.str_first = strings.add(values, f"{bfield}.values")
            if _g(b, "followChildren", False):
                if op.startswith("Not"):
                    raise SelectorError(f"{bfield}.followChildren",
                                        f"followChildren applies to In/Prefix/Postfix, not {op}")
                if si in follow_bins:
                    raise SelectorError(f"{bfield}.followChildren",
                                        "one matchBinaries entry with followChildren per selector in the kernel")
                ob.follow = 1
                follow_bins[si] = (op, tuple(values))
                flags |= CFG_FOLLOW
            flags |= CFG_NEED_BINARY
        pids = list(_g(sel, "matchPIDs") or [])
        if len(pids) > MAX_PIDF:
            raise SelectorError(f"{base}.matchPIDs", f"{len(pids)} entries: at most {MAX_PIDF} in the kernel")
        out.npids = len(pids)
        for pi, p in enumerate(pids):
            field = f"{base}.matchPIDs[{pi}]"
            values = [int(v) for v in _g(p, "values")]
            _values_limit(values, f"{field}.values")
            o = out.pids[pi]
            o.op, o.nvals = OPS[_g(p, "operator")], len(values)
            for i, v in enumerate(values):
                o.pids[i] = v
            o.flags = PID_NS if _g(p, "isNamespacePID") else 0
            if _g(p, "followForks") and _g(p, "operator") == "In":
                # NotIn with followForks compares the process itself (see docs/selectors.md)
                if si in follow_pids:
                    raise SelectorError(f"{field}.followForks", "one followForks entry per selector in the kernel")
                o.flags |= PID_FOLLOW
                follow_pids[si] = (bool(_g(p, "isNamespacePID")), tuple(values))
                flags |= CFG_FOLLOW
        nss = list(_g(sel, "matchNamespaces") or [])
        if len(nss) > MAX_NS:
            raise SelectorError(f"{base}.matchNamespaces", f"{len(nss)} entries: at most {MAX_NS} in the kernel")
        out.nns = len(nss)
        for ni, n in enumerate(nss):
            field = f"{base}.matchNamespaces[{ni}]"
            values = list(_g(n, "values"))
            _values_limit(values, f"{field}.values")
            name = _g(n, "namespace")
            o = out.ns[ni]
            o.ns, o.op, o.nvals = NS_IDS[name], OPS[_g(n, "operator")], len(values)
            for i, v in enumerate(values):
                if v == "host_ns":
                    if ns_cache is None:
                        ns_cache = host_namespace_inums()
                    if name not in ns_cache:
                        raise SelectorError(f"{field}.values[{i}]", f"cannot read the host's {name} namespace")
                    o.inums[i] = ns_cache[name]
                else:
                    o.inums[i] = int(v)
        def userns() -> int | None:
            nonlocal ns_cache
            if ns_cache is None:
                ns_cache = host_namespace_inums()
            return ns_cache.get("User")

        if compile_caps(sel, out, base, userns):
            flags |= CFG_CAP_CHANGES
        acts = list(sel.actions) if hasattr(sel, "actions") else list(_g(sel, "matchActions") or [])
        names: list[str] = []
        bits = 0
        for ai, a in enumerate(acts):
            name = _g(a, "action")
            field = f"{base}.matchActions[{ai}]"
            names.append(name)
            if name == "Post":
                bits |= ACT_POST
                if _g(a, "kernelStackTrace"):
                    out.stacks |= STACK_KERNEL
                if _g(a, "userStackTrace"):
                    out.stacks |= STACK_USER
                rl = a.rate_limit_ns if hasattr(a, "rate_limit_ns") else None
                if rl:
                    out.rl_ns = rl
                    out.rl_scope = RL_SCOPES[_g(a, "rateLimitScope") or "thread"]
            elif name == "NoPost":
                pass
            elif name in ("TrackSock", "UntrackSock"):
                if sock_positions is None or out.sock_act:
                    raise SelectorError(field, "one TrackSock/UntrackSock per selector" if out.sock_act else
                                        f"{name} is served on kernel-function hooks (kprobes, syscall: false)")
                n = int(_g(a, "argSock") or 0)
                spos = sock_positions.get(n)
                if spos is None or args[spos].kind != ARG_SOCK or args[spos].deref != DEREF_SOCK:
                    raise SelectorError(f"{field}.argSock", f"argSock {n} names no sock argument: it is the "
                                                            "position in args of an argument of type sock")
                out.sock_act, out.sock_arg = SOCK_TRACK if name == "TrackSock" else SOCK_UNTRACK, spos
            elif name == "Sigkill":
                if bits & ACT_SIGNAL and out.signal != 9:
                    raise SelectorError(field, "Sigkill and Signal together: one signal per selector")
                bits |= ACT_SIGKILL
                out.signal = 9
                blocking = True
            elif name == "Signal":
                if bits & ACT_SIGKILL and _g(a, "argSig") != 9:
                    raise SelectorError(field, "Sigkill and Signal together: one signal per selector")
                bits |= ACT_SIGNAL
                out.signal = int(_g(a, "argSig"))
                blocking = True
            elif name in NOTIFY_BITS:  # made by the agent from the event (sensorium.actions)
                bits |= NOTIFY_BITS[name]
                notify[si] = (name, str(_g(a, "argUrl") if name == "GetUrl" else _g(a, "argFqdn")))
            elif name == "Override":
                raise SelectorError(f"{field}.action",
                                    "Override is not implemented on tracepoint and syscall hooks: Sensorium serves "
                                    "them through tracepoints, which cannot change a return value (Tetragon "
                                    "overrides a syscall through fmod_ret on its __x64_sys_ function); use Sigkill, "
                                    "or an lsmhooks section")
            else:
                raise SelectorError(f"{field}.action", f"action {name} is not supported here")
        if "NoPost" not in names:
            bits |= ACT_POST
        if "NoPost" in names and "Post" in names:
            raise SelectorError(f"{base}.matchActions", "Post and NoPost together")
        if list(_g(sel, "matchReturnActions") or []):
            raise SelectorError(f"{base}.matchReturnActions", "matchReturnActions are not supported on this hook")
        out.actions = bits
        all_actions.append(names)
    cfg.flags = flags
    return CompiledHook(cfg=cfg, flags=flags, follow_binaries=follow_bins, follow_pids=follow_pids,
                        blocking=blocking, actions=all_actions, notify=notify)


# ---- the verifier budget: the most expensive configurations these limits allow ---------------------
# DESIGN.md: every program verifies in a small fraction of the kernel's 1M-instruction limit in its most
# expensive configuration. tests/test_verifier_budget.py loads each hook program with each configuration of
# sensorium.hooks.budget.worst_case_cfgs (built from the limits above, so raising a limit raises the worst case
# with it) and fails above:
VERIFIER_BUDGET = 200_000

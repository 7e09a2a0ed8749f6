"""Kernel structures as hook arguments: Tetragon's BTF-described argument types beyond files and sockets.

For each policy type (`KTYPES`): the C parameter types it reads (checked against the function's BTF
prototype), how the kernel reads it (an `ArgPlan` of the hook engine: capture.h reads the fields with CO-RE,
the offsets of the running kernel), how Tetragon shows it in the event's ``args`` (its KprobeArgument field),
and the matchArgs operators Tetragon takes on it -- none for most, which are then refused with the reason:

=============== ================================ ===================== =========================================
type            reads                            event argument        matchArgs
=============== ================================ ===================== =========================================
bpf_attr        union bpf_attr * (a prog load)   bpf_attr_arg          none
bpf_prog        struct bpf_prog *                bpf_prog_arg          none
bpf_map         struct bpf_map *                 bpf_map_arg           none
perf_event      struct perf_event *              perf_event_arg        none
user_namespace  struct user_namespace *          user_ns_arg           none
capability      int (a capability number)        capability_arg        none
load_info       struct load_info * (loading)     module_arg            none
module          struct module *                  module_arg            none
net_device      struct net_device *              net_dev_arg {name}    Equal, NotEqual, Prefix, NotPrefix,
                                                                       Postfix, NotPostfix (the name)
kernel_cap_t,   kernel_cap_t *                   kernel_cap_t_arg ...  Equal, NotEqual, Mask, GT, LT (numbers or
cap_*                                            (16 hex digits)       capability names joined by ",")
=============== ================================ ===================== =========================================

What is read of each is what Tetragon reads (bpf/process/types/basic.h: copy_bpf_attr, copy_bpf_prog,
copy_bpf_map, copy_perf_event, copy_user_ns, copy_load_module, copy_kernel_module) and how it is shown is
what Tetragon's user space makes of it (names of program, map and perf event types; ``is_host`` for a
user namespace of level 0; the taint bits of Tetragon's TaintedBitsType).
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Mapping
from typing import Any

from sensorium.hooks import selectors as S
from sensorium.policy import CAPABILITIES

__all__ = ["KType", "KTYPES", "KCAP_TYPES", "AUTO", "arg_plan", "render_struct", "render_int", "INT_KEYS",
           "STRUCT_KEYS", "PROG_TYPES", "MAP_TYPES", "PERF_TYPES", "TAINTS", "cap_name"]

_NO_OPS = ("Tetragon takes no operator on it (its selectors filter strings, integers, paths, sockets and "
           "capability sets); filter on another argument, or on the process")


@dataclasses.dataclass(frozen=True)
class KType:
    """One policy type: the C parameter types it reads and how (`arg_plan`)."""

    name: str
    ctypes: tuple[str, ...]     # C parameter types (as sensorium.bpf.btf spells them) it can read
    json_key: str               # Tetragon's KprobeArgument field
    kind: int
    deref: int
    ops: tuple[str, ...] = ()   # matchArgs operators (Tetragon's); () refused with `why`
    why: str = _NO_OPS
    size: int = 8
    signed: bool = False
    max: int = S.STR_MAX


KCAP_TYPES = ("kernel_cap_t", "cap_inheritable", "cap_permitted", "cap_effective")
_KCAP_C = ("kernel_cap_t *", "struct kernel_cap_struct *")  # u64 val since 6.3, a named struct of u32[2] before
_INT_C = ("int",)

KTYPES: Mapping[str, KType] = {t.name: t for t in (
    KType("bpf_attr", ("union bpf_attr *",), "bpf_attr_arg", S.ARG_STRUCT, S.DEREF_BPF_ATTR),
    KType("bpf_prog", ("struct bpf_prog *",), "bpf_prog_arg", S.ARG_STRUCT, S.DEREF_BPF_PROG),
    KType("bpf_map", ("struct bpf_map *",), "bpf_map_arg", S.ARG_STRUCT, S.DEREF_BPF_MAP),
    KType("perf_event", ("struct perf_event *",), "perf_event_arg", S.ARG_STRUCT, S.DEREF_PERF_EVENT),
    KType("user_namespace", ("struct user_namespace *",), "user_ns_arg", S.ARG_STRUCT, S.DEREF_USER_NS),
    KType("load_info", ("struct load_info *",), "module_arg", S.ARG_STRUCT, S.DEREF_LOAD_INFO),
    KType("module", ("struct module *",), "module_arg", S.ARG_STRUCT, S.DEREF_MODULE),
    KType("capability", _INT_C, "capability_arg", S.ARG_INT, S.DEREF_NONE, size=4, signed=True),
    KType("net_device", ("struct net_device *",), "net_dev_arg", S.ARG_STR, S.DEREF_NETDEV, ops=S.STRING_OPS,
          why="a net_device is matched by its name", max=16),
    *(KType(t, _KCAP_C, f"{t}_arg", S.ARG_INT, S.DEREF_KCAP, ops=S.INT_OPS,
            why="a capability set is matched as a 64-bit number") for t in KCAP_TYPES),
)}

# C parameter type -> the policy type ``auto`` reads it as (an int stays an integer, not a capability)
AUTO: Mapping[str, str] = {c: t.name for t in KTYPES.values() if t.name not in ("capability", *KCAP_TYPES[1:])
                           for c in t.ctypes}

INT_KEYS = frozenset(t.json_key for t in KTYPES.values() if t.kind == S.ARG_INT)
STRUCT_KEYS = frozenset(t.json_key for t in KTYPES.values() if t.kind != S.ARG_INT)


def arg_plan(typ: str, from_: int, offset: int, label: str | None) -> S.ArgPlan:
    """The engine's plan for a parameter of policy type ``typ`` (a key of `KTYPES`), read from ``from_``
    (FROM_SYSCALL: a kernel function's parameters; FROM_RAW: an LSM hook's) at ``offset``."""
    t = KTYPES[typ]
    return S.ArgPlan(kind=t.kind, from_=from_, offset=offset, json_key=t.json_key, deref=t.deref, size=t.size,
                     signed=t.signed, max=t.max, label=label, type_name=typ, ops=t.ops, ops_why=t.why)


# ---- rendering: Tetragon's names --------------------------------------------------------------------

# enum bpf_prog_type, enum bpf_map_type (include/uapi/linux/bpf.h): a test compares them with the kernel's BTF
PROG_TYPES = tuple("BPF_PROG_TYPE_" + n for n in (
    "UNSPEC", "SOCKET_FILTER", "KPROBE", "SCHED_CLS", "SCHED_ACT", "TRACEPOINT", "XDP", "PERF_EVENT", "CGROUP_SKB",
    "CGROUP_SOCK", "LWT_IN", "LWT_OUT", "LWT_XMIT", "SOCK_OPS", "SK_SKB", "CGROUP_DEVICE", "SK_MSG", "RAW_TRACEPOINT",
    "CGROUP_SOCK_ADDR", "LWT_SEG6LOCAL", "LIRC_MODE2", "SK_REUSEPORT", "FLOW_DISSECTOR", "CGROUP_SYSCTL",
    "RAW_TRACEPOINT_WRITABLE", "CGROUP_SOCKOPT", "TRACING", "STRUCT_OPS", "EXT", "LSM", "SK_LOOKUP", "SYSCALL",
    "NETFILTER"))
MAP_TYPES = tuple("BPF_MAP_TYPE_" + n for n in (
    "UNSPEC", "HASH", "ARRAY", "PROG_ARRAY", "PERF_EVENT_ARRAY", "PERCPU_HASH", "PERCPU_ARRAY", "STACK_TRACE",
    "CGROUP_ARRAY", "LRU_HASH", "LRU_PERCPU_HASH", "LPM_TRIE", "ARRAY_OF_MAPS", "HASH_OF_MAPS", "DEVMAP", "SOCKMAP",
    "CPUMAP", "XSKMAP", "SOCKHASH", "CGROUP_STORAGE", "REUSEPORT_SOCKARRAY", "PERCPU_CGROUP_STORAGE", "QUEUE",
    "STACK", "SK_STORAGE", "DEVMAP_HASH", "STRUCT_OPS", "RINGBUF", "INODE_STORAGE", "TASK_STORAGE", "BLOOM_FILTER",
    "USER_RINGBUF", "CGRP_STORAGE", "ARENA"))
# Tetragon's table (pkg/bpf): uapi/linux/perf_event.h's perf_type_id; a dynamic PMU (kprobe, uprobe) has a
# number of its own, written as that number unless it is 6 ("PERF_TYPE_MAX", as Tetragon writes it)
PERF_TYPES = ("PERF_TYPE_HARDWARE", "PERF_TYPE_SOFTWARE", "PERF_TYPE_TRACEPOINT", "PERF_TYPE_HW_CACHE",
              "PERF_TYPE_RAW", "PERF_TYPE_BREAKPOINT", "PERF_TYPE_MAX")
# Tetragon's TaintedBitsType: its value is the bit it tests in the module's taints (kernel.GetTaintedBitsTypes)
TAINTS: tuple[tuple[int, str], ...] = (
    (1, "TAINT_PROPRIETARY_MODULE"), (2, "TAINT_FORCED_MODULE"), (4, "TAINT_FORCED_UNLOAD_MODULE"),
    (1024, "TAINT_STAGED_MODULE"), (4096, "TAINT_OUT_OF_TREE_MODULE"), (8192, "TAINT_UNSIGNED_MODULE"),
    (32768, "TAINT_KERNEL_LIVE_PATCH_MODULE"), (262144, "TAINT_TEST_MODULE"))
_CAP_NAMES = {i: name for name, i in CAPABILITIES.items() if name.startswith("CAP_")}


def cap_name(value: int) -> str:
    """A capability number by its name (CAP_SYS_ADMIN), as Tetragon's KprobeCapability.name; "" if unknown."""
    return _CAP_NAMES.get(value, "")


def _name(table: tuple[str, ...], v: int) -> str:
    return table[v] if 0 <= v < len(table) else str(v)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def render_int(key: str, v: int) -> Any:
    """The value of an integer kernel-structure argument (``key`` in `INT_KEYS`): a capability by number and
    name, a capability set as 16 hex digits (Tetragon's caps.GetCapabilitiesHex)."""
    if key == "capability_arg":
        return {"value": v, "name": cap_name(v)}
    return f"{v & 0xFFFFFFFFFFFFFFFF:016x}"


def _load(cls: type[ctypes.Structure], data: bytes) -> Any:
    return cls.from_buffer_copy(data[:ctypes.sizeof(cls)].ljust(ctypes.sizeof(cls), b"\0"))


def render_struct(key: str, deref: int, data: bytes) -> Any:
    """The value of a string or structure kernel-structure argument (``key`` in `STRUCT_KEYS`) from its
    payload (``data``: the name of a net_device; a struct sens_k_* otherwise). An empty payload (a NULL
    pointer, a structure this kernel lacks) renders as Tetragon's zero message."""
    if key == "net_dev_arg":
        return {"name": data.decode("utf-8", "backslashreplace")}
    if deref in (S.DEREF_BPF_ATTR, S.DEREF_BPF_PROG):
        p = _load(S.SensKBpfProg, data)
        return {"ProgType": _name(PROG_TYPES, p.prog_type), "InsnCnt": p.insn_cnt, "ProgName": _text(p.name)}
    if deref == S.DEREF_BPF_MAP:
        m = _load(S.SensKBpfMap, data)
        return {"MapType": _name(MAP_TYPES, m.map_type), "KeySize": m.key_size, "ValueSize": m.value_size,
                "MaxEntries": m.max_entries, "MapName": _text(m.name)}
    if deref == S.DEREF_PERF_EVENT:
        e = _load(S.SensKPerfEvent, data)
        out0: dict[str, Any] = {"KprobeFunc": _text(e.kprobe_func), "Type": _name(PERF_TYPES, e.type)}
        # uint64 fields: protojson leaves a zero out (a "0" string would not be Tetragon's export)
        if e.config:
            out0["Config"] = e.config
        if e.probe_offset:
            out0["ProbeOffset"] = e.probe_offset
        return out0
    if deref == S.DEREF_USER_NS:
        u = _load(S.SensKUserNs, data)
        return {"level": u.level, "uid": u.owner, "gid": u.group, "ns": {"inum": u.inum, "is_host": u.level == 0}}
    if deref in (S.DEREF_LOAD_INFO, S.DEREF_MODULE):
        k = _load(S.SensKModule, data)
        out: dict[str, Any] = {"name": _text(k.name)}
        if deref == S.DEREF_LOAD_INFO and k.sig_ok != 2:  # 2: the kernel has no module signatures to report
            out["signature_ok"] = k.sig_ok == 1
        tainted = [name for bit, name in TAINTS if k.taints & bit]
        if tainted:
            out["tainted"] = tainted
        return out
    return {}

"""The policy-hook engine shared by the tracepoint and kprobe sensors (and reusable by uprobe/lsm).

One hook of a policy = one instance of the ``hook.bpf.c`` object, configured by its rodata
(`sensorium.selectors.compile_hook`), attached as a tracepoint, raw tracepoint, raw_tp
sys_enter/sys_exit, or a uprobe/uretprobe (uprobe sensor). Every hook object of a sensor writes into
the sensor's one ring buffer (the map is shared with ``bpf_map__reuse_fd``), so loading and unloading
policies never adds rings to the agent's reader. `HookSet` is the `PolicyHandle` of a section: it
loads whole or undoes and raises.

Scope (``PolicyView.scope``): None loads the hooks host-wide, with no check at all; a `Scope` sets
``SENS_CFG_CGROUP_SCOPED`` in every hook's rodata and fills its ``sens_scope`` map (sensorium/scope.h)
before anything attaches, so a scoped hook never runs unscoped. `HookSet.set_scope` replaces the scope
live in every object of the section.
"""

from __future__ import annotations

import base64
import ctypes
import dataclasses
import os
import re
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sensorium import events as _events
from sensorium import schema
from sensorium.bpf.scope import ScopeMap, scope_entries
from sensorium.events import Event, EventBatch, LazyEvent
from sensorium.hookspecs import PolicyLoadError, ProbeSource, Scope, SensorContext
from sensorium import selectors as S
from sensorium_sensors.tracepoint import native as _native

__all__ = ["HOOK_PROBE", "HookPlan", "HookSet", "EventRing", "HookSensor", "HookSensorOptions", "SYSCALL_ABI",
           "DROP_REASONS", "render_args"]

class HookSensorOptions(BaseModel):
    """``sensors: {tracepoint: {...}}`` / ``sensors: {kprobe: {...}}``"""

    model_config = ConfigDict(extra="forbid")
    ring_buffer_kb: int = Field(default=4096, ge=64, le=1 << 20,
                                description="Size of the sensor's one ring buffer, shared by all its hooks "
                                            "(rounded up to a power of two, in KiB)")
    opened_file_paths: bool = Field(
        default=True,
        description="kprobe sensor: for open/openat/openat2/creat, match the path of the file actually opened "
                    "(sys_exit, follows symlinks; opens no rule can match are rejected early from the path's "
                    "length and first/last component) instead of the string made absolute at entry "
                    "(docs/selectors.md)")


HOOK_PROBE = ProbeSource(name="sens_hook", source=Path(__file__).resolve().parent / "hook.bpf.c")
# The same object with sens_open_exit (selectors.h, SENS_OPEN_EXIT): opened-file syscalls at sys_exit alone.
HOOK_OPEN_PROBE = ProbeSource(name="sens_hook_open", source=HOOK_PROBE.source, defines={"SENS_OPEN_EXIT": "1"})
OPEN_EXIT_MECHANISM = "tp_btf sys_exit"
# What the open-exit object needs to load at all (its kfunc is resolved for the whole object).
OPEN_EXIT_NEEDS = frozenset({"tp_btf", "bpf_rdonly_cast"})
PAIR_MECHANISM = "raw_tp sys_enter + sys_exit"  # as sensors/kprobe/sensor.py names it
# False: serve opened-file hooks with the sys_enter + sys_exit pair too (the benchmark compares both; the
# decisions are the same).
OPEN_EXIT_ENABLED = True
# sens_mode values (sensorium/hook/defs.h): 0 enforcement, 1 monitoring, 2 attached but not active yet
# (SENS_MODE_INACTIVE: a transaction's hooks between commit and activate do nothing at all).
MODE_INACTIVE = 2
SYSCALL_ABI = "x64"

_EV = struct.Struct("<HHIQII II q Q BBBB I")  # sens_event
_ARG = struct.Struct("<BBHI")                 # sens_arg_rec
_Q = struct.Struct("<Q")
_EV_SIZE = _EV.size
assert S.EV_HAS_RET == 2 and S.ACT_SIGKILL | S.ACT_SIGNAL == 6  # inlined in EventRing.decode
assert _EV.size == ctypes.sizeof(S.SensEvent), (_EV.size, ctypes.sizeof(S.SensEvent))

_ACTION_NAMES = {S.ACT_SIGKILL: "KPROBE_ACTION_SIGKILL", S.ACT_SIGNAL: "KPROBE_ACTION_SIGNAL"}

DROP_REASONS = ("short", "truncated", "bad_argument", "bad_selector", "not_a_hook_record", "unknown_hook")
"""Why `EventRing` dropped a record: shorter than a ``sens_event``; shorter than its ``data_len``; an argument
cut, of another kind than the hook's, or data left after them (`render_args`); a signal action from a
selector the hook does not have; a record type other than ``REC_HOOK``; a (policy, hook) not loaded
(records in flight when a hook is unloaded: not malformed)."""


@dataclasses.dataclass
class HookPlan:
    """Everything needed to load one hook and render its events."""

    hook: str                          # for errors/status, e.g. "tracepoints[0] syscalls/sys_enter_openat"
    field: str                         # field path of the item, e.g. "spec.tracepoints[0]"
    compiled: S.CompiledHook
    args: Sequence[S.ArgPlan]
    attach: tuple[str, ...]            # ("tp", subsys, event) | ("raw", name) | ("syscall", at_exit)
    mechanism: str
    note: str
    body: Mapping[str, Any]            # fixed event fields (subsys/event or function_name ...)
    kind: str = "process_tracepoint"
    return_plan: S.ArgPlan | None = None
    fast: list[tuple[S.ArgPlan, tuple | None]] = dataclasses.field(default_factory=list)
    ret_fast: tuple | None = None

    def __post_init__(self) -> None:
        # Per argument, what the decoder can render inline: (json key, value mask, sign bit, quoted) for
        # plain integers (quoted: a 64-bit integer, a JSON string as in Tetragon's JSON), (json key,) for
        # plain strings; None means "call the general renderer".
        fast: list[tuple[S.ArgPlan, tuple | None]] = []
        for ap in self.args:
            f: tuple | None = None
            if ap.label is None and ap.json_key not in ("syscall_id",):
                if ap.kind == S.ARG_INT:
                    bits = ap.size * 8
                    f = (ap.json_key.encode(), (1 << bits) - 1, (1 << (bits - 1)) if ap.signed else 1 << 64,
                         ap.json_key in _I64_ARGS)
                elif ap.json_key == "string_arg":
                    f = ("string_arg",)
            fast.append((ap, f))
        self.fast = fast
        rp = self.return_plan
        self.ret_fast = None
        if rp is not None and rp.label is None and rp.json_key != "syscall_id":
            bits = rp.size * 8
            self.ret_fast = (rp.json_key.encode(), (1 << bits) - 1, (1 << (bits - 1)) if rp.signed else 1 << 64,
                             rp.json_key in _I64_ARGS)


# ---- early rejection of opened files (struct sens_pq_cfg in selectors.h) -----------------------------
PQ_LEAF, PQ_TOP, PQ_NEVER = 1, 2, 3
PQ_EXACT, PQ_STARTS, PQ_ENDS = 1, 2, 3
PQ_LEN_EQ, PQ_LEAF_FIRST = 1, 2


class PqVal(ctypes.Structure):
    _fields_ = [("vlen", ctypes.c_uint16), ("flags", ctypes.c_uint8), ("comp", ctypes.c_uint8),
                ("mode", ctypes.c_uint8), ("clen", ctypes.c_uint8), ("str", ctypes.c_uint8), ("coff", ctypes.c_uint8)]


class PqGroup(ctypes.Structure):
    _fields_ = [("nvals", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 7), ("v", PqVal * S.MAX_VALUES)]


class PqSel(ctypes.Structure):
    _fields_ = [("ngroups", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 7), ("g", PqGroup * S.MAX_MATCH_ARGS)]


class PqCfg(ctypes.Structure):
    """``struct sens_pq_cfg``: the rodata ``sens_pq`` of the opened-file object."""

    _fields_ = [("on", ctypes.c_uint8), ("leaf_first", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 6),
                ("sel", PqSel * S.MAX_SELECTORS)]


_PQ_OPS = {S.OPS["Equal"]: "eq", S.OPS["In"]: "eq", S.OPS["Prefix"]: "prefix", S.OPS["Postfix"]: "postfix"}


def pq_value(op: str, v: bytes) -> tuple[int, int, int, int, int, int]:
    """(vlen, flags, comp, mode, clen, coff) of one string value: conditions that the opened file's path S
    (absolute, "/" + components joined by "/", no empty component) meets whenever S matches ``v``:

    Equal v:   len(S) == len(v) and S's last component == v's part after its last "/" (v must start with "/");
    Prefix v:  len(S) >= len(v) and S's first component == v's first component when v goes on past it with
               "/", else starts with it (v must start with "/");
    Postfix v: len(S) >= len(v) and S's last component == v's part after its last "/", or ends with v
               when v has no "/".
    The kernel checks them on paths it walked completely and that fit a captured string (255 bytes).
    PQ_LEAF_FIRST: the last-component condition also holds for a path cut at 255 bytes, so it is checked
    before the walk (an Equal value shorter than 255 bytes can only equal a path that was not cut).
    """
    n = len(v)
    if op == "eq":
        if not v.startswith(b"/"):
            return (n, 1, PQ_NEVER, 0, 0, 0)
        last = v.rfind(b"/")
        return (n, PQ_LEN_EQ | (PQ_LEAF_FIRST if n < S.STR_MAX - 1 else 0), PQ_LEAF, PQ_EXACT, n - last - 1, last + 1)
    if op == "prefix":
        if not v.startswith(b"/"):
            return (n, 0, PQ_NEVER, 0, 0, 0)
        rest = v[1:]
        if not rest:
            return (n, 0, 0, 0, 0, 0)
        if b"/" in rest:
            return (n, 0, PQ_TOP, PQ_EXACT, rest.index(b"/"), 1)
        return (n, 0, PQ_TOP, PQ_STARTS, len(rest), 1)
    if b"/" in v:
        last = v.rfind(b"/")
        return (n, 0, PQ_LEAF, PQ_EXACT, n - last - 1, last + 1)
    return (n, 0, PQ_LEAF, PQ_ENDS, n, 0)


def open_exit_filter(cfg: S.HookCfg) -> PqCfg:
    """The early-rejection table of a hook whose path argument is the opened file (``ret_fd``): per selector,
    its matchArgs with a positive string operator on that argument. ``on`` only when every selector has
    one (a selector without any may match anything, so nothing can be rejected early)."""
    pq = PqCfg()
    if cfg.nsel == 0:
        return pq
    on = True
    for i in range(cfg.nsel):
        sel, out = cfg.sel[i], pq.sel[i]
        for k in range(sel.nargs):
            m = sel.args[k]
            if m.arg >= cfg.nargs or not cfg.args[m.arg].ret_fd or cfg.args[m.arg].kind != S.ARG_STR:
                continue
            op = _PQ_OPS.get(m.op)
            if op is None or m.nvals == 0:
                continue
            grp = out.g[out.ngroups]
            for j in range(m.nvals):
                si = m.str_first + j
                st = cfg.strs[si]
                v = bytes(st.s[:st.len]) if st.len <= S.STR_MAX - 1 else None
                if v is None or len(v) != st.len:  # a NUL inside: never rejected early
                    pv = (st.len, 0, 0, 0, 0, 0)
                else:
                    pv = pq_value(op, v)
                d = grp.v[j]
                d.vlen, d.flags, d.comp, d.mode, d.clen, d.coff = pv
                d.str = si
                if pv[1] & PQ_LEAF_FIRST:
                    pq.leaf_first = 1
            grp.nvals = m.nvals
            out.ngroups += 1
        if out.ngroups == 0:
            on = False
    pq.on = int(on)
    return pq


def _set_reuse_proto() -> Callable[[int, int], int]:
    from sensorium.bpf.libbpf import lib

    f = lib().bpf_map__reuse_fd
    f.restype, f.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]
    return f


class EventRing:
    """The sensor's one ring buffer (a maps-only instance of the hook object) and its decoder."""

    def __init__(self, ctx: SensorContext, sensor: str) -> None:
        self.ctx, self.sensor = ctx, sensor
        self.obj: Any = None
        self.hooks: dict[tuple[int, int], tuple[HookPlan, str, "HookSet"]] = {}
        self.lock = threading.Lock()
        # Records the decoder did not turn into events, by reason (`DROP_REASONS`): none is dropped silently.
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._quick_cache: dict[int, tuple[tuple, Any]] = {}
        self._native_fmt: tuple[Any, Any] | None = None  # (hooks dict it was built for, native.Formatter)

    def start(self) -> None:
        obj = self.ctx.open_object(self.ctx.build(HOOK_PROBE))
        for p in obj.programs.values():
            p.set_autoload(False)
        kb = int((self.ctx.config or {}).get("ring_buffer_kb", 4096))
        size = 1 << max(16, (kb * 1024 - 1).bit_length())  # a power of two, at least 64 KiB
        obj.map("sens_events").set_max_entries(size)
        obj.load()
        self.obj = obj
        m = obj.map("sens_events")
        m.native_drain = True  # the reader may hand `decode` RecordBlobs (core/bpf/ringbuf.py)
        self.ctx.add_ring_buffer(m, self.decode)

    @property
    def fd(self) -> int:
        return self.obj.map("sens_events").fd

    @property
    def decode_errors(self) -> int:
        """Malformed records dropped (every reason but ``unknown_hook``, which is a record in flight when its
        hook was unloaded)."""
        return sum(v for k, v in self.dropped.items() if k != "unknown_hook")

    def stop(self) -> None:
        if self.obj is not None:
            try:
                self.obj.close()
            except Exception:
                pass
            self.obj = None

    # -- decoding (reader thread) -----------------------------------------------------------------
    def decode(self, records: Sequence[bytes]) -> Sequence[Event]:
        """Records of one batch -> an `EventBatch`: each event's JSON assembled here from byte fragments,
        with no object made per event (the `LazyEvent`, and its body dict by `_body_of`, only when
        someone reads the events; a test checks that both give the same content).

        Per batch, each pid's process and parent are looked up in the process cache and encoded once
        (the batch spans a few milliseconds: the same view every event of that pid got one by one)."""
        node_name = getattr(self.ctx, "node_name", None)
        if not isinstance(node_name, str):  # a context without a node name: one dict per event
            return self.decode_dicts(records)
        hooks = self.hooks
        pc = getattr(self.ctx, "process_cache", None)
        pc_get = pc.get if pc is not None else None
        tail_node = b'},"node_name":' + orjson.dumps(node_name) + b',"time":'
        heads: list[bytes] = []
        rests: list[bytes] = []
        recs: list[bytes] = []
        # per (policy, hook, pid): (index in ctxs, JSON head up to the args, policy_name JSON, plan, HookSet,
        # state: 1 in the cache, 2 in it without exec_id, 0 not in it (head is then a format of pid and tid))
        memo: dict[tuple[int, int, int], tuple] = {}
        ctxs: list[tuple] = []  # (plan, policy_name, process, parent); process None: not in the cache
        resolved = True
        unpack_ev = _EV.unpack_from
        unpack_arg = _ARG.unpack_from
        unpack_argq = _ARGQ.unpack_from
        unpack_q = _Q.unpack_from
        boot = _events.BOOT_WALL_NS
        unsafe = _UNSAFE
        dumps = orjson.dumps
        cur_secs, cur_time = -1, b""
        ext = schema.extended()  # our own fields (cgroup_id) too
        add_head, add_rest, add_rec = heads.append, rests.append, recs.append
        nat = self._native(records, tail_node, boot) if records else None
        if nat is not None:
            status, out, out_end = nat[0], nat[1], nat[2]
            if status.count(0) == len(status):  # every record rendered natively: no loop per record here
                done = self._native_batch(records, nat, memo, ctxs, pc_get)
                if done is not None:
                    heads, rests, resolved = done
                    recs = records  # a RecordBlob makes its bytes only if an event is made from them
                    return self._batch(heads, rests, recs, memo, ctxs, node_name, boot, resolved)
        else:
            status = None
        dropped = self.dropped
        for i, rec in enumerate(records):
            n = len(rec)
            if n < _EV_SIZE:
                dropped["short"] += 1
                continue
            (rtype, _f, _size, ktime, pid, tid, policy_id, hook_id, retval, cgroup_id, sel, actions, flags, _n,
             data_len) = unpack_ev(rec)
            if rtype != S.REC_HOOK:
                dropped["not_a_hook_record"] += 1
                continue
            m = memo.get((policy_id, hook_id, pid))
            if m is None:
                entry = hooks.get((policy_id, hook_id))
                if entry is None:
                    dropped["unknown_hook"] += 1  # a hook unloaded while its last records were in flight
                    continue
                m = memo[(policy_id, hook_id, pid)] = self._head(entry, pid, pc_get, ctxs) + (self._quick(entry),)
            ci, head, pname, plan, hs, state, quick = m
            end = _EV_SIZE + data_len
            if end > n:  # the record is shorter than its own data: cut somewhere
                dropped["truncated"] += 1
                continue
            if actions & 6 and sel >= plan.compiled.cfg.nsel:  # a signal only ever comes from a selector
                dropped["bad_selector"] += 1
                continue
            if state != 1:
                if not state:  # not in the process cache (or no cache): pid and this record's tid
                    head = head % (pid, tid)
            wall = boot + ktime
            secs, nanos = divmod(wall, 1_000_000_000)
            if secs != cur_secs:  # the formatted second changes once a second (see rfc3339_json)
                cur_secs, cur_time = secs, tail_node + _events.rfc3339_json(secs * 1_000_000_000)[:-12]
            if status is not None and not status[i]:  # rendered by fastrest.c
                hs.events += 1
                resolved = resolved and state == 1
                add_head(head)
                add_rest(out[out_end[i - 1] if i else 0:out_end[i]])
                add_rec(rec)
                continue
            if quick is not None:  # the hook's usual record shape in one format (see _quick_rest)
                rest = quick(rec, end, flags, retval, actions, cgroup_id if ext else 0, cur_time, nanos)
                if rest is not None:
                    hs.events += 1
                    resolved = resolved and state == 1
                    add_head(head)
                    add_rest(rest)
                    add_rec(rec)
                    continue
            # arguments: the walk of `render_args` (the same checks, inlined for speed)
            parts = []
            pos = _EV_SIZE
            for ap, fast in plan.fast:
                if pos >= end:
                    break  # fewer arguments than the hook has: the kernel ran out of room for the next
                if pos + 16 <= end:  # header and (for an integer) value in one call
                    kind, aflags, alen, _, v = unpack_argq(rec, pos)
                elif pos + 8 <= end:
                    kind, aflags, alen, _ = unpack_arg(rec, pos)
                    v = None
                else:
                    break  # a header cut short: pos != end below
                if kind != ap.kind:
                    pos = -1  # another kind of argument than the hook's: not a record of this hook
                    break
                pos += 8
                if kind == 1:  # S.ARG_INT
                    if v is None:
                        pos = -1  # the value is cut
                        break
                    pos += 8
                    if fast is not None and len(fast) == 4:  # a plain integer (the kind the plan expects)
                        jkey, mask, sign, q = fast
                        v &= mask
                        if v >= sign:
                            v -= sign << 1
                        parts.append((b'{"%b":"%d"}' if q else b'{"%b":%d}') % (jkey, v))
                    else:
                        parts.append(dumps(schema.conform_arg(_render_int(ap, v))))
                else:
                    raw = rec[pos:pos + alen]
                    pos += (alen + 7) & ~7
                    if pos > end:
                        break  # longer than the record's data
                    if fast is not None and len(fast) == 1 and not aflags:
                        if unsafe(raw) is None:  # nothing JSON must escape: the bytes as they are
                            parts.append(b'{"string_arg":"%b"}' % raw)
                        else:
                            parts.append(b'{"string_arg":%b}' % dumps(raw.decode("utf-8", "backslashreplace")))
                    else:
                        parts.append(dumps(schema.conform_arg(_render_bytes(ap, raw, aflags))))
            if pos != end:  # an argument cut, of another kind, or bytes the hook's arguments do not explain
                dropped["bad_argument"] += 1
                continue
            hs.events += 1
            resolved = resolved and state == 1
            if flags & 2 and plan.return_plan is not None and schema.exported(plan.kind, "return"):  # S.EV_HAS_RET
                rf = plan.ret_fast
                if rf is not None:
                    rkey, mask, sign, q = rf
                    v = retval & mask
                    if v >= sign:
                        v -= sign << 1
                    tail = (b'],"return":{"%b":"%d"}%b' if q else b'],"return":{"%b":%d}%b') % (rkey, v, pname)
                else:
                    tail = (b'],"return":'
                            + dumps(schema.conform_arg(_render_int(plan.return_plan, retval & 0xFFFFFFFFFFFFFFFF)))
                            + pname)
            else:
                tail = b"]" + pname
            if actions & 6:  # S.ACT_SIGKILL | S.ACT_SIGNAL
                act = b"," + dumps(schema.conform_body(plan.kind, _action_fields(plan, sel, actions, flags)))[1:-1]
            else:
                act = b',"action":"KPROBE_ACTION_POST"'
            if cgroup_id and ext:
                act += b',"cgroup_id":%d' % cgroup_id
            add_head(head)
            add_rest(b',"args":[%b%b%b%b.%09dZ"}\n' % (b",".join(parts), tail, act, cur_time, nanos))
            add_rec(rec)

        return self._batch(heads, rests, recs, memo, ctxs, node_name, boot, resolved)

    def _batch(self, heads: list[bytes], rests: list[bytes], recs: list[bytes], memo: dict, ctxs: list,
               node_name: str, boot: int, resolved: bool) -> EventBatch:
        unpack_ev = _EV.unpack_from
        # Each event's kind, for counting: one list multiplication when the batch has one kind (a sensor's
        # hooks usually share it), else read back per record.
        kindset = {m[3].kind for m in memo.values()}
        if len(kindset) == 1:
            kinds = [kindset.pop()] * len(recs)
        else:
            kinds = [memo[(f[6], f[7], f[4])][3].kind for f in map(unpack_ev, recs)]

        def make(i: int) -> Event:
            rec = recs[i]
            f = unpack_ev(rec)
            plan, policy_name, proc, parent = ctxs[memo[(f[6], f[7], f[4])][0]]
            if proc is None:
                proc = {"pid": f[4], "tid": f[5]}
            return LazyEvent(plan.kind, node_name, boot + f[3], heads[i] + rests[i][:-1], proc, _body_of,
                             (rec, plan, policy_name, proc, parent))

        return EventBatch(heads, rests, kinds, make, resolved=resolved)

    @property
    def decoder(self) -> str:
        """How records are rendered: "native" (fastrest.c) or "python (<why>)"."""
        if not _native.enabled():
            return "python (SENSORIUM_NATIVE_DECODE=0)"
        _native.load()
        return _native.STATUS

    @property
    def drain(self) -> str:
        """How the ring is drained: "native" (ringdrain.c) or "python (<why>)"."""
        from sensorium.bpf import ringbuf

        return ringbuf.DRAIN_STATUS if _native.enabled() else "python (SENSORIUM_NATIVE_DECODE=0)"

    def _native(self, records: Sequence[bytes], tail_node: bytes, boot: int) -> tuple | None:
        """fastrest.c's pass over the batch (see `native.Formatter.format`), None: Python does it all."""
        if not _native.enabled() or _native.load() is None:
            return None
        hooks = self.hooks
        nf = self._native_fmt
        if nf is None or nf[0] is not hooks:  # hooks are replaced, never changed in place (copy-on-write)
            specs = [(k[0], k[1], e[0] if self._quick(e) is not None else None, e[1]) for k, e in hooks.items()]
            nf = self._native_fmt = (hooks, _native.Formatter(_native.load(), specs))
        try:
            return nf[1].format(records, tail_node, boot)
        except Exception:  # noqa: BLE001 - only an optimisation: the Python path does it all
            return None

    def _native_batch(self, records: Sequence[bytes], nat: tuple, memo: dict, ctxs: list,
                      pc_get: Any) -> tuple[list[bytes], list[bytes], bool] | None:
        """Heads and rests of a batch fastrest.c rendered whole: one head per (policy, hook, pid) (per
        thread when the process is not in the cache), as the loop of `decode` makes them."""
        _status, out, out_end, slot, slots, slot_n, ns = nat
        hooks = self.hooks
        slot_heads: list[bytes] = []
        counts: list[tuple[Any, int]] = []
        resolved = True
        for s in range(ns):
            policy_id, hook_id, pid, tid = slots[4 * s:4 * s + 4]
            m = memo.get((policy_id, hook_id, pid))
            if m is None:
                entry = hooks.get((policy_id, hook_id))
                if entry is None:
                    return None
                m = memo[(policy_id, hook_id, pid)] = self._head(entry, pid, pc_get, ctxs) + (self._quick(entry),)
            head, state = m[1], m[5]
            if state != 1:
                resolved = False
                if not state:
                    head = head % (pid, tid)
            slot_heads.append(head)
            counts.append((m[4], slot_n[s]))
        for hs, k in counts:
            hs.events += k
        heads = list(map(slot_heads.__getitem__, slot)) if ns > 1 else [slot_heads[0]] * len(slot)
        # Every rest ends with its one newline and holds no other line break (strings with control
        # characters are never rendered natively; the JSON fragments escape theirs): split in one call.
        rests = out.splitlines(True)
        if len(rests) != len(slot):  # cannot happen (see above); never hand out misaligned lines
            return None
        return heads, rests, resolved

    def _quick(self, entry: tuple) -> Callable[..., bytes | None] | None:
        """The generated formatter of one hook's usual records (cached per loaded hook)."""
        got = self._quick_cache.get(id(entry))
        if got is None or got[0] is not entry:
            try:
                fn = _quick_rest(entry[0], entry[1])
            except Exception:  # noqa: BLE001 - only an optimisation: the general path does it all
                fn = None
            if len(self._quick_cache) > 256:
                self._quick_cache.clear()
            got = self._quick_cache[id(entry)] = (entry, fn)
        return got[1]

    @staticmethod
    def _head(entry: tuple, pid: int, pc_get: Any, ctxs: list[tuple]) -> tuple:
        """What the events of one hook and one pid share in a batch (see `decode`)."""
        plan, policy_name, hs = entry
        proc = parent = None
        if pc_get is not None:
            try:
                proc, parent = pc_get(pid)
            except Exception:
                proc = parent = None
        pname = b',"policy_name":' + orjson.dumps(policy_name)
        kind = b'{"' + plan.kind.encode() + b'":{"process":'
        mid = _json_middle(schema.conform_body(plan.kind, plan.body))
        if not proc:
            ctxs.append((plan, policy_name, None, None))
            return len(ctxs) - 1, kind.replace(b"%", b"%%") + b'{"pid":%d,"tid":%d}' + mid.replace(b"%", b"%%"), \
                pname, plan, hs, 0
        head = kind + orjson.dumps(schema.conform_process(proc))
        if parent:
            head += b',"parent":' + orjson.dumps(schema.conform_process(parent))
        else:
            parent = None
        ctxs.append((plan, policy_name, proc, parent))
        # 1: ProcessJoin has nothing to add (a cache entry without exec_id is not resolved: 2)
        return len(ctxs) - 1, head + mid, pname, plan, hs, 1 if proc.get("exec_id") else 2

    def decode_dicts(self, records: Sequence[bytes]) -> list[Event]:
        """One `Event` with a dict body per record, encoded only when `Event.json` is first called: for a
        sensor that changes bodies after decoding (kprobe kernel functions), and contexts without a
        node name. Slower than `decode`; the same content."""
        out: list[Event] = []
        hooks = self.hooks
        pc = getattr(self.ctx, "process_cache", None)
        make = self.ctx.make_event
        dropped = self.dropped
        for rec in records:
            if len(rec) < _EV_SIZE:
                dropped["short"] += 1
                continue
            (rtype, _f, _size, ktime, pid, tid, policy_id, hook_id, _ret, _cg, sel, actions, _fl, _n,
             data_len) = _EV.unpack_from(rec)
            if rtype != S.REC_HOOK:
                dropped["not_a_hook_record"] += 1
                continue
            entry = hooks.get((policy_id, hook_id))
            if entry is None:
                dropped["unknown_hook"] += 1
                continue
            if _EV_SIZE + data_len > len(rec):
                dropped["truncated"] += 1
                continue
            plan, policy_name, hs = entry
            if actions & 6 and sel >= plan.compiled.cfg.nsel:  # see `decode`
                dropped["bad_selector"] += 1
                continue
            proc = parent = None
            if pc is not None:
                try:
                    proc, parent = pc.get(pid)
                except Exception:
                    proc = parent = None
            body = _body_of(rec, plan, policy_name, proc or {"pid": pid, "tid": tid}, parent)
            if body is None:
                dropped["bad_argument"] += 1
                continue
            hs.events += 1
            out.append(make(plan.kind, body, ktime))
        return out


_I64_ARGS = schema.i64_keys("tetragon.KprobeArgument")  # size_arg, long_arg: JSON strings in Tetragon's JSON
_ARGQ = struct.Struct("<BBHIQ")  # sens_arg_rec and the 8 bytes after it (an integer's value)

_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x80-\xff]').search  # bytes a JSON string cannot hold as they are

def _quick_rest(plan: HookPlan, policy_name: str) -> Callable[..., bytes | None] | None:
    """Generate, for one hook, a function that formats the JSON rest of a record (args .. time, newline)
    in one bytes formatting when the record has the hook's usual shape: every argument a plain integer or
    a string JSON needs not escape, complete within the record, the return value plainly an integer, no
    signal action. It returns None for anything else, and `EventRing.decode` then takes the general path
    (the test compares both with the dict encoding). None when the hook has an argument it cannot do."""
    def lit(b: bytes) -> bytes:  # a constant inside a %-format
        return b.replace(b"%", b"%%")

    # ``end``: where the record's data ends (the caller has checked that the record holds it).
    src = ["def rest(rec, end, flags, retval, actions, cgroup_id, cur_time, nanos):",
           "    if actions & 6:", "        return None", "    pos = %d" % _EV_SIZE]
    fmts, values = [], []
    for i, (ap, fast) in enumerate(plan.fast):
        if fast is None:
            return None
        if ap.kind == S.ARG_INT:
            key, mask, sign, quote = fast
            src += ["    if pos + 16 > end:", "        return None",
                    "    k, f, l, _, v%d = unpack_argq(rec, pos)" % i, "    if k != 1:", "        return None",
                    "    v%d &= %d" % (i, mask)]
            if sign <= mask:
                src += ["    if v%d >= %d:" % (i, sign), "        v%d -= %d" % (i, sign << 1)]
            src += ["    pos += 16"]
            fmts.append(b'{"' + lit(key) + (b'":"%d"}' if quote else b'":%d}'))
        elif fast == ("string_arg",):
            src += ["    if pos + 8 > end:", "        return None", "    k, f, l, _ = unpack_arg(rec, pos)",
                    "    if k != %d or f or pos + 8 + ((l + 7) & ~7) > end:" % ap.kind, "        return None",
                    "    v%d = rec[pos + 8:pos + 8 + l]" % i,
                    # strings repeat (the same paths): a set lookup instead of the regex for the ones seen
                    "    if v%d not in safe:" % i, "        if unsafe(v%d) is not None:" % i, "            return None",
                    "        if len(safe) >= 4096:", "            safe.clear()", "        safe.add(v%d)" % i,
                    "    pos += 8 + ((l + 7) & ~7)"]
            fmts.append(b'{"string_arg":"%b"}')
        else:
            return None
        values.append("v%d" % i)
    args = b',"args":[' + b",".join(fmts) + b"]"
    pname = lit(b',"policy_name":' + orjson.dumps(policy_name)) + b',"action":"KPROBE_ACTION_POST"'
    end = b'%b.%09dZ"}\n'
    vals = ", ".join(values + [""])
    src += ["    if pos != end:", "        return None"]  # more data than these arguments: the general path decides
    t = {"T": args + pname + end, "TC": args + pname + b',"cgroup_id":%d' + end}
    if plan.return_plan is not None and schema.exported(plan.kind, "return"):
        src += ["    if flags & 2:"]
        if plan.ret_fast is None:
            src += ["        return None"]
        else:
            key, mask, sign, quote = plan.ret_fast
            ret = b',"return":{"' + lit(key) + (b'":"%d"}' if quote else b'":%d}')
            t["R"] = args + ret + pname + end
            t["RC"] = args + ret + pname + b',"cgroup_id":%d' + end
            src += ["        r = retval" if mask == (1 << 64) - 1 and sign == 1 << 63 else "        r = retval & %d" % mask]
            if sign <= mask and mask != (1 << 64) - 1:  # a 64-bit signed value is already one (retval is)
                src += ["        if r >= %d:" % sign, "            r -= %d" % (sign << 1)]
            src += ["        if cgroup_id:", "            return RC %% (%sr, cgroup_id, cur_time, nanos)" % vals,
                    "        return R %% (%sr, cur_time, nanos)" % vals]
    src += ["    if cgroup_id:", "        return TC %% (%scgroup_id, cur_time, nanos)" % vals,
            "    return T %% (%scur_time, nanos)" % vals]
    ns: dict[str, Any] = {"unpack_argq": _ARGQ.unpack_from, "unpack_arg": _ARG.unpack_from, "unsafe": _UNSAFE,
                          "safe": set(), **t}
    exec(compile("\n".join(src), f"<quick rest of {plan.hook}>", "exec"), ns)  # noqa: S102 - our own source
    return ns["rest"]


_BODY_KEYS = frozenset({"process", "parent", "args", "return", "policy_name", "action", "signal", "policy_mode",
                        "action_taken", "cgroup_id"})


def _json_middle(body: Mapping[str, Any]) -> bytes:
    """The plan's fixed fields as they sit inside the body's JSON (after process/parent)."""
    if _BODY_KEYS.intersection(body):
        raise ValueError(f"a hook's fixed event fields may not use the keys {sorted(_BODY_KEYS & set(body))}")
    inner = orjson.dumps(dict(body))[1:-1]
    return b"," + inner if inner else b""


def _action_fields(plan: HookPlan, sel: int, actions: int, flags: int) -> dict[str, Any]:
    """The action part of a body whose selector (``sel`` < the hook's ``nsel``: the decoders check) took a
    signal action."""
    out: dict[str, Any] = {"action": _ACTION_NAMES[S.ACT_SIGKILL if actions & S.ACT_SIGKILL else S.ACT_SIGNAL]}
    if actions & S.ACT_SIGNAL:
        out["signal"] = plan.compiled.cfg.sel[sel].signal
    monitoring = bool(flags & S.EV_MONITOR)
    out["policy_mode"] = "monitoring" if monitoring else "enforcement"
    out["action_taken"] = not monitoring and not (flags & S.EV_SIGNAL_ERR)
    return out


def render_args(rec: bytes, args: Sequence[S.ArgPlan]) -> list[dict[str, Any]] | None:
    """The arguments of a ``struct sens_event`` record (selectors.h) as Tetragon's KprobeArgument dicts, or
    None when the record is malformed: shorter than its ``data_len``, an argument cut or of another kind
    than ``args`` says, or data left after the arguments. The kernel writes the arguments in order, each a
    ``sens_arg_rec`` header and its value (8 bytes for an integer; ``len`` bytes padded to 8 otherwise), and
    ``data_len`` is exactly their size; it may write fewer arguments than the hook has (no room left), never
    more. Every decoder of these records (the engine's, the lsm sensor's) reads them through these rules."""
    n = len(rec)
    if n < _EV_SIZE:
        return None
    end = _EV_SIZE + _EV.unpack_from(rec)[14]
    if end > n:
        return None
    out: list[dict[str, Any]] = []
    pos = _EV_SIZE
    for ap in args:
        if pos >= end:
            break
        if pos + 8 > end:
            return None
        kind, aflags, alen, _ = _ARG.unpack_from(rec, pos)
        if kind != ap.kind:
            return None
        pos += 8
        if kind == S.ARG_INT:
            if pos + 8 > end:
                return None
            out.append(_render_int(ap, _Q.unpack_from(rec, pos)[0]))
            pos += 8
        else:
            data = rec[pos:pos + alen]
            pos += (alen + 7) & ~7
            if pos > end:
                return None
            out.append(_render_bytes(ap, data, aflags))
    return out if pos == end else None


def _body_of(rec: bytes, plan: HookPlan, policy_name: str, proc: Mapping[str, Any],
             parent: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The event body of one record as a dict (None: malformed, see `render_args`): the reference for the
    JSON `EventRing.decode` assembles."""
    (_t, _f, _size, _kt, _pid, _tid, _pol, _hook, retval, cgroup_id, sel, actions, flags, _n,
     data_len) = _EV.unpack_from(rec)
    args = render_args(rec, plan.args)
    if args is None:
        return None
    body: dict[str, Any] = {"process": proc}
    if parent:
        body["parent"] = parent
    body.update(plan.body)
    body["args"] = args
    if plan.return_plan is not None and flags & S.EV_HAS_RET:
        body["return"] = _render_int(plan.return_plan, retval & 0xFFFFFFFFFFFFFFFF)
    body["policy_name"] = policy_name
    if actions & (S.ACT_SIGKILL | S.ACT_SIGNAL):
        body.update(_action_fields(plan, sel, actions, flags))
    else:
        body["action"] = "KPROBE_ACTION_POST"
    if cgroup_id:
        body["cgroup_id"] = cgroup_id
    return body


def _render_int(ap: S.ArgPlan, v: int) -> dict[str, Any]:
    size = ap.size
    if size < 8:
        v &= (1 << (size * 8)) - 1
    if ap.signed and v >= 1 << (size * 8 - 1):
        v -= 1 << (size * 8)
    key = ap.json_key
    if key == "syscall_id":
        out: dict[str, Any] = {"syscall_id": {"id": v, "abi": SYSCALL_ABI}}
    else:
        out = {key: v}
    if ap.label:
        out["label"] = ap.label
    return out


def _render_bytes(ap: S.ArgPlan, data: bytes, flags: int) -> dict[str, Any]:
    key = ap.json_key
    if key == "bytes_arg":
        out: dict[str, Any] = {key: base64.b64encode(data).decode()}
        if flags & S.ARGF_TRUNC:
            out = {"truncated_bytes_arg": {"bytes_arg": out[key], "orig_size": None}}
    elif key in ("sock_arg", "sockaddr_arg", "skb_arg"):  # a struct sens_sock (S.ARG_SOCK)
        out = {key: S.render_sock(key, data)}
    else:
        text = data.decode("utf-8", "backslashreplace")
        if key in ("file_arg", "path_arg", "linux_binprm_arg"):
            out = {key: {"path": text}}
        else:
            out = {key: text}
    if flags & S.ARGF_ERR:
        out["error"] = "unreadable"
    if ap.label:
        out["label"] = ap.label
    return out


class HookSet:
    """A policy section: one hook object per item. Implements `sensorium.hookspecs.PolicyHandle`, and
    `sensorium.hookspecs.PreparedSection` for transactions: `prepare` (build, load, verify, fill the maps
    that do not enforce; the mode map says ``MODE_INACTIVE``), `commit` (attach, pin), `activate` (the real
    mode, the decoder told); `load` runs the three in one step."""

    def __init__(self, ctx: SensorContext, ring: EventRing, policy_id: int, policy_name: str, mode: str) -> None:
        self.ctx, self.ring = ctx, ring
        self.policy_id, self.policy_name, self.mode = policy_id, policy_name, mode
        self.objects: list[tuple[HookPlan, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.events = 0
        self._unloaded = False
        self.scope: Scope | None = None
        self._scope_maps: list[ScopeMap] = []
        # per object (same order as `objects`): how it attaches, once committed
        self._attach: list[Callable[[], None]] = []
        self.pin_dir: str | None = None
        # id(obj) -> (persistent: True pinned, False not pinned though it enforces, None nothing to keep; why)
        self._pins: dict[int, tuple[bool | None, str]] = {}
        self.active = False

    # -- loading ----------------------------------------------------------------------------------
    def load(self, plans: Sequence[HookPlan], scope: Scope | None = None, pin_dir: str | None = None) -> None:
        """Load, attach and activate every plan, or undo everything and raise `PolicyLoadError` (the
        one-step form of `prepare` + `commit` + `activate`).

        ``scope`` None: host-wide (no check in the kernel); a `Scope`: every hook checks it first."""
        self.prepare(plans, scope, pin_dir)
        self.commit()
        self.activate()

    def prepare(self, plans: Sequence[HookPlan], scope: Scope | None = None, pin_dir: str | None = None) -> None:
        """Round 1 of a transaction: build, open and load (verify) every hook object, fill its scope and
        seed maps; nothing attached. Undoes everything and raises `PolicyLoadError` on failure."""
        if scope is not None:
            if not isinstance(scope, Scope):
                raise PolicyLoadError("scope", f"expected a sensorium.hookspecs.Scope, got {type(scope).__name__}")
            try:
                scope_entries(scope)  # a bad scope is refused before anything is loaded
            except ValueError as e:
                raise PolicyLoadError("scope", str(e)) from None
            for plan in plans:
                plan.compiled.cfg.flags |= S.CFG_CGROUP_SCOPED
                plan.compiled.flags |= S.CFG_CGROUP_SCOPED
        self.scope = scope
        self.pin_dir = pin_dir
        try:
            for plan in plans:
                self._load_one(plan)
        except PolicyLoadError:
            self.unload()
            raise
        except Exception as e:  # a libbpf error...
            self.unload()
            raise PolicyLoadError(getattr(e, "_hook", "?"), str(e)) from e

    def commit(self) -> None:
        """Round 2: attach every hook object (inert: its mode map says ``MODE_INACTIVE``) and, with a pin
        directory, pin what enforces. On a refused attach everything is undone and `PolicyLoadError` raised."""
        try:
            for i in range(len(self._attach)):
                self._attach[i]()
                if self.pin_dir is not None:
                    self._pin(i)
        except PolicyLoadError:
            self.unload()
            raise
        except Exception as e:
            self.unload()
            raise PolicyLoadError("?", f"{type(e).__name__}: {e}") from e

    def activate(self) -> "HookSet":
        """Round 3: the real mode in every mode map (from here on the hooks post and enforce), and the
        decoder told about each hook. Map writes only."""
        for plan, obj in self.objects:
            obj.map("sens_mode").update(struct.pack("<I", 0), struct.pack("<I", self._mode_value(self.mode)))
            self.register(plan)
        self.active = True
        return self

    def abort(self) -> None:
        """Free a prepared (or committed) section that was never activated (`PreparedSection.abort`)."""
        self.unload()

    @staticmethod
    def _mode_value(mode: str) -> int:
        return 1 if mode == "monitoring" else 0

    def enforces(self, plan: HookPlan) -> bool:
        """Whether the hook takes an action that outlives the event (a signal): what persistence pins."""
        cfg = plan.compiled.cfg
        return any(cfg.sel[i].actions & (S.ACT_SIGKILL | S.ACT_SIGNAL) for i in range(cfg.nsel))

    def _pin(self, i: int) -> None:
        """Pin the links and maps of object ``i`` under ``pin_dir`` when its hook enforces. A link the kernel
        will not pin (a perf-event link on a kernel without BPF perf links) leaves the hook served, reported
        not persistent."""
        plan, obj = self.objects[i]
        if not self.enforces(plan):
            self._pins[id(obj)] = (None, "observes only: nothing to keep enforcing when the agent is gone")
            return
        base = os.path.join(self.pin_dir or "", f"{i}")
        try:
            os.makedirs(base, exist_ok=True)
            for n, link in enumerate(obj.links):
                link.pin(os.path.join(base, f"link{n}"))
            for m in obj.maps.values():
                if m.type == 27 or "." in m.name:  # the shared ring, and .rodata/.bss
                    continue
                m.pin(os.path.join(base, f"map_{m.name}"))
        except OSError as e:
            for link in obj.links:
                try:
                    link.unpin()
                except OSError:
                    pass
            self._pins[id(obj)] = (False, f"the kernel did not pin it: {e}")
            return
        self._pins[id(obj)] = (True, f"pinned at {base}")

    def _load_one(self, plan: HookPlan) -> None:
        if (OPEN_EXIT_ENABLED and plan.attach[0] == "syscall" and plan.attach[1]
                and any(a.ret_fd for a in plan.args)):
            # open/openat/openat2/creat on the opened file: sys_exit alone, with early rejection
            # (selectors.h, SENS_OPEN_EXIT). Where that object does not load (tp_btf, or the
            # bpf_rdonly_cast kfunc of 6.2+, missing), the enter+exit pair decides the same, slower.
            # The status names the mechanism when the planner named the pair (the kprobe sensor); a plan
            # another sensor labelled (lsm's "sigkill from tracepoint") keeps its own words.
            ours = plan.mechanism == PAIR_MECHANISM
            fast = plan if not ours else dataclasses.replace(plan, mechanism=OPEN_EXIT_MECHANISM, note=plan.note.replace(
                "served by raw tracepoint sys_enter filtered by syscall number",
                "served by tp_btf sys_exit alone (arguments from the saved registers), filtered by syscall number"))
            n_scope_maps = len(self._scope_maps)
            try:
                self._load_object(fast, HOOK_OPEN_PROBE)
                return
            except PolicyLoadError as e:
                del self._scope_maps[n_scope_maps:]  # the failed object's scope map must not be updated later
                self._drop_last(fast)
                if ours:
                    plan = dataclasses.replace(plan, note=plan.note + f"; {OPEN_EXIT_MECHANISM} not available "
                                                                      f"here ({e.reason[:200]})")
        self._load_object(plan, HOOK_PROBE)

    def _drop_last(self, plan: HookPlan) -> None:
        """Close the object of ``plan`` loaded last (before trying another mechanism for it)."""
        if self.objects and self.objects[-1][0] is plan:
            _p, obj = self.objects.pop()
            if len(self._attach) > len(self.objects):
                self._attach.pop()
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - closing a half-used object must not hide why it failed
                pass

    def _load_object(self, plan: HookPlan, probe: ProbeSource) -> None:
        try:
            path = self.ctx.build(probe)
            obj = self.ctx.open_object(path)
        except Exception as e:
            raise PolicyLoadError(plan.hook, f"cannot build the hook program: {e}") from e
        self.objects.append((plan, obj))
        try:
            kind = plan.attach[0]
            if kind == "tp":
                progs = {"sens_tp"}
            elif kind == "raw":
                progs = {"sens_raw"}
            elif kind == "uprobe":  # ("uprobe", at_exit, binary, symbol | None, offset): the uprobe sensor
                progs = {"sens_uprobe", "sens_uretprobe"} if plan.attach[1] else {"sens_uprobe"}
            elif probe is HOOK_OPEN_PROBE:
                progs = {"sens_open_exit"}
                obj.set_rodata("sens_pq", bytes(open_exit_filter(plan.compiled.cfg)))
            else:
                progs = {"sens_sys_enter", "sens_sys_exit"} if plan.attach[1] else {"sens_sys_enter"}
            inflight = kind in ("syscall", "uprobe") and bool(plan.attach[1]) and probe is not HOOK_OPEN_PROBE
            wanted = self.prepare_object(plan, obj, progs, inflight)
            obj.load()
            self.start_object(plan, obj, wanted)
        except PolicyLoadError:
            raise
        except Exception as e:
            raise PolicyLoadError(plan.hook, f"{type(e).__name__}: {e}", plan.field) from e

        def attach() -> None:
            try:
                self.attach_tracking(plan, obj, wanted)
                if kind == "tp":
                    obj.program("sens_tp").attach_tracepoint(plan.attach[1], plan.attach[2])
                elif kind == "raw":
                    obj.program("sens_raw").attach_raw_tracepoint(plan.attach[1])
                elif kind == "uprobe":
                    _k, at_exit, binary, symbol, offset = plan.attach
                    if at_exit:
                        obj.program("sens_uretprobe").attach_uprobe(binary, symbol, offset, retprobe=True)
                    obj.program("sens_uprobe").attach_uprobe(binary, symbol, offset)
                elif probe is HOOK_OPEN_PROBE:
                    obj.program("sens_open_exit").attach()
                else:
                    if "sens_sys_exit" in wanted:
                        obj.program("sens_sys_exit").attach_raw_tracepoint("sys_exit")
                    obj.program("sens_sys_enter").attach_raw_tracepoint("sys_enter")
            except PolicyLoadError:
                raise
            except Exception as e:
                raise PolicyLoadError(plan.hook, f"{type(e).__name__}: {e}", plan.field) from e

        self._attach.append(attach)

    # Shared by every object built on selectors.h (this engine's hook.bpf.c, the kprobe sensor's kfunc.bpf.c):
    # what happens before load, after load (`start_object`), and when the hook attaches (`attach_tracking`).
    def prepare_object(self, plan: HookPlan, obj: Any, programs: set[str], inflight: bool) -> set[str]:
        """Before load: share the sensor's ring, set ``sens_cfg``, autoload ``programs`` plus the process
        tracking the selectors need, and shrink the maps the hook does not use. Returns the programs to load."""
        err = _set_reuse_proto()(obj.map("sens_events")._p(), self.ring.fd)
        if err < 0:
            raise OSError(-err, f"cannot share the sensor's ring buffer: {os.strerror(-err)}")
        obj.set_rodata("sens_cfg", plan.compiled.rodata())
        flags = plan.compiled.flags
        wanted = set(programs)
        if flags & (S.CFG_NEED_BINARY | S.CFG_FOLLOW):
            wanted.update(("sens_exec", "sens_exit"))
        if flags & S.CFG_FOLLOW:
            wanted.add("sens_fork")
        for name, prog in obj.programs.items():
            prog.set_autoload(name in wanted)
        # Maps a hook does not use are shrunk before load (hash maps are preallocated: the binary cache
        # alone is 2 MiB), so kernel memory follows what the policy needs. A scoped hook keeps its whole
        # scope map: the scope may grow live (pods arriving) without a reload.
        cfg = plan.compiled.cfg
        uses_rl = any(cfg.sel[i].rl_ns for i in range(cfg.nsel))
        for mname, needed in (("sens_bins", flags & (S.CFG_NEED_BINARY | S.CFG_FOLLOW)),
                              ("sens_follow", flags & S.CFG_FOLLOW), ("sens_ratelimit", uses_rl),
                              ("sens_inflight", inflight), ("sens_scope", flags & S.CFG_CGROUP_SCOPED)):
            if not needed:
                obj.map(mname).set_max_entries(64)
        return wanted

    def start_object(self, plan: HookPlan, obj: Any, wanted: set[str]) -> None:
        """After load, nothing attached yet: the hook inert (``MODE_INACTIVE`` until `activate`), then its
        scope (so a scoped hook is never live unscoped)."""
        obj.map("sens_mode").update(struct.pack("<I", 0), struct.pack("<I", MODE_INACTIVE))
        if plan.compiled.flags & S.CFG_CGROUP_SCOPED:
            sm = ScopeMap(obj.map("sens_scope"))
            sm.set(self.scope if self.scope is not None else Scope())
            self._scope_maps.append(sm)

    def attach_tracking(self, plan: HookPlan, obj: Any, wanted: set[str]) -> None:
        """Just before the hook attaches: the followChildren seed, then the process tracking programs (so
        no fork slips between seed and hook)."""
        self._seed_follow(plan, obj)
        for name in ("sens_exec", "sens_exit", "sens_fork"):
            if name in wanted:
                obj.program(name).attach()

    def register(self, plan: HookPlan) -> None:
        """The hook is active: let the decoder render its records."""
        with self.ring.lock:
            hooks = dict(self.ring.hooks)
            hooks[(self.policy_id, plan.compiled.cfg.hook_id)] = (plan, self.policy_name, self)
            self.ring.hooks = hooks  # copy-on-write: the reader thread reads without the lock

    def _seed_follow(self, plan: HookPlan, obj: Any) -> None:
        """followChildren/followForks for processes that already run: mark descendants of matching ones."""
        fb, fp = plan.compiled.follow_binaries, plan.compiled.follow_pids
        if not fb and not fp:
            return
        procs: dict[int, tuple[int, str, int]] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            try:
                with open(f"/proc/{d}/status") as f:
                    st = f.read()
                ppid = int(st.split("PPid:")[1].split()[0])
                nspid = int(st.split("NSpid:")[1].split()[-1]) if "NSpid:" in st else pid
                try:
                    exe = os.readlink(f"/proc/{d}/exe")
                except OSError:
                    exe = ""
                procs[pid] = (ppid, exe, nspid)
            except (OSError, IndexError, ValueError):
                continue
        own: dict[int, int] = {}
        for pid, (ppid, exe, nspid) in procs.items():
            bits = 0
            for si, (op, values) in fb.items():
                if (op == "In" and exe in values) or (op == "Prefix" and any(exe.startswith(v) for v in values)) or (
                        op == "Postfix" and any(exe.endswith(v) for v in values)):
                    bits |= 1 << si
            for si, (ns, pids) in fp.items():
                if (nspid if ns else pid) in pids:
                    bits |= 1 << (8 + si)
            own[pid] = bits
        fmap = obj.map("sens_follow")
        for pid in procs:
            bits, cur, seen = 0, procs[pid][0], 0
            while cur > 0 and cur in procs and seen < 64:  # inherited from an ancestor
                bits |= own.get(cur, 0)
                cur, seen = procs[cur][0], seen + 1
            if bits:
                fmap.update(struct.pack("<I", pid), struct.pack("<I", bits))

    # -- PolicyHandle -----------------------------------------------------------------------------
    def set_scope(self, scope: Scope) -> None:
        """Replace the scope live in every hook object of the section (map updates, no reload; see
        `sensorium.bpf.scope.ScopeMap`). A section loaded host-wide has no check in its programs: it
        cannot be scoped later (ValueError; reload it with a scope)."""
        if not isinstance(scope, Scope):
            raise TypeError(f"set_scope expects a sensorium.hookspecs.Scope, got {type(scope).__name__}")
        if self._unloaded:
            raise ValueError(f"policy {self.policy_name!r}: the section is unloaded")
        if self.scope is None:
            raise ValueError(f"policy {self.policy_name!r} was loaded host-wide (no scope check in its programs): "
                             f"reload it with a scope")
        scope_entries(scope)  # ValueError before any map is touched
        for sm in self._scope_maps:
            sm.set(scope)
        self.scope = scope

    def set_mode(self, mode: str) -> None:
        if mode not in ("enforcement", "monitoring"):
            raise ValueError(f"unknown mode {mode!r}")
        if self.active:  # before `activate` the maps stay inert; activate writes the mode then
            for _plan, obj in self.objects:
                obj.map("sens_mode").update(struct.pack("<I", 0), struct.pack("<I", self._mode_value(mode)))
        self.mode = mode

    def counters(self) -> dict[str, int]:
        names = ("posted", "dropped", "filtered", "signals", "signal_errors", "rate_limited")
        total = dict.fromkeys(names, 0)
        for _plan, obj in self.objects:
            try:
                m = obj.map("sens_counters")
                for i, n in enumerate(names):
                    raw = m.lookup(struct.pack("<I", i))
                    if raw:
                        total[n] += sum(struct.unpack(f"<{len(raw) // 8}Q", raw))
            except Exception:
                continue
        return total

    def status(self) -> Mapping[str, Any]:
        hooks = []
        for p, obj in self.objects:
            h: dict[str, Any] = {"hook": p.hook, "mechanism": p.mechanism, "note": p.note,
                                 "state": "loaded" if self.active else "prepared"}
            if self.pin_dir is not None:
                persistent, why = self._pins.get(id(obj), (False, "not attached yet"))
                h["persistent"], h["persistence"] = persistent, why
            hooks.append(h)
        hooks += self.skipped
        c = self.counters() if not self._unloaded else {}
        mem = 0
        for _plan, obj in self.objects:
            try:
                for m in obj.maps.values():
                    if m.name.endswith("sens_events"):
                        continue
                    mem += m.max_entries * (m.key_size + m.value_size)
            except Exception:
                pass
        sc = self.scope
        scope = None if sc is None else {"cgroups": [r.path for r in sc.cgroups], "host": sc.host,
                                         "container_roots": [r.path for r in sc.container_roots]}
        return {"hooks": hooks, "events": c.get("posted", 0), "errors": c.get("dropped", 0) + c.get("signal_errors", 0),
                "kernel_memory_bytes": mem, "mode": self.mode, "counters": c, "scope": scope,
                "state": "unloaded" if self._unloaded else "loaded"}

    def unload(self) -> None:
        """Detach and free every hook object of the section, its pins first (`PolicyHandle.unload`)."""
        self._close(keep_pinned=False)

    def release(self) -> None:
        """The agent stops and enforcement persists: drop this process's hold, pinned hooks stay attached
        (`PolicyHandle.release`)."""
        self._close(keep_pinned=True)

    def _close(self, keep_pinned: bool) -> None:
        with self.ring.lock:
            hooks = {k: v for k, v in self.ring.hooks.items() if v[2] is not self}
            self.ring.hooks = hooks
        for _plan, obj in self.objects:
            if not keep_pinned:
                for link in obj.links:
                    try:
                        link.unpin()
                    except OSError:
                        pass
            try:
                obj.close(keep_pinned=keep_pinned)
            except Exception:
                pass
            objs = getattr(self.ctx, "objects", None)
            if isinstance(objs, list):  # the agent's context keeps a list of what it opened
                try:
                    objs.remove(obj)
                except ValueError:
                    pass
        if not keep_pinned and self.pin_dir is not None:
            _remove_pins(self.pin_dir)
        self.objects = []
        self._attach = []
        self._scope_maps = []
        self._unloaded = True
        self.active = False


def _remove_pins(pin_dir: str) -> None:
    """Remove what a section pinned under ``pin_dir`` (map pins, empty directories); the directory itself is
    the host's."""
    for root, dirs, files in os.walk(pin_dir, topdown=False):
        for f in files:
            try:
                os.unlink(os.path.join(root, f))
            except OSError:
                pass
        if root != pin_dir:
            try:
                os.rmdir(root)
            except OSError:
                pass


class HookSensor:
    """Base of a sensor whose policy items are served by hook objects (tracepoint, kprobe...).

    Subclasses implement `plan_item` (one policy item -> `HookPlan`, raising `PolicyLoadError`).
    """

    name = "hooks"
    section = ""
    handle_class: type[HookSet] = HookSet

    def __init__(self, ctx: SensorContext) -> None:
        self.ctx = ctx
        self.ring = EventRing(ctx, self.name)
        self.handles: list[HookSet] = []
        self.state = "stopped"
        self.error: str | None = None

    def start(self) -> None:
        try:
            self.ring.start()
        except BaseException as e:
            self.state, self.error = "failed", str(e)
            self.stop()
            raise
        self.state = "running"

    def stop(self) -> None:
        for h in list(self.handles):
            h.unload()
        self.handles.clear()
        self.ring.stop()
        if self.state == "running":
            self.state = "stopped"

    def status(self) -> Mapping[str, Any]:
        live = [h for h in self.handles if not h._unloaded]
        return {"state": self.state, "error": self.error, "policies": len(live),
                "hooks": sum(len(h.objects) for h in live), "decode_errors": self.ring.decode_errors,
                "dropped_records": {k: v for k, v in self.ring.dropped.items() if v},
                "decoder": self.ring.decoder, "ring_drain": self.ring.drain}

    # -- policies ---------------------------------------------------------------------------------
    def plan_item(self, policy: Any, index: int, item: Any) -> HookPlan | None:
        raise NotImplementedError

    def plan(self, policy: Any) -> list[HookPlan]:
        plans = []
        for i, item in enumerate(policy.items):
            p = self.plan_item(policy, i, item)
            if p is not None:
                plans.append(p)
        return plans

    def check_policy(self, policy: Any) -> None:
        self.plan(policy)

    def load_policy(self, policy: Any) -> HookSet:
        """Load a section in one step (`PolicySensor.load_policy`), bounded to ``policy.scope`` when it has one."""
        hs = self.prepare_policy(policy)
        hs.commit()
        return hs.activate()

    def prepare_policy(self, policy: Any) -> HookSet:
        """Round 1 of a transaction (`TransactionalPolicySensor.prepare_policy`): the `HookSet` is the
        prepared section (`commit`, `activate`, `abort`) and, once active, the handle."""
        if self.state != "running" or self.ring.obj is None:
            raise PolicyLoadError(f"{policy.section}", f"the {self.name} sensor is not running")
        plans = self.plan(policy)
        hs = self.handle_class(self.ctx, self.ring, policy.id, policy.name, policy.mode)
        hs.skipped = [s for s in getattr(self, "_skipped", {}).pop(policy.id, [])]
        hs.prepare(plans, getattr(policy, "scope", None), getattr(policy, "pin_dir", None))
        self.handles = [h for h in self.handles if not h._unloaded] + [hs]
        return hs

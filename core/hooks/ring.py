"""The ring of a hook sensor and its decoder: `EventRing` (one ring buffer shared by every hook object of the
sensor, through ``bpf_map__reuse_fd``, so loading policies never adds rings to the host's reader).

`EventRing.decode` turns a batch of records into an `EventBatch` whose JSON is assembled from byte fragments:
natively (`sensorium.hooks.native`, fastrest.c) when every record has its hook's usual shape, else per record
through the generated formatter of each hook (`sensorium.hooks.render.quick_rest`) or the general walk. The
reference is `sensorium.hooks.render.body_of`; a test checks that every path gives its content.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from sensorium import events as _events
from sensorium import schema
from sensorium.events import Event, EventBatch, LazyEvent
from sensorium.hooks import native as _native
from sensorium.hooks import selectors as S
from sensorium.hooks.plan import HookPlan
from sensorium.hooks.probes import HOOK_PROBE
from sensorium.hooks.render import (
    ARG,
    ARGQ,
    EV,
    EV_SIZE,
    UNSAFE,
    QuickRest,
    action_fields,
    body_of,
    json_middle,
    notify_action,
    quick_rest,
    render_bytes,
    render_int,
)
from sensorium.hooks.stacks import IDS, UserSymbols, stack_fields
from sensorium.hookspecs import RingHandle, SensorContext

if TYPE_CHECKING:
    from sensorium.hooks.hookset import HookSet

    # A loaded hook, by (policy id, hook id): its plan, its policy's name and the hook set that loaded it
    HookEntry = tuple[HookPlan, str, HookSet]
    # What the events of one hook and one pid share in a batch (`EventRing._head`): (index in the batch's
    # `ProcCtx` list, JSON head up to the args, policy_name JSON, plan, hook set, state: 1 in the process
    # cache, 2 in it without exec_id, 0 not in it (the head is then a format of pid and tid))
    Head = tuple[int, bytes, bytes, HookPlan, HookSet, int]
    # a `Head`, its quick formatter, and the ktime before which a record of that pid belongs to an earlier
    # image of it (ProcessCache.image_start; 0: none in this batch)
    Memo = tuple[int, bytes, bytes, HookPlan, HookSet, int, QuickRest | None, int]
    # (plan, policy_name, process, parent); process None: not in the cache
    ProcCtx = tuple[HookPlan, str, Mapping[str, Any] | None, Mapping[str, Any] | None]

__all__ = ["EventRing", "DROP_REASONS"]

DROP_REASONS = ("short", "truncated", "bad_argument", "bad_selector", "not_a_hook_record", "unknown_hook")
"""Why `EventRing` dropped a record: shorter than a ``sens_event``; shorter than its ``data_len``; an argument
cut, of another kind than the hook's, or data left after them (`render_args`); a signal, GetUrl or DnsLookup
action from a selector the hook does not have (or that has not that action); a record type other than
``REC_HOOK``; a (policy, hook) not loaded (records in flight when a hook is unloaded: not malformed)."""


def _batch_body(rec: bytes, plan: HookPlan, policy_name: str, proc: Mapping[str, Any],
                parent: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """`body_of` for an event of an `EventBatch`: its record passed `EventRing.decode`'s checks, which are
    `render_args`' (a test compares both), so it has a body."""
    body = body_of(rec, plan, policy_name, proc, parent)
    assert body is not None, "a record EventRing.decode rendered is well formed"
    return body


def _stack_body(rec: bytes, plan: HookPlan, policy_name: str, proc: Mapping[str, Any],
                parent: Mapping[str, Any] | None, stacks: Mapping[str, Any]) -> Mapping[str, Any]:
    """`_batch_body` of an event with stack traces (read from the kernel's map once, when decoded)."""
    body = dict(_batch_body(rec, plan, policy_name, proc, parent))
    body.update(stacks)
    return body


class EventRing:
    """The sensor's one ring buffer (a maps-only instance of the hook object) and its decoder."""

    def __init__(self, ctx: SensorContext, sensor: str) -> None:
        self.ctx, self.sensor = ctx, sensor
        self.obj: Any = None
        self.handle: RingHandle | None = None
        self.hooks: dict[tuple[int, int], HookEntry] = {}
        self.lock = threading.Lock()
        # Records the decoder did not turn into events, by reason (`DROP_REASONS`): none is dropped silently.
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._quick_cache: dict[int, tuple[HookEntry, QuickRest | None]] = {}
        self._native_fmt: tuple[Any, Any] | None = None  # (hooks dict it was built for, native.Formatter)
        self._users = UserSymbols()  # user stack symbolization (stack traces)
        self._users_begun = False
        self._stack_sets: set[HookSet] = set()  # whose stack maps this batch read
        # GetUrl/DnsLookup requests offered to the host: queued, refused by it (it counts why: rate limit, queue
        # full), no runner (a context without `run_action`), failed_to_offer (it raised)
        self.requests: dict[str, int] = dict.fromkeys(("queued", "refused", "no_runner", "failed_to_offer"), 0)
        self._run_action = getattr(ctx, "run_action", None)  # optional for contexts older than the contract's

    def start(self) -> None:
        obj = self.ctx.open_object(self.ctx.build(HOOK_PROBE))
        for p in obj.programs.values():
            p.set_autoload(False)
        kb = int((self.ctx.config or {}).get("ring_buffer_kb", 4096))
        size = 1 << max(16, (kb * 1024 - 1).bit_length())  # a power of two, at least 64 KiB
        obj.map("sens_events").set_max_entries(size)
        obj.map("sens_socks").set_max_entries(64)  # each policy section has its own (hookset.py)
        obj.map("sens_execcaps").set_max_entries(64)  # (only the ring is used here; a hash map is preallocated)
        obj.map("sens_stacks").set_max_entries(1)
        obj.load()
        self.obj = obj
        # `decode` takes RecordBlobs: the host may drain this ring natively (core/bpf/ringbuf.py)
        self.handle = self.ctx.add_ring_buffer(obj.map("sens_events"), self.decode, native_drain=True)

    @property
    def fd(self) -> int:
        fd: int = self.obj.map("sens_events").fd
        return fd

    @property
    def decode_errors(self) -> int:
        """Malformed records dropped (every reason but ``unknown_hook``, which is a record in flight when its
        hook was unloaded)."""
        return sum(v for k, v in self.dropped.items() if k != "unknown_hook")

    def stop(self) -> None:
        if self.handle is not None:  # what the hooks posted before they were detached is delivered first
            self.handle.close()
            self.handle = None
        if self.obj is not None:
            try:
                self.obj.close()
            except Exception:  # noqa: BLE001 - stop must not raise; the object is dropped either way
                pass
            self.obj = None

    # -- decoding (reader thread) -----------------------------------------------------------------
    def decode(self, records: Sequence[bytes]) -> Sequence[Event]:
        """Records of one batch -> an `EventBatch`: each event's JSON assembled here from byte fragments,
        with no object made per event (the `LazyEvent`, and its body dict by `body_of`, only when
        someone reads the events; a test checks that both give the same content).

        Per batch, each pid's process and parent are looked up in the process cache and encoded once
        (the batch spans a few milliseconds: the same view every event of that pid got one by one)."""
        node_name = getattr(self.ctx, "node_name", None)
        if not isinstance(node_name, str):  # a context without a node name: one dict per event
            return self.decode_dicts(records)
        hooks = self.hooks
        pc = getattr(self.ctx, "process_cache", None)
        pc_get = pc.get if pc is not None else None
        # A record older than its pid's current image (a forked child's calls before its exec) takes the
        # image of its time. Only pids whose image changed since this batch's first record can have one;
        # 0.1 s covers the ktime-to-reservation skew between CPUs (a program's run).
        image_start = getattr(pc, "image_start", None)
        floor = EV.unpack_from(records[0])[3] - 100_000_000 if records and len(records[0]) >= EV_SIZE else 0
        newer = (image_start, floor)
        tail_node = b'},"node_name":' + orjson.dumps(node_name) + b',"time":'
        heads: list[bytes] = []
        rests: list[bytes] = []
        recs: list[bytes] = []
        # per (policy, hook, pid): (index in ctxs, JSON head up to the args, policy_name JSON, plan, HookSet,
        # state: 1 in the cache, 2 in it without exec_id, 0 not in it (head is then a format of pid and tid))
        memo: dict[tuple[int, ...], Memo] = {}
        ctxs: list[ProcCtx] = []
        resolved = True
        unpack_ev = EV.unpack_from
        unpack_arg = ARG.unpack_from
        unpack_argq = ARGQ.unpack_from
        boot = _events.BOOT_WALL_NS
        unsafe = UNSAFE
        dumps = orjson.dumps
        cur_secs, cur_time = -1, b""
        ext = schema.extended()  # our own fields (cgroup_id) too
        add_head, add_rest, add_rec = heads.append, rests.append, recs.append
        nat = self._native(records, tail_node, boot) if records else None
        if nat is not None:
            status, out, out_end = nat[0], nat[1], nat[2]
            if status.count(0) == len(status):  # every record rendered natively: no loop per record here
                done = self._native_batch(records, nat, memo, ctxs, pc_get, newer)
                if done is not None:
                    heads, rests, resolved = done
                    # a RecordBlob makes its bytes only if an event is made from them
                    return self._batch(heads, rests, records, memo, ctxs, node_name, boot, resolved)
        else:
            status = None
        dropped = self.dropped
        stacks: dict[int, Mapping[str, Any]] | None = None  # index in recs -> its stack fields
        for i, rec in enumerate(records):
            n = len(rec)
            if n < EV_SIZE:
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
                m = memo[(policy_id, hook_id, pid)] = self._memo(entry, pid, pc_get, ctxs, newer)
            if ktime < m[7]:  # made before the pid's current image: the image of its time
                m = self._earlier(memo, (policy_id, hook_id, pid, ktime), pc_get, ctxs)
            _ci, head, pname, plan, hs, state, quick, _since = m
            end = EV_SIZE + data_len
            if end > n:  # the record is shorter than its own data: cut somewhere
                dropped["truncated"] += 1
                continue
            if actions & 102 and not self._from_selector(plan, sel, actions):  # signal, GetUrl, DnsLookup
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
            if quick is not None:  # the hook's usual record shape in one format (see quick_rest)
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
            pos = EV_SIZE
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
                        parts.append(dumps(schema.conform_arg(render_int(ap, v))))
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
                        parts.append(dumps(schema.conform_arg(render_bytes(ap, raw, aflags))))
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
                            + dumps(schema.conform_arg(render_int(plan.return_plan, retval & 0xFFFFFFFFFFFFFFFF)))
                            + pname)
            else:
                tail = b"]" + pname
            if actions & 6:  # S.ACT_SIGKILL | S.ACT_SIGNAL
                act = b"," + dumps(schema.conform_body(plan.kind, action_fields(plan, sel, actions, flags)))[1:-1]
            else:
                act = b',"action":"%b"' % notify_action(actions).encode()
            if actions & 96:  # S.ACT_NOTIFY: the agent's request, made off this thread (sensorium.actions)
                self._request(plan, sel, ctxs[m[0]][1])
            if cgroup_id and ext:
                act += b',"cgroup_id":%d' % cgroup_id
            if flags & 24:  # S.EV_KSTACK | S.EV_USTACK: the stack ids follow the arguments
                st = self._stacks(rec, end, flags, pid, hs, plan.kind)
                if stacks is None:
                    stacks = {}
                stacks[len(recs)] = st
                if st:
                    inner = dumps(schema.conform_body(plan.kind, st))[1:-1]  # empty: not in this kind's message
                    if inner:
                        act += b"," + inner
            add_head(head)
            add_rest(b',"args":[%b%b%b%b.%09dZ"}\n' % (b",".join(parts), tail, act, cur_time, nanos))
            add_rec(rec)

        if stacks is not None:
            self._stacks_done()
        return self._batch(heads, rests, recs, memo, ctxs, node_name, boot, resolved, stacks)

    def _batch(self, heads: list[bytes], rests: list[bytes], recs: Sequence[bytes],
               memo: dict[tuple[int, ...], Memo], ctxs: list[ProcCtx], node_name: str, boot: int,
               resolved: bool, stacks: Mapping[int, Mapping[str, Any]] | None = None) -> EventBatch:
        unpack_ev = EV.unpack_from
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
            m = memo[(f[6], f[7], f[4])]
            if f[3] < m[7]:
                m = memo[(f[6], f[7], f[4], f[3])]
            plan, policy_name, proc, parent = ctxs[m[0]]
            if proc is None:
                proc = {"pid": f[4], "tid": f[5]}
            st = stacks.get(i) if stacks else None
            if st:
                return LazyEvent(plan.kind, node_name, boot + f[3], heads[i] + rests[i][:-1], proc, _stack_body,
                                 (rec, plan, policy_name, proc, parent, st))
            return LazyEvent(plan.kind, node_name, boot + f[3], heads[i] + rests[i][:-1], proc, _batch_body,
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

    def _native(self, records: Sequence[bytes], tail_node: bytes, boot: int) -> tuple[Any, ...] | None:
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

    def _native_batch(self, records: Sequence[bytes], nat: tuple[Any, ...], memo: dict[tuple[int, ...], Memo],
                      ctxs: list[ProcCtx], pc_get: Any,
                      newer: tuple[Any, int]) -> tuple[list[bytes], list[bytes], bool] | None:
        """Heads and rests of a batch fastrest.c rendered whole: one head per (policy, hook, pid) (per
        thread when the process is not in the cache), as the loop of `decode` makes them."""
        _status, out, _out_end, slot, slots, slot_n, ns = nat
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
                m = memo[(policy_id, hook_id, pid)] = self._memo(entry, pid, pc_get, ctxs, newer)
            if m[7]:  # the pid's image changed within the batch: records need their own time (`decode`)
                return None
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

    def _quick(self, entry: HookEntry) -> QuickRest | None:
        """The generated formatter of one hook's usual records (cached per loaded hook)."""
        got = self._quick_cache.get(id(entry))
        if got is None or got[0] is not entry:
            try:
                fn = quick_rest(entry[0], entry[1])
            except Exception:  # noqa: BLE001 - only an optimisation: the general path does it all
                fn = None
            if len(self._quick_cache) > 256:
                self._quick_cache.clear()
            got = self._quick_cache[id(entry)] = (entry, fn)
        return got[1]

    def _memo(self, entry: HookEntry, pid: int, pc_get: Any, ctxs: list[ProcCtx], newer: tuple[Any, int]) -> Memo:
        """The `Memo` of one hook and one pid for a batch (see `decode`)."""
        image_start, floor = newer
        since = 0
        if image_start is not None:
            try:
                since = image_start(pid)
            except Exception:  # noqa: BLE001 - process info is best effort
                since = 0
            if since <= floor:
                since = 0
        return self._head(entry, pid, pc_get, ctxs) + (self._quick(entry), since)

    def _earlier(self, memo: dict[tuple[int, ...], Memo], key: tuple[int, int, int, int], pc_get: Any,
                 ctxs: list[ProcCtx]) -> Memo:
        """The `Memo` of a record made before its pid's current image (key: policy, hook, pid, ktime)."""
        m = memo.get(key)
        if m is None:
            entry = self.hooks[key[:2]]
            m = memo[key] = self._head(entry, key[2], pc_get, ctxs, key[3]) + (self._quick(entry), 0)
        return m

    @staticmethod
    def _head(entry: HookEntry, pid: int, pc_get: Any, ctxs: list[ProcCtx], ktime: int | None = None) -> Head:
        """What the events of one hook and one pid share in a batch (see `decode`); ``ktime``: of a record
        made before the pid's current image."""
        plan, policy_name, hs = entry
        proc = parent = None
        if pc_get is not None:
            try:
                proc, parent = pc_get(pid) if ktime is None else pc_get(pid, ktime)
            except Exception:  # noqa: BLE001 - process info is best effort; the event still goes out
                proc = parent = None
        pname = b',"policy_name":' + orjson.dumps(policy_name)
        kind = b'{"' + plan.kind.encode() + b'":{"process":'
        mid = json_middle(schema.conform_body(plan.kind, plan.body))
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

    def _stacks(self, rec: bytes, end: int, flags: int, pid: int, hs: HookSet, kind: str) -> Mapping[str, Any]:
        """The stack fields of a record flagged EV_KSTACK/EV_USTACK (its ids after the arguments): read from the
        section's stack map and symbolized; a record too short for its ids loses them (counted)."""
        if len(rec) < end + IDS.size:
            hs.stack_lost["stack_missing"] += bool(flags & S.EV_KSTACK) + bool(flags & S.EV_USTACK)
            return {}
        if not self._users_begun:
            self._users.begin()
            self._users_begun = True
        self._stack_sets.add(hs)
        try:
            return stack_fields(IDS.unpack_from(rec, end), flags, pid, hs.stack_map, self._users, hs.stack_lost,
                                S.EV_KSTACK, S.EV_USTACK)
        except Exception:  # noqa: BLE001 - a file or map we could not read: the event goes out without its stacks
            hs.stack_lost["stack_error"] += 1
            return {}

    def _stacks_done(self) -> None:
        """After a batch: the stack ids it read are deleted from their maps."""
        for hs in self._stack_sets:
            if hs.stack_map is not None:
                try:
                    hs.stack_map.flush()
                except Exception:  # noqa: BLE001 - a map closed under us: its ids went with it
                    pass
        self._stack_sets.clear()
        self._users_begun = False

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
            if len(rec) < EV_SIZE:
                dropped["short"] += 1
                continue
            (rtype, _f, _size, ktime, pid, tid, policy_id, hook_id, _ret, _cg, sel, actions, _fl, _n,
             data_len) = EV.unpack_from(rec)
            if rtype != S.REC_HOOK:
                dropped["not_a_hook_record"] += 1
                continue
            entry = hooks.get((policy_id, hook_id))
            if entry is None:
                dropped["unknown_hook"] += 1
                continue
            if EV_SIZE + data_len > len(rec):
                dropped["truncated"] += 1
                continue
            plan, policy_name, hs = entry
            if actions & 102 and not self._from_selector(plan, sel, actions):  # see `decode`
                dropped["bad_selector"] += 1
                continue
            proc = parent = None
            if pc is not None:
                try:
                    proc, parent = pc.get(pid, ktime)
                except Exception:  # noqa: BLE001 - process info is best effort; the event still goes out
                    proc = parent = None
            body = body_of(rec, plan, policy_name, proc or {"pid": pid, "tid": tid}, parent)
            if body is None:
                dropped["bad_argument"] += 1
                continue
            if _fl & 24:  # S.EV_KSTACK | S.EV_USTACK
                body.update(self._stacks(rec, EV_SIZE + data_len, _fl, pid, hs, plan.kind))
            hs.events += 1
            if actions & S.ACT_NOTIFY:
                self._request(plan, sel, policy_name)
            out.append(make(plan.kind, body, ktime))
        if self._stack_sets:
            self._stacks_done()
        return out

    @staticmethod
    def _from_selector(plan: HookPlan, sel: int, actions: int) -> bool:
        """Whether a record's actions beyond Post can be its selector's: a signal, GetUrl or DnsLookup only ever
        comes from a selector the hook has, and a request from one that names it."""
        if sel >= plan.compiled.cfg.nsel:
            return False
        if actions & S.ACT_NOTIFY:
            got = plan.compiled.notify.get(sel)
            return got is not None and actions & S.ACT_NOTIFY == S.NOTIFY_BITS[got[0]]
        return True

    def _request(self, plan: HookPlan, sel: int, policy_name: str) -> None:
        """Offer the GetUrl/DnsLookup request of a matched selector to the host (`SensorContext.run_action`: it
        queues or counts it, never blocks); a context without one counts it here."""
        action, target = plan.compiled.notify[sel]  # `_from_selector` passed
        run = self._run_action
        if run is None:
            self.requests["no_runner"] += 1
            return
        try:
            queued = run(policy_name, action, target)
        except Exception:  # noqa: BLE001 - a request must never cost the batch its events
            self.requests["failed_to_offer"] += 1
            return
        self.requests["queued" if queued else "refused"] += 1



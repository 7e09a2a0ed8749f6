"""Record fuzzing, shared by the property-based tests (tests/test_fuzz_records.py, hypothesis) and the
coverage-guided harness (tests/fuzz/targets.py, `records`): builders of well-formed ring records for every
decoder, what each decoder must make of them (an oracle written apart from the decoders), the hostile
changes that make a record bad by construction, and `check_*`, the properties every batch must keep:

* no exception escapes the decoder (a raise costs the whole ring batch: `sensorium.pipeline`);
* every record is either an event or counted by its decoder (nothing is dropped silently);
* a record dropped has no effect: the batch without it gives the same events (isolation);
* the hook decoder's native formatter (fastrest.c), its Python paths (`decode` and `decode_dicts`) and the
  lazily built bodies give the same bytes for every batch, good or bad.

Records are built in the layouts the decoders declare (their ctypes twins, which tests/test_layouts.py checks
against the objects' BTF). No kernel is needed.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import os
import struct
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import kstruct_oracle as KO
import orjson

from sensorium import schema
from sensorium.events import BOOT_WALL_NS, Event, ktime_to_wall_ns, rfc3339
from sensorium.hooks import kstructs as K
from sensorium.hooks import selectors as S
from sensorium.hooks.plan import HookPlan
from sensorium.hooks.render import ARG as _ARG
from sensorium.hooks.render import EV as _EV
from sensorium.hooks.ring import DROP_REASONS, EventRing
from sensorium.process import CgroupResolver, ProcessCache

U64 = (1 << 64) - 1
NODE = 'node-"fuzz"\u00e9'  # a node name JSON must escape

# ---- batches as bytes (the coverage-guided harness's input) -----------------------------------------------


def split_batch(data: bytes, max_records: int = 64) -> tuple[bytes, list[bytes]]:
    """``data`` -> (its first 8 bytes: the harness's choices, the records that follow, each prefixed with its
    length as a little-endian u16). The coverage-guided fuzzer mutates these bytes."""
    head, rest = data[:8].ljust(8, b"\0"), data[8:]
    recs: list[bytes] = []
    while len(rest) >= 2 and len(recs) < max_records:
        n = int.from_bytes(rest[:2], "little")
        recs.append(rest[2:2 + n])
        rest = rest[2 + n:]
    return head, recs


def join_batch(head: bytes, records: Sequence[bytes]) -> bytes:
    """The inverse of `split_batch` (for the stored corpus)."""
    return head[:8].ljust(8, b"\0") + b"".join(len(r).to_bytes(2, "little") + r[:0xFFFF] for r in records)


class Context:
    """A `SensorContext` as far as the decoders use it, with a process cache of its own (no /proc, no cgroup
    mounts: the same records give the same events on any host)."""

    node_name = NODE
    config: ClassVar[dict[str, Any]] = {}

    def __init__(self, cache: Any = "new") -> None:
        import logging

        self.log = logging.getLogger("sensorium.test.fuzz")
        if cache == "new":
            cache = ProcessCache(NODE, proc_root=None, cgroups=CgroupResolver(mountinfo=os.devnull))
        self.process_cache = cache
        self.events: list[Event] = []

    def make_event(self, kind: str, body: Any, ktime_ns: int | None = None) -> Event:
        return Event(kind, body, NODE, ktime_to_wall_ns(ktime_ns) if ktime_ns is not None else 0)

    def emit(self, events: Any) -> None:
        self.events.extend(events)


@contextlib.contextmanager
def native(on: bool) -> Iterator[None]:
    """The hook decoder's native formatter on or off (``SENSORIUM_NATIVE_DECODE``) for the block."""
    old = os.environ.get("SENSORIUM_NATIVE_DECODE")
    os.environ["SENSORIUM_NATIVE_DECODE"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SENSORIUM_NATIVE_DECODE"]
        else:
            os.environ["SENSORIUM_NATIVE_DECODE"] = old


# =========================================================================================================
# The hook engine (sens_event records: tracepoint, kprobe, uprobe sensors; lsm's BPF LSM records)
# =========================================================================================================

def _int(key: str, size: int, signed: bool, label: str | None = None) -> S.ArgPlan:
    return S.ArgPlan(kind=S.ARG_INT, from_=S.FROM_SYSCALL, offset=0, json_key=key, size=size, signed=signed,
                     label=label)


def _str(key: str, kind: int = S.ARG_STR, label: str | None = None) -> S.ArgPlan:
    return S.ArgPlan(kind=kind, from_=S.FROM_SYSCALL, offset=1, json_key=key, label=label)


# Every argument the sensors plan (tracefs.py, sensorium.hooks.plan/syscalls, kfunc.py, uprobe, bpflsm.py),
# labelled or not.
ARG_TYPES: list[S.ArgPlan] = [
    _int("int_arg", 4, True), _int("int_arg", 1, True), _int("int_arg", 2, True), _int("uint_arg", 1, False),
    _int("uint_arg", 2, False), _int("uint_arg", 4, False), _int("long_arg", 8, True), _int("size_arg", 8, False),
    _int("int_arg", 4, True, label="flags"), _int("syscall_id", 8, False), _int("syscall_id", 8, False, "nr"),
    _str("string_arg"), _str("string_arg", label='pa"th'), _str("file_arg"), _str("path_arg"),
    _str("linux_binprm_arg"), _str("process_credentials_arg"), _str("bytes_arg", S.ARG_BUF),
    _str("sock_arg", S.ARG_SOCK), _str("skb_arg", S.ARG_SOCK), _str("sockaddr_arg", S.ARG_SOCK, label="peer"),
    # kernel structures (sensorium.hooks.kstructs): every type kfunc.py plans, one labelled
    *(K.arg_plan(t, S.FROM_SYSCALL, 0, "x" if t == "perf_event" else None) for t in K.KTYPES),
]
RET_TYPES: list[S.ArgPlan | None] = [None, _int("long_arg", 8, True), _int("int_arg", 4, True),
                                     _int("long_arg", 8, True, label="ret")]
SOCK_SIZE = ctypes.sizeof(S.SensSock)
MAX_STR = S.STR_MAX - 1  # the kernel's strings: up to 255 bytes (the NUL is not in the record)


@dataclasses.dataclass(frozen=True)
class HookSpec:
    policy_id: int
    hook_id: int
    args: tuple[int, ...]  # indexes into ARG_TYPES
    ret: int               # index into RET_TYPES
    nsel: int              # selectors of the hook (signal actions name one of them)
    signals: tuple[int, ...] = (9, 10, 15, 0, 1)
    # each selector's GetUrl/DnsLookup (None: neither): a record may carry that action's bit, no other
    notify: tuple[str | None, ...] = ("GetUrl", None, "DnsLookup", "GetUrl", None)

    def notify_bit(self, sel: int) -> int:
        """The actions bit selector ``sel``'s GetUrl/DnsLookup puts in a record (0: none)."""
        a = self.notify[sel] if sel < min(self.nsel, len(self.notify)) else None
        return S.NOTIFY_BITS[a] if a else 0


def hook_plan(spec: HookSpec) -> HookPlan:
    compiled: Any = types.SimpleNamespace(cfg=types.SimpleNamespace(
        nsel=spec.nsel, sel=[types.SimpleNamespace(signal=s) for s in spec.signals]),
        notify={i: (a, "http://canary.example/x" if a == "GetUrl" else "canary.example")
                for i, a in enumerate(spec.notify[:spec.nsel]) if a})
    return HookPlan(hook=f"kprobes[{spec.hook_id}]", field="spec.kprobes[0]", compiled=compiled,
                    args=[ARG_TYPES[i] for i in spec.args], attach=("syscall", spec.ret != 0), mechanism="m",
                    note="", body={"function_name": "__x64_sys_fuzz", "message": 'ü "x"'}, kind="process_kprobe",
                    return_plan=RET_TYPES[spec.ret])


class _HookStats:
    """What the decoder reads of a hook's section (`HookSet`): its event count, its stack map (none: these
    hooks take no stacks, so a record flagged with stacks loses them, counted) and the stack loss counters."""

    events = 0
    stack_map = None

    def __init__(self) -> None:
        from sensorium.hooks.stacks import LOST_REASONS

        self.stack_lost = dict.fromkeys(LOST_REASONS, 0)


def hook_ring(specs: Sequence[HookSpec], cache: Any = None) -> EventRing:
    ring = EventRing(Context(cache), "fuzz")
    ring.hooks = {(s.policy_id, s.hook_id): (hook_plan(s), f"policy-{s.policy_id} \"q\"", _HookStats()) for s in specs}
    return ring


def specs_from_bytes(head: bytes) -> list[HookSpec]:
    """The hooks a coverage-guided input loads, from its first bytes (every argument type reachable)."""
    out = []
    for h in range(1 + head[0] % 3):
        b = head[1 + 2 * h:3 + 2 * h]
        nargs = b[0] % (S.MAX_ARGS + 1)
        args = tuple((b[1] * 7 + 3 * a + b[0] // 8) % len(ARG_TYPES) for a in range(nargs))
        out.append(HookSpec(policy_id=3, hook_id=h, args=args, ret=(b[0] >> 4) % len(RET_TYPES), nsel=b[1] % 6))
    return out


@dataclasses.dataclass
class HookArg:
    """One argument of a well-formed record: its plan index, record kind, flags and value (int or bytes)."""

    type: int
    kind: int
    flags: int
    value: Any


@dataclasses.dataclass
class HookRecord:
    spec: HookSpec
    args: list[HookArg]
    pid: int = 4242
    tid: int = 4243
    ktime: int = 123_456_789
    retval: int = 0
    cgroup_id: int = 0
    sel: int = 0
    actions: int = S.ACT_POST
    flags: int = 0
    rtype: int = S.REC_HOOK

    def data(self) -> tuple[bytes, list[tuple[int, int]]]:
        """The arguments as the kernel writes them, and each argument's (start, end) in the data."""
        out, spans = b"", []
        for a in self.args:
            start = len(out)
            if a.kind == S.ARG_INT:
                out += _ARG.pack(a.kind, a.flags, 8, 0) + struct.pack("<Q", a.value & U64)
            else:
                out += _ARG.pack(a.kind, a.flags, len(a.value), 0) + a.value + b"\0" * (-len(a.value) % 8)
            spans.append((start, len(out)))
        return out, spans

    def encode(self, data_len: int | None = None, data: bytes | None = None) -> bytes:
        if data is None:
            data, _ = self.data()
        dl = len(data) if data_len is None else data_len
        ret = self.retval & U64
        ret = ret - (1 << 64) if ret >= 1 << 63 else ret
        return _EV.pack(self.rtype, 0, _EV.size + len(data), self.ktime, self.pid, self.tid, self.spec.policy_id,
                        self.spec.hook_id, ret, self.cgroup_id, self.sel, self.actions, self.flags,
                        len(self.spec.args), dl & 0xFFFFFFFF) + data


# Tetragon's KprobeArgument fields that are 64-bit integers: protojson writes them as JSON strings.
_TETRAGON_I64 = ("size_arg", "long_arg")

def expected_arg(a: HookArg, ap: S.ArgPlan | None = None) -> dict[str, Any]:
    """What the decoder must render for one argument (Tetragon's KprobeArgument), written from the rules, not
    from the decoder: an integer masked to its size and sign-extended; text decoded as UTF-8 with bad bytes as
    \\xNN escapes; paths under "path"; bytes in base64; a socket from its ``sens_sock``. ``ap``: the argument's
    plan when it is not one of `ARG_TYPES` (``a.type`` is then unused)."""
    ap = ap if ap is not None else ARG_TYPES[a.type]
    key = ap.json_key
    if ap.kind == S.ARG_INT:
        v = a.value & ((1 << (8 * ap.size)) - 1)
        if ap.signed and v >> (8 * ap.size - 1):
            v -= 1 << (8 * ap.size)
        if key in _TETRAGON_I64:
            v = str(v)  # type: ignore[assignment]
        out: dict[str, Any] = {key: v}
        if key == "syscall_id":  # Tetragon's 32-bit mark: bit 31 set by the kernel for a compat task
            i386 = isinstance(v, int) and v & 0x80000000
            out = {key: {"id": v & ~0x80000000 if i386 else v, "abi": "i386" if i386 else "x64"}}
        if key == "capability_arg":  # a capability: its number and name (CAP_ and the uapi name)
            out = {key: {"value": v, "name": KO.CAPS[v] if 0 <= v < len(KO.CAPS) else ""}}
        elif key.endswith(("cap_t_arg", "inheritable_arg", "permitted_arg", "effective_arg")):
            out = {key: "%016x" % (a.value & U64)}  # a capability set: 16 hex digits
    elif key == "bytes_arg":
        b64 = base64.b64encode(a.value).decode()
        out = {"truncated_bytes_arg": {"bytes_arg": b64}} if a.flags & S.ARGF_TRUNC else {key: b64}  # no nulls
    elif ap.kind == S.ARG_SOCK:
        out = {key: expected_sock(key, a.value)}
    elif ap.deref >= S.DEREF_NETDEV:
        out = {key: KO.expected_kstruct(ap, a.value)}
    else:
        text = a.value.decode("utf-8", "backslashreplace")
        out = {key: {"path": text}} if key in ("file_arg", "path_arg", "linux_binprm_arg") else {key: text}
    # (an unreadable argument's "error" is ours: only in the extended format, not the default one tested here)
    if ap.label:
        out["label"] = ap.label
    return out


_FAMILIES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET",
             40: "AF_VSOCK", 44: "AF_XDP"}
_PROTOS = {6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 1: "IPPROTO_ICMP", 58: "IPPROTO_ICMPV6", 132: "IPPROTO_SCTP",
           136: "IPPROTO_UDPLITE", 255: "IPPROTO_RAW", 0: "IPPROTO_IP", 2: "IPPROTO_IGMP", 262: "IPPROTO_MPTCP"}


def expected_sock(key: str, payload: bytes) -> dict[str, Any]:
    """``struct sens_sock`` (family, type, protocol, sport, dport, state: u16; saddr, daddr: 16 bytes; len: u32)."""
    if len(payload) < SOCK_SIZE:
        return {"error": "undecodable"}
    fam, typ, proto, sport, dport, state = struct.unpack_from("<6H", payload)
    saddr, daddr = payload[12:28], payload[28:44]
    (length,) = struct.unpack_from("<I", payload, 44)
    ip = lambda raw: ip_text(fam, raw)  # noqa: E731
    family = _FAMILIES.get(fam, str(fam))
    inet = fam in (2, 10)
    proto_name = S._PROTO_NAMES.get(proto, str(proto))
    if key == "skb_arg":
        out: dict[str, Any] = {"family": family, "len": length}
        if inet:
            out.update(saddr=ip(saddr), daddr=ip(daddr), sport=sport, dport=dport, proto=proto, protocol=proto_name)
        return out
    if key == "sockaddr_arg":
        out = {"family": family}
        if inet:
            out.update(addr=ip(saddr), port=sport)
        return out
    types = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}
    out = {"family": family, "type": types.get(typ, str(typ)), "protocol": proto_name}
    if inet:
        out.update(saddr=ip(saddr), daddr=ip(daddr), sport=sport, dport=dport)
    if proto == 6 and state in S._TCP_STATES:
        out["state"] = S._TCP_STATES[state]
    return out


def expected_hook_body(r: HookRecord, nargs: int | None = None) -> dict[str, Any]:
    """The body of the event a well-formed record must become (its first ``nargs`` arguments), in the default
    event format: Tetragon's fields only (docs/events.md)."""
    plan = hook_plan(r.spec)
    body: dict[str, Any] = {"process": {"pid": r.pid, "tid": r.tid}, **plan.body}
    body["args"] = [expected_arg(a) for a in r.args[:nargs]]
    if plan.return_plan is not None and r.flags & S.EV_HAS_RET:
        rp = plan.return_plan
        v = r.retval & ((1 << (8 * rp.size)) - 1)
        if rp.signed and v >> (8 * rp.size - 1):
            v -= 1 << (8 * rp.size)
        body["return"] = {rp.json_key: str(v) if rp.json_key in _TETRAGON_I64 else v,
                          **({"label": rp.label} if rp.label else {})}
    body["policy_name"] = f"policy-{r.spec.policy_id} \"q\""
    if r.actions & (S.ACT_SIGKILL | S.ACT_SIGNAL):
        # (signal, policy_mode, action_taken are ours: the extended format only)
        body["action"] = "KPROBE_ACTION_SIGKILL" if r.actions & S.ACT_SIGKILL else "KPROBE_ACTION_SIGNAL"
    elif r.actions & S.ACT_GETURL:
        body["action"] = "KPROBE_ACTION_GETURL"
    elif r.actions & S.ACT_DNSLOOKUP:
        body["action"] = "KPROBE_ACTION_DNSLOOKUP"
    else:
        body["action"] = "KPROBE_ACTION_POST"
    # (cgroup_id is ours too)
    return body


def expected_time(ktime: int) -> str:
    return rfc3339(BOOT_WALL_NS + ktime)


# ---- hostile changes to a well-formed hook record: (kind, record bytes, the drop reason it must get) -----------

def hook_mutations(r: HookRecord, pick: Callable[[int], int]) -> list[tuple[str, bytes, str]]:
    """Every hostile change that applies to ``r``, each bad by construction, with the reason the decoder must
    count it under. ``pick(n)`` chooses in range(n) (hypothesis or the harness decide)."""
    rec = r.encode()
    data, spans = r.data()
    out: list[tuple[str, bytes, str]] = [("cut in the header", rec[:pick(_EV.size)], "short")]
    if data:
        out.append(("cut in the data", rec[:_EV.size + pick(len(data))], "truncated"))
    out.append(("data_len past the record", r.encode(data_len=len(data) + 1 + pick((1 << 32) - 1 - len(data))),
                "truncated"))
    inside = [p for s, e in spans for p in range(s + 1, e)]  # strictly inside an argument
    if inside:
        out.append(("data_len inside an argument", r.encode(data_len=inside[pick(len(inside))]), "bad_argument"))
    if spans:
        i = pick(len(spans))
        s, _ = spans[i]
        plan_kind = r.args[i].kind  # a well-formed record's kinds are its hook's
        wrong = [k for k in (0, 1, 2, 3, 4, 5, 255) if k != plan_kind]
        d = bytearray(data)
        d[s] = wrong[pick(len(wrong))]
        out.append(("an argument of another kind", r.encode(data=bytes(d)), "bad_argument"))
        strs = [j for j, a in enumerate(r.args) if a.kind != S.ARG_INT]
        if strs:
            j = strs[pick(len(strs))]
            s, _ = spans[j]
            d = bytearray(data)
            room = len(data) - s - 8  # bytes from this argument's value to the end of the data
            d[s + 2:s + 4] = struct.pack("<H", min(0xFFFF, room + 1 + pick(0xFFFF - min(room, 0xFFFE))))
            out.append(("a length past the data", r.encode(data=bytes(d)), "bad_argument"))
    out.append(("data after the arguments", r.encode(data=data + b"\xff" * 8 * (1 + pick(4))), "bad_argument"))
    bad_sel = dataclasses.replace(r, actions=r.actions | (S.ACT_SIGKILL, S.ACT_SIGNAL)[pick(2)],
                                  sel=r.spec.nsel + pick(256 - r.spec.nsel))
    out.append(("a signal from a selector the hook lacks", bad_sel.encode(), "bad_selector"))
    bit = (S.ACT_GETURL, S.ACT_DNSLOOKUP)[pick(2)]
    out.append(("a GetUrl/DnsLookup from a selector the hook lacks",
                dataclasses.replace(r, actions=r.actions | bit, sel=r.spec.nsel + pick(256 - r.spec.nsel)).encode(),
                "bad_selector"))
    if r.sel < r.spec.nsel:  # the selector exists, without that action (or with the other one)
        wrong = (S.ACT_NOTIFY & ~r.spec.notify_bit(r.sel)) if r.spec.notify_bit(r.sel) else bit
        out.append(("a GetUrl/DnsLookup its selector does not have",
                    dataclasses.replace(r, actions=(r.actions & ~S.ACT_NOTIFY) | wrong).encode(), "bad_selector"))
    out.append(("another record type", dataclasses.replace(r, rtype=2 + pick(0xFFFE)).encode(), "not_a_hook_record"))
    gone = dataclasses.replace(r, spec=dataclasses.replace(r.spec, policy_id=1000 + pick(1000)))  # loaded: < 1000
    out.append(("a hook that is not loaded", gone.encode(), "unknown_hook"))
    return out


def fewer_args(r: HookRecord, k: int) -> tuple[bytes, int]:
    """``r`` as the kernel writes it when it had room for ``k`` arguments only (well-formed)."""
    rr = dataclasses.replace(r, args=r.args[:k])
    return rr.encode(), k


# ---- the properties of one batch through the hook decoder ---------------------------------------------------

@dataclasses.dataclass
class HookOutcome:
    lines: list[bytes]
    dropped: dict[str, int]
    events: int


def _decode_hook(specs: Sequence[HookSpec], records: Sequence[bytes], cache: Any, how: str) -> HookOutcome:
    ring = hook_ring(specs, cache)
    if how == "dicts":
        out = ring.decode_dicts(list(records))
        lines = [e.json() for e in out]
    else:
        with native(how == "native"):
            batch = ring.decode(list(records))
        lines = list(batch.lines)
        # the events made from the lines (what filters and stages read) hold the same content
        for made, line in zip(batch, lines, strict=True):
            # (the body rendered in the exported format, sensorium.schema)
            assert made.json() == line and orjson.dumps(schema.conform(made.as_dict())) == line, (made.as_dict(), line)
    return HookOutcome(lines, dict(ring.dropped), sum(e[2].events for e in ring.hooks.values()))


def check_hook_batch(specs: Sequence[HookSpec], records: Sequence[bytes], cache: Any = None,
                     isolation: bool = True) -> HookOutcome:
    """The hook decoder's properties on one batch (raises AssertionError naming the broken one)."""
    py = _decode_hook(specs, records, cache, "python")
    nat = _decode_hook(specs, records, cache, "native")
    assert nat.lines == py.lines, "native formatter and Python path differ"
    assert nat.dropped == py.dropped and nat.events == py.events, (nat.dropped, py.dropped)
    dicts = _decode_hook(specs, records, cache, "dicts")
    assert dicts.lines == py.lines, "decode and decode_dicts differ"
    assert dicts.dropped == py.dropped, (dicts.dropped, py.dropped)
    assert len(py.lines) + sum(py.dropped.values()) == len(records), "a record vanished uncounted"
    assert py.events == len(py.lines)
    for line in py.lines:
        orjson.loads(line)
    if isolation and len(records) > 1:
        one_by_one = [line for r in records for line in _decode_hook(specs, [r], cache, "python").lines]
        assert one_by_one == py.lines, "a record changed what another one became"
    return py


def hook_single(specs: Sequence[HookSpec], rec: bytes, cache: Any = None) -> HookOutcome:
    return _decode_hook(specs, [rec], cache, "python")


# =========================================================================================================
# The exec sensor (exec_record / fork_record / exit_record)
# =========================================================================================================

from sensorium.bpf.decoding import HDR_SIZE  # noqa: E402
from sensorium_sensors.exec import decoder as X  # noqa: E402


@dataclasses.dataclass
class ExecRec:
    pid: int = 4242
    tid: int = 4242
    ktime: int = 1_000
    ppid: int = 1
    ids: tuple[int, ...] = (0,) * 10   # uid euid suid fsuid gid egid sgid fsgid auid + args_total
    ns: tuple[int, ...] = (0,) * 10
    cgroups: tuple[int, ...] = (0,) * 5  # cgroup_id memcg_id cgroup_parent_id memcg_parent_id start_time
    argv: tuple[bytes, ...] = (b"/bin/x",)
    binary: bytes = b"/bin/x"
    cwd: bytes = b"/"
    cg_name: bytes = b""
    memcg_name: bytes = b""
    flags: int = 0

    def args_area(self) -> bytes:
        return b"".join(a + b"\0" for a in self.argv)

    def encode(self, lens: tuple[int, ...] | None = None, tail: bytes = b"") -> bytes:
        r = X.ExecRecord()
        r.hdr.type, r.hdr.flags, r.hdr.ktime, r.hdr.pid, r.hdr.tid = X.EXEC_REC_EXEC, self.flags, self.ktime, \
            self.pid, self.tid
        r.ppid = self.ppid
        for name, v in zip(("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid", "auid", "args_total"),
                           self.ids, strict=True):
            setattr(r, name, v)
        for (_, attr), v in zip(X._NS_FIELDS, self.ns, strict=True):
            setattr(r, attr, v)
        for name, v in zip(("cgroup_id", "memcg_id", "cgroup_parent_id", "memcg_parent_id", "start_time"),
                           self.cgroups, strict=True):
            setattr(r, name, v)
        parts = (self.args_area(), self.binary, self.cwd, self.cg_name, self.memcg_name)
        r.args_len, r.binary_len, r.cwd_len, r.cgroup_name_len, r.memcg_name_len = lens or tuple(map(len, parts))
        body = b"".join(parts) + tail
        r.hdr.size = ctypes.sizeof(r) + len(body)
        return bytes(r) + body


def fork_record(parent: int, child: int, ktime: int) -> bytes:
    r = X.ForkRecord()
    r.hdr.type, r.hdr.ktime, r.hdr.pid, r.hdr.tid = X.EXEC_REC_FORK, ktime, parent, parent
    r.hdr.size = ctypes.sizeof(r)
    r.child_pid, r.parent_pid, r.child_start_time = child, parent, ktime
    return bytes(r)


def exit_record(pid: int, ktime: int, code: int, group: int, signal_flags: int) -> bytes:
    r = X.ExitRecord()
    r.hdr.type, r.hdr.ktime, r.hdr.pid, r.hdr.tid = X.EXEC_REC_EXIT, ktime, pid, pid
    r.hdr.size = ctypes.sizeof(r)
    r.exit_code, r.group_exit_code, r.signal_flags = code, group, signal_flags
    return bytes(r)


def text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def expected_exec_process(e: ExecRec) -> dict[str, Any]:
    """The fields of ``process`` an exec record must give (those the record alone decides)."""
    uid, euid, suid, fsuid, gid, egid, sgid, fsgid, auid = e.ids[:9]
    return {"pid": e.pid, "tid": e.tid, "uid": uid, "binary": text(e.binary), "cwd": text(e.cwd),
            "arguments": " ".join(text(a) for a in e.argv[1:]), "auid": auid,
            "start_time": rfc3339(BOOT_WALL_NS + e.ktime),
            "process_credentials": _expected_creds(e, uid, gid, euid, egid, suid, sgid, fsuid, fsgid)}


def _expected_creds(e: ExecRec, uid: int, gid: int, euid: int, egid: int, suid: int, sgid: int, fsuid: int,
                    fsgid: int) -> dict[str, Any]:
    """Credentials as Tetragon's ProcessCredentials: these records carry no capability (empty sets), no
    securebits, the user namespace at level 0 owned by root, and its inode from the record."""
    creds: dict[str, Any] = {"uid": uid, "gid": gid, "euid": euid, "egid": egid, "suid": suid, "sgid": sgid,
                             "fsuid": fsuid, "fsgid": fsgid, "caps": {}}
    ns_user = dict(zip((n for n, _ in X._NS_FIELDS), e.ns, strict=True)).get("user")
    if ns_user:
        creds["user_ns"] = {"level": 0, "uid": 0, "gid": 0,
                            "ns": {"inum": ns_user, "is_host": ns_user == os.stat("/proc/self/ns/user").st_ino}}
    return creds


def expected_exit_status(code: int, group: int, signal_flags: int) -> dict[str, Any]:
    """wait(2) status: the group's code when the whole group exits (SIGNAL_GROUP_EXIT), a signal in its low
    7 bits, else the exit status in bits 8-15."""
    c = group if signal_flags & 0x4 else code
    if c & 0x7F:
        import signal as _signal

        try:
            name = _signal.Signals(c & 0x7F).name
        except ValueError:
            name = f"SIG{c & 0x7F}"
        return {"signal": name, "status": 0}
    return {"status": (c >> 8) & 0xFF}


def exec_mutations(rec: bytes, kind: int, pick: Callable[[int], int]) -> list[tuple[str, bytes, str]]:
    """Hostile changes to a well-formed exec-sensor record, with the counter the decoder must bump."""
    layout = {X.EXEC_REC_EXEC: X.ExecRecord, X.EXEC_REC_FORK: X.ForkRecord, X.EXEC_REC_EXIT: X.ExitRecord}[kind]
    size = ctypes.sizeof(layout)
    name = {X.EXEC_REC_EXEC: "exec", X.EXEC_REC_FORK: "fork", X.EXEC_REC_EXIT: "exit"}[kind]
    out = [("cut in the header", rec[:pick(HDR_SIZE)], "short"),
           ("cut in the record", rec[:HDR_SIZE + pick(size - HDR_SIZE)], f"bad_{name}_size")]
    t = 4 + pick(0xFFFC)
    out.append(("another record type", t.to_bytes(2, "little") + rec[2:], "unknown_type"))
    if kind == X.EXEC_REC_EXEC:
        r = bytearray(rec)
        field = pick(5)
        off = X.ExecRecord.args_len.offset + 2 * field
        lens = list(struct.unpack_from("<5H", rec, X.ExecRecord.args_len.offset))
        room = len(rec) - size - sum(lens) + lens[field]  # what this field could hold
        if room < 0xFFFF:
            r[off:off + 2] = struct.pack("<H", room + 1 + pick(0xFFFF - room))
            out.append(("a length past the record", bytes(r), "bad_exec_lengths"))
        if len(rec) > size:
            out.append(("cut in the strings", rec[:size + pick(len(rec) - size)], "bad_exec_lengths"))
    return out


def _exec_decode(records: Sequence[bytes]) -> tuple[list[bytes], dict[str, int]]:
    d = X.ExecDecoder(Context())  # type: ignore[arg-type]
    out = d.decode_batch(list(records))
    return [e.json() for e in out], dict(d.counters)


def check_exec_batch(records: Sequence[bytes]) -> tuple[list[Event], dict[str, int]]:
    """No exception; every record an event or counted; a dropped record changes nothing for the others."""
    d = X.ExecDecoder(Context())  # type: ignore[arg-type]
    events = d.decode_batch(list(records))
    c = dict(d.counters)
    assert sum(c.values()) == len(records), ("a record vanished uncounted", c, len(records))
    assert len(events) == c.get("exec", 0) + c.get("exit", 0), c
    lines = [e.json() for e in events]
    for line in lines:
        body = next(iter(orjson.loads(line).values()))
        proc, parent = body["process"], body.get("parent") or {}
        # no process is its own parent (a record must not make the cache invent a lineage)
        assert "exec_id" not in proc or proc["exec_id"] not in (proc.get("parent_exec_id"), parent.get("exec_id")), body
    kept = [r for r in records if _exec_accepts(r)]
    if len(kept) != len(records):
        assert _exec_decode(kept)[0] == lines, "a dropped record changed what the others became"
    return events, c


def _exec_accepts(rec: bytes) -> bool:
    d = X.ExecDecoder(Context())  # type: ignore[arg-type]
    d.decode_batch([rec])
    return bool(d.counters.get("exec") or d.counters.get("fork") or d.counters.get("exit"))


# =========================================================================================================
# The network sensor (net_tcp_record / net_udp_record)
# =========================================================================================================

from sensorium_sensors.network import decoder as N  # noqa: E402


def tcp_record(rtype: int, **kw: Any) -> bytes:
    r = N.NetTcpRecord()
    r.hdr.type, r.hdr.size = rtype, ctypes.sizeof(r)
    for k, v in kw.items():
        if k in ("flags", "ktime", "pid", "tid"):
            setattr(r.hdr, k, v)
        elif k in ("saddr", "daddr"):
            getattr(r, k)[:] = list(v)
        else:
            setattr(r, k, v)
    return bytes(r)


def udp_record(**kw: Any) -> bytes:
    r = N.NetUdpRecord()
    r.hdr.type, r.hdr.size = N.NET_REC_UDP, ctypes.sizeof(r)
    for k, v in kw.items():
        if k in ("flags", "ktime", "pid", "tid"):
            setattr(r.hdr, k, v)
        elif k in ("saddr", "daddr"):
            getattr(r, k)[:] = list(v)
        else:
            setattr(r, k, v)
    return bytes(r)


def ip_text(family: int, raw: bytes) -> str:
    """An address as the C library writes it (inet_ntop: what Sensorium exports; ``::1.0.0.0`` where Python's
    ipaddress would write ``::100:0``: the same address)."""
    import socket

    return socket.inet_ntop(socket.AF_INET, raw[:4]) if family == 2 else socket.inet_ntop(socket.AF_INET6, raw[:16])


def net_mutations(rec: bytes, pick: Callable[[int], int]) -> list[tuple[str, bytes, str]]:
    rtype = int.from_bytes(rec[:2], "little")
    layout, name = (N.NetUdpRecord, "bad_udp_size") if rtype == N.NET_REC_UDP else (N.NetTcpRecord, "bad_tcp_size")
    size, fam_off = ctypes.sizeof(layout), layout.family.offset
    bad_fam = [f for f in (0, 1, 3, 9, 11, 0xFFFF) if f not in N.FAMILIES][pick(5)]
    r = bytearray(rec)
    r[fam_off:fam_off + 2] = struct.pack("<H", bad_fam)
    out = [("cut in the header", rec[:pick(HDR_SIZE)], "short"),
           ("cut in the record", rec[:HDR_SIZE + pick(size - HDR_SIZE)], name),
           ("another record type", (5 + pick(0xFFFA)).to_bytes(2, "little") + rec[2:], "unknown_type"),
           ("an unknown address family", bytes(r), "bad_udp" if rtype == N.NET_REC_UDP else "bad_family")]
    if rtype == N.NET_REC_UDP:
        r = bytearray(rec)
        off = N.NetUdpRecord.hook.offset
        r[off:off + 2] = struct.pack("<H", [0, 3, 4, 0xFFFF][pick(4)])
        out.append(("an unknown UDP hook", bytes(r), "bad_udp"))
    return out


_NET_EVENT_COUNTERS = ("tcp_connect", "inet_csk_accept", "tcp_close", "udp_sendmsg", "udp_connect")


def check_net_batch(records: Sequence[bytes]) -> tuple[list[Event], dict[str, int]]:
    d = N.NetworkDecoder(Context())  # type: ignore[arg-type]
    events = d.decode_batch(list(records))
    c = dict(d.counters)
    assert sum(c.values()) == len(records), ("a record vanished uncounted", c, len(records))
    assert len(events) == sum(c.get(k, 0) for k in _NET_EVENT_COUNTERS), c
    for e in events:
        orjson.loads(e.json())
    return events, c


# =========================================================================================================
# The lsm sensor (BPF LSM records: sens_event; socket guard records: lsm_net_event)
# =========================================================================================================

from sensorium.bpf.btf import LsmHookSig, LsmParam  # noqa: E402
from sensorium.hookspecs import PolicyView  # noqa: E402
from sensorium_sensors.lsm import bpflsm, netguard  # noqa: E402
from sensorium_sensors.lsm.plugin import LsmPolicyHandle, LsmSensor  # noqa: E402
from sensorium_sensors.lsm.rules import ArgPlan as LsmArg  # noqa: E402
from sensorium_sensors.lsm.rules import HookPlan as LsmPlan  # noqa: E402
from sensorium_sensors.lsm.schema import LsmHookSpec  # noqa: E402

_PREFIX = {"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["/tmp/"]}]}
# (hook, parameters, policy arguments (index, type, C type), selectors): the argument kinds BPF LSM reads.
LSM_HOOKS = [
    ("file_open", (("file", "struct file *"),), ((0, "file", "struct file *"),),
     [dict(_PREFIX, matchActions=[{"action": "Override", "argError": -13}])]),
    ("file_open", (("file", "struct file *"),), ((0, "file", "struct file *"),), []),
    ("task_kill", (("p", "struct task_struct *"), ("info", "struct kernel_siginfo *"), ("sig", "int"),
                   ("cred", "const struct cred *")), ((2, "int", "int"),),
     [{"matchArgs": [{"index": 2, "operator": "Equal", "values": ["9"]}], "matchActions": [{"action": "Sigkill"}]},
      {"matchArgs": [{"index": 2, "operator": "Equal", "values": ["15"]}], "matchActions": [{"action": "Post"}]}]),
    ("bprm_check_security", (("bprm", "struct linux_binprm *"),), ((0, "linux_binprm", "struct linux_binprm *"),),
     [{"matchArgs": [{"index": 0, "operator": "Postfix", "values": ["/sh"]}],
       "matchActions": [{"action": "Override", "argError": -1}]}] * 3),
]


def lsm_program(i: int, policy_id: int = 3) -> tuple[LsmPlan, bpflsm.LsmProgram]:
    hook, params, args, selectors = LSM_HOOKS[i]
    spec = LsmHookSpec.model_validate({"hook": hook, "args": [{"index": a[0], "type": a[1]} for a in args],
                                       "selectors": selectors})
    plan = LsmPlan(i, spec, LsmHookSig(hook, tuple(LsmParam(n, c) for n, c in params)),
                   tuple(LsmArg(a[0], a[1], a[2], None) for a in args), "bpf_lsm")
    prog = bpflsm.LsmProgram(plan, policy_id=policy_id, scope=None, enforce=True, build=None, open_object=None)  # type: ignore[arg-type]
    _compiled, prog.args, prog.errnos = bpflsm.compile_hook(plan, policy_id=policy_id, hook_id=i)
    return plan, prog


def lsm_handle(plan: Any, ctx: Context, policy_id: int = 3) -> tuple[LsmSensor, LsmPolicyHandle]:
    sensor = LsmSensor(ctx)
    view = PolicyView(id=policy_id, name="guard", namespace=None, section="lsmhooks", items=[plan.spec])
    return sensor, LsmPolicyHandle(sensor, view, [plan], None)


def connect_plan(nsel: int) -> LsmPlan:
    sel = [{"matchArgs": [{"index": 1, "operator": "DPort", "values": [str(9 + k)]}],
            "matchActions": [{"action": "Override", "argError": -1} if k % 2 else {"action": "Post"}]}
           for k in range(nsel)]
    spec = LsmHookSpec.model_validate({"hook": "socket_connect", "args": [{"index": 1, "type": "sockaddr"}],
                                       "selectors": sel})
    sig = LsmHookSig("socket_connect", (LsmParam("sock", "struct socket *"), LsmParam("address", "struct sockaddr *"),
                                        LsmParam("addrlen", "int")))
    return LsmPlan(0, spec, sig, (LsmArg(1, "sockaddr", "struct sockaddr *", None),), "bpf_lsm")


def net_event(**kw: Any) -> bytes:
    ev = netguard.NetEvent()
    ev.hdr.type, ev.hdr.size = netguard.RECORD_TYPE, ctypes.sizeof(ev)
    for k, v in kw.items():
        if k in ("pid", "tid", "ktime", "flags"):
            setattr(ev.hdr, k, v)
        elif k == "rtype":
            ev.hdr.type = v
        elif k == "daddr":
            ev.daddr[:] = list(v)
        else:
            setattr(ev, k, v)
    return bytes(ev)


def check_lsm_batch(i: int, records: Sequence[bytes]) -> tuple[list[Event], int]:
    """The BPF LSM decoder on one batch: no exception, every record an event or one error of its policy."""
    ctx = Context(cache=None)
    plan, prog = lsm_program(i)
    sensor, h = lsm_handle(plan, ctx)
    ctx.emit(sensor._decode_lsm(h, plan, list(records), prog))
    assert len(ctx.events) + h.errors == len(records) and h.events == len(ctx.events), (h.events, h.errors)
    for e in ctx.events:
        orjson.loads(e.json())
    return ctx.events, h.errors


def check_net_guard_batch(nsel: int, records: Sequence[bytes]) -> tuple[list[Event], int]:
    ctx = Context(cache=None)
    plan = connect_plan(nsel)
    sensor, h = lsm_handle(plan, ctx, policy_id=7)
    ctx.emit(sensor._decode_net(h, plan, list(records)))
    assert len(ctx.events) + h.errors == len(records) and h.events == len(ctx.events), (h.events, h.errors)
    for e in ctx.events:
        orjson.loads(e.json())
    return ctx.events, h.errors


# =========================================================================================================
# Helpers for the harness
# =========================================================================================================

def picker(data: bytes) -> Callable[[int], int]:
    """A ``pick(n)`` that draws from ``data`` (cycled): the coverage-guided harness's choices."""
    pos = [0]
    buf = data or b"\0"

    def pick(n: int) -> int:
        if n <= 1:
            return 0
        b = int.from_bytes((buf * 8)[pos[0] % len(buf):pos[0] % len(buf) + 8], "little")
        pos[0] += 8
        return b % n

    return pick


__all__ = [n for n in dir() if not n.startswith("_")] + ["DROP_REASONS"]

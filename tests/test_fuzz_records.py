"""Property-based fuzzing (hypothesis) of every ring-record decoder: the hook engine's (tracepoint, kprobe,
uprobe sensors; its native formatter fastrest.c), the exec sensor's, the network sensor's, the lsm sensor's
(BPF LSM and socket guard records) and the kprobe sensor's kernel-function additions.

Each example is a batch of records: well-formed ones with every field at its extremes (the oracle in
tests/record_fuzz.py says what each must become), records made bad by construction (cut, lengths past the
record, arguments of another kind, counts and selectors out of range, unknown types, bytes that are not
UTF-8), records with random bytes flipped, and noise. Properties:

* zero tracebacks: no exception escapes a decoder (one would cost its whole ring batch);
* zero hangs: every batch is answered within `reliability.HANG_S`;
* zero wrong accepts: a well-formed record becomes exactly the event the oracle says, a bad one becomes no
  event and is counted under the reason it deserves; nothing vanishes uncounted, and a dropped record
  changes nothing for the others of its batch;
* the hook decoder's native formatter gives the bytes its Python path gives, for every batch.

The normal suite runs a bounded, reproducible number of examples (derandomized). The long run:

    SENSORIUM_FUZZ=long .venv/bin/python -m pytest -p no:cacheprovider tests/test_fuzz_records.py

Figures go to build/reliability/records-*.json (docs/reliability.md).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest
import record_fuzz as R
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import Tally

from sensorium.hooks import selectors as S


@pytest.fixture(autouse=True)
def _every_process_field() -> Iterator[None]:
    """The expectations here render whole processes: credentials and namespaces exported, as an agent with
    events.process_credentials and events.process_namespaces does (off by default, as in Tetragon)."""
    from sensorium import schema

    schema.set_process_fields(credentials=True, namespaces=True)
    yield
    schema.set_process_fields(credentials=False, namespaces=False)

LONG = os.environ.get("SENSORIUM_FUZZ") == "long"
EXAMPLES = int(os.environ.get("SENSORIUM_FUZZ_EXAMPLES") or (10_000 if LONG else 150))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

pytestmark = pytest.mark.fuzz

# ---- values at their extremes ---------------------------------------------------------------------------

U64 = (1 << 64) - 1
u64 = st.one_of(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                                 (1 << 63) - 1, 1 << 63, U64 - 1, U64]), st.integers(0, U64))
u32 = st.one_of(st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF))
s64 = u64.map(lambda v: v - (1 << 64) if v >> 63 else v)
# Text the kernel hands over: empty, the longest string, quotes and escapes JSON must write, controls, NUL,
# bytes that are not UTF-8, UTF-8 line separators, a mix.
PIECES = [b"", b"/", b"/etc/passwd", b'"', b"\\", b"\n", b"\t", b"\0", b"\x07", b"\x7f", b"\xff", b"\xfe\xff",
          b"\xc3", b"\xed\xa0\x80", "é".encode(), "日本".encode(), "\u2028".encode(), b"%s%d", b"\x1b[2J"]
raw_text = st.one_of(st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join), st.binary(max_size=R.MAX_STR),
                     st.just(b"/" * R.MAX_STR), st.just(b"\xff" * R.MAX_STR))
kernel_text = raw_text.map(lambda b: b[:R.MAX_STR])
FAMILIES = [0, 1, 2, 10, 16, 17, 40, 44, 3, 0xFFFF]


def sock_payload() -> st.SearchStrategy[bytes]:
    return st.tuples(st.sampled_from(FAMILIES), st.integers(0, 0xFFFF), st.sampled_from([0, 6, 17, 1, 255, 0xFFFF]),
                     st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 16),
                     st.binary(min_size=32, max_size=32), u32).map(
        lambda t: struct.pack("<6H", *t[:6]) + t[6] + struct.pack("<I", t[7]))


def kstruct_payload() -> st.SearchStrategy[bytes]:
    """A kernel structure's payload (struct sens_k_*): any bytes, short or long, or a plausible one."""
    words = st.sampled_from([0, 1, 2, 6, 27, 33, 99, 2**31, 2**32 - 1])
    return st.one_of(st.binary(max_size=S.KSTRUCT_MAX + 8),
                     st.tuples(words, words, words, words, kernel_text).map(
                         lambda t: (struct.pack("<4I", *t[:4]) + t[4])[:S.KSTRUCT_MAX].ljust(S.KSTRUCT_MAX, b"\0")))


def _hook_arg(i: int) -> st.SearchStrategy[R.HookArg]:
    ap = R.ARG_TYPES[i]
    if ap.kind == S.ARG_INT:
        return u64.map(lambda v: R.HookArg(i, S.ARG_INT, 0, v))
    payload = sock_payload() if ap.kind == S.ARG_SOCK else kstruct_payload() if ap.kind == S.ARG_STRUCT else \
        kernel_text
    return st.tuples(st.sampled_from([0, S.ARGF_TRUNC, S.ARGF_ERR, S.ARGF_TRUNC | S.ARGF_ERR]), payload).map(
        lambda fp: R.HookArg(i, ap.kind, fp[0], fp[1]))


hook_specs = st.lists(st.tuples(st.integers(1, 99), st.lists(st.integers(0, len(R.ARG_TYPES) - 1), max_size=S.MAX_ARGS),
                                st.integers(0, len(R.RET_TYPES) - 1), st.integers(0, S.MAX_SELECTORS)),
                      min_size=1, max_size=3).map(
    lambda ts: [R.HookSpec(pid_, h, tuple(a), r, n) for h, (pid_, a, r, n) in enumerate(ts)])


@st.composite
def hook_record(draw: Any, spec: R.HookSpec) -> R.HookRecord:
    args = [draw(_hook_arg(i)) for i in spec.args]
    args = args[:draw(st.integers(0, len(args)))] if draw(st.booleans()) else args  # the kernel ran out of room
    actions = draw(st.sampled_from([S.ACT_POST, S.ACT_POST, 0, S.ACT_SIGKILL, S.ACT_SIGNAL | S.ACT_POST,
                                    S.ACT_SIGKILL | S.ACT_SIGNAL, 8 | S.ACT_POST, 0x99]))  # 8, 16, 128: no meaning
    sel = draw(st.integers(0, max(0, spec.nsel - 1))) if spec.nsel else draw(st.sampled_from([0, S.MAX_SELECTORS]))
    if not spec.nsel:
        actions &= ~(S.ACT_SIGKILL | S.ACT_SIGNAL)  # a hook without selectors only posts
    if spec.notify_bit(sel) and draw(st.booleans()):
        actions |= spec.notify_bit(sel)  # the selector's GetUrl/DnsLookup: the event reports it
    return R.HookRecord(spec, args, pid=draw(u32), tid=draw(u32), ktime=draw(u64), retval=draw(s64),
                        cgroup_id=draw(u64), sel=sel, actions=actions, flags=draw(st.integers(0, 255)))


def _flip(rec: bytes, draw: Any) -> bytes:
    r = bytearray(rec)
    for _ in range(draw(st.integers(1, 6))):
        if r:
            r[draw(st.integers(0, len(r) - 1))] = draw(st.integers(0, 255))
    return bytes(r)


# Each record of a batch: (label, bytes, expectation). expectation: ("event", oracle) | ("drop", reason) | None
# (random changes: anything may come out, but the batch properties hold).

@st.composite
def hook_batch(draw: Any) -> tuple[list[R.HookSpec], list[tuple[str, bytes, Any]]]:
    specs = draw(hook_specs)
    items: list[tuple[str, bytes, Any]] = []
    for _ in range(draw(st.integers(1, 8))):
        r = draw(hook_record(draw(st.sampled_from(specs))))
        what = draw(st.sampled_from(["well-formed", "well-formed", "hostile", "hostile", "flipped", "noise"]))
        if what == "well-formed":
            items.append(("well-formed", r.encode(), ("event", r)))
        elif what == "hostile":
            muts = R.hook_mutations(r, lambda n: draw(st.integers(0, n - 1)) if n > 1 else 0)
            kind, rec, reason = draw(st.sampled_from(muts))
            items.append((kind, rec, ("drop", reason)))
        elif what == "flipped":
            items.append(("random bytes changed", _flip(r.encode(), draw), None))
        else:
            items.append(("noise", draw(st.binary(max_size=200)), None))
    return specs, items


def _hook_expectations(t: Tally, specs: list[R.HookSpec], items: list[tuple[str, bytes, Any]]) -> None:
    """Each record alone: a well-formed one is exactly its oracle's event, a bad one is counted as it must be."""
    for label, rec, want in items:
        if want is None:
            continue
        got = R.hook_single(specs, rec)
        if want[0] == "event":
            r = want[1]
            body = orjson.loads(got.lines[0])["process_kprobe"] if got.lines else None
            ok = body == R.expected_hook_body(r) and orjson.loads(got.lines[0])["time"] == R.expected_time(r.ktime)
            if not ok:
                t.accepted_bad(f"{label}: {r} -> {got.lines[:1]}")
            assert ok, (r, got.lines, R.expected_hook_body(r))
        else:
            t.kinds.add(label)
            if got.lines:
                t.accepted_bad(f"{label}: {rec!r} -> {got.lines[0][:200]!r}")
            assert not got.lines, (label, rec, got.lines)
            assert got.dropped[want[1]] == 1, (label, want[1], got.dropped)


def _tally_batch(t: Tally, n: int, lines: int, dropped: int, counted: bool) -> None:
    t.tried += n - 1  # Tally.run counted the batch once: the figures count records
    t.accepted += lines
    for _ in range(dropped):
        t.refused("", counted, "")


def test_hook_records_are_events_exactly_or_counted_drops_and_native_matches_python() -> None:
    t = Tally("records-hook",
              "tests/test_fuzz_records.py::test_hook_records_are_events_exactly_or_counted_drops_and_native_matches_python",
              "ring records of the hook engine (tracepoint, kprobe, uprobe sensors) through its Python paths and "
              "its native formatter (fastrest.c): well-formed with every field at its extremes, made bad, "
              "randomly changed, noise")
    t.extra.update(batches=0, native_identical_batches=0)

    @FUZZ
    @given(hook_batch(), st.booleans())
    def prop(batch: tuple[list[R.HookSpec], list[tuple[str, bytes, Any]]], cached: bool) -> None:
        specs, items = batch
        recs = [rec for _l, rec, _w in items]
        cache = _StaticCache() if cached else None
        outcome, got = t.run(f"{len(recs)} records", lambda: R.check_hook_batch(specs, recs, cache),
                             passthrough=(AssertionError,))
        assert outcome == "ok", (outcome, got)
        t.extra["batches"] += 1
        t.extra["native_identical_batches"] += 1  # check_hook_batch asserted it
        _tally_batch(t, len(recs), len(got.lines), sum(got.dropped.values()), True)
        _hook_expectations(t, specs, items)

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


class _StaticCache:
    """A process cache's ``get`` (pid -> process, parent) for a few pids, one lookup failing."""

    PROC: ClassVar[dict[str, Any]] = {"exec_id": "ZXhlYw==", "pid": 4242, "binary": "/usr/bin/\u00e9 \"q\"", "arguments": "-a \\x", "refcnt": 1}

    def get(self, pid: int, ktime: int | None = None) -> tuple[Any, Any]:
        if pid == 666:
            raise RuntimeError("a failing lookup is a miss")
        if pid in (4242, 0, 0xFFFFFFFF):
            return dict(self.PROC, pid=pid), {"exec_id": "cGFyZW50", "pid": 1}
        if pid == 1:
            return {"pid": 1, "binary": "/sbin/init"}, None  # in the cache without exec_id
        return None, None


# ---- the exec sensor ------------------------------------------------------------------------------------

# Pids and times from a small pool as often as not: records of one process meet (exec, fork, exit of one pid,
# a parent forking the pid of another, the same time twice), as records of a busy host do.
pids = st.one_of(st.sampled_from([0, 1, 4242, 4243, 0xFFFFFFFF]), u32)
ktimes = st.one_of(st.sampled_from([0, 5, 6, U64]), u64)
exec_rec = st.builds(
    R.ExecRec, pid=pids, tid=pids, ktime=ktimes, ppid=pids, ids=st.tuples(*[u32] * 10), ns=st.tuples(*[u32] * 10),
    cgroups=st.tuples(*[u64] * 5),
    argv=st.lists(raw_text.map(lambda b: b.replace(b"\0", b"")[:200]), max_size=6).map(tuple),
    binary=kernel_text, cwd=kernel_text, cg_name=kernel_text, memcg_name=kernel_text, flags=st.integers(0, 0xFFFF))


@st.composite
def exec_batch(draw: Any) -> list[tuple[str, bytes, Any]]:
    items: list[tuple[str, bytes, Any]] = []
    pick = lambda n: draw(st.integers(0, n - 1)) if n > 1 else 0  # noqa: E731
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from([R.X.EXEC_REC_EXEC, R.X.EXEC_REC_FORK, R.X.EXEC_REC_EXIT]))
        if kind == R.X.EXEC_REC_EXEC:
            e = draw(exec_rec)
            tail = draw(st.sampled_from([b"", b"\0" * 8, b"junk"]))
            rec, want = e.encode(tail=tail), ("exec", e)
        elif kind == R.X.EXEC_REC_FORK:
            parent, child, kt = draw(pids), draw(pids), draw(ktimes)
            rec = R.fork_record(parent, child, kt)
            want = ("fork", None) if child and child != parent else ("drop", "bad_fork_pids")
        else:
            args = (draw(pids), draw(ktimes), draw(u32), draw(u32), draw(st.sampled_from([0, 4, 0xFFFFFFFF])))
            rec, want = R.exit_record(*args), ("exit", args)
        what = draw(st.sampled_from(["well-formed", "well-formed", "hostile", "flipped", "noise"]))
        if what == "well-formed":
            items.append(("well-formed" if want[0] != "drop" else "a fork whose child is its parent, or 0", rec, want))
        elif what == "hostile":
            label, bad, reason = draw(st.sampled_from(R.exec_mutations(rec, kind, pick)))
            items.append((label, bad, ("drop", reason)))
        elif what == "flipped":
            items.append(("random bytes changed", _flip(rec, draw), None))
        else:
            items.append(("noise", draw(st.binary(max_size=200)), None))
    return items


def _exec_expectation(t: Tally, label: str, rec: bytes, want: Any) -> None:
    d = R.X.ExecDecoder(R.Context())  # type: ignore[arg-type]
    out = d.decode_batch([rec])
    if want[0] == "drop":
        t.kinds.add(label)
        if out:
            t.accepted_bad(f"{label}: {rec[:80]!r}")
        assert not out and d.counters[want[1]] == 1, (label, want[1], dict(d.counters), out)
        return
    if want[0] == "fork":
        assert not out and d.counters["fork"] == 1
        return
    [ev] = out
    body = orjson.loads(ev.json())
    if want[0] == "exec":
        e = want[1]
        proc = body["process_exec"]["process"]
        expect = R.expected_exec_process(e)
        ok = {k: proc.get(k) for k in expect} == expect and ev.kind == "process_exec"
    else:
        pid, _kt, code, group, flags = want[1]
        ex = body["process_exit"]
        ok = ({k: ex.get(k) for k in ("signal", "status") if k in ex} == R.expected_exit_status(code, group, flags)
              and ex["process"] == {"pid": pid, "tid": pid})
    if not ok:
        t.accepted_bad(f"{label}: {want} -> {ev.json()[:300]!r}")
    assert ok, (want, ev.json())


def test_exec_records_are_events_exactly_or_counted_drops() -> None:
    t = Tally("records-exec", "tests/test_fuzz_records.py::test_exec_records_are_events_exactly_or_counted_drops",
              "ring records of the exec sensor (exec, fork, exit) through its decoder and the process cache")

    @FUZZ
    @given(exec_batch())
    def prop(items: list[tuple[str, bytes, Any]]) -> None:
        recs = [r for _l, r, _w in items]
        outcome, got = t.run(f"{len(recs)} records", lambda: R.check_exec_batch(recs), passthrough=(AssertionError,))
        assert outcome == "ok", (outcome, got)
        events, c = got
        dropped = sum(v for k, v in c.items() if k not in ("exec", "exit", "fork"))
        _tally_batch(t, len(recs), len(events), dropped, True)
        t.accepted += c.get("fork", 0)  # taken into the process cache: accepted, no event of its own
        for label, rec, want in items:
            if want is not None:
                _exec_expectation(t, label, rec, want)

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


# ---- the network sensor ---------------------------------------------------------------------------------

addr16 = st.binary(min_size=16, max_size=16)


@st.composite
def net_record(draw: Any) -> tuple[bytes, dict[str, Any]]:
    fam = draw(st.sampled_from([2, 10]))
    common = dict(ktime=draw(u64), pid=draw(u32), tid=draw(u32), saddr=draw(addr16), daddr=draw(addr16),
                  sport=draw(st.integers(0, 0xFFFF)), dport=draw(st.integers(0, 0xFFFF)), family=fam,
                  protocol=draw(st.sampled_from([6, 17, 0, 0xFFFF])), sk_type=draw(st.sampled_from([1, 2, 3, 5, 0, 9])))
    if draw(st.booleans()):
        rtype = draw(st.sampled_from([R.N.NET_REC_CONNECT, R.N.NET_REC_ACCEPT, R.N.NET_REC_CLOSE]))
        f = dict(common, flags=draw(st.integers(0, 3)), skaddr=draw(u64), bytes_acked=draw(u64),
                 bytes_received=draw(u64), open_ktime=draw(u64), netns=draw(u32), mark=draw(u32), priority=draw(u32),
                 oldstate=draw(st.integers(0, 255)), newstate=draw(st.integers(0, 255)))
        return R.tcp_record(rtype, **f), dict(f, rtype=rtype)
    f = dict(common, cookie=draw(u64), hook=draw(st.sampled_from([1, 2])))
    return R.udp_record(**f), dict(f, rtype=R.N.NET_REC_UDP)


def _net_expectation(t: Tally, label: str, rec: bytes, want: Any) -> None:
    d = R.N.NetworkDecoder(R.Context())  # type: ignore[arg-type]
    out = d.decode_batch([rec])
    if want[0] == "drop":
        t.kinds.add(label)
        if out:
            t.accepted_bad(f"{label}: {rec[:80]!r}")
        assert not out and d.counters[want[1]] == 1, (label, want[1], dict(d.counters))
        return
    f = want[1]
    [ev] = out
    b = orjson.loads(ev.json())["process_kprobe"]
    sock = b["args"][0]["sock_arg"]
    fam = f["family"]
    ok = (sock["family"] == ("AF_INET" if fam == 2 else "AF_INET6") and sock["daddr"] == R.ip_text(fam, f["daddr"])
          and sock["dport"] == f["dport"])
    if f["rtype"] == R.N.NET_REC_UDP:
        ok = ok and b["function_name"] == ("udp_sendmsg" if f["hook"] == 1 else "udp_connect") \
            and sock["cookie"] == str(f["cookie"]) and (("saddr" in sock) == bool(f["sport"]))
    else:
        failed = bool(f["flags"] & R.N.NET_F_NOT_ESTABLISHED)
        fn = ("tcp_connect" if f["rtype"] == R.N.NET_REC_CONNECT or (f["rtype"] == R.N.NET_REC_CLOSE and failed)
              else "inet_csk_accept" if f["rtype"] == R.N.NET_REC_ACCEPT else "tcp_close")
        ok = ok and b["function_name"] == fn and sock["saddr"] == R.ip_text(fam, f["saddr"]) \
            and sock["sport"] == f["sport"] and sock["cookie"] != str(f["skaddr"]) \
            and ((b["process"] == {}) if f["flags"] & R.N.NET_F_OWNER_UNKNOWN else b["process"] == {"pid": f["pid"]})
        if fn == "tcp_close" and not failed:  # our own fields: in the body (the JSON has them in `extended` only)
            ours = ev.body
            ok = ok and (ours["bytes_sent"], ours["bytes_received"]) == (f["bytes_acked"], f["bytes_received"])
            ok = ok and ours.get("duration_ns") == (f["ktime"] - f["open_ktime"] if f["open_ktime"] and
                                                   f["ktime"] >= f["open_ktime"] else None)
    if not ok:
        t.accepted_bad(f"{label}: {f} -> {ev.json()[:300]!r}")
    assert ok, (f, ev.json())


@st.composite
def net_batch(draw: Any) -> list[tuple[str, bytes, Any]]:
    pick = lambda n: draw(st.integers(0, n - 1)) if n > 1 else 0  # noqa: E731
    items: list[tuple[str, bytes, Any]] = []
    for _ in range(draw(st.integers(1, 8))):
        rec, f = draw(net_record())
        what = draw(st.sampled_from(["well-formed", "well-formed", "hostile", "flipped", "noise", "longer"]))
        if what == "well-formed":
            items.append(("well-formed", rec, ("event", f)))
        elif what == "longer":  # bytes after the record's struct are not part of it
            items.append(("well-formed", rec + draw(st.binary(min_size=1, max_size=16)), ("event", f)))
        elif what == "hostile":
            label, bad, reason = draw(st.sampled_from(R.net_mutations(rec, pick)))
            items.append((label, bad, ("drop", reason)))
        elif what == "flipped":
            items.append(("random bytes changed", _flip(rec, draw), None))
        else:
            items.append(("noise", draw(st.binary(max_size=120)), None))
    return items


def test_network_records_are_events_exactly_or_counted_drops() -> None:
    t = Tally("records-network", "tests/test_fuzz_records.py::test_network_records_are_events_exactly_or_counted_drops",
              "ring records of the network sensor (TCP connect/accept/close, UDP sendmsg/connect)")

    @FUZZ
    @given(net_batch())
    def prop(items: list[tuple[str, bytes, Any]]) -> None:
        recs = [r for _l, r, _w in items]
        outcome, got = t.run(f"{len(recs)} records", lambda: R.check_net_batch(recs), passthrough=(AssertionError,))
        assert outcome == "ok", (outcome, got)
        events, _c = got
        _tally_batch(t, len(recs), len(events), len(recs) - len(events), True)
        for label, rec, want in items:
            if want is not None:
                _net_expectation(t, label, rec, want)

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


# ---- the lsm sensor: BPF LSM records ----------------------------------------------------------------------

def _lsm_arg(ap: S.ArgPlan) -> st.SearchStrategy[R.HookArg]:
    if ap.kind == S.ARG_INT:
        return u64.map(lambda v: R.HookArg(0, S.ARG_INT, 0, v))
    return st.tuples(st.sampled_from([0, S.ARGF_TRUNC, S.ARGF_ERR]), kernel_text).map(
        lambda fp: R.HookArg(0, ap.kind, fp[0], fp[1]))


@st.composite
def lsm_batch(draw: Any) -> tuple[int, list[tuple[str, bytes, Any]]]:
    i = draw(st.integers(0, len(R.LSM_HOOKS) - 1))
    _plan, prog = R.lsm_program(i)
    nsel = len(prog.errnos)
    spec = R.HookSpec(policy_id=3, hook_id=i, args=tuple(range(len(prog.args))), ret=0, nsel=nsel)
    pick = lambda n: draw(st.integers(0, n - 1)) if n > 1 else 0  # noqa: E731
    items: list[tuple[str, bytes, Any]] = []
    for _ in range(draw(st.integers(1, 8))):
        args = [draw(_lsm_arg(ap)) for ap in prog.args]
        sel = draw(st.integers(0, nsel - 1)) if nsel else S.MAX_SELECTORS
        r = R.HookRecord(spec, args, pid=draw(u32), tid=draw(u32), ktime=draw(u64), cgroup_id=draw(u64), sel=sel,
                         actions=draw(st.sampled_from([S.ACT_POST, S.ACT_POST | S.ACT_SIGKILL, S.ACT_POST | 8])),
                         flags=draw(st.integers(0, 7)))
        what = draw(st.sampled_from(["well-formed", "well-formed", "hostile", "flipped", "noise"]))
        if what == "well-formed":
            items.append(("well-formed", r.encode(), ("event", r, prog)))
        elif what == "hostile":
            # LSM hooks never take GetUrl/DnsLookup (refused at load): their decoder reads no such bit, so a record
            # whose selector exists is an event whatever those bits say
            kind, rec, _reason = draw(st.sampled_from([m for m in R.hook_mutations(r, pick)
                                                       if m[0] != "a GetUrl/DnsLookup its selector does not have"]))
            # a hook without selectors posts with sel = MAX_SELECTORS whatever its actions byte says
            ok_sel = (kind in ("a signal from a selector the hook lacks", "a GetUrl/DnsLookup from a selector the hook "
                               "lacks") and not nsel and rec[48] == S.MAX_SELECTORS)
            items.append((kind, rec, None if ok_sel else ("drop",)))
        elif what == "flipped":
            items.append(("random bytes changed", _flip(r.encode(), draw), None))
        else:
            items.append(("noise", draw(st.binary(max_size=160)), None))
    return i, items


def _lsm_expectation(t: Tally, i: int, label: str, rec: bytes, want: Any) -> None:
    events, errors = R.check_lsm_batch(i, [rec])
    if want[0] == "drop":
        t.kinds.add(label)
        if events:
            t.accepted_bad(f"{label}: {rec[:80]!r}")
        assert not events and errors == 1, (label, rec)
        return
    r, prog = want[1], want[2]
    [ev] = events
    enf = ev.body["enforcement"]
    err = prog.errnos[r.sel] if r.sel < len(prog.errnos) else 0
    blocking = bool(err) or bool(r.actions & (S.ACT_SIGKILL | S.ACT_SIGNAL))
    outcome = "allowed" if not blocking else "would have blocked" if r.flags & S.EV_MONITOR else "blocked"
    args = orjson.loads(ev.json())["process_lsm"]["args"]  # as exported (the default format)
    # not strict: a record with fewer arguments than its plan is a finding, reported below
    expected = [R.expected_arg(a, ap) for a, ap in zip(r.args, prog.args, strict=False)]
    ok = (args == expected and enf["outcome"] == outcome
          and ev.body["process"]["pid"] == r.pid)
    if not ok:
        t.accepted_bad(f"{label}: {r} -> {ev.json()[:300]!r}")
    assert ok, (r, ev.json())


def test_bpf_lsm_records_are_events_exactly_or_counted_errors() -> None:
    t = Tally("records-lsm", "tests/test_fuzz_records.py::test_bpf_lsm_records_are_events_exactly_or_counted_errors",
              "ring records of the lsm sensor's BPF LSM programs (file, path, binprm, integer arguments) through "
              "the sensor's decoder")

    @FUZZ
    @given(lsm_batch())
    def prop(batch: tuple[int, list[tuple[str, bytes, Any]]]) -> None:
        i, items = batch
        recs = [r for _l, r, _w in items]
        outcome, got = t.run(f"{len(recs)} records", lambda: R.check_lsm_batch(i, recs), passthrough=(AssertionError,))
        assert outcome == "ok", (outcome, got)
        events, errors = got
        _tally_batch(t, len(recs), len(events), errors, True)
        for label, rec, want in items:
            if want is not None:
                _lsm_expectation(t, i, label, rec, want)

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


# ---- the lsm sensor: socket guard records -----------------------------------------------------------------

@st.composite
def guard_batch(draw: Any) -> tuple[int, list[tuple[str, bytes, Any]]]:
    nsel = draw(st.integers(0, 4))
    nrules = nsel or 1
    items: list[tuple[str, bytes, Any]] = []
    for _ in range(draw(st.integers(1, 8))):
        f = dict(pid=draw(st.integers(1, R.netguard.PID_MAX_LIMIT)), tid=draw(u32), ktime=draw(u64), policy_id=7,
                 rule=draw(st.integers(0, nrules - 1)), hook=draw(st.sampled_from([1, 2])),
                 verdict=draw(st.integers(0, 2)), family=draw(st.sampled_from([2, 10])),
                 protocol=draw(st.sampled_from([6, 17, 0, 255])), dport=draw(st.integers(0, 0xFFFF)),
                 daddr=draw(st.tuples(*[u32] * 4)), action=draw(st.integers(0, 7)), err=draw(u32),
                 cgroup_id=draw(u64), comm=draw(st.binary(max_size=15)).replace(b"\0", b""))
        rec = R.net_event(**f)
        what = draw(st.sampled_from(["well-formed", "well-formed", "hostile", "flipped", "noise"]))
        if what == "well-formed":
            items.append(("well-formed", rec, ("event", f)))
        elif what == "hostile":
            bad = draw(st.sampled_from([
                ("an unknown family", dict(family=draw(st.sampled_from([0, 1, 3, 9, 11, 255])))),
                ("an unknown verdict", dict(verdict=draw(st.integers(3, 255)))),
                ("an unknown hook", dict(hook=draw(st.sampled_from([0, 3, 255])))),
                ("a rule past the policy's", dict(rule=draw(st.integers(nrules, 0xFFFFFFFF)))),
                ("another policy's record", dict(policy_id=draw(st.integers(8, 0xFFFFFFFF)))),
                ("a pid no process has", dict(pid=draw(st.sampled_from([0, R.netguard.PID_MAX_LIMIT + 1, 1 << 31,
                                                                         0xFFFFFFFF])))),
                ("another record type", dict(rtype=draw(st.integers(0, 0xFFFF).filter(lambda v: v != 0x4C01)))),
            ]))
            items.append((bad[0], R.net_event(**{**f, **bad[1]}), ("drop",)))
        elif what == "flipped":
            items.append(("random bytes changed", _flip(rec, draw), None))
        else:
            items.append(("cut" if draw(st.booleans()) else "noise",
                          rec[:draw(st.integers(0, len(rec) - 1))] if draw(st.booleans())
                          else draw(st.binary(max_size=100)),
                          None))
    return nsel, items


def test_socket_guard_records_are_events_exactly_or_counted_errors() -> None:
    t = Tally("records-lsm-socket",
              "tests/test_fuzz_records.py::test_socket_guard_records_are_events_exactly_or_counted_errors",
              "ring records of the lsm sensor's socket guard (socket_connect/sendmsg, BPF LSM or cgroup sock_addr)")

    @FUZZ
    @given(guard_batch())
    def prop(batch: tuple[int, list[tuple[str, bytes, Any]]]) -> None:
        nsel, items = batch
        recs = [r for _l, r, _w in items]
        outcome, got = t.run(f"{len(recs)} records", lambda: R.check_net_guard_batch(nsel, recs),
                             passthrough=(AssertionError,))
        assert outcome == "ok", (outcome, got)
        events, errors = got
        _tally_batch(t, len(recs), len(events), errors, True)
        for label, rec, want in items:
            if want is None:
                continue
            evs, errs = R.check_net_guard_batch(nsel, [rec])
            if want[0] == "drop":
                t.kinds.add(label)
                if evs:
                    t.accepted_bad(f"{label}: {rec!r}")
                assert not evs and errs == 1, (label, rec)
                continue
            f = want[1]
            [ev] = evs
            addr = R.ip_text(f["family"], b"".join(w.to_bytes(4, "little") for w in f["daddr"]))
            enf = ev.body["enforcement"]
            ok = (ev.body["args"] == [{"sockaddr_arg": {"family": "AF_INET" if f["family"] == 2 else "AF_INET6",
                                                        "addr": addr, "port": f["dport"]}}]
                  and enf["outcome"] == R.netguard.VERDICTS[f["verdict"]] and ev.body["process"]["pid"] == f["pid"])
            if not ok:
                t.accepted_bad(f"{label}: {f} -> {ev.json()[:300]!r}")
            assert ok, (f, ev.json())

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


# ---- the kprobe sensor's kernel-function additions ----------------------------------------------------------

def test_credential_and_socket_summaries_decode_exactly_or_say_undecodable() -> None:
    """The hex summaries kfunc.bpf.c writes for cred and sock arguments: any text gives a dict or None, never an
    exception; a well-formed summary gives exactly its fields."""
    from sensorium_sensors.kprobe.kfunc import _CRED, _SOCK, decode_cred, decode_sock, sock_event_fixup

    t = Tally("records-kprobe-summaries",
              "tests/test_fuzz_records.py::test_credential_and_socket_summaries_decode_exactly_or_say_undecodable",
              "the kprobe sensor's hex summaries of cred and sock arguments (well-formed, cut, not hex, any text)")
    hexish = st.text(alphabet="0123456789abcdefABCDEF \n\t\\xzé\0", max_size=2 * _CRED.size + 8)

    @FUZZ
    @given(st.one_of(st.tuples(st.just("cred"), st.tuples(*[u32] * 8, *[u64] * 3)),
                     st.tuples(st.just("text"), st.one_of(hexish, st.text(max_size=200)))))
    def prop(case: tuple[str, Any]) -> None:
        what, v = case
        if what == "cred":
            text = _CRED.pack(*v).hex()
            outcome, got = t.run("cred", lambda: decode_cred(text))
            assert outcome == "ok"
            t.accepted += 1
            uid, gid, suid, sgid, euid, egid, fsuid, fsgid = v[:8]
            ok = got is not None and {k: got[k] for k in ("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid",
                                                          "fsgid")} == dict(uid=uid, gid=gid, suid=suid, sgid=sgid,
                                                                            euid=euid, egid=egid, fsuid=fsuid,
                                                                            fsgid=fsgid)
            ok = ok and len(got["caps"]["permitted"]) == bin(v[9]).count("1")
            if not ok:
                t.accepted_bad(f"cred {v} -> {got}")
            assert ok, (v, got)
            return
        t.kinds.add("text")
        outcome, got = t.run(repr(v[:40]), lambda: (decode_cred(v), decode_sock(v)))
        assert outcome == "ok", (outcome, got)
        cred, sock = got
        for d, size in ((cred, _CRED.size), (sock, _SOCK.size)):
            if d is None:
                t.refused("", True, "")
            else:
                t.accepted += 1
                # only text that holds the whole summary in hex decodes
                assert len(bytes.fromhex(v[:2 * size])) == size, v
        t.tried += 1
        ev = types_event({"process_credentials_arg": v})
        sock_event_fixup([ev])
        assert isinstance(ev.body["args"][0]["process_credentials_arg"], dict)

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


def types_event(arg: dict[str, Any]) -> Any:
    from sensorium.events import Event

    return Event("process_kprobe", {"args": [dict(arg)]}, R.NODE, 0)

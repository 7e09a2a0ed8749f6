"""The hook decoder's fast path (JSON assembled from byte fragments, events kept as an `EventBatch`)
against the generic one (a dict per record, encoded by orjson), for the same records: the same bytes.

User space only: records are built here in the layout of ``struct sens_event`` (sensorium.hooks.render.EV/ARG), with
every argument kind, escaping case, action and process-cache case the decoder distinguishes. Then the
batch goes through the pieces that consume it: filters, the pipeline, a runner and the file exporter.
"""

from __future__ import annotations

import collections
import struct
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from sensorium import schema
from sensorium.events import Event, EventBatch, LazyEvent, json_lines, kinds_of, ktime_to_wall_ns
from sensorium.filters import build_filters
from sensorium.hooks import selectors as S
from sensorium.hooks.plan import HookPlan
from sensorium.hooks.render import ARG as _ARG
from sensorium.hooks.render import EV as _EV
from sensorium.hooks.ring import EventRing
from sensorium.pipeline import Pipeline, ProcessJoin

NODE = "node-\"1\"\u00e9"  # a node name JSON must escape


def _plan(args: list[S.ArgPlan], ret: S.ArgPlan | None = None, kind: str = "process_kprobe",
          signals: tuple[int, ...] = (0, 9, 10, 0, 0)) -> HookPlan:
    compiled: Any = types.SimpleNamespace(cfg=types.SimpleNamespace(sel=[types.SimpleNamespace(signal=s)
                                                                         for s in signals], nsel=len(signals)))
    return HookPlan(hook="h", field="spec.kprobes[0]", compiled=compiled, args=args,
                    attach=("syscall", ret is not None), mechanism="m", note="",
                    body={"function_name": "__x64_sys_openat", "message": "ü \"x\""},
                    kind=kind, return_plan=ret)


def _int(key: str = "int_arg", size: int = 4, signed: bool = True, label: str | None = None) -> S.ArgPlan:
    return S.ArgPlan(kind=S.ARG_INT, from_=S.FROM_SYSCALL, offset=0, json_key=key, size=size, signed=signed,
                     label=label)


def _str(key: str = "string_arg", kind: int = S.ARG_STR, label: str | None = None) -> S.ArgPlan:
    return S.ArgPlan(kind=kind, from_=S.FROM_SYSCALL, offset=1, json_key=key, label=label)


def _record(args: list[tuple[int, int, Any]], *, pid: int = 4242, tid: int = 4243, policy_id: int = 3,
            hook_id: int = 0, retval: int = 0, cgroup_id: int = 0, sel: int = 0, actions: int = S.ACT_POST,
            flags: int = 0, data_len: int | None = None, ktime: int = 123_456_789_012) -> bytes:
    data = b""
    for kind, aflags, value in args:
        if kind == S.ARG_INT:
            data += _ARG.pack(kind, aflags, 8, 0) + struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)
        else:
            data += _ARG.pack(kind, aflags, len(value), 0) + value + b"\0" * ((-len(value)) % 8)
    n = len(data) if data_len is None else data_len
    retval = retval - (1 << 64) if retval >= 1 << 63 else retval  # the field is signed
    hdr = _EV.pack(S.REC_HOOK, 0, _EV.size + len(data), ktime, pid, tid, policy_id, hook_id, retval, cgroup_id,
                   sel, actions, flags, len(args), n)
    return hdr + data


STRINGS = [b"/etc/passwd", b"", b'quote " and \\ back', b"tab\tnl\nnul\0bell\x07", b"\x7fdel",
           "utf-8 é ü 日本".encode(), b"bad \xff\xfe utf-8", b"\xc3", "\u2028 line sep".encode(), b"/" * 255]


class _Cache:
    """The process cache's `get` face: pid -> (process, parent)."""

    def __init__(self, table: dict[int, tuple[Any, Any]], broken: int = 666) -> None:
        self.table, self.broken = table, broken

    def get(self, pid: int, ktime: int | None = None) -> tuple[Any, Any]:
        if pid == self.broken:
            raise RuntimeError("a broken cache lookup is a miss")
        return self.table.get(pid, (None, None))


class _Ctx:
    node_name = NODE
    config: ClassVar[dict[str, Any]] = {}

    def __init__(self, cache: Any = None) -> None:
        self.process_cache = cache

    def make_event(self, kind: str, body: Any, ktime_ns: int | None = None) -> Event:
        return Event(kind, body, self.node_name, ktime_to_wall_ns(ktime_ns or 0))


PROC = {"exec_id": "ZXhlYw==", "pid": 4242, "binary": "/usr/bin/cat", "arguments": "a \"b\" ü",
        "ns": {"mnt": {"inum": 1, "is_host": True}}, "refcnt": 1}
PARENT = {"exec_id": "cGFyZW50", "pid": 1, "binary": "/sbin/init", "refcnt": 3}


def _ring(plans: dict[tuple[int, int], HookPlan], cache: Any = None) -> EventRing:
    ring = EventRing(_Ctx(cache), "kprobe")
    hs = types.SimpleNamespace(events=0)
    ring.hooks = {k: (p, f"policy-{k[0]} \"q\"", hs) for k, p in plans.items()}
    return ring


def _records() -> tuple[dict[tuple[int, int], HookPlan], list[bytes]]:
    ints = _plan([_int(), _int("uint_arg", 8, False), _int("size_arg", 2, False), _int("long_arg", 8, True),
                  _int("int_arg", 4, True, label="flags"), _int("syscall_id", 8, False)],
                 ret=_int("long_arg", 8, True))
    strs = _plan([_str(), _str("string_arg", label="path"), _str("file_arg"), _str("bytes_arg", S.ARG_BUF)],
                 kind="process_tracepoint")
    # the usual shapes (generated formatter of the hook): with and without a return value
    usual = _plan([_int(), _str(), _int("uint_arg", 8, False), _int("size_arg", 2, False), _int("long_arg", 8)],
                  ret=_int("long_arg", 8, True))
    usual_noret = _plan([_str(), _int("int_arg", 1, True)])
    plans = {(3, 0): ints, (3, 1): strs, (3, 2): usual, (4, 0): usual_noret}
    recs = []
    for s in STRINGS:
        for v in (0, -1, 2**63, 2**64 - 1, 0x8000, -100):
            for aflags, flags, cg, actions in ((0, S.EV_HAS_RET, 0, S.ACT_POST), (0, 0, 7, S.ACT_POST),
                                               (0, S.EV_HAS_RET, 2**64 - 1, S.ACT_POST),
                                               (S.ARGF_TRUNC, S.EV_HAS_RET, 0, S.ACT_POST),
                                               (0, S.EV_HAS_RET, 0, S.ACT_SIGKILL)):
                recs.append(_record([(S.ARG_INT, 0, v), (S.ARG_STR, aflags, s), (S.ARG_INT, 0, v),
                                     (S.ARG_INT, 0, v), (S.ARG_INT, 0, v)], hook_id=2, retval=v, flags=flags,
                                    cgroup_id=cg, actions=actions))
            recs.append(_record([(S.ARG_STR, 0, s), (S.ARG_INT, 0, v)], policy_id=4, flags=S.EV_HAS_RET,
                                retval=v))
    # the usual hook with a record of another shape: an int where the string is (dropped), args cut short
    recs.append(_record([(S.ARG_INT, 0, 1)] * 5, hook_id=2, flags=S.EV_HAS_RET))
    recs.append(_record([(S.ARG_INT, 0, 1), (S.ARG_STR, 0, b"/abc")], hook_id=2))
    recs.append(_record([(S.ARG_INT, 0, 1), (S.ARG_STR, 0, b"/abc"), (S.ARG_INT, 0, 3)], hook_id=2,
                        data_len=40))
    for v in (0, 1, -1, -100, 2**31 - 1, -2**31, 2**63 - 1, -2**63, 2**64 - 1, 0x1234_5678_9ABC):
        recs.append(_record([(S.ARG_INT, 0, v)] * 6, retval=v, flags=S.EV_HAS_RET, cgroup_id=v & 0xFFFF))
    recs.append(_record([(S.ARG_INT, 0, 5)] * 6, retval=7))  # no return value in the record
    for s in STRINGS:
        for aflags in (0, S.ARGF_TRUNC, S.ARGF_ERR, S.ARGF_TRUNC | S.ARGF_ERR):
            recs.append(_record([(S.ARG_STR, aflags, s), (S.ARG_STR, 0, s), (S.ARG_STR, aflags, s),
                                 (S.ARG_BUF, aflags, s)], hook_id=1))
    for actions, flags, sel in ((S.ACT_SIGKILL, 0, 0), (S.ACT_SIGKILL, S.EV_MONITOR, 1),
                                (S.ACT_SIGNAL, 0, 2), (S.ACT_SIGNAL, S.EV_SIGNAL_ERR, 1),
                                (S.ACT_SIGNAL | S.ACT_POST, S.EV_MONITOR, 7), (S.ACT_POST, 0, 0)):
        recs.append(_record([(S.ARG_STR, 0, b"/x")], hook_id=1, actions=actions, flags=flags, sel=sel))
    # short, cut and stray records
    recs.append(_record([(S.ARG_INT, 0, 1)] * 6, data_len=20))       # data_len says fewer args
    recs.append(_record([(S.ARG_STR, 0, b"abc")] * 4, hook_id=1)[:-10])  # the record itself is cut
    recs.append(_record([(S.ARG_STR, 0, b"abc")] * 4, hook_id=1, data_len=1 << 20))
    recs.append(_record([], hook_id=9))                                  # a hook that is gone
    recs.append(b"\1\0" * 5)                                             # shorter than the header
    # processes: in the cache with a parent, without, without exec_id, a failing lookup, unknown pids
    for pid in (4242, 7, 8, 666, 9999, 4242):
        recs.append(_record([(S.ARG_STR, 0, b"/p")], hook_id=1, pid=pid, tid=pid + 1, ktime=10**18 + pid))
    return plans, recs


@pytest.fixture(params=schema.FORMATS)
def event_format(request: pytest.FixtureRequest) -> Any:
    """Each exported format in turn (sensorium.schema): the paths must agree in both."""
    schema.set_format(request.param)
    yield request.param
    schema.set_format("tetragon")


CACHE = _Cache({4242: (PROC, PARENT), 7: (dict(PROC, pid=7), None), 8: ({"pid": 8, "binary": "/b"}, {})})


@pytest.mark.parametrize("cache", [None, CACHE], ids=["no-cache", "cache"])
def test_fast_json_is_byte_identical_to_the_generic_encoding(cache: Any, event_format: str) -> None:
    plans, recs = _records()
    fast_ring, generic_ring = _ring(plans, cache), _ring(plans, cache)
    fast = fast_ring.decode(recs)
    generic = generic_ring.decode_dicts(recs)
    assert isinstance(fast, EventBatch)
    ring = _ring(plans, cache)
    assert ring._quick(ring.hooks[(3, 2)]) and ring._quick(ring.hooks[(4, 0)])  # generated for the usual
    assert ring._quick(ring.hooks[(3, 0)]) is None  # a labelled argument: the general path
    # Dropped and counted, by both: the short record, the stray hook, the two cut ones, the int where the string
    # is, the two whose data_len cuts an argument, the signal from selector 7 of a hook with 5.
    dropped = {"short": 1, "truncated": 2, "bad_argument": 3, "bad_selector": 1, "unknown_hook": 1}
    assert {k: v for k, v in fast_ring.dropped.items() if v} == dropped
    assert generic_ring.dropped == fast_ring.dropped
    assert len(fast) == len(generic) == len(recs) - sum(dropped.values())
    for line, ev in zip(fast.lines, generic, strict=True):
        assert line == ev.json()
    assert fast.kinds == [ev.kind for ev in generic]
    # made on demand: same JSON, and a body that encodes to it (what filters and stages read)
    for made, ev in zip(fast, generic, strict=True):
        assert isinstance(made, LazyEvent)
        assert made.json() == ev.json() == orjson.dumps(schema.conform(made.as_dict()))  # the body, rendered
        assert made.body == ev.body and made.process == ev.process and made.time == ev.time


def test_batch_says_whether_every_process_came_from_the_cache() -> None:
    plans, recs = _records()
    cached = [r for r in recs if len(r) >= _EV.size and _EV.unpack_from(r)[4] == 4242]
    assert _ring(plans, CACHE).decode(cached).resolved
    assert not _ring(plans, CACHE).decode(recs).resolved
    assert not _ring(plans, None).decode(cached).resolved


def test_a_batch_slices_counts_and_filters_without_losing_events() -> None:
    plans, recs = _records()
    batch = _ring(plans, CACHE).decode(recs)
    part = batch[5:9]
    assert isinstance(part, EventBatch) and part.lines == batch.lines[5:9]
    assert [e.json() for e in part] == batch.lines[5:9]
    assert list(kinds_of(batch)) == [e.kind for e in batch] and json_lines(part) == part.lines
    chain = build_filters({"deny": [{"policy_names": ['policy-3 "q"', 'policy-4 "q"']}]}, NODE)
    kept, drops = chain.apply(batch)
    assert kept == [] and drops == {"filtered": len(batch)}
    chain = build_filters({"allow": [{"binary_regex": ["^/usr/bin/cat$"]}]}, NODE)
    kept, _ = chain.apply(_ring(plans, CACHE).decode(recs))
    assert kept and all(e.process["binary"] == "/usr/bin/cat" for e in kept)


def test_process_join_passes_a_resolved_batch_and_joins_the_rest() -> None:
    plans, recs = _records()
    cached = [r for r in recs if len(r) >= _EV.size and _EV.unpack_from(r)[4] == 4242]
    join = ProcessJoin(_Cache(CACHE.table, broken=-1), hold_s=0)
    batch = _ring(plans, CACHE).decode(cached)
    assert join(batch) is batch
    # decoded without a cache, joined afterwards: the events of pid 4242 get their process
    out = join(_ring(plans, None).decode(recs))
    time.sleep(0.01)
    out = list(out) + list(join([]))
    joined = [e for e in out if e.process.get("pid") == 4242]
    assert len(joined) == len(batch) and all(e.body["parent"] == PARENT for e in joined)


def test_pipeline_runner_and_file_exporter_write_the_batch_lines(tmp_path: Path) -> None:
    from sensorium.testing import runner_for
    from sensorium_exporters.file import FileExporter, FileOptions

    plans, recs = _records()
    batch = _ring(plans, CACHE).decode(recs * 20)
    from sensorium.exporting import ExporterContextImpl

    exp = FileExporter(FileOptions(path=tmp_path / "ev.log", max_size_mb=1000), ExporterContextImpl("file", NODE))
    runner = runner_for(exp, batch_size=100)
    pipe = Pipeline([runner], [ProcessJoin(CACHE)])
    runner.start()
    pipe.submit(batch)
    assert runner.stop(10)
    assert (tmp_path / "ev.log").read_bytes() == b"".join(line + b"\n" for line in batch.lines)
    assert runner.stats()["exported"] == len(batch)
    assert pipe.stats()["events_by_kind"] == dict(collections.Counter(batch.kinds))
    assert set(batch.kinds) == {"process_kprobe", "process_tracepoint"}


def test_file_exporter_rotates_a_batch_on_line_boundaries(tmp_path: Path) -> None:
    from sensorium.exporting import ExporterContextImpl
    from sensorium_exporters.file import FileExporter, FileOptions

    plans, recs = _records()
    batch = _ring(plans, CACHE).decode(recs)
    exp = FileExporter(FileOptions(path=tmp_path / "ev.log", max_size_mb=0.05, max_backups=1000),
                       ExporterContextImpl("file", NODE))
    exp.open()
    for i in range(0, len(batch), 64):
        exp.write_batch(batch[i:i + 64])
    exp.close()
    files = sorted(tmp_path.glob("ev.log.*"), key=lambda p: -int(p.suffix[1:])) + [tmp_path / "ev.log"]
    assert len(files) > 3 and all(f.stat().st_size <= 0.05 * 1024 * 1024 for f in files)
    assert b"".join(f.read_bytes() for f in files) == b"".join(line + b"\n" for line in batch.lines)


# ---- the native formatter (fastrest.c) against the Python path ----------------------------------------
from sensorium.hooks import native as _native  # noqa: E402


def _decode_both(monkeypatch: pytest.MonkeyPatch, plans: dict, recs: list[bytes], cache: Any) -> tuple[Any, Any]:
    """(native outcome, Python outcome) of one batch: (lines, kinds, events counted) or the exception type."""
    out = []
    for on in ("1", "0"):
        monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", on)
        ring = _ring(plans, cache)
        try:
            b = ring.decode(list(recs))
            out.append((b.lines, b.kinds, b.resolved, ring.hooks[next(iter(ring.hooks))][2].events,
                        ring.decode_errors))
        except Exception as e:  # noqa: BLE001 - compared: both paths must fail alike
            out.append(type(e))
    return out[0], out[1]


def _need_native() -> None:
    if _native.load() is None:
        pytest.skip(f"no native formatter here: {_native.STATUS}")


@pytest.mark.parametrize("cache", [None, CACHE], ids=["no-cache", "cache"])
def test_native_formatter_is_byte_identical_to_the_python_path(monkeypatch: pytest.MonkeyPatch, cache: Any,
                                                               event_format: str) -> None:
    _need_native()
    plans, recs = _records()
    ring = _ring(plans, cache)
    nat = ring._native(recs, b'},"node_name":"n","time":', 0)
    assert nat is not None
    # it rendered the usual records, left the others to Python, skipped the stray and counted the short one
    assert nat[0].count(_native.ST_OK) > 50 and nat[0].count(_native.ST_FALLBACK) > 50
    assert nat[0].count(_native.ST_SKIP) == 1 and nat[0].count(_native.ST_SHORT) == 1
    got, want = _decode_both(monkeypatch, plans, recs, cache)
    assert got == want
    monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", "1")
    assert ring.decoder == "native"
    monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", "0")
    assert ring.decoder.startswith("python")


@pytest.mark.parametrize("cache", [None, CACHE], ids=["no-cache", "cache"])
def test_native_whole_batch_path_matches_python_and_the_generic_encoding(monkeypatch: pytest.MonkeyPatch,
                                                                         cache: Any, event_format: str) -> None:
    """A batch of usual records only (the storm's case): rendered whole, heads joined per process/thread."""
    _need_native()
    plans, _ = _records()
    recs = []
    for i in range(3000):
        pid = (4242, 7, 8, 9999)[i % 7 % 4]
        s = STRINGS[i % 6] if i % 6 not in (2, 3, 5) else b"/tmp/f%d" % i
        recs.append(_record([(S.ARG_INT, 0, i - 1500), (S.ARG_STR, 0, s), (S.ARG_INT, 0, -i),
                             (S.ARG_INT, 0, i * 77), (S.ARG_INT, 0, 2**63 + i)], hook_id=2, pid=pid,
                            tid=pid + i % 3, retval=-i, flags=S.EV_HAS_RET if i % 2 else 0,
                            cgroup_id=i % 5, ktime=10**18 + i * 333_333_333))
    ring = _ring(plans, cache)
    nat = ring._native(recs, b"x", 0)
    assert nat is not None and nat[0].count(_native.ST_OK) == len(recs)
    got, want = _decode_both(monkeypatch, plans, recs, cache)
    assert got == want and got[3] == len(recs)
    monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", "1")
    fast = _ring(plans, cache).decode(recs)
    generic = _ring(plans, cache).decode_dicts(recs)
    assert fast.lines == [ev.json() for ev in generic]
    assert [e.json() for e in fast[:50]] == fast.lines[:50]


def test_native_formatter_survives_hostile_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fuzz: records cut anywhere, bytes flipped, lengths and counts made up, pure noise. Both paths give
    the same lines (or fail alike), and the native call never reads outside the record."""
    import random

    _need_native()
    plans, base = _records()
    rnd = random.Random(1234)
    usual = [r for r in base if len(r) >= _EV.size and _EV.unpack_from(r)[7] == 2] or base
    for round_ in range(60):
        batch = []
        for _ in range(200):
            r = bytearray(rnd.choice(usual if rnd.random() < 0.7 else base))
            what = rnd.random()
            if what < 0.25:
                r = r[:rnd.randrange(len(r) + 1)]
            elif what < 0.6:
                for _ in range(rnd.randrange(1, 6)):
                    if r:
                        r[rnd.randrange(len(r))] = rnd.randrange(256)
            elif what < 0.75 and len(r) >= _EV.size:  # data_len, an argument's length or kind made up
                pos = rnd.choice([52, 56, 58, 72, 74, 88]) if len(r) > 90 else 52
                r[pos:pos + 2] = rnd.choice([b"\xff\xff", b"\x00\x00", b"\x10\x00", b"\x00\x01", b"\x01\x00"])
            elif what < 0.8:
                r = bytearray(rnd.randbytes(rnd.randrange(120)))
            batch.append(bytes(r))
        for cache in (None, CACHE):
            got, want = _decode_both(monkeypatch, plans, batch, cache)
            assert got == want, round_


def test_native_formatter_refuses_inconsistent_arguments() -> None:
    _need_native()
    plans, recs = _records()
    ring = _ring(plans, None)
    fmt = _native.Formatter(_native.load(), [(k[0], k[1], p, "x") for k, (p, _n, _h) in ring.hooks.items()])
    # lengths that run past the blob: refused before anything is read
    import array
    import ctypes

    lens = array.array("I", [len(recs[0]), 1 << 30])
    out = ctypes.create_string_buffer(4096)
    z = array.array("Q", [0, 0])
    st, sl, slots, sn = bytearray(2), array.array("I", [0, 0]), array.array("I", [0] * 16), array.array("I", [0] * 4)
    a = _native._addr
    ns = fmt.lib.sf_format(recs[0], len(recs[0]), a(lens), 2, ctypes.addressof(fmt.hooks), fmt.nhooks,
                           ctypes.addressof(fmt.frags_buf), len(fmt.frags), b"t", 1, 0, ctypes.addressof(out), 4096,
                           a(z), a(st), a(sl), a(slots), a(sn), 4)
    assert ns == -1
    # an output buffer too small for any rest: every record falls back, none is written past the end
    out = ctypes.create_string_buffer(b"\xaa" * 64, 64)
    lens = array.array("I", [len(recs[0])])
    ns = fmt.lib.sf_format(recs[0], len(recs[0]), a(lens), 1, ctypes.addressof(fmt.hooks), fmt.nhooks,
                           ctypes.addressof(fmt.frags_buf), len(fmt.frags), b"t", 1, 0, ctypes.addressof(out), 16,
                           a(z), a(st), a(sl), a(slots), a(sn), 4)
    assert ns == 0 and st[0] == _native.ST_FALLBACK and out.raw[16:] == b"\xaa" * 48


def test_without_a_compiler_the_python_path_is_used_and_the_status_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("SENSORIUM_CC", "no-such-cc-sensorium")
    monkeypatch.setenv("SENSORIUM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", "1")
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "STATUS", "")
    plans, recs = _records()
    ring = _ring(plans, CACHE)
    assert ring._native(recs, b"", 0) is None
    assert ring.decoder.startswith("python (native formatter unavailable") and "no-such-cc" in ring.decoder
    generic = _ring(plans, CACHE).decode_dicts(recs)
    assert ring.decode(recs).lines == [ev.json() for ev in generic]


_DRIVER = r"""
#include "fastrest.c"
#include <stdio.h>
#include <stdlib.h>

static unsigned char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f) exit(2);
	fseek(f, 0, SEEK_END);
	*n = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *p = malloc(*n ? *n : 1);
	if (*n && fread(p, 1, *n, f) != *n) exit(3);
	fclose(f);
	return p;
}

/* Each record alone in a buffer of exactly its size (ASan sees any read past it), with output buffers of
 * several capacities (down to none), then the whole batch at once. */
int main(int argc, char **argv)
{
	size_t hn, fn, ln, bn;
	struct sf_hook *hooks = (struct sf_hook *)slurp(argv[1], &hn);
	unsigned char *frags = slurp(argv[2], &fn);
	uint32_t *lens = (uint32_t *)slurp(argv[3], &ln);
	unsigned char *blob = slurp(argv[4], &bn);
	uint32_t n = (uint32_t)(ln / 4), nh = (uint32_t)(hn / sizeof(struct sf_hook));
	const unsigned char tail[] = "},\"node_name\":\"n\",\"time\":";
	uint64_t off = 0, ok = 0;
	for (uint32_t i = 0; i < n; i++) {
		unsigned char *rec = malloc(lens[i] ? lens[i] : 1);
		memcpy(rec, blob + off, lens[i]);
		off += lens[i];
		uint64_t caps[4] = { 0, 17, 200, 2 * (uint64_t)lens[i] + 4096 };
		for (int c = 0; c < 4; c++) {
			uint8_t *out = malloc(caps[c] ? caps[c] : 1), st;
			uint64_t end;
			uint32_t slot, slots[4], sn[1];
			int64_t r = sf_format(rec, lens[i], &lens[i], 1, hooks, nh, frags, fn, tail, sizeof(tail) - 1,
					1700000000000000000LL, out, caps[c], &end, &st, &slot, slots, sn, 1);
			if (r < 0 || end > caps[c]) return 4;
			ok += st == 0;
			free(out);
		}
		free(rec);
	}
	uint64_t cap = 2 * (uint64_t)bn + (uint64_t)n * 4096 + 64;
	uint8_t *out = malloc(cap), *st = malloc(n + 1);
	uint64_t *end = malloc(8 * (n + 1));
	uint32_t *slot = malloc(4 * (n + 1)), *slots = malloc(16 * 8), *sn = malloc(4 * 8);
	int64_t r = sf_format(blob, bn, lens, n, hooks, nh, frags, fn, tail, sizeof(tail) - 1, 1700000000000000000LL,
			out, cap, end, st, slot, slots, sn, 8);
	if (r < 0) return 5;
	printf("%llu\n", (unsigned long long)ok);
	return 0;
}
"""


def test_native_formatter_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """The fuzzed records of `test_native_formatter_survives_hostile_records`, each in a buffer of exactly
    its size, through fastrest.c built with -fsanitize=address,undefined: no read or write out of bounds."""
    import array
    import random
    import shutil
    import subprocess

    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    plans, base = _records()
    ring = _ring(plans, None)
    fmt = _native.Formatter(None, [(k[0], k[1], p, 'policy "q"') for k, (p, _n, _h) in ring.hooks.items()])
    rnd = random.Random(99)
    recs = list(base)
    for _ in range(3000):
        r = bytearray(rnd.choice(base))
        if rnd.random() < 0.5:
            r = r[:rnd.randrange(len(r) + 1)]
        for _ in range(rnd.randrange(4)):
            if r:
                r[rnd.randrange(len(r))] = rnd.randrange(256)
        if len(r) >= 56 and rnd.random() < 0.3:
            r[52:56] = rnd.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"\x10\x00\x00\x00"])
        recs.append(bytes(r))
    (tmp_path / "hooks.bin").write_bytes(bytes(fmt.hooks))
    (tmp_path / "frags.bin").write_bytes(fmt.frags)
    (tmp_path / "lens.bin").write_bytes(array.array("I", map(len, recs)).tobytes())
    (tmp_path / "blob.bin").write_bytes(b"".join(recs))
    (tmp_path / "drv.c").write_text(_DRIVER)
    exe = tmp_path / "drv"
    b = subprocess.run([cc, "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        "-I", str(_native.SOURCE.parent), "-o", str(exe), str(tmp_path / "drv.c")],
                       capture_output=True, text=True, timeout=120)
    if b.returncode != 0 and "sanitize" in b.stderr:
        pytest.skip(f"no sanitizer runtime: {b.stderr[:200]}")
    assert b.returncode == 0, b.stderr
    r = subprocess.run([str(exe)] + [str(tmp_path / f) for f in ("hooks.bin", "frags.bin", "lens.bin", "blob.bin")],
                       capture_output=True, text=True, timeout=300,
                       env={"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin"})  # the driver's own leaks
    assert r.returncode == 0 and "ERROR" not in r.stderr, r.stderr[-3000:]
    assert int(r.stdout) > 100  # records were rendered, not only refused

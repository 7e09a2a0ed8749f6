"""The native ring drain (core/bpf/ringdrain.c): a ring added with ``native_drain=True`` is consumed by a C
callback into an arena and its batches arrive as one `RecordBlob`, holding the same records, in the same
order, as the ctypes callback delivers for another ring fed by the same calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sensorium.bpf import ringbuf
from sensorium.bpf.build import build_object
from sensorium.bpf.libbpf import BpfObject
from sensorium.bpf.probe import ensure_mounts
from sensorium.bpf.ringbuf import RecordBlob, RingBufferReader
from sensorium.hookspecs import ProbeSource

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
]

HERE = Path(__file__).resolve().parent
ARG_BASE = 0x70000000  # getpgid() of a pid that cannot exist


def _calls(args) -> None:
    for a in args:
        try:
            os.getpgid(a)
        except ProcessLookupError:
            pass


@pytest.fixture
def objs():
    ensure_mounts()
    made: list[BpfObject] = []

    def make() -> BpfObject:
        obj = BpfObject.open(build_object(ProbeSource(name="loader_test", source=HERE / "bpf" / "loader_test.bpf.c")))
        made.append(obj)
        obj.set_rodata("target_tgid", os.getpid())
        obj.set_rodata("force_wakeup", 0)
        obj.load()
        obj.attach_all()
        return obj
    yield make
    for o in made:
        o.close()


def _need_drain() -> None:
    if ringbuf._drain_lib() is None:
        pytest.skip(ringbuf.DRAIN_STATUS)


def test_native_drain_delivers_the_same_records_as_the_ctypes_callback(objs, monkeypatch) -> None:
    _need_drain()
    monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", "1")
    a, b = objs(), objs()
    got_a: list = []
    got_b: list = []
    with RingBufferReader() as reader:
        assert reader.add(a.map("events"), got_a.append, native_drain=True).native_drain
        reader.add(b.map("events"), got_b.append)
        for k in range(3):  # arena reused between polls: each poll only its own records
            _calls(range(ARG_BASE + 7000 * k, ARG_BASE + 7000 * k + 6000 + k))  # past the arena's first 4096 slots
            assert reader.poll(0) == 2 * (6000 + k)
        assert reader.poll(0) == 0
    assert [type(x) for x in got_a] == [RecordBlob] * 3 and [type(x) for x in got_b] == [list] * 3
    def same(r: bytes) -> bytes:  # each program stamps its own time (bytes 8-16, REC in test_bpf_ringbuf.py)
        return r[:8] + r[16:]

    for x, y in zip(got_a, got_b, strict=True):
        assert len(x) == len(y) and list(map(same, x)) == list(map(same, y))
        assert x.blob == b"".join(x) and list(x.lens) == [len(r) for r in y]
        assert len({r[32:40] for r in x}) == len(x)  # the getpgid arguments: every call once
    assert ringbuf.DRAIN_STATUS == "native"


def test_native_drain_switched_off_gives_lists(objs, monkeypatch) -> None:
    monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", "0")
    a = objs()
    got: list = []
    with RingBufferReader() as reader:
        assert not reader.add(a.map("events"), got.append, native_drain=True).native_drain
        _calls(range(ARG_BASE, ARG_BASE + 10))
        assert reader.poll(0) == 10
    assert [type(x) for x in got] == [list] and len(got[0]) == 10


def test_record_blob_refuses_lengths_that_do_not_add_up() -> None:
    import array

    with pytest.raises(ValueError):
        RecordBlob(b"abc", array.array("I", [2, 2]))
    rb = RecordBlob(b"abcdef", array.array("I", [1, 0, 5]))
    assert list(rb) == [b"a", b"", b"bcdef"] and len(rb) == 3 and rb[1:] == [b"", b"bcdef"]


def test_without_a_compiler_the_ctypes_callback_drains_and_the_status_says_so(objs, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", "1")
    monkeypatch.setenv("SENSORIUM_CC", "no-such-cc-sensorium")
    monkeypatch.setenv("SENSORIUM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ringbuf, "_drain_tried", False)
    monkeypatch.setattr(ringbuf, "_drain", None)
    monkeypatch.setattr(ringbuf, "DRAIN_STATUS", "")  # restored afterwards with the rest
    a = objs()
    got: list = []
    with RingBufferReader() as reader:
        assert not reader.add(a.map("events"), got.append, native_drain=True).native_drain
        _calls(range(ARG_BASE, ARG_BASE + 10))
        assert reader.poll(0) == 10
    assert [type(x) for x in got] == [list] and len(got[0]) == 10
    assert ringbuf.DRAIN_STATUS.startswith("python (native drain unavailable") and "no-such-cc" in ringbuf.DRAIN_STATUS


def test_native_library_written_by_someone_else_is_refused(tmp_path, monkeypatch) -> None:
    """The agent is root: a cached .so in a directory others can write must not be loaded."""
    import os

    import pytest as _pytest

    from sensorium.bpf import native

    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    monkeypatch.setenv("SENSORIUM_CACHE_DIR", str(cache))
    if native.shutil.which(os.environ.get("SENSORIUM_CC") or "cc") is None:
        _pytest.skip("no C compiler")
    lib = native.build_shared(native.RINGDRAIN_SOURCE, "ringdrain")
    assert lib.is_file()
    os.chmod(lib.parent, 0o777)
    with _pytest.raises(RuntimeError, match="writable by others"):
        native.build_shared(native.RINGDRAIN_SOURCE, "ringdrain")
    os.chmod(lib.parent, 0o755)
    os.chmod(lib, 0o666)
    with _pytest.raises(RuntimeError, match="writable by others"):
        native.build_shared(native.RINGDRAIN_SOURCE, "ringdrain")

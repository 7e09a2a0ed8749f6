"""Rings that come and go while the reader runs (`sensorium.hookspecs.RingHandle`, what
`SensorContext.add_ring_buffer` returns): closing one delivers what is left in it and takes it out of the
reader, the others go on from where they were; a ring added while the reader thread polls is read."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sensorium.bpf.build import build_object
from sensorium.bpf.libbpf import BpfObject
from sensorium.bpf.probe import ensure_mounts
from sensorium.bpf.ringbuf import RingBufferReader
from sensorium.hookspecs import ProbeSource, RingHandle

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
]

HERE = Path(__file__).resolve().parent
ARG_BASE = 0x71000000  # getpgid() of a pid that cannot exist


def _calls(args: range) -> None:
    for a in args:
        try:
            os.getpgid(a)
        except ProcessLookupError:
            pass


@pytest.fixture
def objs():  # type: ignore[no-untyped-def]
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


def _count(batches: list) -> int:
    return sum(len(b) for b in batches)


@pytest.mark.parametrize("native", [False, True])
def test_closing_a_ring_delivers_what_is_left_and_the_others_go_on(objs, native: bool) -> None:
    a, b, c = objs(), objs(), objs()
    got: dict[str, list] = {"a": [], "b": [], "c": []}
    with RingBufferReader() as reader:
        ha = reader.add(a.map("events"), got["a"].append, native_drain=native)
        hb = reader.add(b.map("events"), got["b"].append, native_drain=native)
        hc = reader.add(c.map("events"), got["c"].append)
        assert isinstance(ha, RingHandle) and not ha.closed
        _calls(range(ARG_BASE, ARG_BASE + 100))
        assert reader.poll(0) == 300
        _calls(range(ARG_BASE, ARG_BASE + 40))  # not polled: still in the rings when b closes
        hb.close()
        assert hb.closed and not ha.closed and _count(got["b"]) == 140  # b's last 40 delivered by close
        hb.close()  # idempotent
        _calls(range(ARG_BASE, ARG_BASE + 10))
        reader.poll(0)
        # a and c: nothing lost or read twice across the rebuild; b: nothing after its close
        assert _count(got["a"]) == _count(got["c"]) == 150 and _count(got["b"]) == 140
        ha.close()
        hc.close()
        _calls(range(ARG_BASE, ARG_BASE + 5))
        assert reader.poll(0) == 0 and _count(got["a"]) == 150
        hd = reader.add(a.map("events"), got["a"].append)  # a reader with no ring left takes new ones
        _calls(range(ARG_BASE, ARG_BASE + 5))
        reader.poll(0)
        assert _count(got["a"]) == 160 and not hd.closed  # a's 5 unread records, then these 5


def test_a_ring_added_and_closed_while_the_reader_thread_polls(objs) -> None:  # type: ignore[no-untyped-def]
    a, b = objs(), objs()
    got_a: list = []
    got_b: list = []
    stop = threading.Event()
    with RingBufferReader() as reader:
        reader.add(a.map("events"), got_a.append)

        def loop() -> None:
            while not stop.is_set():
                reader.poll(20)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            hb = reader.add(b.map("events"), got_b.append)
            _calls(range(ARG_BASE, ARG_BASE + 50))
            deadline = time.monotonic() + 5
            while _count(got_b) < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _count(got_b) == 50
            hb.close()
            _calls(range(ARG_BASE, ARG_BASE + 50))
            while _count(got_a) < 100 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _count(got_a) == 100 and _count(got_b) == 50
        finally:
            stop.set()
            t.join(5)

"""Drain BPF ring buffers in batches: one libbpf ``ring_buffer`` over any number of ringbuf maps.

Programs submit without wakeups (``sensorium_submit``), so `RingBufferReader.poll` waits on the epoll fd
only up to its timeout and then always consumes every ring. The per-record work in Python is one ctypes
callback that copies the record out and appends it to that ring's list; the list is handed to the
ring's ``on_batch`` once per poll.

A ring added with ``native_drain=True`` (the hook engine's) is drained by ringdrain.c instead, when it
builds (`sensorium.bpf.native`) and ``SENSORIUM_NATIVE_DECODE`` is not 0: a C callback appends every
record to an arena, and ``on_batch`` gets one `RecordBlob` (a ``Sequence[bytes]`` over one bytes blob)
per poll: no interpreter work per record. `DRAIN_STATUS` says whether the library loaded.

Rings come and go while the reader runs (a policy's own program): `RingBufferReader.add` returns a
`RingSubscription` (the contract's `sensorium.hookspecs.RingHandle`) whose ``close`` delivers what is left
in the ring and takes it out of the reader. libbpf cannot remove one ring from a ``ring_buffer``, so the
reader then rebuilds it from the rings that stay (the kernel keeps each ring's consumer position: nothing
is read twice or lost). One lock serialises polls, adds and closes, so decoders never run concurrently.
"""

from __future__ import annotations

import array
import ctypes
import errno
import itertools
import os
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from sensorium.bpf.libbpf import BpfMap, LibbpfError, MapType, lib

if TYPE_CHECKING:
    from _ctypes import CFuncPtr

__all__ = ["RingBufferReader", "RingSubscription", "RecordBlob", "DRAIN_STATUS"]

DRAIN_STATUS = "python (native drain not loaded yet)"
_drain_lock = threading.Lock()
_drain: Any = None
_drain_tried = False


class _Arena(ctypes.Structure):
    """``struct rd_arena`` of ringdrain.c."""

    _fields_ = [("buf", ctypes.c_void_p), ("len", ctypes.c_uint64), ("cap", ctypes.c_uint64),
                ("lens", ctypes.c_void_p), ("n", ctypes.c_uint64), ("ncap", ctypes.c_uint64)]


def _drain_lib() -> Any:
    """ringdrain.c loaded (None when it cannot be built; the reason in `DRAIN_STATUS`)."""
    global _drain, _drain_tried, DRAIN_STATUS
    if _drain_tried:
        return _drain
    with _drain_lock:
        if not _drain_tried:
            try:
                from sensorium.bpf.native import RINGDRAIN_SOURCE, build_shared

                lib = ctypes.CDLL(str(build_shared(RINGDRAIN_SOURCE, "libringdrain")))
                lib.rd_new.restype = ctypes.POINTER(_Arena)
                lib.rd_new.argtypes = []
                lib.rd_free.restype = None
                lib.rd_free.argtypes = [ctypes.POINTER(_Arena)]
                _drain, DRAIN_STATUS = lib, "native"
            except Exception as e:  # noqa: BLE001 - the ctypes callback drains the same, slower
                _drain, DRAIN_STATUS = None, f"python (native drain unavailable: {e})"
            _drain_tried = True
    return _drain


class RecordBlob(Sequence[bytes]):
    """The records of one poll of a natively drained ring: ``blob`` holds them back to back, ``lens`` (an
    ``array('I')``) their sizes. A ``Sequence[bytes]`` like any batch: indexing or iterating makes the records
    as bytes (once); a decoder that knows the layout may read ``blob``/``lens`` directly instead."""

    __slots__ = ("blob", "lens", "_list")

    def __init__(self, blob: bytes, lens: array.array[int]) -> None:
        if sum(lens) != len(blob):
            raise ValueError("record lengths do not add up to the blob")
        self.blob, self.lens = blob, lens
        self._list: list[bytes] | None = None

    def _records(self) -> list[bytes]:
        if self._list is None:
            ends = list(itertools.accumulate(self.lens))
            self._list = list(map(self.blob.__getitem__, map(slice, [0] + ends[:-1], ends)))
        return self._list

    def __len__(self) -> int:
        return len(self.lens)

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        return self._records()[i]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._records())

_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


# The records are copied out by slicing one memoryview that spans the user address space (x86_64 and
# aarch64 user addresses are below 2**48; 2**56 also covers 5-level paging). The slice is only ever taken
# at the (data, size) libbpf hands to the callback, which libbpf guarantees readable during the call.
# This avoids ctypes.string_at, itself a foreign call that costs about as much as the callback: it
# halves the per-record cost (measured 0.75 -> 1.8 M records/s of reader CPU time).
_ADDRESS_SPACE = memoryview((ctypes.c_char * (1 << 56)).from_address(0)).cast("B")


OnBatch = Callable[[Sequence[bytes]], None]
"""What a ring's batches go to: a list of the records as bytes, or a `RecordBlob` for a natively drained ring."""


class _Ring:
    __slots__ = ("name", "on_batch", "records", "callback", "arena", "cb_ptr", "ctx", "fd")

    def __init__(self, name: str, fd: int, on_batch: OnBatch, native: bool = False) -> None:
        self.name = name
        self.fd = fd  # our own dup of the map's fd: the reader is rebuilt from it when another ring goes
        self.on_batch = on_batch
        self.records: list[bytes] = []
        self.arena: Any = None
        self.ctx: int | None = None
        # what libbpf calls per record: ringdrain.c's rd_sample (its address), or the Python callback below
        self.cb_ptr: int | CFuncPtr | None
        if native:  # ringdrain.c: the C callback fills the arena (see the module docstring)
            lib = _drain_lib()
            self.arena = lib.rd_new()
            if not self.arena:
                raise MemoryError("rd_new")
            self.cb_ptr = ctypes.cast(lib.rd_sample, ctypes.c_void_p).value
            self.ctx = ctypes.addressof(self.arena.contents)
            self.callback = None
            return
        append = self.records.append
        mem = _ADDRESS_SPACE

        # Hot path: one copy and one append per record (see module docstring).
        def sample(_ctx: int | None, data: int, size: int) -> int:
            append(mem[data:data + size].tobytes())
            return 0

        self.callback = _SAMPLE_FN(sample)
        self.cb_ptr = self.callback

    def free(self) -> None:
        if self.arena is not None:
            _drain_lib().rd_free(self.arena)
            self.arena = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def take(self) -> Any:
        """This poll's records (and empty the ring's buffer), or None when there are none."""
        if self.arena is not None:
            a = self.arena.contents
            if not a.n:
                return None
            blob = ctypes.string_at(a.buf, a.len)
            lens = array.array("I")
            lens.frombytes(ctypes.string_at(a.lens, 4 * a.n))
            a.len = a.n = 0
            return RecordBlob(blob, lens)
        if not self.records:
            return None
        batch = self.records[:]
        self.records.clear()  # the callback holds the bound append of this very list
        return batch


class RingSubscription:
    """One ring of a `RingBufferReader` (what `RingBufferReader.add` returns; the contract's
    `sensorium.hookspecs.RingHandle`)."""

    def __init__(self, reader: RingBufferReader, ring: _Ring) -> None:
        self._reader, self._ring = reader, ring
        self.native_drain = ring.arena is not None

    @property
    def closed(self) -> bool:
        return self._ring not in self._reader._rings

    def close(self) -> None:
        """Deliver what is still in the ring to its ``on_batch``, then stop reading it. Idempotent."""
        self._reader._remove(self._ring)


class RingBufferReader:
    """Reads one or more BPF_MAP_TYPE_RINGBUF maps. `poll` from one thread (the reader's); `add` and
    `RingSubscription.close` from any (they wait for a poll in progress)."""

    def __init__(self) -> None:
        self._rb: int | None = None
        self._rings: list[_Ring] = []
        self._closed = False
        self._lock = threading.RLock()  # reentrant: a decoder may close a ring from its own batch

    def add(self, bpf_map: BpfMap, on_batch: OnBatch, *, native_drain: bool = False) -> RingSubscription:
        """Read ``bpf_map`` (loaded, a ringbuf) and pass its records of each poll to ``on_batch``.

        ``native_drain``: ``on_batch`` accepts a `RecordBlob`; the ring is then drained by ringdrain.c where
        it builds (else as any other ring: a list of bytes)."""
        if bpf_map.type != MapType.RINGBUF:
            raise ValueError(f"{bpf_map._what()} is not a ring buffer (map type {bpf_map.type})")
        fd = bpf_map.fd
        if fd < 0:
            raise LibbpfError(errno.EBADF, f"{bpf_map._what()} has no fd (object not loaded?)")
        native = native_drain
        if native:
            from sensorium.bpf.native import native_enabled

            native = native_enabled() and _drain_lib() is not None
        with self._lock:
            if self._closed:
                raise LibbpfError(errno.EBADF, "RingBufferReader is closed")
            ring = _Ring(bpf_map.name, os.dup(fd), on_batch, native)
            try:
                self._attach(ring)
            except BaseException:
                ring.free()
                raise
            self._rings.append(ring)
        return RingSubscription(self, ring)

    def _attach(self, ring: _Ring) -> None:
        """Add ``ring`` to the libbpf ring_buffer (made with it when there is none). Holds the lock."""
        L = lib()
        if self._rb is None:
            rb = L.ring_buffer__new(ring.fd, ring.cb_ptr, ring.ctx, None)
            if not rb:
                raise LibbpfError(ctypes.get_errno() or errno.EIO, f"ring_buffer__new for map {ring.name}")
            self._rb = rb
        else:
            err = L.ring_buffer__add(self._rb, ring.fd, ring.cb_ptr, ring.ctx)
            if err < 0:
                raise LibbpfError(err, f"ring_buffer__add for map {ring.name}")

    def _remove(self, ring: _Ring) -> None:
        with self._lock:
            if ring not in self._rings:
                return
            try:
                self._consume_and_deliver(only=ring)  # what is left in it goes to its decoder first
            except Exception:  # noqa: BLE001 - a decoder failing on the last batch must not keep the ring
                pass  # (the host's decoder sink counts its own failures)
            finally:
                self._rings.remove(ring)
                rb, self._rb = self._rb, None
                if rb is not None:
                    lib().ring_buffer__free(rb)
                ring.free()
                # The others were consumed up to now (their records wait in their own buffers for the next
                # poll): a new ring_buffer over them goes on from each ring's consumer position.
                for other in list(self._rings):
                    try:
                        self._attach(other)
                    except LibbpfError:
                        self._rings.remove(other)
                        other.free()
                        raise

    @property
    def epoll_fd(self) -> int:
        """The epoll fd (readable after a wakeup); -1 while there is no ring. A close may rebuild the
        ring_buffer, and with it this fd."""
        with self._lock:
            rb = self._rb
            return lib().ring_buffer__epoll_fd(rb) if rb is not None else -1

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` (0: not at all, < 0: no limit) for a wakeup, then consume all rings;
        deliver each ring's records (in ring order) to its ``on_batch``; return how many were consumed.

        If an ``on_batch`` raises, the other rings still get their batches; the first error is then
        re-raised.
        """
        if self._rb is None:
            if self._closed:
                raise LibbpfError(errno.EBADF, "RingBufferReader is closed")
            if timeout_ms > 0:  # nothing to read yet: wait as a poll would, rings may come meanwhile
                select.select([], [], [], timeout_ms / 1000.0)
            return 0
        if timeout_ms != 0:  # < 0: until a wakeup (only sensible with programs that send them)
            epfd = self.epoll_fd  # the ring_buffer may be rebuilt by another thread: its fd, read under the lock
            try:
                select.select([epfd], [], [], timeout_ms / 1000.0 if timeout_ms > 0 else None)
            except (InterruptedError, OSError, ValueError):
                pass  # interrupted, or the ring_buffer was rebuilt meanwhile (its epoll fd is gone): read now
        with self._lock:
            return self._consume_and_deliver()

    def _consume_and_deliver(self, only: _Ring | None = None) -> int:
        """Consume every ring, then hand each ring's batch (``only``: that ring's alone) to its ``on_batch``.
        Holds the lock."""
        if self._rb is None:
            return 0
        n = lib().ring_buffer__consume(self._rb)
        if n < 0:
            raise LibbpfError(n, f"ring_buffer__consume ({', '.join(r.name for r in self._rings)})")
        first_error: BaseException | None = None
        for ring in self._rings if only is None else [only]:
            batch = ring.take()
            if batch is not None:
                try:
                    ring.on_batch(batch)
                except Exception as e:  # noqa: BLE001 - keep delivering the other rings
                    if first_error is None:
                        first_error = e
        if first_error is not None:
            raise first_error
        return int(n)

    def close(self) -> None:
        """Free the libbpf ring buffer (the maps stay owned by their objects). Idempotent."""
        with self._lock:
            rb, self._rb = self._rb, None
            self._closed = True
            if rb is not None:
                lib().ring_buffer__free(rb)
            for ring in self._rings:  # after the ring_buffer: its callbacks write into the arenas
                ring.free()
            self._rings.clear()

    def __enter__(self) -> RingBufferReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

"""Drain BPF ring buffers in batches: one libbpf ``ring_buffer`` over any number of ringbuf maps.

Programs submit without wakeups (``sensorium_submit``), so `RingBufferReader.poll` waits on the epoll fd
only up to its timeout and then always consumes every ring. The per-record work in Python is one ctypes
callback that copies the record out and appends it to that ring's list; the list is handed to the
ring's ``on_batch`` once per poll.

A map marked ``native_drain = True`` by its sensor (the hook engine's ring) is drained by ringdrain.c
instead, when it builds (`sensorium.bpf.native`) and ``SENSORIUM_NATIVE_DECODE`` is not 0: a C callback
appends every record to an arena, and ``on_batch`` gets one `RecordBlob` (a ``Sequence[bytes]`` over one
bytes blob) per poll: no interpreter work per record. `DRAIN_STATUS` says whether the library loaded.
"""

from __future__ import annotations

import array
import ctypes
import errno
import itertools
import select
import threading
from typing import Any, Callable, Sequence

from sensorium.bpf.libbpf import BpfMap, LibbpfError, MapType, lib

__all__ = ["RingBufferReader", "RecordBlob", "DRAIN_STATUS"]

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


class RecordBlob(Sequence):  # Sequence[bytes]
    """The records of one poll of a natively drained ring: ``blob`` holds them back to back, ``lens`` (an
    ``array('I')``) their sizes. Indexing or iterating makes the records as bytes (once)."""

    __slots__ = ("blob", "lens", "_list")

    def __init__(self, blob: bytes, lens: "array.array[int]") -> None:
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

    def __getitem__(self, i: Any) -> Any:
        return self._records()[i]

    def __iter__(self) -> Any:
        return iter(self._records())

_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


# The records are copied out by slicing one memoryview that spans the user address space (x86_64 and
# aarch64 user addresses are below 2**48; 2**56 also covers 5-level paging). The slice is only ever taken
# at the (data, size) libbpf hands to the callback, which libbpf guarantees readable during the call.
# This avoids ctypes.string_at, itself a foreign call that costs about as much as the callback: it
# halves the per-record cost (measured 0.75 -> 1.8 M records/s of reader CPU time).
_ADDRESS_SPACE = memoryview((ctypes.c_char * (1 << 56)).from_address(0)).cast("B")


class _Ring:
    __slots__ = ("name", "on_batch", "records", "callback", "arena", "cb_ptr", "ctx")

    def __init__(self, name: str, on_batch: Callable[[list[bytes]], None], native: bool = False) -> None:
        self.name = name
        self.on_batch = on_batch
        self.records: list[bytes] = []
        self.arena: Any = None
        self.ctx: int | None = None
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


class RingBufferReader:
    """Reads one or more BPF_MAP_TYPE_RINGBUF maps. Not thread-safe: use it from one thread."""

    def __init__(self) -> None:
        self._rb: int | None = None
        self._rings: list[_Ring] = []
        self._closed = False

    def add(self, bpf_map: BpfMap, on_batch: Callable[[list[bytes]], None]) -> None:
        """Read ``bpf_map`` (loaded, a ringbuf) and pass its records of each poll to ``on_batch``."""
        if self._closed:
            raise LibbpfError(errno.EBADF, "RingBufferReader is closed")
        if bpf_map.type != MapType.RINGBUF:
            raise ValueError(f"{bpf_map._what()} is not a ring buffer (map type {bpf_map.type})")
        fd = bpf_map.fd
        if fd < 0:
            raise LibbpfError(errno.EBADF, f"{bpf_map._what()} has no fd (object not loaded?)")
        native = bool(getattr(bpf_map, "native_drain", False))
        if native:
            from sensorium.bpf.native import native_enabled

            native = native_enabled() and _drain_lib() is not None
        ring = _Ring(bpf_map.name, on_batch, native)
        L = lib()
        if self._rb is None:
            rb = L.ring_buffer__new(fd, ring.cb_ptr, ring.ctx, None)
            if not rb:
                ring.free()
                raise LibbpfError(ctypes.get_errno() or errno.EIO, f"ring_buffer__new for {bpf_map._what()}")
            self._rb = rb
        else:
            err = L.ring_buffer__add(self._rb, fd, ring.cb_ptr, ring.ctx)
            if err < 0:
                ring.free()
                raise LibbpfError(err, f"ring_buffer__add for {bpf_map._what()}")
        self._rings.append(ring)

    @property
    def epoll_fd(self) -> int:
        """The epoll fd (readable after a wakeup); -1 before the first `add`."""
        return lib().ring_buffer__epoll_fd(self._rb) if self._rb is not None else -1

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` (0: not at all, < 0: no limit) for a wakeup, then consume all rings;
        deliver each ring's records (in ring order) to its ``on_batch``; return how many were consumed.

        If an ``on_batch`` raises, the other rings still get their batches; the first error is then
        re-raised.
        """
        if self._rb is None:
            if self._closed:
                raise LibbpfError(errno.EBADF, "RingBufferReader is closed")
            return 0
        L = lib()
        if timeout_ms != 0:  # < 0: until a wakeup (only sensible with programs that send them)
            try:
                select.select([L.ring_buffer__epoll_fd(self._rb)], [], [],
                              timeout_ms / 1000.0 if timeout_ms > 0 else None)
            except InterruptedError:
                pass
        n = L.ring_buffer__consume(self._rb)
        if n < 0:
            raise LibbpfError(n, f"ring_buffer__consume ({', '.join(r.name for r in self._rings)})")
        first_error: BaseException | None = None
        for ring in self._rings:
            batch = ring.take()
            if batch is not None:
                try:
                    ring.on_batch(batch)
                except Exception as e:  # keep delivering the other rings
                    if first_error is None:
                        first_error = e
        if first_error is not None:
            raise first_error
        return int(n)

    def close(self) -> None:
        """Free the libbpf ring buffer (the maps stay owned by their objects). Idempotent."""
        rb, self._rb = self._rb, None
        self._closed = True
        if rb is not None:
            lib().ring_buffer__free(rb)
        for ring in self._rings:  # after the ring_buffer: its callbacks write into the arenas
            ring.free()
        self._rings.clear()

    def __enter__(self) -> "RingBufferReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

"""Dispatching a sensor's ring records on their `SensoriumHdr` type, for a decoder of fixed-layout records.

Records are kernel input and treated as such: a record shorter than the header (``short``), of a type no
handler is registered for (``unknown_type``), shorter than its layout (``bad_<name>_size``) or one its handler
refuses with `BadRecord` (``bad_<reason>``) is counted in ``counters`` and skipped, never raised.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sensorium.bpf.records import SensoriumHdr

if TYPE_CHECKING:
    from sensorium.events import Event

HDR_SIZE = ctypes.sizeof(SensoriumHdr)

Handler = Callable[[Any, bytes], "Event | None"]
"""``handler(record, raw)``: the record parsed with its layout, and the raw bytes (for what follows the
fixed part); returns the event, or None for a record that only updates state."""


class BadRecord(Exception):
    """A record that does not fit its declared layout: counted as ``bad_<reason>``, skipped."""


class RecordDecoder:
    """``decode_batch`` for the `SensorContext.add_ring_buffer` of a sensor whose records each have one
    layout per header type. ``handlers``: type -> (name, layout, handler); ``name`` names the size counter."""

    def __init__(self, handlers: Mapping[int, tuple[str, type[ctypes.Structure], Handler]]) -> None:
        self.counters: Counter[str] = Counter()
        self._handlers = {t: (f"bad_{name}_size", layout, ctypes.sizeof(layout), fn)
                          for t, (name, layout, fn) in handlers.items()}

    def decode_batch(self, records: Sequence[bytes]) -> list[Event]:
        out: list[Event] = []
        for raw in records:
            if len(raw) < HDR_SIZE:
                self.counters["short"] += 1
                continue
            entry = self._handlers.get(int.from_bytes(raw[0:2], "little"))
            if entry is None:
                self.counters["unknown_type"] += 1
                continue
            too_short, layout, size, handler = entry
            if len(raw) < size:
                self.counters[too_short] += 1
                continue
            try:
                ev = handler(layout.from_buffer_copy(raw), raw)  # raw may be longer: its first `size` bytes
            except BadRecord as exc:
                self.counters[f"bad_{exc}"] += 1
                continue
            if ev is not None:
                out.append(ev)
        return out

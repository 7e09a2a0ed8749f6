"""Events as immutable values, in Tetragon's JSON export shape.

An event is ``{"<kind>": {...body...}, "node_name": ..., "time": ...}``. Stages that change an event
(filters, redaction, enrichment) return a new `Event` via `Event.replace`; the encoded JSON is computed
once and shared by every exporter that takes the event unchanged. The body holds everything the sensor
knows; the JSON is its rendering in the configured format (`sensorium.schema`: Tetragon's by default).
"""

from __future__ import annotations

import datetime as _dt
import time as _time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import orjson

from sensorium import schema as _schema

EVENT_KINDS = (
    "process_exec",
    "process_exit",
    "process_kprobe",
    "process_tracepoint",
    "process_uprobe",
    "process_lsm",
    "rate_limit_info",
)

# Boot-relative kernel time (CLOCK_MONOTONIC/ktime_get_ns) to wall clock: computed once per process.
_BOOT_WALL_NS = _time.time_ns() - _time.monotonic_ns()
BOOT_WALL_NS = _BOOT_WALL_NS  # wall = BOOT_WALL_NS + ktime (decoders inline `ktime_to_wall_ns`)


def ktime_to_wall_ns(ktime_ns: int) -> int:
    """Convert a kernel bpf_ktime_get_ns()/task start_time value to Unix nanoseconds."""
    return _BOOT_WALL_NS + ktime_ns


_RFC_CACHE: tuple[int, str] = (-1, "")  # (second, its formatted prefix): strftime costs ~10x the rest


def rfc3339(wall_ns: int) -> str:
    """Tetragon's time format: RFC 3339 in UTC with nanoseconds, e.g. 2026-11-26T15:20:01.123456789Z."""
    global _RFC_CACHE
    secs, nanos = divmod(wall_ns, 1_000_000_000)
    cached = _RFC_CACHE
    if cached[0] != secs:
        cached = (secs, _dt.datetime.fromtimestamp(secs, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        _RFC_CACHE = cached  # one tuple assignment: safe to share between threads
    return f"{cached[1]}.{nanos:09d}Z"


_RFC_JSON_CACHE: tuple[int, bytes] = (-1, b"")


def rfc3339_json(wall_ns: int) -> bytes:
    """`rfc3339` as a JSON string (quoted bytes), for decoders that assemble an event's JSON directly."""
    global _RFC_JSON_CACHE
    secs, nanos = divmod(wall_ns, 1_000_000_000)
    cached = _RFC_JSON_CACHE
    if cached[0] != secs:
        cached = (secs, b'"' + rfc3339(secs * 1_000_000_000)[:-11].encode())
        _RFC_JSON_CACHE = cached
    return b'%b.%09dZ"' % (cached[1], nanos)


class Event:
    """One exported event. Treat as immutable: use `replace` to derive a changed copy."""

    __slots__ = ("kind", "body", "node_name", "time_ns", "_json")

    def __init__(self, kind: str, body: Mapping[str, Any], node_name: str, time_ns: int) -> None:
        self.kind = kind
        self.body = body
        self.node_name = node_name
        self.time_ns = time_ns  # Unix ns
        self._json: bytes | None = None

    @property
    def time(self) -> str:
        return rfc3339(self.time_ns)

    def as_dict(self) -> dict[str, Any]:
        return {self.kind: self.body, "node_name": self.node_name, "time": self.time}

    def json(self) -> bytes:
        """The JSON encoding in the exported format (`sensorium.schema`; no trailing newline), computed once."""
        if self._json is None:
            self._json = orjson.dumps(_schema.conform(self.as_dict()))
        return self._json

    def replace(self, **changes: Any) -> Event:
        return Event(
            changes.get("kind", self.kind),
            changes.get("body", self.body),
            changes.get("node_name", self.node_name),
            changes.get("time_ns", self.time_ns),
        )

    @property
    def process(self) -> Mapping[str, Any]:
        return self.body.get("process") or {}

    @property
    def parent(self) -> Mapping[str, Any]:
        return self.body.get("parent") or {}

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Event({self.kind}, pid={self.process.get('pid')}, binary={self.process.get('binary')!r})"


_BODY = Event.__dict__["body"]  # the slot's descriptor: LazyEvent stores the body it builds there


class LazyEvent(Event):
    """An event whose JSON a decoder assembled directly from the record (the hot path: no dict is built
    or encoded per event). ``body`` is built on first use, by ``make_body(*args)``, which must give the
    same content as the JSON (tests compare the two); ``process`` is known without building it.

    Filters, stages and exporters use it like any `Event`; `replace` returns a plain `Event`."""

    __slots__ = ("_make", "_args", "_process")

    def __init__(self, kind: str, node_name: str, time_ns: int, json: bytes, process: Mapping[str, Any],
                 make_body: Callable[..., Mapping[str, Any]], args: tuple[Any, ...]) -> None:
        self.kind = kind
        self.node_name = node_name
        self.time_ns = time_ns
        self._json = json
        self._process = process
        self._make = make_body
        self._args = args

    @property
    def body(self) -> Mapping[str, Any]:
        try:
            made: Mapping[str, Any] = _BODY.__get__(self)
        except AttributeError:
            made = self._make(*self._args)
            _BODY.__set__(self, made)
            self._args = ()  # the record is not needed any more
        return made

    @body.setter
    def body(self, value: Mapping[str, Any]) -> None:  # as writable as `Event.body` (the slot it fills)
        _BODY.__set__(self, value)

    @property
    def process(self) -> Mapping[str, Any]:
        return self._process


class EventBatch(Sequence[Event]):
    """The events of one decoded ring batch, held as JSON bytes plus what it takes to make each `Event`
    on demand. The hot path (decoder -> pipeline -> file exporter) moves and writes the bytes without
    creating an object per event; reading it as a sequence of events (a filter, the Kubernetes stage,
    another exporter, a test) makes them once (`LazyEvent`s with the same JSON).

    Event i's JSON line is ``heads[i] + rests[i]`` (``rests[i]`` ends with the newline): events of one
    process share one head object (kind, process, parent, fixed fields), so a writer can gather them
    (`line_parts`, ``os.writev``) without copying the kilobytes of process JSON per event.
    ``kinds`` gives each event's kind (counted without making events); ``resolved`` says every event's
    process came from the process cache (`ProcessJoin` has nothing to do). A slice is a view on the
    same lists (no copy), so a runner can cut a large batch into exporter-sized ones cheaply.
    """

    __slots__ = ("_heads", "_rests", "_kinds", "resolved", "_make", "_start", "_stop", "_events")

    def __init__(self, heads: list[bytes], rests: list[bytes], kinds: list[str], make: Callable[[int], Event], *,
                 resolved: bool = False, start: int = 0, stop: int | None = None) -> None:
        self._heads = heads
        self._rests = rests
        self._kinds = kinds
        self.resolved = resolved
        self._make = make  # make(i) -> event i of the full lists
        self._start = start
        self._stop = len(heads) if stop is None else stop
        self._events: list[Event] | None = None

    def _view(self, items: list[Any]) -> list[Any]:
        if self._start == 0 and self._stop == len(items):
            return items
        return items[self._start:self._stop]

    @property
    def lines(self) -> list[bytes]:
        """The JSON of each event (no newline), joined here."""
        return [h + r[:-1] for h, r in zip(self._view(self._heads), self._view(self._rests), strict=True)]

    def line_parts(self) -> tuple[list[bytes], list[bytes]]:
        """(heads, rests): line i is ``heads[i] + rests[i]``, newline included."""
        return self._view(self._heads), self._view(self._rests)

    @property
    def kinds(self) -> list[str]:
        return self._view(self._kinds)

    def __len__(self) -> int:
        return self._stop - self._start

    def __bool__(self) -> bool:
        return self._stop > self._start

    def events(self) -> list[Event]:
        """The events as objects (made on first call, then kept)."""
        if self._events is None:
            make = self._make
            self._events = [make(i) for i in range(self._start, self._stop)]
        return self._events

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())

    @overload
    def __getitem__(self, i: int) -> Event: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Event]: ...

    def __getitem__(self, i: int | slice) -> Event | Sequence[Event]:
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                return self.events()[i]
            return EventBatch(self._heads, self._rests, self._kinds, self._make, resolved=self.resolved,
                              start=self._start + a, stop=self._start + max(a, b))
        return self.events()[i]

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"EventBatch({len(self)} events)"


def kinds_of(events: Iterable[Event]) -> Iterable[str]:
    """The kind of every event, without making the events of an `EventBatch`."""
    if isinstance(events, EventBatch):
        return events.kinds
    return [ev.kind for ev in events]


def json_lines(events: Iterable[Event]) -> list[bytes]:
    """The JSON of every event (no newline), without making the events of an `EventBatch`."""
    if isinstance(events, EventBatch):
        return events.lines
    return [ev.json() for ev in events]


def line_parts(events: Iterable[Event]) -> tuple[list[bytes], list[bytes]] | None:
    """An `EventBatch`'s (heads, rests), see there; None for other sequences."""
    return events.line_parts() if isinstance(events, EventBatch) else None

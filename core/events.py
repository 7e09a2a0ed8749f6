"""Events as immutable values, in Tetragon's JSON export shape.

An event is ``{"<kind>": {...body...}, "node_name": ..., "time": ...}``. Stages that change an event
(filters, redaction, enrichment) return a new `Event` via `Event.replace`; the encoded JSON is computed
once and shared by every exporter that takes the event unchanged.
"""

from __future__ import annotations

import datetime as _dt
import time as _time
from typing import Any, Mapping

import orjson

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
        cached = (secs, _dt.datetime.fromtimestamp(secs, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
        _RFC_CACHE = cached  # one tuple assignment: safe to share between threads
    return f"{cached[1]}.{nanos:09d}Z"


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
        """The JSON encoding (no trailing newline), computed once."""
        if self._json is None:
            self._json = orjson.dumps(self.as_dict())
        return self._json

    def replace(self, **changes: Any) -> "Event":
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

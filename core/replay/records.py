"""Recorded events -> the call records the replay evaluates.

Reads JSON lines in Tetragon's export shape (our file exporter's output by default, or Tetragon's own JSON
export: docs/events.md), one line at a time so a week of events is never held in memory. A line that is
not an event is counted and reported with its file:line, never raised. Times are RFC 3339 (nanoseconds
kept as integers: Python's datetime stops at microseconds).
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime
import re
import time as _time
from collections.abc import Iterator
from typing import Any

import orjson

HOOK_KINDS = ("process_kprobe", "process_tracepoint", "process_uprobe", "process_lsm")
PROCESS_KINDS = ("process_exec", "process_exit", "process_fork", "process_clone")
MAX_LINE = 16 << 20  # a longer line is reported as malformed, not parsed

_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                      r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$")
_RELATIVE = re.compile(r"^(\d+)(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_rfc3339(text: object) -> int:
    """``2026-12-07T13:01:43.555697603Z`` -> nanoseconds since the epoch. ValueError says what is wrong (a
    record's ``time`` is whatever its JSON holds, so a non-string is refused here too)."""
    m = _RFC3339.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)")
    y, mo, d, h, mi, s = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac = (m.group(7) or "").ljust(9, "0")
    try:
        datetime.datetime(y, mo, d, h, mi, min(s, 59))  # validates the day of the month (60: a leap second)
        secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not a valid date and time") from None
    if m.group(9):
        off = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        secs -= off if m.group(9) == "+" else -off
    return secs * 1_000_000_000 + int(frac)


def format_rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch -> RFC 3339 in UTC with nanoseconds (as the events write it)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(secs)) + f".{frac:09d}Z"


def parse_when(text: str, now_ns: int | None = None) -> int:
    """A bound of ``--since``/``--until``: RFC 3339, or relative to now (``90s``, ``30m``, ``24h``, ``7d``,
    ``2w``) -> nanoseconds since the epoch."""
    t = text.strip()
    m = _RELATIVE.match(t)
    if m:
        now = _time.time_ns() if now_ns is None else now_ns
        return now - int(m.group(1)) * _UNIT_S[m.group(2)] * 1_000_000_000
    try:
        return parse_rfc3339(t)
    except ValueError:
        raise ValueError(f"{text!r} is neither an RFC 3339 time (2026-12-01T00:00:00Z) nor a duration before "
                         f"now (90s, 30m, 24h, 7d, 2w)") from None


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One event of the recording: its line, kind (``process_kprobe``...), body and time."""

    line: int
    kind: str
    body: dict[str, Any]
    time_ns: int | None
    time: str | None


@dataclasses.dataclass(frozen=True)
class Malformed:
    line: int
    reason: str


def hook_key(kind: str, body: dict[str, Any]) -> tuple[str, ...]:
    """Which hook an event came from, as the policy names it (see `sensorium.replay.evaluate.item_keys`)."""
    if kind == "process_tracepoint":
        return (kind, str(body.get("subsys", "")), str(body.get("event", "")))
    if kind == "process_uprobe":
        where = body.get("symbol") if body.get("symbol") is not None else f"+{body.get('offset')}"
        return (kind, str(body.get("path", "")), str(where))
    return (kind, str(body.get("function_name", "")))


def read_events(path: str) -> Iterator[Recorded | Malformed]:
    """Every line of ``path`` (``-``: stdin; a ``.gz`` file, as the file exporter compresses rotated files, is
    read through gzip) as a `Recorded` event, or `Malformed` with the reason. OSError (the file cannot be
    opened or decompressed) is the caller's to report."""
    import gzip
    import sys

    if path == "-":
        f: Any = sys.stdin.buffer
    elif path.endswith(".gz"):
        f = gzip.open(path, "rb")
    else:
        f = open(path, "rb")
    try:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            if len(line) > MAX_LINE:
                yield Malformed(n, f"line of {len(line)} bytes is longer than {MAX_LINE}")
                continue
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                yield Malformed(n, f"not JSON ({e.args[0] if e.args else e})")
                continue
            if not isinstance(ev, dict):
                yield Malformed(n, "not a JSON object")
                continue
            kinds = [k for k in ev if k.startswith("process_") or k == "rate_limit_info"]
            if len(kinds) != 1 or not isinstance(ev[kinds[0]], dict):
                yield Malformed(n, "no event kind (an object with one key such as process_kprobe)")
                continue
            kind = kinds[0]
            t = ev.get("time")
            tns: int | None = None
            if t is not None:
                try:
                    tns = parse_rfc3339(t)
                except ValueError as e:
                    yield Malformed(n, f"time: {e}")
                    continue
            yield Recorded(n, kind, ev[kind], tns, t)
    finally:
        if f is not sys.stdin.buffer:
            f.close()


__all__ = ["HOOK_KINDS", "PROCESS_KINDS", "Recorded", "Malformed", "hook_key", "parse_rfc3339", "format_rfc3339",
           "parse_when",
           "read_events"]

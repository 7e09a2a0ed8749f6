"""The stdout exporter: JSON lines (Tetragon's export format) or a one-line human view.

``format: compact`` prints one line per event in the shape of ``tetra getevents -o compact``: an icon
and a word for the event type, the pod (``namespace/name``) or else the node, the binary and its
arguments, and for exits the signal or the exit status. Control characters from the event (a
process's own arguments are attacker-controlled) are escaped so they cannot drive the terminal.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping  # fast isinstance() (typing.Mapping is slow)
from typing import Any, BinaryIO, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from sensorium.events import Event
from sensorium.hookspecs import ExporterContext, ExporterSpec
from sensorium.provide import provide


class StdoutOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["json", "compact"] = "json"
    timestamps: bool = Field(default=False, description="compact: prefix each line with the event time")
    stream: Literal["stdout", "stderr"] = "stdout"


_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(value: Any) -> str:
    text = "" if value is None else str(value)
    return _CTRL.sub(lambda m: "\\x%02x" % ord(m.group()), text)


def _head(icon: str, word: str) -> str:
    return f"{icon} {word:<7}"  # Tetragon pads the word to 7 columns


def _source(ev: Event, proc: Mapping[str, Any]) -> str:
    pod = proc.get("pod")
    if isinstance(pod, Mapping) and (pod.get("name") or pod.get("namespace")):
        return f"{_clean(pod.get('namespace'))}/{_clean(pod.get('name'))}"
    return _clean(ev.node_name)


def compact(ev: Event) -> str:
    """One human-readable line for ``ev`` (no newline)."""
    body = ev.body if isinstance(ev.body, Mapping) else {}
    proc = body.get("process") if isinstance(body.get("process"), Mapping) else {}
    who = f"{_source(ev, proc)} {_clean(proc.get('binary'))}"
    kind = ev.kind
    if kind == "process_exec":
        return f"{_head('🚀', 'process')} {who} {_clean(proc.get('arguments'))}".rstrip()
    if kind == "process_exit":
        status = body.get("signal") or body.get("status", 0)
        return f"{_head('💥', 'exit')} {who} {_clean(proc.get('arguments'))} {_clean(status)}"
    if kind == "process_kprobe":
        line = f"{_head('❓', 'syscall')} {who} {_clean(body.get('function_name'))}"
    elif kind == "process_tracepoint":
        line = f"{_head('⁉️', 'tracepoint')} {who} {_clean(body.get('subsys'))} {_clean(body.get('event'))}"
    elif kind == "process_uprobe":
        line = f"{_head('🕵️', 'uprobe')} {who} {_clean(body.get('path'))} {_clean(body.get('symbol'))}"
    elif kind == "process_lsm":
        line = f"{_head('🔒', 'LSM')} {who} {_clean(body.get('function_name'))}"
    elif kind == "rate_limit_info":
        return f"{_head('🧬', 'ratelimit')} {_clean(ev.node_name)} dropped {_clean(body.get('number_of_dropped_process_events'))} events"
    else:
        line = f"{_head('❔', _clean(kind))} {who}"
    action = body.get("action")
    if action and action not in ("KPROBE_ACTION_POST", "POST"):
        line += f" {_clean(action)}"
    return line


class StdoutExporter:
    def __init__(self, options: StdoutOptions, ctx: ExporterContext) -> None:
        self.options = options
        self.ctx = ctx
        self._out: BinaryIO | None = None

    def open(self) -> None:
        stream = sys.stdout if self.options.stream == "stdout" else sys.stderr
        # Write bytes: the JSON is already encoded once per event and shared by every exporter.
        self._out = getattr(stream, "buffer", None) or stream  # type: ignore[assignment]

    def _lines(self, events: Sequence[Event]) -> bytes:
        if self.options.format == "json":
            return b"".join(ev.json() + b"\n" for ev in events)
        parts = []
        for ev in events:
            line = compact(ev)
            if self.options.timestamps:
                line = f"{ev.time} {line}"
            parts.append(line + "\n")
        return "".join(parts).encode("utf-8", "replace")

    def write_batch(self, events: Sequence[Event]) -> None:
        assert self._out is not None, "write_batch before open"
        self._out.write(self._lines(events))

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        try:
            self.flush()
        except (OSError, ValueError):
            pass  # stdout closed (broken pipe): nothing left to do


sensorium_exporter = provide(ExporterSpec(
    name="stdout",
    description="JSON lines (Tetragon export format) or a compact human view on stdout",
    options=StdoutOptions, factory=StdoutExporter,
))

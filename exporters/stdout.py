"""The stdout exporter: JSON lines (Tetragon's export format) or a one-line human view.

``format: compact`` prints one line per event in the shape of ``tetra getevents -o compact``
(`sensorium.compact`, which ``sensorium events -o compact`` uses too).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

from sensorium.compact import compact
from sensorium.events import Event
from sensorium.hookspecs import ExporterContext, ExporterSpec
from sensorium.provide import provide


class StdoutOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["json", "compact"] = "json"
    timestamps: bool = Field(default=False, description="compact: prefix each line with the event time")
    stream: Literal["stdout", "stderr"] = "stdout"


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

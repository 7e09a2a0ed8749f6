"""The `kill` sensor: one tracepoint program, one ring buffer, one decoder."""

from __future__ import annotations

import ctypes
import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sensorium import hookimpl
from sensorium.bpf.records import SensoriumHdr
from sensorium.events import Event
from sensorium.hookspecs import ProbeSource, SensorContext, SensorSpec

HERE = Path(__file__).parent


class KillEvent(ctypes.Structure):
    """Twin of `struct kill_event` in event.h."""

    _fields_ = [("hdr", SensoriumHdr), ("target_pid", ctypes.c_int32), ("sig", ctypes.c_int32)]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    only_signal: int = Field(default=0, ge=0, le=64, description="Report only this signal number (0: all)")


PROBE = ProbeSource(name="kill", source=HERE / "probe.bpf.c", include_dirs=(HERE,))


def _signame(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return str(sig)


class KillSensor:
    def __init__(self, ctx: SensorContext) -> None:
        self.ctx = ctx
        self.obj: Any = None
        self.events = 0

    def start(self) -> None:
        obj = self.ctx.open_object(self.ctx.build(PROBE))
        self.obj = obj
        obj.set_rodata("only_signal", int(self.ctx.config.get("only_signal", 0)))
        obj.load()
        obj.attach_all()
        self.ctx.add_ring_buffer(obj.map("kill_events"), self.decode)

    def decode(self, records: Sequence[bytes]) -> Iterable[Event]:
        out = []
        size = ctypes.sizeof(KillEvent)
        for raw in records:
            if len(raw) < size:  # event bytes are input too: never trust their length
                continue
            rec = KillEvent.from_buffer_copy(raw)
            process, parent = self.ctx.process_cache.get(rec.hdr.pid)
            body = {
                "process": process or {"pid": rec.hdr.pid, "tid": rec.hdr.tid},
                "parent": parent or {},
                "subsys": "syscalls",
                "event": "sys_enter_kill",
                "args": [{"int_arg": rec.target_pid}, {"int_arg": rec.sig}, {"string_arg": _signame(rec.sig)}],
            }
            out.append(self.ctx.make_event("process_tracepoint", body, rec.hdr.ktime))
        self.events += len(out)
        return out

    def stop(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def status(self) -> Mapping[str, Any]:
        return {"state": "running" if self.obj else "stopped", "events": self.events}


@hookimpl
def sensorium_sensor() -> SensorSpec:
    return SensorSpec(
        name="kill",
        description="kill() system calls: who signals whom (example third-party sensor)",
        factory=KillSensor,
        probes=[PROBE],
        options=Options,
        record_layouts={"kill_event": KillEvent},
        requires=frozenset({"tracepoint", "ringbuf"}),
        enabled_by_default=True,
    )

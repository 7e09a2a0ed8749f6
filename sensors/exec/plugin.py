"""The exec sensor plugin: process_exec and process_exit events, and the process cache's feed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from sensorium.hookspecs import BudgetCase, ProbeSource, SensorSpec
from sensorium.provide import provide
from sensorium_sensors.exec.decoder import RECORD_LAYOUTS

if TYPE_CHECKING:
    from sensorium.hookspecs import Sensor, SensorContext

HERE = Path(__file__).resolve().parent

ARGS_CAP = 32768  # ARGS_CAP in probe.bpf.c


class ExecOptions(BaseModel):
    """``sensors: {exec: {...}}``"""

    model_config = ConfigDict(extra="forbid")
    max_args_bytes: int = Field(
        default=4096, ge=0, le=ARGS_CAP,
        description="Bytes of the argument list copied per exec; longer lists are cut and flagged "
        "(arguments_truncated, flag truncArgs)",
    )
    ring_buffer_kb: int = Field(default=4096, ge=64, le=1 << 20,
                                description="Size of the sensor's ring buffer (a power of two, in KiB)")


PROBE = ProbeSource(name="exec", source=HERE / "probe.bpf.c", include_dirs=(HERE,))


def _factory(ctx: SensorContext) -> Sensor:
    # Imported here: discovery (``sensorium plugins``) must not need the run-time modules.
    from sensorium_sensors.exec.sensor import ExecSensor

    return ExecSensor(ctx)


def _budget() -> list[BudgetCase]:
    # No policy configures these programs: the default rodata is the only configuration, and the largest
    # argument list allowed is the longest copy.
    def prepare(obj: object) -> None:
        obj.set_rodata("max_args_bytes", ARGS_CAP)  # type: ignore[attr-defined]

    return [BudgetCase(PROBE, p, "max_args_bytes at its limit", prepare, frozenset({"tp_btf"}))
            for p in ("sensorium_exec", "sensorium_fork", "sensorium_exit")]


sensorium_sensor = provide(SensorSpec(
    name="exec",
    description="Process lifecycle: process_exec (binary, arguments, cwd, credentials, cgroups, "
    "namespaces, parent) and process_exit (status, signal); feeds the process cache",
    factory=_factory, probes=[PROBE], options=ExecOptions, record_layouts=dict(RECORD_LAYOUTS),
    requires=frozenset({"tp_btf", "ringbuf", "btf"}), enabled_by_default=True, budget_cases=_budget,
))

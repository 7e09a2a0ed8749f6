"""The tracepoint sensor plugin: TracingPolicy ``tracepoints`` sections (tracepoints and raw tracepoints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sensorium import hookimpl
from sensorium.hookspecs import BudgetCase, SensorSpec

if TYPE_CHECKING:
    from sensorium.hookspecs import Sensor, SensorContext


def _budget() -> list[BudgetCase]:
    from sensorium.hooks.budget import TRACKING, engine_cases
    from sensorium.hooks.probes import HOOK_PROBE

    return engine_cases(HOOK_PROBE, full=("sens_tp", "sens_raw"), others=TRACKING)


def _factory(ctx: SensorContext) -> Sensor:
    from sensorium_sensors.tracepoint.sensor import TracepointSensor

    return TracepointSensor(ctx)


@hookimpl
def sensorium_sensor() -> SensorSpec:
    from sensorium.hooks import selectors
    from sensorium.hooks.probes import HOOK_PROBE
    from sensorium.hooks.sensor import HookSensorOptions
    from sensorium_sensors.tracepoint.schema import TracepointSpec

    return SensorSpec(
        name="tracepoint",
        description="TracingPolicy tracepoints (tracefs events and raw tracepoints) with in-kernel selectors "
        "and actions; events: process_tracepoint",
        factory=_factory,
        probes=[HOOK_PROBE],
        options=HookSensorOptions,
        policy_sections={"tracepoints": TracepointSpec},
        record_layouts=dict(selectors.RECORD_LAYOUTS),
        requires=frozenset({"tracepoint", "raw_tp", "ringbuf", "btf"}),
        enabled_by_default=True,
        budget_cases=_budget,
    )

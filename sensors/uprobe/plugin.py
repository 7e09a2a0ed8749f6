"""The uprobe sensor plugin: TracingPolicy ``uprobes`` sections (functions of user binaries by symbol or
offset, return values through uretprobes), with in-kernel selectors and actions from the hook library
(`sensorium.hooks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sensorium import hookimpl
from sensorium.hookspecs import BudgetCase, SensorSpec

if TYPE_CHECKING:
    from sensorium.hookspecs import Sensor, SensorContext


def _factory(ctx: SensorContext) -> Sensor:
    from sensorium_sensors.uprobe.sensor import UprobeSensor

    return UprobeSensor(ctx)


def _budget() -> list[BudgetCase]:
    from sensorium.hooks.budget import engine_cases
    from sensorium.hooks.probes import HOOK_PROBE

    return engine_cases(HOOK_PROBE, full=("sens_uprobe", "sens_uretprobe"))


@hookimpl
def sensorium_sensor() -> SensorSpec:
    from sensorium.hooks import selectors
    from sensorium.hooks.probes import HOOK_PROBE
    from sensorium.hooks.sensor import HookSensorOptions
    from sensorium_sensors.uprobe.schema import UProbeSpec

    return SensorSpec(
        name="uprobe",
        description="TracingPolicy uprobes: user functions by symbol or offset (uretprobes for return values) with "
        "in-kernel selectors and actions; events: process_uprobe",
        factory=_factory,
        probes=[HOOK_PROBE],
        options=HookSensorOptions,
        policy_sections={"uprobes": UProbeSpec},
        record_layouts=dict(selectors.RECORD_LAYOUTS),
        requires=frozenset({"uprobe", "ringbuf", "btf"}),
        enabled_by_default=True,
        implemented=True,
        budget_cases=_budget,
    )

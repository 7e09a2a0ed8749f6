"""The uprobe sensor (placeholder until its issue lands): discovered like any plugin, reports "not implemented"."""

from sensorium import hookimpl
from sensorium.hookspecs import SensorSpec


class _NotImplemented:
    def __init__(self, ctx):  # pragma: no cover - never started: implemented=False
        raise RuntimeError("the uprobe sensor is not implemented yet")


@hookimpl
def sensorium_sensor() -> SensorSpec:
    return SensorSpec(
        name="uprobe",
        description="uprobe hooks (not implemented yet)",
        factory=_NotImplemented,
        implemented=False,
    )

"""A valid spec whose sensor raises in start(): the agent must run on without it."""

from sensorium import hookimpl
from sensorium.hookspecs import SensorSpec


class _Sensor:
    def __init__(self, ctx):
        self.ctx = ctx

    def start(self):
        raise RuntimeError("deliberately fails to start")

    def stop(self):
        pass

    def status(self):
        return {"state": "failed"}


@hookimpl
def sensorium_sensor():
    return SensorSpec(name="broken-start", description="fails in start()", factory=_Sensor, enabled_by_default=True)

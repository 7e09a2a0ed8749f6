"""Implements the hook but returns the wrong thing."""

from sensorium import hookimpl


@hookimpl
def sensorium_sensor():
    return {"name": "broken-spec"}

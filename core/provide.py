"""A plugin's hook implementation in one statement, for a spec that is fixed when its module is imported.

    from sensorium.hookspecs import ExporterSpec
    from sensorium.provide import provide

    sensorium_exporter = provide(ExporterSpec(name="mysink", description="...", options=Opts, factory=MySink))

is the decorated function `sensorium.hookspecs` shows (``@hookimpl def sensorium_exporter(): return
ExporterSpec(...)``), with the spec built once, at import: the host imports a plugin only to load it
(never to list it), and a spec that fails to build fails that import, which the host contains the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

from sensorium import hookimpl
from sensorium.hookspecs import ExporterSpec, SensorSpec


@overload
def provide(spec: SensorSpec) -> Callable[[], SensorSpec]: ...
@overload
def provide(spec: ExporterSpec) -> Callable[[], ExporterSpec]: ...


def provide(spec: SensorSpec | ExporterSpec) -> Callable[[], SensorSpec | ExporterSpec]:
    """The hook implementation returning ``spec``: `sensorium_sensor` for a `SensorSpec`, `sensorium_exporter`
    for an `ExporterSpec` (whatever the module attribute it is bound to is named)."""
    hook_name = "sensorium_sensor" if isinstance(spec, SensorSpec) else "sensorium_exporter"

    def hook() -> SensorSpec | ExporterSpec:
        return spec

    hook.__name__ = hook.__qualname__ = hook_name
    return hookimpl(specname=hook_name)(hook)

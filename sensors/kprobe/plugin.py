"""The kprobe sensor plugin: TracingPolicy ``kprobes`` sections. Syscall hooks are served by raw tracepoints
(sys_enter/sys_exit) filtered by syscall number in the kernel, on every kernel; other kernel functions by
fentry/fexit or kprobe/kretprobe where the kernel has them (refused with the reason elsewhere)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sensorium import hookimpl
from sensorium.hookspecs import BudgetCase, SensorSpec

if TYPE_CHECKING:
    from sensorium.hookspecs import Sensor, SensorContext


def _budget() -> list[BudgetCase]:
    from sensorium.hooks.budget import TRACKING, engine_cases
    from sensorium.hooks.probes import HOOK_OPEN_PROBE, HOOK_PROBE, OPEN_EXIT_NEEDS
    from sensorium_sensors.kprobe.kfunc import kfunc_budget_cases

    cases = engine_cases(HOOK_PROBE, full=("sens_sys_enter", "sens_sys_exit"))
    cases += engine_cases(HOOK_OPEN_PROBE, full=("sens_open_exit",),
                          others=("sens_tp", "sens_raw", "sens_sys_enter", "sens_sys_exit", "sens_uprobe",
                                  "sens_uretprobe", *TRACKING),
                          needs=dict.fromkeys(("sens_open_exit", "sens_tp", "sens_raw", "sens_sys_enter",
                                               "sens_sys_exit", "sens_uprobe", "sens_uretprobe", *TRACKING),
                                              OPEN_EXIT_NEEDS))
    return cases + kfunc_budget_cases()


def _factory(ctx: SensorContext) -> Sensor:
    from sensorium_sensors.kprobe.sensor import KprobeSensor

    return KprobeSensor(ctx)


@hookimpl
def sensorium_sensor() -> SensorSpec:
    from sensorium.hooks import selectors
    from sensorium.hooks.probes import HOOK_OPEN_PROBE, HOOK_PROBE
    from sensorium.hooks.sensor import HookSensorOptions
    from sensorium_sensors.kprobe.kfunc import KFUNC_PROBE
    from sensorium_sensors.kprobe.schema import KProbeSpec

    return SensorSpec(
        name="kprobe",
        description="TracingPolicy kprobes: syscalls through raw_tp sys_enter/sys_exit, kernel functions through "
        "fentry/fexit or kprobe/kretprobe where the kernel has them, with in-kernel selectors and actions; "
        "events: process_kprobe",
        factory=_factory,
        probes=[HOOK_PROBE, HOOK_OPEN_PROBE, KFUNC_PROBE],
        options=HookSensorOptions,
        policy_sections={"kprobes": KProbeSpec},
        record_layouts=dict(selectors.RECORD_LAYOUTS),
        requires=frozenset({"raw_tp", "ringbuf", "btf"}),
        enabled_by_default=True,
        budget_cases=_budget,
    )

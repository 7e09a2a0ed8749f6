"""The usdt sensor plugin: TracingPolicy ``usdts`` sections (USDT probes of user binaries, by provider and
name, read from their .note.stapsdt notes), with in-kernel selectors and actions from the hook library
(`sensorium.hooks`) and Tetragon's Set action."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sensorium import hookimpl
from sensorium.hookspecs import BudgetCase, SensorSpec

if TYPE_CHECKING:
    from sensorium.hookspecs import Sensor, SensorContext


def _factory(ctx: SensorContext) -> Sensor:
    from sensorium_sensors.usdt.sensor import UsdtSensor

    return UsdtSensor(ctx)


def _budget() -> list[BudgetCase]:
    from sensorium.hooks import selectors as S
    from sensorium.hooks.budget import TRACKING, engine_cases
    from sensorium_sensors.usdt.notes import parse_arg
    from sensorium_sensors.usdt.sensor import USDT_PROBE, usdt_cfg

    # The costliest argument locations (memory through base + index * scale) in every slot, and a Set in
    # every selector: what the program's own part can cost; the engine's part is its worst configurations.
    worst = usdt_cfg([parse_arg("-4@-20(%rbp,%rax,8)")] * 6, [(0, 32)] * S.MAX_SELECTORS)
    setter = usdt_cfg([parse_arg("-4@-20(%rbp)")] * 6, [(0, 32)] * S.MAX_SELECTORS)
    kinds = {"sens_usdt": (S.HOOK_SYSCALL, False), "sens_usdt_set": (S.HOOK_SYSCALL, False)}
    return (engine_cases(USDT_PROBE, full=("sens_usdt",), kinds=kinds, rodata={"sens_usdt_cfg": bytes(worst)})
            + engine_cases(USDT_PROBE, full=("sens_usdt_set",), kinds=kinds, rodata={"sens_usdt_cfg": bytes(setter)},
                           needs={"sens_usdt_set": frozenset({"bpf_probe_write_user"})})
            # the engine's programs the object carries beside its own (selectors.h), in their mixed configuration
            + engine_cases(USDT_PROBE, full=(), others=("sens_tp", "sens_raw", "sens_sys_enter", "sens_sys_exit",
                                                        "sens_uprobe", "sens_uretprobe", *TRACKING),
                           rodata={"sens_usdt_cfg": bytes(worst)}))


@hookimpl
def sensorium_sensor() -> SensorSpec:
    from sensorium.hooks import selectors
    from sensorium.hooks.probes import HOOK_PROBE
    from sensorium.hooks.sensor import HookSensorOptions
    from sensorium_sensors.usdt.schema import UsdtSpec
    from sensorium_sensors.usdt.sensor import USDT_PROBE

    return SensorSpec(
        name="usdt",
        description="TracingPolicy usdts: USDT probes of user binaries (provider and name, arguments as the "
        "probe's note places them, semaphores counted) with in-kernel selectors and actions, Set included; "
        "events: process_usdt",
        factory=_factory,
        probes=[HOOK_PROBE, USDT_PROBE],
        options=HookSensorOptions,
        policy_sections={"usdts": UsdtSpec},
        record_layouts=dict(selectors.RECORD_LAYOUTS),
        requires=frozenset({"uprobe", "ringbuf", "btf"}),
        enabled_by_default=True,
        implemented=True,
        budget_cases=_budget,
    )

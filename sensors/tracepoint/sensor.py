"""The tracepoint sensor: TracingPolicy ``tracepoints`` items served by tracepoints and raw tracepoints.

Each item is one hook object of the hook library (`sensorium.hooks`): a tracepoint reads its fields at the offsets of
the tracefs format file; a raw tracepoint (``raw: true``) reads its TP_PROTO arguments. Events are
``process_tracepoint`` with subsys, event, args (Tetragon's KprobeArgument JSON), policy_name, action.
"""

from __future__ import annotations

from typing import Any

from sensorium.hooks import selectors as S
from sensorium.hooks.plan import ArgPlanError, HookPlan, extras
from sensorium.hooks.sensor import HookSensor
from sensorium.hookspecs import PolicyLoadError, SensorContext
from sensorium_sensors.tracepoint import tracefs


class TracepointSensor(HookSensor):
    name = "tracepoint"
    section = "tracepoints"
    supports_scope = True  # every hook checks the policy scope (sens_scope) before anything else

    def __init__(self, ctx: SensorContext) -> None:
        super().__init__(ctx)

    def plan_item(self, policy: Any, index: int, item: Any) -> HookPlan:
        hook = f"{policy.section}[{index}] {item.subsystem}/{item.event}"
        base = f"spec.{policy.section}[{index}]"
        args = list(item.args)
        try:
            if item.raw:
                if not tracefs.raw_tracepoint_exists(item.event):
                    raise PolicyLoadError(hook, f"raw tracepoint {item.event} does not exist on this kernel",
                                          f"{base}.event")
                plans = [tracefs.raw_arg_plan(a, f"{base}.args[{i}]") for i, a in enumerate(args)]
                attach: tuple[Any, ...] = ("raw", item.event)
                mech, note, kind = "raw_tracepoint", "", S.HOOK_RAW_TP
            else:
                try:
                    fields = tracefs.read_format(item.subsystem, item.event)
                except tracefs.TracepointNotFound as e:
                    raise PolicyLoadError(hook, str(e), f"{base}.event") from None
                positions = {a.index: i for i, a in enumerate(args)}
                plans = [tracefs.arg_plan(fields, item.subsystem, a, f"{base}.args[{i}]", positions)
                         for i, a in enumerate(args)]
                attach = ("tp", item.subsystem, item.event)
                mech, kind = "tracepoint", S.HOOK_TP
                note = ("path arguments are made absolute against dirfd/cwd and '.'/'..' collapsed in the kernel "
                        "before matching; symlinks are not followed at syscall entry"
                        if any(p.resolve for p in plans) else "")
            # Tetragon: a tracepoint's matchArgs.index is the position in the args list.
            compiled = S.compile_hook(policy_id=policy.id, hook_id=index, kind=kind, args=plans,
                                      selectors=list(item.selectors),
                                      arg_position={i: i for i in range(len(plans))})
        except ArgPlanError as e:
            raise PolicyLoadError(hook, e.reason, f"{base}.{e.field[len(base) + 1:]}") from None
        except S.SelectorError as e:
            raise PolicyLoadError(hook, e.reason, f"{base}.{e.field}") from None
        if any("Sigkill" in a or "Signal" in a for a in compiled.actions):
            note = (note + "; " if note else "") + ("Sigkill/Signal are sent from the tracepoint: the traced "
                                                    "operation itself has already run or runs to completion")
        return HookPlan(hook=hook, field=base, compiled=compiled, args=plans, attach=attach, mechanism=mech,
                        note=note, body={"subsys": item.subsystem, "event": item.event, **extras(item)},
                        kind="process_tracepoint")

"""`HookSensor`: the base of a sensor whose policy items are served by hook objects (tracepoint, kprobe,
uprobe): its one ring (`EventRing`), its sections (`HookSet`), its status, and its options
(`HookSensorOptions`). A subclass plans its items (`HookSensor.plan_item`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sensorium.hooks import syscalls
from sensorium.hooks.hookset import HookSet
from sensorium.hooks.plan import HookPlan
from sensorium.hooks.ring import EventRing
from sensorium.hookspecs import PolicyLoadError, SensorContext
from sensorium.policy import MAX_HOOKS_PER_POLICY

__all__ = ["HookSensor", "HookSensorOptions"]


class HookSensorOptions(BaseModel):
    """``sensors: {tracepoint: {...}}`` / ``sensors: {kprobe: {...}}``"""

    model_config = ConfigDict(extra="forbid")
    ring_buffer_kb: int = Field(default=4096, ge=64, le=1 << 20,
                                description="Size of the sensor's one ring buffer, shared by all its hooks "
                                            "(rounded up to a power of two, in KiB)")
    opened_file_paths: bool = Field(
        default=True,
        description="kprobe sensor: for open/openat/openat2/creat, match the path of the file actually opened "
                    "(sys_exit, follows symlinks; opens no rule can match are rejected early from the path's "
                    "length and first/last component) instead of the string made absolute at entry "
                    "(docs/selectors.md)")



class HookSensor:
    """Base of a sensor whose policy items are served by hook objects (tracepoint, kprobe...).

    Subclasses implement `plan_item` (one policy item -> `HookPlan`, raising `PolicyLoadError`).
    """

    name = "hooks"
    section = ""
    handle_class: type[HookSet] = HookSet

    def __init__(self, ctx: SensorContext) -> None:
        self.ctx = ctx
        self.ring = EventRing(ctx, self.name)
        self.handles: list[HookSet] = []
        self.state = "stopped"
        self.error: str | None = None
        # policy id -> hooks its planning skipped (``ignore.callNotFound``), reported in the section's status
        self._skipped: dict[int, list[dict[str, Any]]] = {}

    def start(self) -> None:
        try:
            self.ring.start()
        except BaseException as e:
            self.state, self.error = "failed", str(e)
            self.stop()
            raise
        self.state = "running"

    def stop(self) -> None:
        for h in list(self.handles):
            h.unload()
        self.handles.clear()
        self.ring.stop()
        if self.state == "running":
            self.state = "stopped"

    def status(self) -> Mapping[str, Any]:
        live = [h for h in self.handles if not h._unloaded]
        return {"state": self.state, "error": self.error, "policies": len(live),
                "hooks": sum(len(h.objects) for h in live), "decode_errors": self.ring.decode_errors,
                "dropped_records": {k: v for k, v in self.ring.dropped.items() if v},
                "action_requests": {k: v for k, v in self.ring.requests.items() if v},
                "decoder": self.ring.decoder, "ring_drain": self.ring.drain}

    # -- policies ---------------------------------------------------------------------------------
    def plan_item(self, policy: Any, index: int, item: Any) -> HookPlan | None:
        raise NotImplementedError

    def plan(self, policy: Any) -> list[HookPlan]:
        """The section's objects to load: one plan per item, except the syscalls of one "list:" call, which
        share one object where they plan alike (`merge_syscall_sets`; `SYSCALL_SETS_ENABLED` False: one object
        per syscall, as the benchmark compares)."""
        self._skipped[policy.id] = []
        entries: list[tuple[HookPlan, int | None]] = []
        for i, item in enumerate(policy.items):
            p = self.plan_item(policy, i, item)
            if p is not None:
                entries.append((p, getattr(item, "from_list", None) if syscalls.SYSCALL_SETS_ENABLED else None))
        plans = syscalls.merge_syscall_sets(entries)
        if len(plans) > MAX_HOOKS_PER_POLICY:
            raise PolicyLoadError(policy.section, f"{len(plans)} hook programs in one section; the limit is "
                                                  f"{MAX_HOOKS_PER_POLICY}")
        return plans

    def check_policy(self, policy: Any) -> None:
        self.plan(policy)

    def load_policy(self, policy: Any) -> HookSet:
        """Load a section in one step (`PolicySensor.load_policy`), bounded to ``policy.scope`` when it has one."""
        hs = self.prepare_policy(policy)
        hs.commit()
        return hs.activate()

    def prepare_policy(self, policy: Any) -> HookSet:
        """Round 1 of a transaction (`TransactionalPolicySensor.prepare_policy`): the `HookSet` is the
        prepared section (`commit`, `activate`, `abort`) and, once active, the handle."""
        if self.state != "running" or self.ring.obj is None:
            raise PolicyLoadError(f"{policy.section}", f"the {self.name} sensor is not running")
        plans = self.plan(policy)
        hs = self.handle_class(self.ctx, self.ring, policy.id, policy.name, policy.mode)
        hs.skipped = list(self._skipped.pop(policy.id, []))
        hs.prepare(plans, getattr(policy, "scope", None), getattr(policy, "pin_dir", None))
        self.handles = [h for h in self.handles if not h._unloaded] + [hs]
        return hs


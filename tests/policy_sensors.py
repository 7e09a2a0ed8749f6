"""Test sensors for the policy engine: in-process plugins that own policy sections through the real
contract (check_policy / load_policy / handles) and keep what they "loaded" in a table the tests read.

They stand in for the kernel side only where a test is about the manager's bookkeeping (whole-or-nothing,
ids, modes); the real sensors' tests load real programs. A hook named ``refuse-*`` is refused by
check_policy, and one named ``fail-*`` fails in load_policy after its earlier items were "attached".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sensorium import hookimpl
from sensorium.hookspecs import SENSOR_GROUP, PolicyLoadError, PolicyView, SensorSpec
from sensorium.plugins import PluginRegistry
from sensorium_sensors.lsm.schema import LsmHookSpec
from sensorium_sensors.tracepoint.schema import TracepointSpec


class TableHandle:
    def __init__(self, sensor: TableSensor, view: PolicyView, keys: list[tuple]) -> None:
        self.sensor, self.view, self.keys, self.mode = sensor, view, keys, view.mode
        self.unloaded = False

    def status(self) -> Mapping[str, Any]:
        return {"hooks": [{"hook": k[-1], "mechanism": self.sensor.mechanism, "note": None} for k in self.keys],
                "events": 0, "errors": 0, "kernel_memory_bytes": 4096 * len(self.keys)}

    def set_mode(self, mode: str) -> None:
        if self.sensor.fail_set_mode:
            raise PolicyLoadError(self.view.section, "mode map update failed")
        self.mode = mode
        for k in self.keys:
            self.sensor.attached[k] = mode

    def unload(self) -> None:
        for k in self.keys:
            self.sensor.attached.pop(k, None)
        self.unloaded = True


class TableSensor:
    mechanism = "table"

    def __init__(self, name: str) -> None:
        self.name = name
        self.attached: dict[tuple, str] = {}  # (policy id, section, index, hook) -> mode
        self.checked: list[str] = []
        self.fail_set_mode = False

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def status(self) -> Mapping[str, Any]:
        return {"state": "running"}

    def check_policy(self, policy: PolicyView) -> None:
        self.checked.append(policy.name)
        for i, item in enumerate(policy.items):
            if item.describe().rsplit("/", 1)[-1].startswith("refuse"):
                raise PolicyLoadError(f"{policy.section}[{i}] {item.describe()}", "no such hook on this kernel",
                                      field=f"spec.{policy.section}[{i}]")

    def load_policy(self, policy: PolicyView) -> TableHandle:
        keys = []
        for i, item in enumerate(policy.items):
            if item.describe().rsplit("/", 1)[-1].startswith("fail"):
                for k in keys:  # a sensor undoes its own partial work before raising (the contract)
                    self.attached.pop(k, None)
                raise PolicyLoadError(f"{policy.section}[{i}] {item.describe()}", "attach failed: EINVAL")
            k = (policy.id, policy.section, i, item.describe())
            self.attached[k] = policy.mode
            keys.append(k)
        return TableHandle(self, policy, keys)


class TxnTableSensor(TableSensor):
    """A TableSensor that takes part in transactions (`TransactionalPolicySensor`): a section is prepared
    (nothing in the table), committed (in the table as "inert"), then activated (its mode). Every call goes
    to ``journal`` (shared by the sensors of a test) in order. A hook named ``commitfail-*`` fails at commit,
    after its earlier items were committed."""

    def __init__(self, name: str, journal: list[tuple[str, str]] | None = None) -> None:
        super().__init__(name)
        self.journal = journal if journal is not None else []

    def prepare_policy(self, policy: PolicyView) -> TxnSection:
        self.check_policy(policy)
        self.journal.append(("prepare", f"{policy.name}/{policy.section}"))
        return TxnSection(self, policy)


class TxnSection(TableHandle):
    def __init__(self, sensor: TxnTableSensor, view: PolicyView) -> None:
        super().__init__(sensor, view, [])
        self.active = False

    def _log(self, what: str) -> None:
        self.sensor.journal.append((what, f"{self.view.name}/{self.view.section}"))  # type: ignore[attr-defined]

    def commit(self) -> None:
        self._log("commit")
        for i, item in enumerate(self.view.items):
            if item.describe().rsplit("/", 1)[-1].startswith("commitfail"):
                self.unload()
                raise PolicyLoadError(f"{self.view.section}[{i}] {item.describe()}", "attach refused: E2BIG")
            k = (self.view.id, self.view.section, i, item.describe())
            self.sensor.attached[k] = "inert"
            self.keys.append(k)

    def activate(self) -> TxnSection:
        self._log("activate")
        for k in self.keys:
            self.sensor.attached[k] = self.mode
        self.active = True
        return self

    def abort(self) -> None:
        self._log("abort")
        self.unload()


def registry_with(*specs: tuple[Any, ...], journal: list[tuple[str, str]] | None = None
                  ) -> tuple[PluginRegistry, dict[str, TableSensor]]:
    """A registry holding one sensor per (name, section, model[, class]) -- a TableSensor unless a class
    (`TxnTableSensor`, which logs to ``journal``) is given -- and the running sensors by name."""
    reg = PluginRegistry()
    sensors: dict[str, TableSensor] = {}
    for name, section, model, *cls in specs:
        sensor = cls[0](name, journal) if cls else TableSensor(name)
        sensors[name] = sensor

        class Plugin:
            @staticmethod
            @hookimpl
            def sensorium_sensor(_n=name, _s=section, _m=model, _x=sensor) -> SensorSpec:
                return SensorSpec(name=_n, description="test table sensor", factory=lambda ctx: _x,
                                  policy_sections={_s: _m})

        rec = reg.add(SENSOR_GROUP, name, Plugin())
        assert rec.state == "loaded", rec.reason
    return reg, sensors


def default_registry() -> tuple[PluginRegistry, dict[str, TableSensor]]:
    return registry_with(("tracepoint", "tracepoints", TracepointSpec), ("lsm", "lsmhooks", LsmHookSpec))

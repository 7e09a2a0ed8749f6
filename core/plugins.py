"""Plugin discovery (stevedore entry points), allowlist, containment and per-plugin status.

Entry points are listed without importing them; only allowed ones are imported, each in its own try,
registered with pluggy (which validates hook signatures) and asked for its spec. Anything that fails is
recorded with its reason and the host runs on.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from sensorium import PROJECT, hookspecs
from sensorium.hookspecs import EXPORTER_GROUP, SENSOR_GROUP, STAGE_GROUP, ExporterSpec, SensorSpec, StageSpec

log = logging.getLogger("sensorium.plugins")

GROUPS: dict[str, tuple[str, type[SensorSpec | ExporterSpec | StageSpec]]] = {
    SENSOR_GROUP: ("sensorium_sensor", SensorSpec), EXPORTER_GROUP: ("sensorium_exporter", ExporterSpec),
    STAGE_GROUP: ("sensorium_stage", StageSpec)}
KINDS = {SENSOR_GROUP: "sensor", EXPORTER_GROUP: "exporter", STAGE_GROUP: "stage"}


class PluginError(Exception):
    """A plugin could not be used; the message names the plugin and its distribution."""


@dataclasses.dataclass
class PluginRecord:
    group: str
    name: str
    target: str  # "module:attr" of the entry point
    distribution: str | None = None
    version: str | None = None
    state: str = "discovered"  # loaded | failed | not allowed | not implemented | running | stopped | off
    reason: str | None = None
    spec: Any = None

    @property
    def kind(self) -> str:
        return KINDS[self.group]

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "entry_point": self.target,
            "distribution": self.distribution,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
        }
        if isinstance(self.spec, SensorSpec):
            d["description"] = self.spec.description
            d["probes"] = [str(p.source) for p in self.spec.probes]
            d["policy_sections"] = sorted(self.spec.policy_sections)
            d["requires"] = sorted(self.spec.requires)
        elif isinstance(self.spec, ExporterSpec):
            d["description"] = self.spec.description
        elif isinstance(self.spec, StageSpec):
            d["description"] = self.spec.description
            d["order"] = self.spec.order
        return d


def _allowed(name: str, allow: Iterable[str] | None, deny: Iterable[str]) -> tuple[bool, str | None]:
    if any(fnmatch.fnmatchcase(name, pat) for pat in deny):
        return False, "denied by plugins.deny"
    if allow is not None and not any(fnmatch.fnmatchcase(name, pat) for pat in allow):
        return False, "not in plugins.allow"
    return True, None


def _stage_allow(allow: list[str] | None, names: Iterable[str]) -> list[str] | None:
    """The allowlist that applies to pipeline stages. Stages became plugins after allowlists were written
    (the chart's, operators' configs): an allowlist that names no installed stage at all (no pattern matches
    one) leaves the stages to ``plugins.deny`` alone, so such a config keeps its process join and Kubernetes
    enrichment; once it names one stage, it is the allowlist of every stage."""
    if allow is None:
        return None
    names = list(names)
    return allow if any(fnmatch.fnmatchcase(n, pat) for n in names for pat in allow) else None


class PluginRegistry:
    """The discovered plugins of one agent (no global state: tests build their own)."""

    def __init__(self, allow: Iterable[str] | None = None, deny: Iterable[str] = ()) -> None:
        self.allow = list(allow) if allow is not None else None
        self.deny = list(deny)
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []

    # ---- discovery ------------------------------------------------------------------------------

    def discover_quietly(self) -> PluginRegistry:
        """`discover` for a command that only reads the registry (`policy check`, `policy replay`): a plugin
        that fails to load is the agent's business, not this command's, so nothing is logged."""
        import logging

        logging.disable(logging.CRITICAL)
        try:
            return self.discover()
        finally:
            logging.disable(logging.NOTSET)

    def discover(self) -> PluginRegistry:
        """List every entry point (without importing it), then load only the allowed ones."""
        from importlib.metadata import entry_points

        from stevedore import NamedExtensionManager

        for group in GROUPS:
            pending: dict[str, list[PluginRecord]] = {}
            eps = list(entry_points(group=group))
            allow = _stage_allow(self.allow, (ep.name for ep in eps)) if group == STAGE_GROUP else self.allow
            for ep in eps:
                dist = getattr(ep, "dist", None)
                rec = PluginRecord(
                    group=group,
                    name=ep.name,
                    target=ep.value,
                    distribution=getattr(dist, "name", None),
                    version=getattr(dist, "version", None),
                )
                ok, why = _allowed(ep.name, allow, self.deny)
                if not ok:
                    rec.state, rec.reason = "not allowed", why
                    self.records.append(rec)
                else:
                    pending.setdefault(ep.name, []).append(rec)
            if not pending:
                continue
            failures: dict[tuple[str, str], BaseException] = {}

            # Called only while this iteration's manager loads (below), so it sees this iteration's dict.
            def on_failure(_mgr: Any, ep: Any, err: BaseException) -> None:
                failures[(ep.name, ep.value)] = err  # noqa: B023

            mgr = NamedExtensionManager(
                group, names=sorted(pending), invoke_on_load=False,
                on_load_failure_callback=on_failure, name_order=True,
            )
            loaded = {(ext.name, ext.entry_point.value): ext.plugin for ext in mgr.extensions}
            for name, recs in pending.items():
                for rec in recs:
                    key = (name, rec.target)
                    if key in loaded:
                        self._register(rec, loaded[key])
                    else:
                        err = failures.get(key)
                        why = f"{type(err).__name__}: {err}" if err else "entry point could not be loaded"
                        self._fail(rec, f"Could not load {name!r}: {why}", err)
        self._check_conflicts()
        return self

    def add(self, group: str, name: str, obj: Any, distribution: str = "(in-process)") -> PluginRecord:
        """Register a plugin object directly (tests, embedding). Same checks as discovery."""
        rec = PluginRecord(group=group, name=name, target=repr(obj), distribution=distribution)
        allow = _stage_allow(self.allow, [name]) if group == STAGE_GROUP else self.allow
        ok, why = _allowed(name, allow, self.deny)
        if not ok:
            rec.state, rec.reason = "not allowed", why
            self.records.append(rec)
            return rec
        self._register(rec, obj)
        self._check_conflicts()
        return rec

    def _fail(self, rec: PluginRecord, reason: str, exc: BaseException | None = None) -> None:
        rec.state, rec.reason = "failed", reason
        where = f" (distribution {rec.distribution} {rec.version or ''})".rstrip() if rec.distribution else ""
        log.error("plugin %s %r failed%s: %s", rec.kind, rec.name, where, reason)
        if exc is not None:
            log.debug("%s", "".join(traceback.format_exception(exc)))
        self.records.append(rec)

    def _register(self, rec: PluginRecord, obj: Any) -> None:
        hook_name, spec_type = GROUPS[rec.group]
        key = f"{rec.group}:{rec.name}"
        try:
            self.pm.register(obj, name=key)
        except Exception as exc:  # noqa: BLE001 - pluggy validation errors, duplicate names
            self._fail(rec, f"invalid hook implementation: {exc}", exc)
            return
        impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i.plugin_name == key]
        if not impls:
            self.pm.unregister(name=key)
            self._fail(rec, f"entry point in group {rec.group} does not implement {hook_name}()")
            return
        try:
            spec = impls[0].function()
        except Exception as exc:  # noqa: BLE001
            self.pm.unregister(name=key)
            self._fail(rec, f"{hook_name}() raised {type(exc).__name__}: {exc}", exc)
            return
        if not isinstance(spec, spec_type):
            self.pm.unregister(name=key)
            self._fail(rec, f"{hook_name}() returned {type(spec).__name__}, expected {spec_type.__name__}")
            return
        if spec.name != rec.name:
            self.pm.unregister(name=key)
            self._fail(rec, f"spec name {spec.name!r} differs from entry-point name {rec.name!r}")
            return
        rec.spec = spec
        rec.state = "not implemented" if isinstance(spec, SensorSpec) and not spec.implemented else "loaded"
        self.records.append(rec)

    def _check_conflicts(self) -> None:
        """Validate eagerly: duplicate names and clashing policy sections fail at registration."""
        seen: dict[tuple[str, str], PluginRecord] = {}
        sections: dict[str, PluginRecord] = {}
        for rec in self.records:
            if rec.spec is None:
                continue
            key = (rec.group, rec.name)
            if key in seen and seen[key] is not rec:
                rec.state = "failed"
                rec.reason = (
                    f"duplicate {rec.kind} name {rec.name!r}: also provided by distribution "
                    f"{seen[key].distribution}"
                )
                rec.spec = None
                continue
            seen[key] = rec
            if isinstance(rec.spec, SensorSpec):
                for section in rec.spec.policy_sections:
                    other = sections.get(section)
                    if other is not None and other is not rec:
                        rec.state = "failed"
                        rec.reason = f"policy section {section!r} is already owned by sensor {other.name!r}"
                        rec.spec = None
                        break
                    sections[section] = rec

    # ---- views ----------------------------------------------------------------------------------

    def _specs(self, group: str) -> dict[str, Any]:
        return {r.name: r.spec for r in self.records if r.group == group and r.spec is not None}

    @property
    def sensors(self) -> dict[str, SensorSpec]:
        return self._specs(SENSOR_GROUP)

    @property
    def exporters(self) -> dict[str, ExporterSpec]:
        return self._specs(EXPORTER_GROUP)

    @property
    def stages(self) -> dict[str, StageSpec]:
        return self._specs(STAGE_GROUP)

    def ordered_stages(self) -> list[StageSpec]:
        """The usable stage plugins in the order they run (`StageSpec.order`, then name)."""
        return sorted(self.stages.values(), key=lambda s: (s.order, s.name))

    def record(self, kind: str, name: str) -> PluginRecord | None:
        group = next((g for g, k in KINDS.items() if k == kind), EXPORTER_GROUP)
        for r in self.records:
            if r.group == group and r.name == name:
                return r
        return None

    def policy_sections(self) -> Mapping[str, tuple[str, Any]]:
        """``{spec key: (sensor name, item model)}`` over every usable sensor."""
        out: dict[str, tuple[str, Any]] = {}
        for name, spec in self.sensors.items():
            for section, model in spec.policy_sections.items():
                out[section] = (name, model)
        return out

    def as_list(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in sorted(self.records, key=lambda r: (r.kind, r.name))]

"""Live policy management: add, delete, enable, disable and switch mode, each a transaction.

`PolicyManager` parses a text and applies the kernel-independent rules (`sensorium.policy_rules`, the
same two stages as ``sensorium policy check``), splits each `Policy` by section and runs one transaction over
every section of every document of the change (`sensorium.hookspecs.PreparedSection`): every sensor checks
its sections; then every section is prepared (programs built, loaded and verified, maps that do not enforce
filled); then every section is committed (attached, inert); then every section is activated. A failure in
any round before the last undoes every section of every document, so a failed ``policy add`` never posted
an event or blocked a call, even when it failed at its very last attach. A sensor without
``prepare_policy`` takes part through ``load_policy`` after every other section is attached (see
`sensorium.hookspecs.PolicySensor.load_policy` for what that costs). Policies never share kernel state, so
adding or deleting one never disturbs the others.

Scoped policies (``podSelector``, ``containerSelector``, ``hostSelector``, or kind
``TracingPolicyNamespaced``) need a scope provider (`sensorium.k8s.scope.ScopeProvider` on the agent's pod
watcher): each gets a tracker whose `Scope` goes into every section's `PolicyView.scope` at load and,
on every change, to every loaded section's `ScopedPolicyHandle.set_scope`: all sections, or (a section
failing) none, as the previous ones are put back. A section whose sensor is not a `ScopedPolicySensor`
(``supports_scope = True``) is refused (never applied host-wide). Policies are keyed by ``namespace/name``
(TracingPolicyNamespaced) or ``name`` (cluster-wide).

With persistent enforcement (``persistence``, a `sensorium.persistence.EnforcementStore`): every policy gets a
generation directory in bpffs for its sections' pins (`PolicyView.pin_dir`); policies added through the
API are kept in the state directory and loaded again at start (`restore`); what a previous agent pinned is
replaced policy by policy once the new generation is active (`sensorium.persistence`), and `release_all`
stops without lifting the pinned blocks.

The transaction rounds are `sensorium.policy_transaction.PolicyTransactions`, persistent enforcement
`sensorium.policy_persistence.PolicyPersistence`: both base classes of `PolicyManager`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sensorium.bpf.memory import PROJECTED_KEY
from sensorium.hookspecs import (
    PersistentPolicyHandle,
    PolicyLoadError,
    PolicySensor,
    Scope,
    ScopedPolicyHandle,
    Sensor,
    supports_scope,
)
from sensorium.policy import MAX_POLICIES, MODES, NOTIFY_ACTIONS, POLICY_LIMITS, Policy, PolicyError, Section
from sensorium.policy_persistence import PolicyPersistence
from sensorium.policy_rules import check_rules, validate_policies
from sensorium.policy_transaction import LoadedSection, PolicyTransactions
from sensorium.yamlsrc import SourceError, format_path, read_file

log = logging.getLogger("sensorium.policy")

POLICY_FILE_SUFFIXES = (".yaml", ".yml")


class PolicyNotFound(KeyError):
    """No loaded policy has this name (``name``, or ``namespace/name`` for a namespaced one)."""

    def __init__(self, name: str, hint: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.hint = hint

    def __str__(self) -> str:
        return f"no policy named {self.name!r} is loaded{self.hint}"


@dataclasses.dataclass
class PolicyState:
    """One policy known to the manager (enabled or disabled)."""

    policy: Policy
    id: int
    mode: str
    state: str = "enabled"  # enabled | disabled
    loaded: list[LoadedSection] = dataclasses.field(default_factory=list)
    added_at: float = dataclasses.field(default_factory=time.time)
    error: str | None = None  # last failed enable / mode switch
    tracker: Any = None  # sensorium.k8s.scope.ScopeTracker of a scoped policy (while enabled)
    scope_errors: int = 0  # failed set_scope calls
    scope_error: str | None = None  # the last one
    scope_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    origin: str = "api"  # api | directory | crd | builtin: only API policies are kept in the state directory
    pin_dir: Path | None = None  # this generation's pins (persistent enforcement), while enabled
    adopted: list[Any] = dataclasses.field(default_factory=list)  # PinnedGenerations kept as they were
    replaced: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # what it replaced at start

    @property
    def key(self) -> str:
        return self.policy.key


_FIELD_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _field_loc(field: str | None) -> tuple[str | int, ...]:
    """``spec.kprobes[0].args[1].type`` -> ``("spec", "kprobes", 0, "args", 1, "type")``."""
    if not field:
        return ()
    return tuple(int(i) if i else n for n, i in _FIELD_PART.findall(field))


def _hook_label(section: Section, index: int) -> str:
    item = section.items[index] if index < len(section.items) else None
    what = item.describe() if item is not None and hasattr(item, "describe") else ""
    return f"{section.key}[{index}]{' ' + what if what else ''}"


class PolicyManager(PolicyTransactions, PolicyPersistence):
    """The loaded policies of one agent.

    ``sensors`` are the running sensors by name; a section owned by a sensor that is not running (or that
    does not implement the policy side of the contract) is refused with the reason.
    """

    def __init__(self, registry: Any, sensors: Mapping[str, Sensor], *, scoping_supported: bool = False,
                 metrics: Any = None, scope_provider: Any = None, persistence: Any = None,
                 user_actions: bool = True) -> None:
        self.registry = registry
        # GetUrl/DnsLookup (`actions.enabled` in the agent config): off, a policy with one is refused at load
        self.user_actions = user_actions
        self.metrics = metrics  # sensorium.metrics.Metrics (policy state gauges), optional
        self.sensors = dict(sensors)
        # scope_provider.track(policy, on_update) -> tracker (current(), summary(), close()):
        # `sensorium.k8s.scope.ScopeProvider`. Without one, scoped policies are refused at parse time.
        self.scope_provider = scope_provider
        self.scoping_supported = scoping_supported or scope_provider is not None
        self._policies: dict[str, PolicyState] = {}
        self._op_lock = threading.RLock()     # serializes add/delete/enable/disable/set_mode
        self._state_lock = threading.Lock()   # guards _policies for readers (list/status) during long loads
        self.directory_errors: list[dict[str, Any]] = []
        # Persistent enforcement: sensorium.persistence.EnforcementStore, or None (the default: nothing pinned,
        # nothing kept, every block ends with the agent).
        self.persistence = persistence
        self._stale: dict[str, list[Any]] = {}  # key -> PinnedGenerations a previous agent left (start-up)
        self.restore_report: dict[str, Any] = {"restored": [], "failed": [], "replaced": [], "removed": [],
                                               "adopted": [], "ignored": []}

    # ---- parsing ----------------------------------------------------------------------------------

    def parse(self, text: str | bytes, file: str | None = None) -> list[Policy]:
        """Parse and apply the kernel-independent rules (`sensorium.policy_rules`): exactly what
        ``sensorium policy check`` runs, so both refuse the same policies with the same message."""
        return validate_policies(text, file, self.registry, scoping_supported=self.scoping_supported)

    # ---- add / delete -----------------------------------------------------------------------------

    def add(self, text: str | bytes, file: str | None = None, mode: str | None = None, *,
            origin: str = "api") -> list[str]:
        """Parse and load every policy in ``text`` in one transaction: all of them, or none (raises
        `SourceError`; nothing of a refused text ever posted an event or enforced). Returns their keys
        (``name``, or ``namespace/name`` for a TracingPolicyNamespaced). ``origin`` says where the text came
        from (``api``, ``directory``, ``crd``, ``builtin``): with persistent enforcement, API policies are
        kept in the state directory and loaded again when the agent starts."""
        policies = self.parse(text, file)
        return [st.key for st in self._add_policies(policies, mode, origin)]

    def add_policy(self, policy: Policy, mode: str | None = None, *, origin: str = "api") -> PolicyState:
        """Load one parsed policy (a transaction of its sections); see `add`."""
        return self._add_policies([policy], mode, origin)[0]

    def _add_policies(self, policies: Sequence[Policy], mode: str | None, origin: str,
                      state: str = "enabled") -> list[PolicyState]:
        with self._op_lock:
            states: list[PolicyState] = []
            seen: dict[str, Policy] = {}
            try:
                for policy in policies:
                    m = mode or policy.mode
                    if m not in MODES:
                        raise PolicyError(f"mode {m!r} is not one of {', '.join(MODES)}", file=policy.file)
                    check_rules(policy)  # a Policy built elsewhere than `parse` meets the rules too
                    key = policy.key
                    if key in self._policies or key in seen:
                        first = self._policies[key].policy if key in self._policies else seen[key]
                        where = f" (from {first.file})" if first.file else ""
                        raise PolicyError(f"a policy named {key!r} is already loaded{where}; delete it first",
                                          file=policy.file, line=self._line(policy, ("metadata", "name")),
                                          path="metadata.name")
                    self._check_scope_support(policy)
                    self._check_user_actions(policy)
                    seen[key] = policy
                    pid = self._free_id()
                    if pid is None:
                        raise PolicyError(f"{MAX_POLICIES} policies are loaded; the limit is {MAX_POLICIES}",
                                          file=policy.file)
                    st = PolicyState(policy=policy, id=pid, mode=m, origin=origin)
                    # Reserve the name and id before the (possibly slow) load so a concurrent reader sees "loading".
                    st.state = "loading"
                    with self._state_lock:
                        self._policies[key] = st
                    states.append(st)
                if state == "enabled":
                    self._transaction(states)
            except BaseException:
                with self._state_lock:
                    for st in states:
                        self._policies.pop(st.key, None)
                raise
            for st in states:
                st.state = state
                self._metric(st.key, state)
                self._keep(st)
                for w in st.policy.warnings:
                    log.warning("policy %s: %s", st.key, w)
                if state == "enabled":
                    log.info("policy %s loaded (id %d, %s%s%s): %s", st.key, st.id, st.mode, self._scope_words(st),
                             f", pinned at {st.pin_dir}" if st.pin_dir is not None else "",
                             ", ".join(f"{s.key}x{len(s.items)}" for s in st.policy.sections))
            return states

    def replace(self, name: str, text: str | bytes, file: str | None = None, *, origin: str = "crd") -> list[str]:
        """Load a new version of the loaded policy ``name`` (a TracingPolicy object updated) in a transaction,
        and unload the old version only once the new one is active: a version that fails to load leaves the
        old one loaded and enforcing (raises `SourceError`), and a good one never leaves a gap (both serve
        for that moment, so an event may be reported twice). A policy not loaded (or disabled, or in error)
        is simply added."""
        policies = self.parse(text, file)
        with self._op_lock:
            old = self._policies.get(name)
            if old is None or old.state != "enabled":
                if old is not None:
                    self.delete(name)
                return self.add(text, file, origin=origin)
            if [p.key for p in policies] != [name]:
                raise PolicyError(f"a new version of {name!r} must hold that one policy, not "
                                  f"{', '.join(repr(p.key) for p in policies) or 'none'}", file=file)
            policy = policies[0]
            check_rules(policy)
            self._check_scope_support(policy)
            self._check_user_actions(policy)
            pid = self._free_id()
            if pid is None:
                raise PolicyError(f"{MAX_POLICIES} policies are loaded: no room to load the new version of {name!r} "
                                  "beside the old one; delete it and add the new version", file=file)
            st = PolicyState(policy=policy, id=pid, mode=policy.mode, origin=origin)
            self._transaction([st])  # raises with the old version untouched
            with self._state_lock:
                self._policies[name] = st
            self._unload_state(old)
            if old.adopted:
                for g in old.adopted:
                    self.persistence.drop_generation(g.path)
            self._metric(name, "enabled")
            self._keep(st)
            log.info("policy %s replaced by a new version (id %d -> %d)%s", name, old.id, st.id,
                     f", pinned at {st.pin_dir}" if st.pin_dir is not None else "")
            return [name]

    def delete(self, name: str) -> None:
        """Unload and forget ``name`` (``namespace/name`` for a namespaced policy); others are not touched.
        With persistent enforcement its pins go too (the block is lifted) and it is no longer kept."""
        with self._op_lock:
            if name not in self._policies and self._drop_adopted_only(name):
                return
            st = self._get(name)
            self._unload_state(st)
            for g in st.adopted:  # pins of a previous agent this one could not replace
                self.persistence.drop_generation(g.path)
            st.adopted = []
            with self._state_lock:
                del self._policies[name]
            if self.persistence is not None:
                self.persistence.forget_policy(name)
            if self.metrics is not None:
                self.metrics.policy_removed(name)
            log.info("policy %s deleted", name)

    def unload_all(self) -> None:
        """Unload every policy (agent shutdown without persistent enforcement: every block ends here).
        Kept policies stay kept."""
        with self._op_lock:
            for name in list(self._policies):
                try:
                    st = self._policies[name]
                    self._unload_state(st)
                    with self._state_lock:
                        del self._policies[name]
                    if self.metrics is not None:
                        self.metrics.policy_removed(name)
                except Exception:  # shutdown continues
                    log.exception("unloading policy %s", name)

    def release_all(self) -> list[str]:
        """Agent shutdown with persistent enforcement: every section lets go of what this process holds
        (`PolicyHandle.release`) and what is pinned keeps enforcing. Returns the keys of the policies
        that keep enforcing in the kernel (pinned, fully or in part)."""
        kept: list[str] = []
        with self._op_lock:
            for name, st in list(self._policies.items()):
                tracker, st.tracker = st.tracker, None
                if tracker is not None:
                    try:
                        tracker.close()
                    except Exception:
                        log.exception("policy %s: closing its scope tracker", name)
                pinned = st.pin_dir is not None or bool(st.adopted)
                with st.scope_lock:
                    for ld in reversed(st.loaded):
                        try:
                            if isinstance(ld.handle, PersistentPolicyHandle) and st.pin_dir is not None:
                                ld.handle.release()
                            else:
                                ld.handle.unload()
                        except Exception:  # shutdown continues
                            log.exception("releasing section %s of policy %s", ld.section.key, name)
                    st.loaded = []
                if pinned and self._persistent(st) is not False:
                    kept.append(name)
                with self._state_lock:
                    del self._policies[name]
        return kept

    # ---- enable / disable / mode ------------------------------------------------------------------

    def disable(self, name: str) -> None:
        """Unload the kernel side but keep the policy (and its id) so `enable` can bring it back."""
        with self._op_lock:
            st = self._get(name)
            if st.state == "disabled":
                return
            self._unload_state(st)
            for g in st.adopted:
                self.persistence.drop_generation(g.path)
            st.adopted = []
            st.state = "disabled"
            self._metric(name, "disabled")
            self._update_kept(st, state="disabled")
            log.info("policy %s disabled", name)

    def enable(self, name: str) -> None:
        """Load a disabled policy again (a transaction of its sections, like `add`)."""
        with self._op_lock:
            st = self._get(name)
            if st.state == "enabled":
                return
            try:
                self._transaction([st])
            except SourceError as exc:
                st.error = str(exc)
                self._metric(name, "error")
                raise
            st.state, st.error = "enabled", None
            self._metric(name, "enabled")
            self._update_kept(st, state="enabled")
            log.info("policy %s enabled", name)

    def set_mode(self, name: str, mode: str) -> None:
        """Switch enforcement/monitoring live (each sensor updates a map; nothing is reloaded)."""
        if mode not in MODES:
            raise PolicyError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        with self._op_lock:
            st = self._get(name)
            if st.mode == mode:
                return
            switched: list[LoadedSection] = []
            for ld in st.loaded:
                try:
                    ld.handle.set_mode(mode)
                except Exception as exc:  # noqa: BLE001 - a sensor may raise anything; revert and report
                    for back in switched:
                        try:
                            back.handle.set_mode(st.mode)
                        except Exception:
                            log.exception("policy %s: reverting mode of section %s", name, back.section.key)
                    reason = exc.reason if isinstance(exc, PolicyLoadError) else f"{type(exc).__name__}: {exc}"
                    raise PolicyError(f"policy {name!r}: switching {ld.section.key} to {mode} failed: {reason}; "
                                      f"the policy stays in {st.mode}") from None
                switched.append(ld)
            st.mode = mode
            self._update_kept(st, mode=mode)
            log.info("policy %s now in %s mode", name, mode)

    # ---- directory --------------------------------------------------------------------------------

    def load_directory(self, path: str | Path) -> list[dict[str, Any]]:
        """Load every ``*.yaml``/``*.yml`` file of ``path`` (sorted by name).

        A bad file is refused on its own (logged, and listed in `directory_errors` and the status); the
        others still load. Returns the per-file results.
        """
        d = Path(path)
        if not d.is_dir():
            raise PolicyError(f"policies directory {str(d)!r} does not exist or is not a directory")
        results: list[dict[str, Any]] = []
        for f in sorted(d.iterdir()):
            if f.suffix not in POLICY_FILE_SUFFIXES or not f.is_file():
                continue
            try:
                # Read no further than a policy may be: a mistaken multi-gigabyte file costs nothing.
                text = read_file(f, POLICY_LIMITS)
                names = self.add(text, str(f), origin="directory")
                results.append({"file": str(f), "ok": True, "policies": names})
            except (SourceError, OSError) as exc:
                msg = str(exc) if isinstance(exc, SourceError) else f"{f}: cannot read: {exc.strerror}"
                log.error("policy file refused: %s", msg)
                results.append({"file": str(f), "ok": False, "error": msg})
        self.directory_errors = [r for r in results if not r["ok"]]
        return results

    def load_builtin_network(self) -> list[str]:
        """Load the shipped network connection policy (``sensorium run --network``).

        A sensor ships it as ``policies/network.yaml`` in its package; the first running sensor that
        has one provides it.
        """
        import importlib.resources as resources

        for name, sensor in sorted(self.sensors.items()):
            pkg = type(sensor).__module__.rpartition(".")[0] or type(sensor).__module__
            try:
                res = resources.files(pkg).joinpath("policies", "network.yaml")
                if res.is_file():
                    return self.add(res.read_bytes(), f"<built-in network policy of sensor {name}>",
                                    origin="builtin")
            except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
                continue
        raise PolicyError("the built-in network policy is not available: no running sensor ships "
                          "policies/network.yaml (is the tracepoint sensor enabled?)")

    # ---- views ------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._state_lock:
            return list(self._policies)

    def get(self, name: str) -> dict[str, Any]:
        with self._state_lock:
            st = self._policies.get(name)
        if st is None:
            raise PolicyNotFound(name, self._hint(name))
        return self._describe(st)

    def list(self) -> list[dict[str, Any]]:
        """JSON-able status of every policy: state, mode, hooks with their mechanism, counters."""
        with self._state_lock:
            states = sorted(self._policies.values(), key=lambda s: s.id)
        return [self._describe(st) for st in states]

    def _describe(self, st: PolicyState) -> dict[str, Any]:
        p = st.policy
        hooks: list[dict[str, Any]] = []
        events = errors = mem = mem_projected = 0
        for ld in list(st.loaded):
            try:
                s = dict(ld.handle.status())
            except Exception as exc:  # noqa: BLE001 - status must not fail the listing
                s = {"status_error": f"{type(exc).__name__}: {exc}"}
            for h in s.get("hooks", []) or []:
                hooks.append({"section": ld.section.key, "sensor": ld.section.sensor, **dict(h)})
            events += int(s.get("events", 0) or 0)
            errors += int(s.get("errors", 0) or 0)
            mem += int(s.get("kernel_memory_bytes", 0) or 0)
            mem_projected += int(s.get(PROJECTED_KEY, 0) or 0)
            if "status_error" in s:
                hooks.append({"section": ld.section.key, "sensor": ld.section.sensor,
                              "status_error": s["status_error"]})
        if st.state != "enabled":
            # Not loaded: still say what the policy would hook.
            for sec in p.sections:
                for i in range(len(sec.items)):
                    hooks.append({"section": sec.key, "sensor": sec.sensor, "hook": _hook_label(sec, i),
                                  "mechanism": None})
        scope: dict[str, Any] | None = None
        if p.scoped:
            scope = {"errors": st.scope_errors, "last_error": st.scope_error}
            tracker = st.tracker
            if tracker is not None:
                try:
                    scope.update(tracker.summary())
                except Exception as exc:  # noqa: BLE001 - status must not fail the listing
                    scope["status_error"] = f"{type(exc).__name__}: {exc}"
        return {
            "name": p.name,
            "key": p.key,
            "warnings": p.warnings,
            "id": st.id,
            "kind": p.kind,
            "namespace": p.namespace,
            "state": st.state,
            "mode": st.mode,
            "file": p.file,
            "sections": {s.key: len(s.items) for s in p.sections},
            "sensors": sorted({s.sensor for s in p.sections}),
            "hooks": hooks,
            "events": events,
            "errors": errors,
            "kernel_memory_bytes": mem,  # the kernel's own figure (fdinfo memlock) of its maps and programs
            PROJECTED_KEY: mem_projected,  # the same on a node of PROJECTED_CPUS CPUs (per-CPU maps grow)
            "added_at": st.added_at,
            "error": st.error,
            "scope": scope,  # None: host-wide
            "origin": st.origin,
            # persistent enforcement: True every enforcing hook is pinned, False one is not (its hooks say
            # why), None off or nothing enforces
            "persistent": self._persistent(st),
            "pin_dir": str(st.pin_dir) if st.pin_dir is not None else None,
            "kept": self.persistence is not None and st.origin == "api",
            "replaced": list(st.replaced),
            "adopted": [g.describe() for g in st.adopted],
        }

    # ---- internals --------------------------------------------------------------------------------

    def _metric(self, name: str, state: str) -> None:
        if self.metrics is not None:
            try:
                self.metrics.policy(name, state)
            except Exception:  # metrics never fail a policy operation
                log.exception("policy metrics")

    def _get(self, name: str) -> PolicyState:
        with self._state_lock:
            st = self._policies.get(name)
        if st is None or st.state == "loading":
            raise PolicyNotFound(name, self._hint(name))
        return st

    def _hint(self, name: str) -> str:
        """`` (did you mean ns/name?)`` when namespaced policies carry that name."""
        with self._state_lock:
            keys = [k for k, st in self._policies.items() if st.policy.namespace and st.policy.name == name]
        return f" (namespaced policies are named namespace/name: {', '.join(sorted(keys)[:5])})" if keys else ""

    def _free_id(self) -> int | None:
        with self._state_lock:
            used = {s.id for s in self._policies.values()}
        return next((i for i in range(MAX_POLICIES) if i not in used), None)

    @staticmethod
    def _line(policy: Policy, loc: Sequence[str | int]) -> int | None:
        return policy.source.line_of(loc) if policy.source is not None else None

    def _refuse(self, policy: Policy, section: Section, exc: BaseException, doing: str) -> PolicyError:
        """A sensor's refusal as a `PolicyError` naming file, line, field, hook and reason."""
        if isinstance(exc, PolicyLoadError):
            hook, reason, field = exc.hook, exc.reason, exc.field
        else:
            hook, reason, field = section.key, f"{type(exc).__name__}: {exc}", None
        # An error is one line (SourceError escapes line breaks); a sensor's reason of several lines (the
        # verifier's verdict, its count, a hint) reads better joined than escaped.
        reason = "; ".join(ln.strip() for ln in str(reason).splitlines() if ln.strip())
        loc = _field_loc(field) if field else ("spec", section.key)
        m = re.match(rf"{re.escape(section.key)}\[(\d+)\]", hook or "")
        if not field and m:
            loc = ("spec", section.key, int(m.group(1)))
        return PolicyError(f"{doing} {hook}: {reason}", file=policy.file, line=self._line(policy, loc),
                           path=field or ".".join(str(x) for x in loc[:2]) + (f"[{loc[2]}]" if len(loc) > 2 else ""))

    def _sensor_for(self, policy: Policy, section: Section) -> PolicySensor:
        sensor = self.sensors.get(section.sensor)
        loc = ("spec", section.key)
        if sensor is None:
            rec = self.registry.record("sensor", section.sensor) if hasattr(self.registry, "record") else None
            state = getattr(rec, "state", "not running")
            reason = getattr(rec, "reason", None)
            why = f" ({reason})" if reason else ""
            if state in ("loaded", "running"):
                state = "not enabled in this agent's config"
            raise PolicyError(f"the {section.sensor!r} sensor that serves {section.key!r} is {state}{why}",
                              file=policy.file, line=self._line(policy, loc), path=f"spec.{section.key}")
        if not isinstance(sensor, PolicySensor):
            raise PolicyError(f"the {section.sensor!r} sensor declares {section.key!r} but cannot load policies "
                              "(it has no check_policy/load_policy)", file=policy.file,
                              line=self._line(policy, loc), path=f"spec.{section.key}")
        return sensor

    # ---- scopes -----------------------------------------------------------------------------------

    def _check_user_actions(self, policy: Policy) -> None:
        """Refuse a policy with a GetUrl or DnsLookup action when the agent config turned them off (the node
        makes no request a policy names)."""
        if self.user_actions:
            return
        for sec in policy.sections:
            for i, item in enumerate(sec.items):
                for si, sel in enumerate(getattr(item, "selectors", None) or ()):
                    for ai, act in enumerate(getattr(sel, "matchActions", None) or ()):
                        if act.action in NOTIFY_ACTIONS:
                            loc = ("spec", sec.key, i, "selectors", si, "matchActions", ai, "action")
                            raise PolicyError(f"{act.action} is turned off on this agent (actions.enabled is false in "
                                              "the agent config): it makes no request a policy names",
                                              file=policy.file, line=self._line(policy, loc), path=format_path(loc))

    def _check_scope_support(self, policy: Policy) -> None:
        """A scoped policy needs a scope provider and, for every section, a sensor that bounds its hooks to
        a scope in the kernel; refuse it whole otherwise (never load it host-wide)."""
        if not policy.scoped:
            return
        what = ("kind TracingPolicyNamespaced" if policy.kind == "TracingPolicyNamespaced" else
                "podSelector" if policy.pod_selector is not None else
                "containerSelector" if policy.container_selector is not None else "hostSelector")
        if self.scope_provider is None:
            field = {"podSelector": ("spec", "podSelector"), "containerSelector": ("spec", "containerSelector"),
                     "hostSelector": ("spec", "hostSelector")}.get(what, ("kind",))
            raise PolicyError(f"{what} needs the Kubernetes support (kubernetes.enabled in the agent config): "
                              "without it the agent cannot tell which processes the policy applies to",
                              file=policy.file, line=self._line(policy, field), path=".".join(field))
        for sec in policy.sections:
            if not sec.items:
                continue
            sensor = self.sensors.get(sec.sensor)
            if sensor is not None and not supports_scope(sensor):
                loc = ("spec", sec.key)
                raise PolicyError(f"the {sec.sensor!r} sensor that serves {sec.key!r} cannot bound its hooks to "
                                  f"pods or the host (it does not declare supports_scope); this policy is scoped "
                                  f"by {what}: remove the scope to apply it host-wide, or move these hooks to a "
                                  "policy of their own", file=policy.file, line=self._line(policy, loc),
                                  path=f"spec.{sec.key}")

    def _unload_state(self, st: PolicyState) -> None:
        tracker, st.tracker = st.tracker, None
        if tracker is not None:
            try:
                tracker.close()
            except Exception:
                log.exception("policy %s: closing its scope tracker", st.key)
        with st.scope_lock:  # no set_scope may run on a handle being unloaded
            self._unload(st.loaded)
            st.loaded = []
        if st.pin_dir is not None:
            try:
                self.persistence.drop_generation(st.pin_dir)
            except OSError:
                log.exception("policy %s: removing %s", st.key, st.pin_dir)
            st.pin_dir = None

    def _scope_update(self, st: PolicyState, scope: Scope) -> None:
        """The tracker's callback (pod watcher or cgroup scanner thread): every loaded section gets the new
        scope, or none does: when a section fails, those already switched go back to the scope they had (each
        `set_scope` adds coverage before it removes any), the error is logged and counted, and the policy
        stays loaded with its previous scope."""
        with st.scope_lock:
            switched: list[tuple[LoadedSection, Scope | None]] = []
            for ld in st.loaded:
                if ld.scope == scope:
                    continue
                try:
                    if not isinstance(ld.handle, ScopedPolicyHandle):
                        raise TypeError(f"the {ld.section.sensor!r} sensor declares supports_scope but its handle "
                                        "has no set_scope")
                    ld.handle.set_scope(scope)
                except Exception as exc:  # noqa: BLE001 - a sensor may raise anything; the policy stays loaded
                    st.scope_errors += 1
                    st.scope_error = f"{ld.section.key}: {type(exc).__name__}: {exc}"[:500]
                    log.error("policy %s: scope update of %s failed: %s; the previous scope stays", st.key,
                              ld.section.key, st.scope_error)
                    for back, old in reversed(switched):
                        try:
                            if old is not None and isinstance(back.handle, ScopedPolicyHandle):
                                back.handle.set_scope(old)
                            back.scope = old
                        except Exception:  # the first error is the one reported
                            log.exception("policy %s: restoring the scope of %s", st.key, back.section.key)
                    return
                switched.append((ld, ld.scope))
                ld.scope = scope

    @staticmethod
    def _scope_words(st: PolicyState) -> str:
        if st.tracker is None:
            return ""
        try:
            s = st.tracker.summary()
        except Exception:  # noqa: BLE001
            return ", scoped"
        host = ", host" if s.get("host") else ""
        return f", scoped: {len(s.get('pods', []))} pods, {s.get('cgroups', 0)} cgroups{host}"

    @staticmethod
    def _unload(loaded: Sequence[LoadedSection]) -> None:
        for ld in reversed(loaded):
            try:
                ld.handle.unload()
            except Exception:  # unload must not raise; if it does, the others still go
                log.exception("unloading section %s", ld.section.key)

"""The transaction of `sensorium.policy_manager.PolicyManager`: one policy change over every section of
every document, in the rounds of `sensorium.hookspecs.PreparedSection`.

Check all, prepare all, commit all (sections of one-step sensors, `OneStepSection`, last), activate all. A
failure before the activate round leaves nothing loaded, attached, pinned or tracked, and nothing was ever
active.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sensorium.hookspecs import (
    PolicyHandle,
    PolicyLoadError,
    PolicySensor,
    PolicyView,
    Scope,
    TransactionalPolicySensor,
)
from sensorium.policy import Policy, PolicyError, Section

if TYPE_CHECKING:
    from sensorium.policy_manager import PolicyState

log = logging.getLogger("sensorium.policy")

__all__ = ["LoadedSection", "OneStepSection", "TxnSection", "PolicyTxn", "PolicyTransactions"]


@dataclasses.dataclass
class LoadedSection:
    """A section of a policy as it is loaded: its handle and the scope its kernel side has now."""

    section: Section
    handle: PolicyHandle
    scope: Scope | None = None


class OneStepSection:
    """A section of a sensor that implements only ``load_policy``: it loads (live at once) in the commit
    round, after every transactional section is attached, and has nothing left to do at activate."""

    def __init__(self, sensor: PolicySensor, view: PolicyView) -> None:
        self.sensor, self.view = sensor, view
        self.handle: PolicyHandle | None = None

    def commit(self) -> None:
        self.handle = self.sensor.load_policy(self.view)

    def activate(self) -> PolicyHandle:
        assert self.handle is not None
        return self.handle

    def abort(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            handle.unload()

    def status(self) -> Mapping[str, Any]:
        return self.handle.status() if self.handle is not None else {"hooks": []}


@dataclasses.dataclass
class TxnSection:
    """One section's part of a transaction: its sensor, what it prepared and, once activated, its handle."""

    section: Section
    sensor: PolicySensor
    prepared: Any = None  # PreparedSection (or OneStepSection)
    one_step: bool = False
    handle: PolicyHandle | None = None  # once activated


@dataclasses.dataclass
class PolicyTxn:
    """One policy's part of a transaction."""

    st: PolicyState
    sections: list[TxnSection]
    tracker: Any = None
    scope: Scope | None = None
    pin_dir: Path | None = None


class PolicyTransactions:
    """The transaction rounds of `PolicyManager` (a base class of it: it uses the manager's sensors, scope
    provider, persistence and refusal helpers)."""

    # What it uses of its host, declared here so that a type checker holds both to it.
    persistence: Any
    scope_provider: Any

    if TYPE_CHECKING:
        @staticmethod
        def _line(policy: Policy, loc: Sequence[str | int]) -> int | None: ...
        def _refuse(self, policy: Policy, section: Section, exc: BaseException, doing: str) -> PolicyError: ...
        def _sensor_for(self, policy: Policy, section: Section) -> PolicySensor: ...
        def _check_scope_support(self, policy: Policy) -> None: ...
        def _scope_update(self, st: PolicyState, scope: Scope) -> None: ...
        def _replace_stale(self, st: PolicyState) -> None: ...

    def _transaction(self, states: Sequence[PolicyState]) -> None:
        """Load every section of every policy in ``states`` in the rounds of `sensorium.hookspecs.PreparedSection`:
        check all, prepare all, commit all (sections of one-step sensors last), activate all. A failure before
        the activate round leaves nothing loaded, attached, pinned or tracked, and nothing was ever active;
        raises the `PolicyError` naming file, line, hook and reason."""
        txns: list[PolicyTxn] = []
        try:
            for st in states:
                txns.append(self._begin(st))
            for t in txns:  # check: the cheap refusals, nothing made yet
                for ts in t.sections:
                    try:
                        ts.sensor.check_policy(t.st.policy.view(ts.section, t.st.id, t.st.mode, t.scope))
                    except Exception as exc:  # noqa: BLE001 - a sensor may raise anything; contain it
                        raise self._refuse(t.st.policy, ts.section, exc, "refused") from None
            for t in txns:  # prepare: build, load, verify, fill what does not enforce
                self._prepare(t)
            for one_step in (False, True):  # commit: attach inert (one-step sensors: live, so last)
                for t in txns:
                    for ts in t.sections:
                        if ts.one_step != one_step:
                            continue
                        try:
                            ts.prepared.commit()
                        except Exception as exc:  # noqa: BLE001
                            raise self._refuse(t.st.policy, ts.section, exc, "failed to load") from None
            if self.persistence is not None and self.persistence.refuse_non_persistent:
                for t in txns:
                    self._refuse_non_persistent(t)
            for t in txns:  # activate: only map writes and flags from here
                for ts in t.sections:
                    try:
                        ts.handle = ts.prepared.activate()
                    except Exception as exc:  # noqa: BLE001
                        raise self._refuse(t.st.policy, ts.section, exc, "failed to activate") from None
        except BaseException:  # includes KeyboardInterrupt: never leave half a transaction
            self._abort(txns)
            raise
        for t in txns:
            st = t.st
            with st.scope_lock:
                st.tracker, st.pin_dir = t.tracker, t.pin_dir
                st.loaded = [LoadedSection(ts.section, ts.handle, t.scope) for ts in t.sections
                             if ts.handle is not None]
            if t.tracker is not None:
                # Pods that came or went while the sections loaded.
                self._scope_update(st, t.tracker.current())
            self._replace_stale(st)

    def _begin(self, st: PolicyState) -> PolicyTxn:
        """The sensors of ``st``'s sections and, for a scoped policy, its tracker and current scope."""
        policy = st.policy
        work = [TxnSection(sec, self._sensor_for(policy, sec)) for sec in policy.sections if sec.items]
        t = PolicyTxn(st, work)
        if policy.scoped:
            self._check_scope_support(policy)
            try:
                t.tracker = self.scope_provider.track(policy, lambda sc, st=st: self._scope_update(st, sc))
            except ValueError as exc:  # a selector the parser let through but the tracker cannot use
                raise PolicyError(str(exc), file=policy.file, line=self._line(policy, ("spec",)), path="spec") from None
            t.scope = t.tracker.current()
        return t

    def _prepare(self, t: PolicyTxn) -> None:
        policy = t.st.policy
        if self.persistence is not None:
            try:
                t.pin_dir = self.persistence.new_generation(t.st.key, [ts.section.key for ts in t.sections],
                                                            t.st.origin)
            except OSError as exc:
                raise PolicyError(f"cannot make the policy's pin directory under {self.persistence.pin_root}: "
                                  f"{exc.strerror or exc}", file=policy.file) from None
        for ts in t.sections:
            pin = str(t.pin_dir / ts.section.key) if t.pin_dir is not None else None
            view = dataclasses.replace(policy.view(ts.section, t.st.id, t.st.mode, t.scope), pin_dir=pin)
            if isinstance(ts.sensor, TransactionalPolicySensor):
                try:
                    ts.prepared = ts.sensor.prepare_policy(view)
                except Exception as exc:  # noqa: BLE001 - a sensor may raise anything; contain it
                    raise self._refuse(policy, ts.section, exc, "failed to load") from None
            else:
                ts.prepared, ts.one_step = OneStepSection(ts.sensor, view), True

    def _refuse_non_persistent(self, t: PolicyTxn) -> None:
        """``enforcement.non_persistent: refuse``: a hook that enforces but will not outlive the agent refuses
        the whole transaction."""
        for ts in t.sections:
            try:
                hooks = list(dict(ts.prepared.status()).get("hooks", []) or [])
            except Exception:  # noqa: BLE001
                hooks = []
            if ts.one_step or (t.pin_dir is not None and not hooks):
                hooks = [{"hook": ts.section.key, "persistent": False,
                          "persistence": f"the {ts.section.sensor!r} sensor does not pin its programs"}]
            for h in hooks:
                if h.get("persistent") is False:
                    exc = PolicyLoadError(str(h.get("hook") or ts.section.key),
                                          f"cannot enforce beyond the agent's life ({h.get('persistence')}), and the "
                                          "agent config says enforcement.non_persistent: refuse")
                    raise self._refuse(t.st.policy, ts.section, exc, "refused") from None

    def _abort(self, txns: Sequence[PolicyTxn]) -> None:
        """Undo every section of a failed transaction, newest first: unload what was activated, abort what
        was only prepared or committed; then trackers and pin directories."""
        for t in reversed(txns):
            for ts in reversed(t.sections):
                try:
                    if ts.handle is not None:
                        ts.handle.unload()
                    elif ts.prepared is not None:
                        ts.prepared.abort()
                except Exception:  # the others still go
                    log.exception("policy %s: undoing section %s", t.st.key, ts.section.key)
            if t.tracker is not None:
                try:
                    t.tracker.close()
                except Exception:
                    log.exception("policy %s: closing its scope tracker", t.st.key)
            if t.pin_dir is not None:
                try:
                    self.persistence.drop_generation(t.pin_dir)
                except OSError:
                    log.exception("policy %s: removing %s", t.st.key, t.pin_dir)

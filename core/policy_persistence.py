"""Persistent enforcement of `sensorium.policy_manager.PolicyManager`: kept API policies and pinned generations.

With ``enforcement.persist`` (a `sensorium.persistence.EnforcementStore` as the manager's ``persistence``),
policies added through the API are kept in the state directory and loaded again at start (`restore`); what
a previous agent pinned stays attached and enforcing until this agent's generation of the same policy is
active (`scan_pins`, then replaced policy by policy), and what no policy came back for is removed
(`sweep_stale`). A kept policy that no longer loads keeps its old pins (adopted: failing closed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sensorium.persistence import UntrustedFile
from sensorium.policy import MODES, POLICY_LIMITS, PolicyError
from sensorium.yamlsrc import SourceError, dump

if TYPE_CHECKING:
    from sensorium.policy import Policy
    from sensorium.policy_manager import PolicyState

log = logging.getLogger("sensorium.policy")

__all__ = ["PolicyPersistence"]


class PolicyPersistence:
    """The persistent-enforcement part of `PolicyManager` (a base class of it: it uses the manager's
    ``persistence``, ``_policies``, ``_stale``, ``restore_report``, locks and transaction)."""

    # What it uses of its host, declared here so that a type checker holds both to it.
    persistence: Any
    restore_report: dict[str, Any]
    _policies: dict[str, PolicyState]
    _stale: dict[str, list[Any]]
    _op_lock: threading.RLock
    _state_lock: threading.Lock

    if TYPE_CHECKING:
        def parse(self, text: str | bytes, file: str | None = None) -> list[Policy]: ...
        def _add_policies(self, policies: Sequence[Policy], mode: str | None, origin: str,
                          state: str = "enabled") -> list[PolicyState]: ...
        def _free_id(self) -> int | None: ...
        def _metric(self, name: str, state: str) -> None: ...

    def _keep(self, st: PolicyState) -> None:
        """An API policy is kept in the state directory (its one document, mode, state), fsynced."""
        if self.persistence is None or st.origin != "api":
            return
        src = st.policy.source
        text = dump(src.data, st.policy.file, POLICY_LIMITS) if src is not None else None
        if text is None:
            return
        try:
            self.persistence.keep_policy(st.key, text, st.policy.file, st.mode, st.state)
        except (OSError, ValueError) as exc:  # the policy is loaded: say it is not kept, never fail the add
            log.error("policy %s is loaded but could not be kept in %s: %s; it will not be restored after a "
                      "restart", st.key, self.persistence.state_dir, exc)
            st.error = f"not kept in the state directory: {exc}"

    def _update_kept(self, st: PolicyState, **changes: Any) -> None:
        if self.persistence is None or st.origin != "api":
            return
        try:
            self.persistence.update_policy(st.key, **changes)
        except (OSError, UntrustedFile) as exc:
            log.error("policy %s: updating its kept copy: %s", st.key, exc)

    def scan_pins(self) -> list[Any]:
        """Start-up, before any policy loads: what a previous agent left pinned, by policy. Each generation
        stays (and enforces) until this agent's generation of the same policy is active, then it is removed
        (`_replace_stale`); `sweep_stale` removes the ones no policy came back for."""
        if self.persistence is None:
            return []
        gens = self.persistence.generations()
        for g in gens:
            self._stale.setdefault(g.key, []).append(g)
        return gens

    def _replace_stale(self, st: PolicyState) -> None:
        old = self._stale.pop(st.key, [])
        for g in old:
            if st.pin_dir is not None and g.path == st.pin_dir:
                continue
            n = self.persistence.drop_generation(g.path)
            rec = {**g.describe(), "pins": n, "replaced_by": str(st.pin_dir) if st.pin_dir else None}
            st.replaced.append(rec)
            self.restore_report["replaced"].append(rec)
            log.info("policy %s: the generation pinned by pid %s (%s) is replaced by %s", st.key,
                     g.meta.get("pid", "?"), g.path, st.pin_dir or "an unpinned one")

    def sweep_stale(self) -> list[dict[str, Any]]:
        """Remove the pinned generations no policy came back for (its file was deleted while the agent was
        down, or it is no longer kept); a policy that is kept but failed to load (or whose kept record cannot
        be read) keeps its old pins (adopted: still enforcing) until it loads or is deleted."""
        removed = []
        with self._op_lock:
            for key, gens in list(self._stale.items()):
                st = self._policies.get(key)
                if (st is not None and st.state == "error") or (st is None and self.persistence.is_kept(key)):
                    # adopted: a kept policy that did not load again (see restore)
                    for g in gens:
                        if g.describe() not in self.restore_report["adopted"]:
                            self.restore_report["adopted"].append(g.describe())
                    continue
                for g in gens:
                    n = self.persistence.drop_generation(g.path)
                    rec = {**g.describe(), "pins": n}
                    removed.append(rec)
                    log.warning("policy %s: pins of a previous agent (%s) removed: no such policy was loaded "
                                "again", key, g.path)
                del self._stale[key]
        self.restore_report["removed"].extend(removed)
        self.restore_report["ignored"] = list(getattr(self.persistence, "ignored", []))
        for ig in self.restore_report["ignored"]:
            log.warning("enforcement: %s left alone under the pin root: %s", ig["path"], ig["why"])
        return removed

    def adopted_only(self) -> list[dict[str, Any]]:
        """Generations a previous agent pinned that keep enforcing for a policy this agent has not loaded (its
        kept record is unreadable or no longer parses): `policy delete NAME` lifts them."""
        with self._op_lock:
            return [g.describe() for key, gens in self._stale.items() if key not in self._policies for g in gens]

    def restore(self) -> dict[str, Any]:
        """Start-up with persistent enforcement, before the agent says ready: load every kept API policy
        again (each in a transaction of its own: one that fails does not stop the others), in its kept
        mode and state. A kept policy that no longer loads is listed with state ``error`` and the reason;
        what a previous agent pinned for it stays attached and enforcing (adopted as it is: failing closed)
        until it loads (``policy enable``) or is deleted."""
        if self.persistence is None:
            return self.restore_report
        for f, rec, why in self.persistence.kept_policies():
            if rec is None:
                msg = f"kept policy not loaded: {why}"
                log.error("%s; its pins, if any, keep enforcing until `policy delete` of its name", msg)
                self.restore_report["failed"].append({"file": str(f), "error": msg})
                continue
            key = rec["key"]
            mode = rec["mode"]
            state = rec["state"]
            try:
                policies = self.parse(rec["text"], rec.get("file") or "<api>")
                if [p.key for p in policies] != [key]:
                    raise PolicyError(f"the kept text holds {[p.key for p in policies]}, not {key!r}", file=str(f))
                self._add_policies(policies, mode, "api", state=state)
                self.restore_report["restored"].append({"policy": key, "state": state, "mode": mode})
                log.info("policy %s restored from %s (%s)", key, f, state)
            except SourceError as exc:
                self._restore_failed(key, rec, str(exc))
            except Exception as exc:  # noqa: BLE001 - one kept policy never stops the start of the others
                self._restore_failed(key, rec, f"{type(exc).__name__}: {exc}")
        return self.restore_report

    def _restore_failed(self, key: str, rec: Mapping[str, Any], msg: str) -> None:
        gens = self._stale.get(key, [])
        log.error("kept policy %s did not load: %s%s", key, msg,
                  f"; the {len(gens)} generation(s) a previous agent pinned keep enforcing (policy delete "
                  f"{key} lifts them)" if gens else "")
        self.restore_report["failed"].append({"policy": key, "error": msg, "adopted": [str(g.path) for g in gens]})
        try:
            policies = self.parse(rec["text"], rec.get("file") or "<api>")
        except SourceError:
            return  # listed in the report; `policy delete` still lifts its pins (_drop_adopted_only)
        if len(policies) != 1 or policies[0].key in self._policies:
            return
        pid = self._free_id()
        if pid is None:
            return
        from sensorium.policy_manager import PolicyState

        mode = rec.get("mode")
        st = PolicyState(policy=policies[0], id=pid, mode=mode if isinstance(mode, str) and mode in MODES else
                         policies[0].mode, state="error", error=msg, adopted=list(gens))
        with self._state_lock:
            self._policies[key] = st
        self._metric(key, "error")

    def _drop_adopted_only(self, name: str) -> bool:
        """``policy delete`` of a kept policy that could not even be parsed again: remove its old pins and
        the kept copy. False when there is nothing of the kind."""
        if self.persistence is None:
            return False
        gens = self._stale.pop(name, [])
        kept = self.persistence.is_kept(name)
        if not gens and not kept:
            return False
        for g in gens:
            self.persistence.drop_generation(g.path)
        self.persistence.forget_policy(name)
        log.info("policy %s deleted (it had not loaded: %d pinned generation(s) removed)", name, len(gens))
        return True

    def _persistent(self, st: PolicyState) -> bool | None:
        """True: every enforcing hook is pinned; False: at least one enforcing hook is not (or nothing is
        pinned at all); None: persistence is off, or nothing in the policy enforces."""
        if self.persistence is None:
            return None
        if st.state != "enabled":
            return True if st.adopted else None
        flags = []
        for ld in list(st.loaded):
            try:
                hooks = dict(ld.handle.status()).get("hooks", []) or []
            except Exception:  # noqa: BLE001
                hooks = []
            if not hooks or not any("persistent" in h for h in hooks):
                flags.append(False)  # a sensor that ignores pin_dir
                continue
            flags.extend(h.get("persistent") for h in hooks)
        if any(f is False for f in flags):
            return False
        return True if any(f is True for f in flags) else None

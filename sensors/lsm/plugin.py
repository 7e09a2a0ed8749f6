"""The lsm sensor: ``lsmhooks`` sections of TracingPolicy, blocking before the operation happens.

Each hook is served by the strongest mechanism this kernel offers (see `rules.MECHANISMS`):

* ``bpf_lsm``: a BPF LSM program per hook (lsm.bpf.c) where BPF LSM is active and its programs load;
* otherwise a fallback: file_open / bprm_check_security -> fanotify permission events decided here
  (fanotify.py); socket_connect / socket_sendmsg -> cgroup sock_addr programs (netguard.py);
* a hook with no mechanism is refused with the reason, before anything is loaded.

The policy's scope (`PolicyView.scope`, a `sensorium.hookspecs.Scope`; None = host-wide) bounds every
mechanism, in the cgroup2 and the v1 memory hierarchy alike: BPF LSM and Sigkill-from-tracepoint programs
and the cgroup sock_addr programs check it first in the kernel (sensorium/scope.h; the sock_addr programs
are also attached only to the scope's cgroup2 directories when that alone bounds it), fanotify decisions
allow every process outside it (`sensorium.scope.process_in_scope`). `LsmPolicyHandle.set_scope` replaces
it live in every mechanism. The mechanism and what it means are in the policy status and in each
``process_lsm`` event (key ``enforcement``).
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sensorium import hookimpl
from sensorium.bpf.memory import PROJECTED_KEY, KernelMemory
from sensorium.bpf.scope import scope_entries
from sensorium.hookspecs import PolicyLoadError, PolicyView, RingHandle, Scope, SensorSpec
from sensorium.policy import MatchAction
from sensorium.process import exec_pending
from sensorium.scope import hierarchy_mounts, process_in_scope
from sensorium_sensors.lsm.schema import LsmHookSpec

from . import bpflsm, netguard, sigkill
from .fanotify import (
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    FanDecision,
    FanotifyGuard,
    FanRule,
    fanotify_available,
    plan_marks,
)
from .rules import PATH_TYPES, HookPlan, ProcessFacts, first_match, plan_section

__all__ = ["LsmSensor", "LsmOptions", "LsmPolicyHandle", "sensorium_sensor"]

HERE = Path(__file__).resolve().parent
ACTION_NAMES = {"Post": "KPROBE_ACTION_POST", "NoPost": "KPROBE_ACTION_NOPOST", "Sigkill": "KPROBE_ACTION_SIGKILL",
                "Signal": "KPROBE_ACTION_SIGNAL", "Override": "KPROBE_ACTION_OVERRIDE"}
_STRENGTH = ("Sigkill", "Override", "Signal", "Post", "NoPost")


class LsmOptions(BaseModel):
    """``sensors: {lsm: {...}}`` in the agent config."""

    model_config = ConfigDict(extra="forbid")
    force_fallbacks: bool = False
    """Serve hooks with the fallbacks even where BPF LSM loads (to compare the two on one kernel)."""
    btf: str | None = None
    """BTF file to check hooks against (default: /sys/kernel/btf/vmlinux)."""


def _strongest(actions: Sequence[MatchAction]) -> str:
    names = {a.action for a in actions}
    for n in _STRENGTH:
        if n in names:
            return n
    return "Post"


def _blocking(actions: Sequence[MatchAction]) -> bool:
    return any(a.action in ("Override", "Sigkill") for a in actions)


def _blocking_plan(p: HookPlan) -> bool:
    """Whether any selector of the hook blocks (or kills): what persistent enforcement has to keep."""
    return any(_blocking(sel.actions) for sel in p.spec.selectors)


def _remove_empty_dirs(top: str) -> None:
    """Remove the (now empty) per-hook directories a section made under its pin directory."""
    for root, _dirs, _files in os.walk(top, topdown=False):
        if root != top:
            try:
                os.rmdir(root)
            except OSError:
                pass


FANOTIFY_NOT_PERSISTENT = ("fanotify: the decision is made by the agent, and the kernel allows every open once "
                           "the agent is gone (fail-open, docs/enforcement.md); no kernel mechanism serves this "
                           "hook here")
NET_KILL_NOTE = ("the call stays refused in the kernel while the agent is gone; the kill that follows it is done by "
                 "the agent and does not happen then")


class LsmPolicyHandle:
    """One ``lsmhooks`` section: `sensorium.hookspecs.PreparedSection` (`commit`, `activate`, `abort`) once
    `LsmSensor.prepare_policy` made it, then `sensorium.hookspecs.PolicyHandle`."""

    def __init__(self, sensor: LsmSensor, view: PolicyView, plans: list[HookPlan], scope: Scope | None) -> None:
        self.sensor = sensor
        self.view = view
        self.plans = plans
        self.scope = scope  # read by fanotify decisions (one attribute: replaced atomically by set_scope)
        self._mounts = hierarchy_mounts()  # where cgroup2 / v1 memory are mounted, for /proc/<pid>/cgroup
        self._scope_lock = threading.Lock()
        self.mode = view.mode
        self.fan_rules: list[FanRule] = []   # rules whose marks are placed (committed)
        self._fan: list[tuple[FanRule, HookPlan]] = []  # prepared rules, in plan order
        self.net_guards: list[tuple[HookPlan, netguard.NetGuard]] = []
        self.lsm_progs: list[tuple[HookPlan, Any]] = []
        self.sig_guards: list[tuple[HookPlan, Any]] = []
        self.rings: list[RingHandle] = []  # the host drains the rings of this section's programs
        self.events = 0
        self.errors = 0
        self._unloaded = False
        self.active = False
        self.pin_dir: str | None = view.pin_dir
        # plan position -> (persistent: True pinned / False not / None nothing to keep, why)
        self.persistence: dict[int, tuple[bool | None, str]] = {}

    # ---- PolicyHandle -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        sc = self.scope
        scope: Any = "host-wide" if sc is None else {
            "cgroups": [f"{r.hierarchy}:{r.path}" for r in sc.cgroups], "host": sc.host}
        hooks = []
        for p in self.plans:
            hook: dict[str, Any] = {"hook": f"lsmhooks[{p.position}] {p.hook}", "mechanism": p.mechanism,
                                    "note": p.note, "scope": scope}
            if p.mechanism.startswith("cgroup/"):
                hook["attached_to"] = [d for pp, g in self.net_guards if pp is p for d in g.attached_dirs]
            if self.pin_dir is not None:
                persistent, why = self.persistence.get(p.position, (False, "not attached yet"))
                hook["persistent"], hook["persistence"] = persistent, why
            if not self.active:
                hook["state"] = "prepared"
            hooks.append(hook)
        mem = KernelMemory()
        counters: dict[str, int] = {}
        for _p, g in self.net_guards:
            mem += g.kernel_memory
            for k, v in g.counters().items():
                counters[k] = counters.get(k, 0) + v
        for _p, prog in self.lsm_progs:
            mem += prog.kernel_memory
            for k, v in prog.counters().items():
                counters[k] = counters.get(k, 0) + v
        events = self.events
        for _p, g in self.sig_guards:
            st = g.set.status()
            mem += KernelMemory(int(st.get("kernel_memory_bytes", 0) or 0),
                                int(st.get(PROJECTED_KEY, 0) or 0))
            events += st.get("events", 0)
            for k, v in g.counters().items():
                counters[k] = counters.get(k, 0) + v
        return {"hooks": hooks, "mode": self.mode, "events": events, "errors": self.errors,
                **mem.as_status(), "kernel_counters": counters,
                "fanotify_marks": sum(len(r.marks) for r in self.fan_rules)}

    def set_mode(self, mode: str) -> None:
        if mode not in ("enforcement", "monitoring"):
            raise ValueError(f"mode {mode!r} is not enforcement or monitoring")
        self.mode = mode  # fanotify rules read it at each decision
        for _p, g in self.net_guards:
            g.set_enforce(mode == "enforcement")
        for _p, prog in self.lsm_progs:
            prog.set_enforce(mode == "enforcement")
        for _p, g in self.sig_guards:
            g.set_enforce(mode == "enforcement")

    def set_scope(self, scope: Scope) -> None:
        """Replace the scope live in every mechanism (`sensorium.hookspecs.PolicyHandle.set_scope`): each one
        adds the new coverage before removing the old (cgroup programs attached to new places first, map
        entries written before stale ones go). If one mechanism fails, those already switched go back to
        the old scope and the error is raised: the section never holds two scopes.

        A section loaded host-wide has no scope check in its kernel programs: ValueError (reload it with a
        scope). A bad scope (unknown hierarchy, too many cgroups): ValueError before anything changes."""
        if not isinstance(scope, Scope):
            raise TypeError(f"set_scope expects a sensorium.hookspecs.Scope, got {type(scope).__name__}")
        scope_entries(scope)
        with self._scope_lock:
            if self._unloaded:
                raise ValueError(f"policy {self.view.name!r} is unloaded")
            old = self.scope
            if old is None:
                raise ValueError(f"policy {self.view.name!r} was loaded host-wide (no scope check in its "
                                 "programs): reload it with a scope")
            done: list[Any] = []
            try:
                for _p, obj in [*self.net_guards, *self.lsm_progs, *self.sig_guards]:
                    obj.set_scope(scope)
                    done.append(obj)
            except Exception:
                for obj in done:
                    try:
                        obj.set_scope(old)
                    except Exception:  # the original error is the one to report
                        self.sensor.ctx.log.exception("restoring the scope of %s", self.view.name)
                raise
            # fanotify decides in user space from this attribute: the next decision sees the new scope
            self.scope = scope

    # ---- transaction rounds (sensorium.hookspecs.PreparedSection) ---------------------------------

    def commit(self) -> None:
        """Attach every mechanism, inert (fanotify marks with the rule inactive, programs whose maps say
        nothing is active yet), and pin what enforces when the section persists. A refused attach undoes the
        whole section and raises `PolicyLoadError`."""
        current: HookPlan | None = None
        try:
            for r, p in self._fan:
                current = p
                self.sensor.guard.add_rule(r)
                self.fan_rules.append(r)
                self.persistence[p.position] = (False, FANOTIFY_NOT_PERSISTENT) if _blocking_plan(p) else \
                    (None, "observes only: nothing to keep enforcing when the agent is gone")
            for p, g in self.net_guards:
                current = p
                g.attach()
                self._pin(p, g)
            for p, prog in self.lsm_progs:
                current = p
                prog.attach()
                self._pin(p, prog)
            for p, g in self.sig_guards:
                current = p
                g.commit()
                if self.pin_dir is not None:
                    self.persistence[p.position] = g.persistence()
        except Exception as exc:  # whatever failed, nothing of the section stays
            self.unload()
            if isinstance(exc, PolicyLoadError):
                raise
            where = current.where if current is not None else "lsmhooks"
            mech = f"{current.mechanism}: " if current is not None else ""
            if isinstance(exc, OSError) and "fanotify_mark" in str(exc):
                raise PolicyLoadError(where, f"fanotify mark failed: {exc}") from None
            what = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"  # libbpf says it all
            raise PolicyLoadError(where, f"{mech}{what}") from None

    def _pin(self, p: HookPlan, owner: Any) -> None:
        if self.pin_dir is None:
            return
        if not _blocking_plan(p):
            self.persistence[p.position] = (None, "observes only: nothing to keep enforcing when the agent is gone")
            return
        d = os.path.join(self.pin_dir, str(p.position))
        try:
            os.makedirs(d, exist_ok=True)
            owner.pin(d)
        except OSError as exc:
            self.persistence[p.position] = (False, f"the kernel did not pin it: {exc}")
            return
        kills = any(a.action == "Sigkill" for sel in p.spec.selectors for a in sel.actions)
        why = f"pinned at {d}" + (f"; {NET_KILL_NOTE}" if kills and p.mechanism.startswith("cgroup/") else "")
        self.persistence[p.position] = (True, why)

    def activate(self) -> LsmPolicyHandle:
        """Open every gate: fanotify rules decide, maps get their rules and real mode."""
        for _p, g in self.net_guards:
            g.activate()
        for _p, prog in self.lsm_progs:
            prog.activate()
        for _p, g in self.sig_guards:
            g.activate()
        for r in self.fan_rules:
            r.active = True
        self.active = True
        return self

    def abort(self) -> None:
        """Free a prepared (or committed) section that never became active."""
        self.unload()

    def unload(self) -> None:
        """Detach and free every mechanism of the section, pins included (`PolicyHandle.unload`)."""
        self._close(keep_pinned=False)

    def release(self) -> None:
        """The agent stops and enforcement persists: pinned programs stay attached and enforcing; fanotify
        rules, readers and everything else of this process go (`PolicyHandle.release`)."""
        self._close(keep_pinned=True)

    def _close(self, keep_pinned: bool) -> None:
        with self._scope_lock:  # not while set_scope is moving attachments
            if self._unloaded:
                return
            self._unloaded = True
        for r in self.fan_rules:
            try:
                self.sensor.guard.remove_rule(r)
            except Exception:  # unload must not raise
                self.sensor.ctx.log.exception("removing fanotify rule")
        self.fan_rules.clear()
        self._fan.clear()
        for ring in self.rings:  # before the objects whose maps they read: what is left is delivered
            ring.close()
        self.rings.clear()
        for _p, g in self.net_guards:
            g.close(keep_pinned=keep_pinned)
        self.net_guards.clear()
        for _p, prog in self.lsm_progs:
            prog.close(keep_pinned=keep_pinned)
        self.lsm_progs.clear()
        for _p, g in self.sig_guards:
            g.close(keep_pinned=keep_pinned)
        self.sig_guards.clear()
        if not keep_pinned and self.pin_dir is not None:
            _remove_empty_dirs(self.pin_dir)
        self.sensor._handles.discard(self)

    # ---- fanotify decisions -----------------------------------------------------------------------

    def _fan_decide(self, plan: HookPlan, pid: int, path: str) -> FanDecision | None:
        # Outside the scope: allowed, not reported. A process that vanished meanwhile is not in scope.
        if not process_in_scope(pid, self.scope, self._mounts):
            return None
        facts = ProcessFacts(pid)
        paths = {a.index: path for a in plan.args if a.type in PATH_TYPES}
        if not paths:
            paths = {0: path}  # matchArgs on the file need the path even if args were not declared
        hit = first_match(plan, paths, facts)
        if hit is None:
            return None
        sel_i, actions = hit
        enforce = self.mode == "enforcement"
        blocking = _blocking(actions)
        deny = blocking and enforce
        kill = 0
        if enforce:
            if any(a.action == "Sigkill" for a in actions):
                kill = signal.SIGKILL
            else:
                for a in actions:
                    if a.action == "Signal" and a.argSig:
                        kill = a.argSig
        post = not any(a.action == "NoPost" for a in actions) or blocking
        outcome = "blocked" if deny else "would have blocked" if blocking else "allowed"
        return FanDecision(rule=None, pid=pid, path=path, deny=deny, kill=kill, post=post,  # type: ignore[arg-type]
                           info={"plan": plan, "selector": sel_i, "actions": actions, "outcome": outcome,
                                 "binary": facts.binary, "time_ns": time.time_ns()})

    def _fan_event(self, d: FanDecision) -> Any:
        plan: HookPlan = d.info["plan"]
        arg_type = "linux_binprm_arg" if plan.hook == "bprm_check_security" else "file_arg"
        args = []
        for a in plan.args or ():
            if a.type in PATH_TYPES:
                item: dict[str, Any] = {("linux_binprm_arg" if a.type == "linux_binprm" else
                                         "path_arg" if a.type == "path" else "file_arg"): {"path": d.path}}
                if a.label:
                    item["label"] = a.label
                args.append(item)
        if not plan.args:
            args.append({arg_type: {"path": d.path}})
        extra = {"errno": "EPERM"} if d.info["outcome"] != "allowed" else {}
        return self.sensor._event(self, plan, d.pid, d.info["binary"], args, d.info["actions"], d.info["outcome"],
                                  d.info["time_ns"], extra)


class LsmSensor:
    """The running lsm sensor (`sensorium.hookspecs.Sensor` and `PolicySensor`)."""

    supports_scope = True  # every mechanism honours PolicyView.scope; handles implement set_scope

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        opts = ctx.config or {}
        self.force_fallbacks = bool(opts.get("force_fallbacks", False))
        self.btf = opts.get("btf")
        self.guard = FanotifyGuard(self._on_fan_decisions, logging.getLogger("sensorium.sensor.lsm.fanotify"))
        self._handles: set[LsmPolicyHandle] = set()
        self._retval_ok: bool | None = None
        self._fan_probe: tuple[bool, str] | None = None
        self._ring: Any = None  # the engine's event ring, for the Sigkill-from-tracepoint fallback
        self.state = "stopped"

    # ---- Sensor -----------------------------------------------------------------------------------

    def start(self) -> None:
        # Nothing is attached until a policy asks for it; the fanotify group is created on first use and
        # each program's ring is handed to the host when it loads, so an agent without lsm policies costs
        # nothing here.
        self.state = "running"

    def stop(self) -> None:
        for h in list(self._handles):
            h.unload()
        self.guard.stop()
        if self._ring is not None:
            self._ring.stop()
            self._ring = None
        self.state = "stopped"

    def status(self) -> Mapping[str, Any]:
        from .rules import _lsm_loads

        ok, why = _lsm_loads(self.ctx.kernel)
        fan_ok, fan_why = self._fanotify_ok()
        return {"state": self.state, "bpf_lsm": ok if ok else f"unavailable: {why}",
                "fanotify": self.guard.status() if fan_ok else f"unavailable: {fan_why}",
                "policies": len(self._handles), "force_fallbacks": self.force_fallbacks}

    # ---- PolicySensor -----------------------------------------------------------------------------

    def _scope(self, view: PolicyView) -> Scope | None:
        """``view.scope`` checked: None (host-wide) or a `Scope` whose map entries can be built."""
        sc = getattr(view, "scope", None)
        if sc is None:
            return None
        if not isinstance(sc, Scope):
            raise PolicyLoadError("lsmhooks", f"expected a sensorium.hookspecs.Scope, got {type(sc).__name__}",
                                  field="scope")
        try:
            scope_entries(sc)
        except ValueError as exc:
            raise PolicyLoadError("lsmhooks", str(exc), field="scope") from None
        return sc

    def _plans(self, view: PolicyView) -> list[HookPlan]:
        plans = plan_section(view, self.ctx.kernel, self.btf, force="fallback" if self.force_fallbacks else None)
        for p in plans:
            if p.mechanism.startswith("fanotify"):
                ok, why = self._fanotify_ok()
                if not ok:
                    raise PolicyLoadError(p.where, f"{p.mechanism} cannot serve this hook here: {why}")
            if p.mechanism.startswith("cgroup/"):
                for s_i, sel in enumerate(p.spec.selectors):
                    for a in sel.actions:
                        if a.action == "Override" and a.argError not in (-1, 1) and not self._set_retval_ok():
                            raise PolicyLoadError(p.where, f"Override argError {a.argError}: this kernel's cgroup "
                                                           "programs can only answer EPERM (argError -1)",
                                                  field=f"spec.lsmhooks[{p.position}].selectors[{s_i}].matchActions")
                try:
                    netguard.compile_rules(p.spec.selectors)
                except ValueError as exc:
                    raise PolicyLoadError(p.where, str(exc), field=f"spec.lsmhooks[{p.position}].selectors") from None
            if p.mechanism.startswith("fanotify"):
                try:
                    self._fan_marks(p)
                except ValueError as exc:
                    raise PolicyLoadError(p.where, str(exc), field=f"spec.lsmhooks[{p.position}].selectors") from None
            if p.mechanism == sigkill.MECHANISM:
                sigkill.plan_syscalls(p, self.ctx, view.id)
            if p.mechanism == "bpf_lsm":
                try:
                    bpflsm.compile_hook(p)
                except ValueError as exc:
                    raise PolicyLoadError(p.where, str(exc), field=f"spec.lsmhooks[{p.position}]") from None
        return plans

    def _fanotify_ok(self) -> tuple[bool, str]:
        if self.guard.running:
            return True, ""
        if self._fan_probe is None:
            self._fan_probe = fanotify_available()
        return self._fan_probe

    def _set_retval_ok(self) -> bool:
        if self._retval_ok is None:
            self._retval_ok = netguard.cgroup_sock_supports_retval(self.ctx.build, self._open)
        return self._retval_ok

    def _open(self, path: Path) -> Any:
        from sensorium.bpf.libbpf import BpfObject

        # Not ctx.open_object: the host would keep the object until the sensor stops, while a policy's
        # objects must go when the policy is deleted.
        return BpfObject.open(path)

    def check_policy(self, policy: PolicyView) -> None:
        """See `PolicySensor.check_policy` (``policy.scope`` included)."""
        self._scope(policy)
        self._plans(policy)

    def load_policy(self, policy: PolicyView) -> LsmPolicyHandle:
        """See `PolicySensor.load_policy`: every mechanism bounded to ``policy.scope`` (None: host-wide);
        `prepare_policy`, `LsmPolicyHandle.commit` and `activate` in one step."""
        h = self.prepare_policy(policy)
        h.commit()
        return h.activate()

    def prepare_policy(self, policy: PolicyView) -> LsmPolicyHandle:
        """Round 1 of a transaction (`sensorium.hookspecs.TransactionalPolicySensor`): every program built,
        loaded and verified with its maps filled but inert, every fanotify rule made (marks are placed at
        commit); nothing attached. Raises `PolicyLoadError` after freeing what it made."""
        sc = self._scope(policy)
        plans = self._plans(policy)
        h = LsmPolicyHandle(self, policy, plans, sc)
        self._handles.add(h)  # so that stop() frees a prepared section nobody committed or aborted
        try:
            for p in plans:
                if p.mechanism.startswith("fanotify"):
                    self._load_fanotify(h, p)
                elif p.mechanism.startswith("cgroup/"):
                    self._load_net(h, p)
                elif p.mechanism == "bpf_lsm":
                    self._load_bpf_lsm(h, p)
                elif p.mechanism == sigkill.MECHANISM:
                    self._load_sigkill(h, p)
        except PolicyLoadError:
            h.unload()
            raise
        except Exception as exc:  # whatever failed, nothing of the section stays
            h.unload()
            where = getattr(exc, "_lsm_where", "lsmhooks")
            raise PolicyLoadError(where, f"{type(exc).__name__}: {exc}") from exc
        return h

    # ---- fanotify ---------------------------------------------------------------------------------

    def _fan_marks(self, p: HookPlan) -> list[tuple[str, int]]:
        kind = FAN_OPEN_EXEC_PERM if p.mechanism == "fanotify exec" else FAN_OPEN_PERM
        equal: list[str] = []
        prefix: list[str] = []
        for sel in p.spec.selectors:
            for m in sel.matchArgs:
                a = p.arg(m.indexes[0])
                if a is None or a.type not in PATH_TYPES:
                    continue
                if m.op == "Equal":
                    equal.extend(m.values)
                elif m.op == "Prefix":
                    prefix.extend(m.values)
        return plan_marks(kind, equal, prefix)

    def _load_fanotify(self, h: LsmPolicyHandle, p: HookPlan) -> None:
        kind = FAN_OPEN_EXEC_PERM if p.mechanism == "fanotify exec" else FAN_OPEN_PERM
        rule = FanRule(kind_mask=kind, marks=tuple(self._fan_marks(p)), decide=lambda pid, path: None)

        def decide(pid: int, path: str, _h: LsmPolicyHandle = h, _p: HookPlan = p,
                   _r: FanRule = rule) -> FanDecision | None:
            d = _h._fan_decide(_p, pid, path)
            if d is not None:
                d.rule = _r
                d.info["handle"] = _h
            return d

        rule.decide = decide
        rule.active = False  # until the transaction activates: marks placed at commit answer "allow"
        if not self.guard.running:
            try:
                self.guard.start()  # the group, before anything is marked (marks are the commit round's)
            except OSError as exc:
                raise PolicyLoadError(p.where, f"fanotify: {exc}") from None
        h._fan.append((rule, p))

    def _on_fan_decisions(self, decisions: list[FanDecision]) -> None:
        events = []
        for d in decisions:
            h: LsmPolicyHandle = d.info["handle"]
            try:
                events.append(h._fan_event(d))
                h.events += 1
            except Exception:
                h.errors += 1
                self.ctx.log.exception("building a process_lsm event")
        if events:
            self.ctx.emit(events)

    # ---- kernel programs (cgroup sock_addr, BPF LSM) ----------------------------------------------

    def _load_net(self, h: LsmPolicyHandle, p: HookPlan) -> None:
        rules = netguard.compile_rules(p.spec.selectors)
        probe = netguard.PROBE if self._set_retval_ok() else netguard.PROBE_NO_RETVAL
        obj = self._open(self.ctx.build(probe))
        g = netguard.NetGuard(hook=p.hook, policy_id=h.view.id, rules=rules, scope=h.scope,
                              enforce=h.mode == "enforcement", obj=obj, kind="cgroup")
        try:
            g.prepare()
        except Exception as exc:  # noqa: BLE001 - any failure to prepare is this section's load error
            g.close()
            raise PolicyLoadError(p.where, f"{p.mechanism}: {exc}") from None
        h.net_guards.append((p, g))
        h.rings.append(self.ctx.add_ring_buffer(g.obj.map("net_events"),
                                                lambda batch, _h=h, _p=p: self._decode_net(_h, _p, batch)))

    def _load_bpf_lsm(self, h: LsmPolicyHandle, p: HookPlan) -> None:
        prog = bpflsm.LsmProgram(p, policy_id=h.view.id, scope=h.scope,
                                 enforce=h.mode == "enforcement", build=self.ctx.build, open_object=self._open)
        try:
            prog.prepare()
        except Exception as exc:  # noqa: BLE001 - any failure to prepare is this section's load error
            prog.close()
            raise PolicyLoadError(p.where, f"bpf_lsm: {exc}") from None
        h.lsm_progs.append((p, prog))
        h.rings.append(self.ctx.add_ring_buffer(
            prog.events_map, lambda batch, _h=h, _p=p, _prog=prog: self._decode_lsm(_h, _p, batch, _prog)))

    def _load_sigkill(self, h: LsmPolicyHandle, p: HookPlan) -> None:
        from sensorium.hooks.ring import EventRing

        if self._ring is None:
            ring = EventRing(self.ctx, "lsm")
            ring.start()
            self._ring = ring
        plans = sigkill.plan_syscalls(p, self.ctx, h.view.id)
        g = sigkill.SigkillGuard(self._ring, self.ctx, h.view.id, h.view.name, h.mode)
        pin = os.path.join(h.pin_dir, str(p.position)) if h.pin_dir is not None else None
        if pin is not None:
            os.makedirs(pin, exist_ok=True)
        g.prepare(plans, h.scope, pin)  # all or nothing, raises PolicyLoadError
        h.sig_guards.append((p, g))

    def _decode_net(self, h: LsmPolicyHandle, p: HookPlan, batch: Sequence[bytes]) -> list[Any]:
        """A batch of a socket guard's ring -> its ``process_lsm`` events (the host's reader drains the ring)."""
        events = []
        for raw in batch:
            # a record of another policy or rule is malformed: counted, never a decision (nor a kill)
            ev = netguard.decode_event(raw, policy_id=h.view.id, nrules=len(p.spec.selectors) or 1)
            if ev is None:
                h.errors += 1
                continue
            sel_i = ev["rule"]
            actions = p.spec.selectors[sel_i].actions if p.spec.selectors else [MatchAction(action="Post")]
            # sock_addr programs cannot send signals: the agent kills on the record (BPF LSM kills in the kernel),
            # never itself (a policy matching the agent's own connections).
            if (p.mechanism.startswith("cgroup/") and ev["verdict"] == "blocked" and ev["action"] & netguard.A_KILL
                    and ev["pid"] != os.getpid()):
                try:
                    os.kill(ev["pid"], signal.SIGKILL)
                except OSError:
                    pass
            args = netguard.event_args(ev, p.args)
            extra: dict[str, Any] = {}
            if ev["verdict"] != "allowed":
                extra["errno"] = _errno_name(ev["err"] or 1)
            events.append(self._event(h, p, ev["pid"], None, args, actions, ev["verdict"], None, extra,
                                      ktime=ev["ktime"], comm=ev["comm"]))
            h.events += 1
        return events

    def _decode_lsm(self, h: LsmPolicyHandle, p: HookPlan, batch: Sequence[bytes], prog: Any) -> list[Any]:
        """A batch of a BPF LSM program's ring -> its ``process_lsm`` events."""
        events = []
        for raw in batch:
            ev = bpflsm.decode_event(raw, p, prog)
            if ev is None:
                h.errors += 1
                continue
            sel_i = ev["rule"]
            actions = p.spec.selectors[sel_i].actions if p.spec.selectors else [MatchAction(action="Post")]
            extra = {"errno": _errno_name(ev["err"] or 1)} if ev["verdict"] != "allowed" else {}
            events.append(self._event(h, p, ev["pid"], None, ev["args"], actions, ev["verdict"], None, extra,
                                      ktime=ev["ktime"], comm=ev["comm"]))
            h.events += 1
        return events

    # ---- events -----------------------------------------------------------------------------------

    def _event(self, h: LsmPolicyHandle, p: HookPlan, pid: int, binary: str | None, args: list[dict[str, Any]],
               actions: Sequence[MatchAction], outcome: str, time_ns: int | None, extra: Mapping[str, Any],
               *, ktime: int | None = None, comm: str | None = None) -> Any:
        process: dict[str, Any] | None = None
        parent: dict[str, Any] | None = None
        cache = getattr(self.ctx, "process_cache", None)
        if cache is not None:
            try:
                process, parent = cache.get(pid, ktime)
            except Exception:  # noqa: BLE001 - enrichment is best effort
                process = None
            if process is not None and binary is not None and exec_pending(process, binary):
                # fanotify asked while the opener's exec record is still in the exec ring: the cache has the
                # image before the exec. Leave the event to ProcessJoin, which holds it until the cache has
                # this binary's image (`{pid, binary}` without exec_id).
                process = parent = None
        if process is None:
            if binary is None:
                binary = ProcessFacts(pid).binary
            process = {"pid": pid, "binary": binary}
            if comm:
                process["comm"] = comm
        body: dict[str, Any] = {"process": process}
        if parent is not None:
            body["parent"] = parent
        body.update({"function_name": p.hook, "args": args, "action": ACTION_NAMES[_strongest(actions)],
                     "policy_name": h.view.name})
        if h.view.namespace:
            body["policy_namespace"] = h.view.namespace
        if p.spec.message:
            body["message"] = p.spec.message
        if p.spec.tags:
            body["tags"] = list(p.spec.tags)
        body["enforcement"] = {"mechanism": p.mechanism, "meaning": p.note, "mode": h.mode, "outcome": outcome,
                               **extra}
        if time_ns is None and ktime is None:
            time_ns = time.time_ns()
        if time_ns is not None:
            from sensorium.events import Event

            return Event("process_lsm", body, self.ctx.node_name, time_ns)
        return self.ctx.make_event("process_lsm", body, ktime)


def _errno_name(e: int) -> str:
    import errno as _e

    return _e.errorcode.get(abs(int(e)), str(e))


# LSM hooks the verifier budget loads lsm.bpf.c against (its one object, attached like policies do): a file,
# a binprm, a socket and a task argument.
BUDGET_HOOKS = ("file_open", "bprm_check_security", "socket_connect", "task_kill")


def _budget() -> list[Any]:
    from sensorium.hooks import selectors as S
    from sensorium.hooks.budget import TRACKING, engine_cases
    from sensorium.hookspecs import BudgetCase

    rodata = {"lsm_errno": struct.pack(f"<{S.MAX_SELECTORS}I", *([1] * S.MAX_SELECTORS))}
    cases: list[Any] = []
    lsm_needs = {"sens_lsm": frozenset({"lsm", "bpf_lsm"})}
    kinds = {"sens_lsm": (S.HOOK_RAW_TP, False)}
    for n, hook in enumerate(BUDGET_HOOKS):
        probe = bpflsm.LSM_PROBE
        tag, targets = f" ({hook})", {"sens_lsm": hook}
        if n == 0:  # every argument family once; the other hooks differ only in their prototype
            cases += engine_cases(probe, full=("sens_lsm",), needs=lsm_needs, src=S.FROM_RAW, rodata=rodata,
                                  kinds=kinds, tag=tag, targets=targets)
            cases += engine_cases(probe, full=(), others=("sens_tp", "sens_raw", "sens_sys_enter", "sens_sys_exit",
                                                          "sens_uprobe", "sens_uretprobe", *TRACKING), rodata=rodata)
        else:
            cases += engine_cases(probe, full=(), others=("sens_lsm",), needs=lsm_needs, src=S.FROM_RAW,
                                  rodata=rodata, kinds=kinds, tag=tag, targets=targets)
    # The socket guard: its rules are map contents (any policy verifies the same program).
    for probe, extra in ((netguard.PROBE, frozenset({"bpf_set_retval"})), (netguard.PROBE_NO_RETVAL, frozenset())):
        for prog in ("lsm_connect4", "lsm_connect6", "lsm_sendmsg4", "lsm_sendmsg6"):
            cases.append(BudgetCase(probe, prog, "any rules", None, frozenset({"cgroup_sock_addr"}) | extra))
        for prog in ("lsm_socket_connect", "lsm_socket_sendmsg"):
            cases.append(BudgetCase(probe, prog, "any rules", None, frozenset({"lsm", "bpf_lsm"}) | extra))
    return cases


@hookimpl
def sensorium_sensor() -> SensorSpec:
    return SensorSpec(
        name="lsm",
        description=("LSM hooks (lsmhooks): block before it happens; BPF LSM, else fanotify / cgroup sock_addr "
                     "fallbacks"),
        factory=LsmSensor,
        probes=[netguard.PROBE, bpflsm.LSM_PROBE],
        options=LsmOptions,
        policy_sections={"lsmhooks": LsmHookSpec},
        record_layouts={**netguard.RECORD_LAYOUTS, **bpflsm.RECORD_LAYOUTS},
        requires=frozenset({"btf"}),
        enabled_by_default=True,
        budget_cases=_budget,
    )

"""BPF LSM programs for lsmhooks items, where BPF LSM is active and its programs load.

Two program families:

* lsm.bpf.c: any hook whose arguments are files, paths, binprms, kernel strings or integers, served by
  the shared selector engine (sensorium/selectors.h, compiled by `sensorium.hooks.selectors.compile_hook`)
  with Override added: the selector's errno is returned from the hook (rodata ``lsm_errno``).
* sockaddr.bpf.c's lsm/socket_connect and lsm/socket_sendmsg programs: the destination address and port
  matched with the same rules as the cgroup sock_addr fallback (netguard.py).

Scope (`sensorium.hookspecs.Scope`; None = host-wide, no check): both families check it first in the
kernel with sens_task_in_scope (sensorium/scope.h: cgroup2 and v1 memory ancestry of the task), from a
scope map filled by `sensorium.bpf.scope.ScopeMap` before the program attaches; `LsmProgram.set_scope`
replaces it live.

Path arguments are resolved with the engine's bounded in-kernel walk (sensorium/path walk in
selectors.h, crossing mount points), which works on every hook; bpf_d_path is allowed only on some.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensorium.bpf.memory import KernelMemory, kernel_memory
from sensorium.bpf.scope import ScopeMap, scope_entries
from sensorium.hooks import kstructs
from sensorium.hooks import selectors as S
from sensorium.hooks.hookset import seed_follow, tracking_programs
from sensorium.hooks.plan import POLICY_INTS, without_override
from sensorium.hooks.probes import MODE_INACTIVE
from sensorium.hooks.render import EV as _EV
from sensorium.hooks.render import render_args
from sensorium.hookspecs import ProbeSource, Scope

from . import netguard

__all__ = ["LsmProgram", "compile_hook", "LSM_PROBE", "decode_event", "RECORD_LAYOUTS",
           "SOCKET_HOOKS"]

HERE = Path(__file__).resolve().parent
SOCKET_HOOKS = ("socket_connect", "socket_sendmsg")
RECORD_LAYOUTS: dict[str, type] = {}

# C integer type -> (size, signed, Tetragon JSON key)
_INTS = {
    "int": (4, True, "int_arg"), "unsigned int": (4, False, "uint_arg"), "long int": (8, True, "long_arg"),
    "long unsigned int": (8, False, "size_arg"), "long long int": (8, True, "long_arg"),
    "long long unsigned int": (8, False, "size_arg"), "short int": (2, True, "int_arg"),
    "short unsigned int": (2, False, "uint_arg"), "char": (1, True, "int_arg"), "unsigned char": (1, False, "uint_arg"),
    "_Bool": (1, False, "uint_arg"), "bool": (1, False, "uint_arg"), "size_t": (8, False, "size_arg"),
    "loff_t": (8, True, "long_arg"), "umode_t": (2, False, "uint_arg"), "u32": (4, False, "uint_arg"),
    "u64": (8, False, "size_arg"), "gfp_t": (4, False, "uint_arg"), "kuid_t": (4, False, "uint_arg"),
    "pid_t": (4, True, "int_arg"), "dev_t": (4, False, "uint_arg"), "fmode_t": (4, False, "uint_arg"),
}


# lsm.bpf.c: one object for every hook (the attach target is set at load time).
LSM_PROBE = ProbeSource(name="lsm", source=HERE / "lsm.bpf.c", include_dirs=(HERE,))


def _arg_plan(a: Any) -> S.ArgPlan:
    t = a.type
    if t == "file":
        return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_RAW, offset=a.index, json_key="file_arg", deref=S.DEREF_FILE,
                         label=a.label, type_name="file")
    if t == "path":
        return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_RAW, offset=a.index, json_key="path_arg", deref=S.DEREF_PATH,
                         label=a.label, type_name="path")
    if t == "linux_binprm":
        return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_RAW, offset=a.index, json_key="linux_binprm_arg",
                         deref=S.DEREF_BINPRM, label=a.label, type_name="linux_binprm")
    if t in kstructs.KTYPES:  # a kernel structure, read field by field in the kernel (capture.h)
        return kstructs.arg_plan(t, S.FROM_RAW, a.index, a.label)
    if t == "string":
        return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_RAW, offset=a.index, json_key="string_arg",
                         deref=S.DEREF_KERNEL_STR, label=a.label, type_name="string")
    if t in POLICY_INTS:
        # the C type decides the width (a policy "int" on an unsigned long is read as 8 bytes)
        size, signed, key = _INTS.get(a.ctype, (8, True, "long_arg"))
        if t not in ("int", "auto"):
            size, signed = POLICY_INTS[t]
            key = "size_arg" if t == "size_t" else ("long_arg" if size == 8 and signed else
                                                    "size_arg" if size == 8 else "int_arg" if signed else "uint_arg")
        return S.ArgPlan(kind=S.ARG_INT, from_=S.FROM_RAW, offset=a.index, json_key=key, size=size, signed=signed,
                         label=a.label, type_name=t)
    raise ValueError(f"argument {a.index} of type {t} cannot be read by BPF LSM programs yet "
                     "(file, path, linux_binprm, string, integers and the kernel structures of "
                     "sensorium.hooks.kstructs can)")


def compile_hook(plan: Any, policy_id: int = 0, hook_id: int = 0, cgroup_scoped: bool = False) -> Any:
    """Check (and compile) one item for BPF LSM; ValueError naming the problem."""
    if plan.hook in SOCKET_HOOKS:
        return netguard.compile_rules(plan.spec.selectors)
    args = [_arg_plan(a) for a in plan.args]
    position = {a.index: i for i, a in enumerate(plan.args)}
    try:
        compiled = S.compile_hook(policy_id=policy_id, hook_id=hook_id, kind=S.HOOK_RAW_TP, args=args,
                                  selectors=[without_override(s) for s in plan.spec.selectors],
                                  arg_position=position, cgroup_scoped=cgroup_scoped)
    except S.SelectorError as exc:
        raise ValueError(f"{exc.field}: {exc.reason}") from None
    errnos = []
    for sel in plan.spec.selectors:
        e = 0
        for a in sel.actions:
            if a.action == "Override":
                e = abs(int(a.argError or -1))
            elif a.action == "Sigkill" and not e:
                e = 1  # Tetragon's Sigkill on an LSM hook also fails the call: the process is gone anyway
        errnos.append(e)
    return compiled, args, errnos


class LsmProgram:
    """One non-socket lsmhooks item as a BPF LSM program (lsm.bpf.c)."""

    def __init__(self, plan: Any, *, policy_id: int, scope: Scope | None, enforce: bool,
                 build: Callable[[ProbeSource], Path], open_object: Callable[[Path], Any]) -> None:
        self.plan = plan
        self.policy_id = policy_id
        self.scope = scope
        self._scope_map: ScopeMap | None = None
        self.enforce = enforce
        self._build, self._open = build, open_object
        self.obj: Any = None
        self.net: Any = None
        self.compiled: Any = None
        self.args: list[S.ArgPlan] = []
        self.errnos: list[int] = []
        self._wanted: set[str] = set()
        self.active = False
        self.pin_dir: str | None = None

    @property
    def events_map(self) -> Any:
        return self.net.obj.map("net_events") if self.net is not None else self.obj.map("sens_events")

    @property
    def kernel_memory(self) -> KernelMemory:
        """Its object's maps (its own ring included) and program, in the kernel's figures."""
        obj = self.net.obj if self.net is not None else self.obj
        return kernel_memory([obj] if obj is not None else [])

    def load(self) -> None:
        """`prepare`, `attach` and `activate` in one step."""
        self.prepare()
        self.attach()
        self.activate()

    def prepare(self) -> None:
        """Round 1 of a transaction: compile, load (verify), the mode map inert (``MODE_INACTIVE``: the program
        returns at once, posts and refuses nothing), the scope; nothing attached."""
        if self.plan.hook in SOCKET_HOOKS:
            self._load_net()
            return
        if self.scope is not None:
            scope_entries(self.scope)  # ValueError naming the problem, before anything loads
        self.compiled, self.args, self.errnos = compile_hook(self.plan, self.policy_id, self.plan.position,
                                                             cgroup_scoped=self.scope is not None)
        obj = self.obj = self._open(self._build(LSM_PROBE))
        obj.program("sens_lsm").set_attach_target(self.plan.hook)
        obj.set_rodata("sens_cfg", self.compiled.rodata())
        errnos = self.errnos + [0] * (S.MAX_SELECTORS - len(self.errnos))
        obj.set_rodata("lsm_errno", struct.pack(f"<{S.MAX_SELECTORS}I", *errnos))
        wanted = {"sens_lsm"} | tracking_programs(self.compiled.flags)
        for name, prog in obj.programs.items():
            prog.set_autoload(name in wanted)
        if self.scope is None:  # host-wide: never checked, cannot be scoped later (the rodata says so)
            obj.map("sens_scope").set_max_entries(64)
        if not self.compiled.flags & S.CFG_CAP_CHANGES:  # (a hash map is preallocated)
            obj.map("sens_execcaps").set_max_entries(64)
        obj.map("sens_stacks").set_max_entries(1)  # stack traces are refused on lsmhooks (LsmHookSpec.rules)
        obj.load()
        obj.map("sens_mode").update(struct.pack("<I", 0), struct.pack("<I", MODE_INACTIVE))
        if self.scope is not None:  # before anything attaches: a scoped program is never live unscoped
            self._scope_map = ScopeMap(obj.map("sens_scope"))
            self._scope_map.set(self.scope)
        self._wanted = wanted

    def attach(self) -> None:
        """Round 2: the followChildren seed and process tracking, then the LSM program; inert until
        `activate`. Raises on a refused attach (the caller closes the object)."""
        if self.net is not None:
            self.net.attach()
            return
        obj = self.obj
        seed_follow(self.compiled, obj)  # the hook library's follow seeding
        for name in ("sens_exec", "sens_exit", "sens_fork"):
            if name in self._wanted:
                obj.program(name).attach()
        obj.program("sens_lsm").attach()

    def activate(self) -> None:
        """Round 3: the real mode (from here on the program posts and refuses)."""
        if self.net is not None:
            self.net.activate()
            return
        self.active = True
        self.set_enforce(self.enforce)

    def pin(self, directory: str) -> None:
        """Pin the program's links and maps under ``directory`` (bpffs, existing). Raises OSError (nothing
        left pinned)."""
        if self.net is not None:
            self.net.pin(directory)
            return
        try:
            for n, link in enumerate(self.obj.links):
                link.pin(os.path.join(directory, f"link{n}"))
            for m in self.obj.maps.values():
                if m.type != 27 and "." not in m.name:  # not the ring, not .rodata/.bss
                    m.pin(os.path.join(directory, f"map_{m.name}"))
        except Exception:
            self._unpin(directory)
            raise
        self.pin_dir = directory

    def _unpin(self, directory: str) -> None:
        for link in self.obj.links:
            try:
                link.unpin()
            except OSError:
                pass
        for m in self.obj.maps.values():
            try:
                os.unlink(os.path.join(directory, f"map_{m.name}"))
            except OSError:
                pass

    def _load_net(self) -> None:
        rules = netguard.compile_rules(self.plan.spec.selectors)
        obj = self._open(self._build(netguard.PROBE))
        self.net = netguard.NetGuard(hook=self.plan.hook, policy_id=self.policy_id, rules=rules, scope=self.scope,
                                     enforce=self.enforce, obj=obj, kind="lsm")
        self.net.prepare()

    def set_scope(self, scope: Scope) -> None:
        """Replace the scope live (map updates). A program loaded host-wide has no check: ValueError."""
        if not isinstance(scope, Scope):
            raise TypeError(f"set_scope expects a sensorium.hookspecs.Scope, got {type(scope).__name__}")
        if self.net is not None:
            self.net.set_scope(scope)
        elif self._scope_map is None:
            raise ValueError("this policy was loaded host-wide: reload it with a scope")
        else:
            self._scope_map.set(scope)
        self.scope = scope

    def set_enforce(self, enforce: bool) -> None:
        self.enforce = enforce
        if self.net is not None:
            self.net.set_enforce(enforce)
        elif self.obj is not None and self.active:  # before `activate` the mode map stays inert
            self.obj.map("sens_mode").update(struct.pack("<I", 0), struct.pack("<I", 0 if enforce else 1))

    def counters(self) -> dict[str, int]:
        if self.net is not None:
            return self.net.counters()
        out: dict[str, int] = {}
        if self.obj is None:
            return out
        names = ("posted", "dropped", "filtered", "signals", "signal_errors", "rate_limited")
        try:
            return self.obj.map("sens_counters").counters(names)
        except Exception:  # noqa: BLE001 - status must not raise
            return out

    def close(self, *, keep_pinned: bool = False) -> None:
        """Detach and free, pins included; ``keep_pinned``: leave what is pinned attached (agent stop with
        persistent enforcement)."""
        if self.net is not None:
            self.net.close(keep_pinned=keep_pinned)
            self.net = None
        if self.obj is not None:
            if not keep_pinned and self.pin_dir is not None:
                self._unpin(self.pin_dir)
            self.obj.close(keep_pinned=keep_pinned)
            self.obj = None


def decode_event(raw: bytes, plan: Any, prog: LsmProgram) -> dict[str, Any] | None:
    """A sens_event record of an LSM program -> {pid, ktime, rule, verdict, args, err}; None when the record is
    malformed (`netguard.decode_event`, `render_args`) or names a selector the hook does not have."""
    if prog.net is not None:
        ev = netguard.decode_event(raw, policy_id=prog.policy_id, nrules=len(prog.net.rules))
        if ev is None:
            return None
        ev["args"] = netguard.event_args(ev, plan.args)
        return ev
    if len(raw) < _EV.size:
        return None
    (rtype, _f, _size, ktime, pid, tid, policy_id, hook_id, _retval, cgroup_id, sel, actions, flags, _nargs,
     _data_len) = _EV.unpack_from(raw)
    if rtype != S.REC_HOOK or (policy_id, hook_id) != (prog.policy_id, prog.plan.position):  # its own ring: its own ids
        return None
    args = render_args(raw, prog.args)  # the hook library's rules: a cut or inconsistent record is no event
    if args is None:
        return None
    # The selector that matched (the kernel writes MAX_SELECTORS when the hook has none: it posts every call).
    if sel < len(prog.errnos):
        rule, err = sel, prog.errnos[sel]
    elif not prog.errnos and sel == S.MAX_SELECTORS:
        rule, err = 0, 0
    else:
        return None
    blocking = bool(err) or bool(actions & (S.ACT_SIGKILL | S.ACT_SIGNAL))
    monitoring = bool(flags & S.EV_MONITOR)
    verdict = "allowed" if not blocking else "would have blocked" if monitoring else "blocked"
    return {"pid": pid, "tid": tid, "ktime": ktime, "rule": rule, "verdict": verdict,
            "args": args, "err": err, "cgroup_id": cgroup_id, "comm": None}

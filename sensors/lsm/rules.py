"""Checking an ``lsmhooks`` section against this kernel and choosing what serves each hook.

`plan_section` turns the validated `LsmHookSpec` items of a `PolicyView` into `HookPlan`s: the hook's
BTF signature, its declared arguments with their resolved types, and the mechanism that serves it here
(`MECHANISMS` says what each one means for the user). Every problem is a `PolicyLoadError` naming the
hook and the field, raised before anything is loaded.

Also here: `ProcessFacts`, the user-space evaluation of selectors used by the fanotify mechanism (the
kernel-side mechanisms compile the same selectors into maps). The policy's scope is the contract's
`sensorium.hookspecs.Scope`, decided in user space with `sensorium.scope.process_in_scope`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from sensorium.bpf.btf import LsmHookSig, lsm_hooks
from sensorium.hooks import kstructs
from sensorium.hooks.selectors import ops_problem
from sensorium.hookspecs import PolicyLoadError, PolicyView
from sensorium.policy import CAPABILITIES, INT_ARG_TYPES, MatchAction, Selector
from sensorium_sensors.lsm.schema import LsmHookSpec

__all__ = ["HookPlan", "MECHANISMS", "plan_section", "ProcessFacts", "first_match",
           "cgroup2_root"]



def cgroup2_root() -> str:
    """Where cgroup2 is mounted (/sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on pure v2 ones)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return "/sys/fs/cgroup"

# What serves a hook, and what that changes in meaning compared with a BPF LSM program.
MECHANISMS: Mapping[str, str] = {
    "bpf_lsm": "BPF LSM program: decided in the kernel before the operation; Override returns the errno",
    "fanotify": ("fanotify permission event decided by the agent in user space: pre-emptive (the file is "
                 "never opened), always EPERM; if the agent dies the kernel allows pending and later opens "
                 "(fail-open), while the agent is stopped openers of protected files wait"),
    "fanotify exec": ("fanotify FAN_OPEN_EXEC_PERM decided by the agent in user space: the exec fails with "
                      "EPERM before the binary runs; fail-open if the agent dies"),
    "cgroup/connect4+connect6": ("cgroup sock_addr programs: pre-emptive in the kernel; attached to the scope's "
                                 "cgroup2 directories, or at the cgroup2 root with an in-kernel scope check "
                                 "(v1 memory cgroups, host processes, host-wide policies)"),
    "cgroup/sendmsg4+sendmsg6": ("cgroup sock_addr programs, placed and scoped as connect's: unconnected UDP sends "
                                 "with an address; connected sockets are covered by connect"),
    "sigkill from tracepoint": ("raw tracepoint sys_enter of the syscalls that reach this hook, Sigkill in the "
                                "kernel: the call runs first and the process dies before it returns; Override is "
                                "served as Sigkill; arguments are the values the process passed"),
}

# Hooks with a fallback where BPF LSM programs cannot load.
FALLBACKS: Mapping[str, str] = {
    "file_open": "fanotify",
    "bprm_check_security": "fanotify exec",
    "socket_connect": "cgroup/connect4+connect6",
    "socket_sendmsg": "cgroup/sendmsg4+sendmsg6",
}

# Policy argument type -> the C parameter types it can read.
_PTR_TYPES: Mapping[str, tuple[str, ...]] = {
    "file": ("struct file *",),
    "path": ("struct path *",),
    "dentry": ("struct dentry *",),
    "linux_binprm": ("struct linux_binprm *",),
    "sock": ("struct sock *", "struct socket *"),
    "sockaddr": ("struct sockaddr *",),
    "cred": ("struct cred *",),
    "string": ("char *",),
}
_AUTO = {c: t for t, cs in _PTR_TYPES.items() for c in cs}
PATH_TYPES = ("file", "path", "dentry", "linux_binprm")
PATH_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
NET_OPS = ("DAddr", "NotDAddr", "DPort", "NotDPort", "Family", "Protocol")


@dataclasses.dataclass(frozen=True)
class ArgPlan:
    index: int
    type: str          # resolved policy type (never "auto")
    ctype: str
    label: str | None


@dataclasses.dataclass(frozen=True)
class HookPlan:
    """One ``lsmhooks`` item ready to load."""

    position: int
    spec: LsmHookSpec
    sig: LsmHookSig
    args: tuple[ArgPlan, ...]
    mechanism: str

    @property
    def hook(self) -> str:
        return self.spec.hook

    @property
    def where(self) -> str:
        return f"lsmhooks[{self.position}] {self.spec.hook}"

    @property
    def note(self) -> str:
        return MECHANISMS[self.mechanism]

    def arg(self, index: int) -> ArgPlan | None:
        for a in self.args:
            if a.index == index:
                return a
        return None


def _lsm_loads(kernel: Any) -> tuple[bool, str]:
    """Whether BPF LSM programs can run here, and if not, why (for messages)."""
    if kernel is None:
        return False, "no kernel probe"
    active = bool(getattr(kernel, "bpf_lsm", False))
    pt = getattr(kernel, "program_types", {}) or {}
    res = pt.get("lsm")
    ok = bool(res is not None and getattr(res, "ok", False))
    if ok and active:
        return True, ""
    if not active:
        return False, "BPF LSM is not active ('bpf' missing from /sys/kernel/security/lsm; boot with lsm=...,bpf)"
    err = getattr(res, "error", None) if res is not None else "not probed"
    return False, f"BPF LSM programs are refused by this kernel ({err})"


def plan_section(view: PolicyView, kernel: Any, btf: Path | str | None = None,
                 *, cgroup_sock_ok: bool | None = None, force: str | None = None) -> list[HookPlan]:
    """Check every item of ``view`` and choose its mechanism; raise `PolicyLoadError` on the first problem.

    ``force`` ("fallback") skips BPF LSM even where it loads (tests of the fallbacks on a capable kernel),
    except for a hook whose fallback is fanotify when the section persists (``view.pin_dir``): fanotify
    cannot outlive the agent, so BPF LSM serves it wherever it loads.
    """
    try:
        hooks = lsm_hooks(btf)
    except (OSError, ValueError) as exc:
        raise PolicyLoadError("lsmhooks", f"cannot read the kernel's BTF to check LSM hooks: {exc}") from None
    lsm_ok, lsm_why = _lsm_loads(kernel)
    really_ok = lsm_ok
    if force == "fallback":
        lsm_ok, lsm_why = False, "fallbacks forced by configuration"
    persist = getattr(view, "pin_dir", None) is not None
    if cgroup_sock_ok is None:
        pt = getattr(kernel, "program_types", {}) or {}
        r = pt.get("cgroup_sock_addr")
        cgroup_sock_ok = bool(r is not None and getattr(r, "ok", False))
    plans: list[HookPlan] = []
    for i, item in enumerate(view.items):
        if not isinstance(item, LsmHookSpec):
            raise PolicyLoadError(f"lsmhooks[{i}]", f"expected an lsmhooks item, got {type(item).__name__}")
        where = f"lsmhooks[{i}] {item.hook}"
        field = f"spec.lsmhooks[{i}]"
        sig = hooks.get(item.hook)
        if sig is None:
            import difflib

            near = difflib.get_close_matches(item.hook, list(hooks), n=5, cutoff=0.6)
            raise PolicyLoadError(where, f"no LSM hook {item.hook!r} in this kernel ({len(hooks)} hooks; "
                                         f"similar: {', '.join(near) or 'none'})", field=f"{field}.hook")
        args = _check_args(item, sig, where, field)
        mech = "bpf_lsm" if lsm_ok else FALLBACKS.get(item.hook)
        if persist and really_ok and mech is not None and mech.startswith("fanotify"):
            mech = "bpf_lsm"  # a kernel mechanism outlives the agent; fanotify cannot
        if mech is None and item.hook in _sigkill_hooks():
            pt = getattr(kernel, "program_types", {}) or {}
            r = pt.get("raw_tp")
            if r is not None and getattr(r, "ok", False):
                from .sigkill import MECHANISM

                mech = MECHANISM
        if mech is None:
            served = ", ".join(f"{h} ({m})" for h, m in FALLBACKS.items()) + \
                ", and Sigkill from a tracepoint for " + ", ".join(sorted(_sigkill_hooks()))
            raise PolicyLoadError(where, f"no mechanism can serve this hook here: {lsm_why}, and {item.hook} has "
                                         f"no fallback (fallbacks exist for: {served})", field=f"{field}.hook")
        if mech.startswith("cgroup/") and not cgroup_sock_ok:
            raise PolicyLoadError(where, f"{lsm_why}, and the fallback {mech} cannot load either "
                                         "(cgroup sock_addr programs refused)", field=f"{field}.hook")
        plan = HookPlan(i, item, sig, args, mech)
        _check_selectors(plan, field)
        plans.append(plan)
    return plans


def _sigkill_hooks() -> Any:
    from .sigkill import SYSCALLS

    return SYSCALLS


def _check_args(item: LsmHookSpec, sig: LsmHookSig, where: str, field: str) -> tuple[ArgPlan, ...]:
    out = []
    seen = set()
    for j, a in enumerate(item.args):
        f = f"{field}.args[{j}]"
        if a.index >= len(sig.params):
            raise PolicyLoadError(where, f"argument index {a.index} is out of range: {sig.c_signature()} has "
                                         f"{len(sig.params)} argument(s) (indexes 0..{len(sig.params) - 1})",
                                  field=f"{f}.index")
        if a.index in seen:
            raise PolicyLoadError(where, f"argument index {a.index} is declared twice", field=f"{f}.index")
        seen.add(a.index)
        p = sig.params[a.index]
        t = a.type
        if t == "auto":
            t = "int" if p.is_int else _AUTO.get(p.ctype) or kstructs.AUTO.get(p.ctype, "")
            if not t:
                raise PolicyLoadError(where, f"argument {a.index} ({p.ctype} {p.name}) has no readable type; "
                                             "Sensorium reads file, path, dentry, linux_binprm, sock, sockaddr, "
                                             "cred, string and integers", field=f"{f}.type")
        elif t in INT_ARG_TYPES:
            if not p.is_int:
                raise PolicyLoadError(where, f"type {t} does not match argument {a.index} of "
                                             f"{sig.c_signature()}: it is {p.ctype}", field=f"{f}.type")
        elif t in kstructs.KTYPES:  # a kernel structure, read field by field (sensorium.hooks.kstructs)
            kt = kstructs.KTYPES[t]
            if p.ctype not in kt.ctypes:
                raise PolicyLoadError(where, f"type {t} does not match argument {a.index} of "
                                             f"{sig.c_signature()}: it is {p.ctype} "
                                             f"(type {t} reads {' or '.join(kt.ctypes)})", field=f"{f}.type")
        elif t in _PTR_TYPES:
            if p.ctype not in _PTR_TYPES[t]:
                raise PolicyLoadError(where, f"type {t} does not match argument {a.index} of "
                                             f"{sig.c_signature()}: it is {p.ctype} "
                                             f"(type {t} reads {' or '.join(_PTR_TYPES[t])})", field=f"{f}.type")
        else:
            raise PolicyLoadError(where, f"type {t} cannot be read from an LSM hook argument", field=f"{f}.type")
        out.append(ArgPlan(a.index, t, p.ctype, a.label))
    return tuple(out)


def _check_selectors(plan: HookPlan, field: str) -> None:
    where, mech = plan.where, plan.mechanism
    for s_i, sel in enumerate(plan.spec.selectors):
        sf = f"{field}.selectors[{s_i}]"
        for m_i, m in enumerate(sel.matchArgs):
            for idx in m.indexes:
                a = plan.arg(idx)
                if a is None:
                    declared = ", ".join(str(x.index) for x in plan.args) or "none"
                    raise PolicyLoadError(where, f"matchArgs refers to argument {idx}, which is not declared in "
                                                 f"args (declared: {declared})", field=f"{sf}.matchArgs[{m_i}]")
                if a.type in kstructs.KTYPES:  # Tetragon's operators on a kernel structure, in the planner's words
                    kt = kstructs.KTYPES[a.type]
                    found = ops_problem(m.op, kt.ops, kt.why, a.type)
                    if found:
                        raise PolicyLoadError(where, found[1], field=f"{sf}.matchArgs[{m_i}]{found[0]}")
                    continue
                ok_ops = PATH_OPS if a.type in PATH_TYPES else NET_OPS if a.type in ("sock", "sockaddr") else \
                    ("Equal", "NotEqual", "GT", "LT", "Mask") if a.type in INT_ARG_TYPES else \
                    ("Equal", "NotEqual", "Prefix", "Postfix")
                if m.op not in ok_ops:
                    raise PolicyLoadError(where, f"operator {m.operator} does not apply to argument {idx} "
                                                 f"(type {a.type}; operators: {', '.join(ok_ops)})",
                                          field=f"{sf}.matchArgs[{m_i}].operator")
        if sel.matchReturnArgs or sel.matchReturnActions:
            raise PolicyLoadError(where, "LSM hooks have no return value to match", field=sf)
        for a_i, act in enumerate(sel.actions):
            af = f"{sf}.matchActions[{a_i}]"
            if act.action in ("TrackSock", "UntrackSock"):
                raise PolicyLoadError(where, f"{act.action} is served on kprobes kernel-function hooks, not on LSM "
                                             "hooks", field=f"{af}.action")
            if act.action in ("GetUrl", "DnsLookup"):
                raise PolicyLoadError(where, f"{act.action} is not supported on LSM hooks yet (it is served on "
                                             "kprobes, tracepoints, uprobes and usdts)", field=f"{af}.action")
            if act.action == "Override" and mech.startswith("fanotify") and act.argError not in (-1, 1):
                raise PolicyLoadError(where, f"Override argError {act.argError} cannot be served by {mech}: a "
                                             "fanotify decision can only fail the call with EPERM (argError -1)",
                                      field=f"{af}.argError")
        if mech.startswith("fanotify"):
            _check_fanotify_selector(plan, sel, sf)
        elif mech.startswith("cgroup/") or (mech == "bpf_lsm" and plan.hook in ("socket_connect", "socket_sendmsg")):
            _check_sock_selector(plan, sel, sf)
    if mech.startswith("fanotify") and not plan.spec.selectors:
        raise PolicyLoadError(where, f"{mech} needs to know which files to guard: add a selector with matchArgs "
                                     "Equal or Prefix on the file argument (marking every file would route every "
                                     "open on the host through the agent)", field=f"{field}.selectors")


def _check_fanotify_selector(plan: HookPlan, sel: Selector, sf: str) -> None:
    path_args = [m for m in sel.matchArgs if (a := plan.arg(m.indexes[0])) is not None and a.type in PATH_TYPES]
    if not any(m.op in ("Equal", "Prefix") for m in path_args):
        raise PolicyLoadError(plan.where, f"{plan.mechanism} needs each selector to name the files it guards: add "
                                          "matchArgs with operator Equal or Prefix on the file argument",
                              field=f"{sf}.matchArgs")
    for m in path_args:
        for v in m.values if m.op in ("Equal", "Prefix") else ():
            if not v.startswith("/"):
                raise PolicyLoadError(plan.where, f"path {v!r} is not absolute (the kernel reports absolute paths)",
                                      field=f"{sf}.matchArgs")
    for p in sel.matchPIDs:
        if p.isNamespacePID:
            raise PolicyLoadError(plan.where, f"matchPIDs isNamespacePID is not supported by {plan.mechanism}",
                                  field=f"{sf}.matchPIDs")


def _check_sock_selector(plan: HookPlan, sel: Selector, sf: str) -> None:
    mech = plan.mechanism
    if sel.matchBinaries or sel.matchNamespaces or sel.matchCapabilities:
        raise PolicyLoadError(plan.where, f"{mech} decides in the kernel per cgroup and cannot evaluate "
                                          "matchBinaries, matchNamespaces or matchCapabilities; scope the policy "
                                          "to the workload's cgroup instead", field=sf)
    for p in sel.matchPIDs:
        if p.isNamespacePID or p.followForks:
            raise PolicyLoadError(plan.where, f"matchPIDs isNamespacePID/followForks are not supported by {mech}",
                                  field=f"{sf}.matchPIDs")
    for a in sel.actions:
        if a.action == "Signal":
            raise PolicyLoadError(plan.where, f"the Signal action is not supported by {mech}",
                                  field=f"{sf}.matchActions")
    for m in sel.matchArgs:
        if m.op in ("DAddr", "NotDAddr"):
            from .netguard import parse_cidr  # local: keeps this module free of socket details

            for v in m.values:
                try:
                    parse_cidr(v)
                except ValueError as exc:
                    raise PolicyLoadError(plan.where, str(exc), field=f"{sf}.matchArgs") from None
        if m.op in ("DPort", "NotDPort"):
            for v in m.values:
                if not v.isdigit() or not 0 <= int(v) <= 65535:
                    raise PolicyLoadError(plan.where, f"port {v!r} is not a number 0..65535", field=f"{sf}.matchArgs")
        if m.op == "Family":
            for v in m.values:
                if v not in ("2", "10", "AF_INET", "AF_INET6"):
                    raise PolicyLoadError(plan.where, f"family {v!r} is not AF_INET (2) or AF_INET6 (10)",
                                          field=f"{sf}.matchArgs")
        if m.op == "Protocol":
            for v in m.values:
                if v not in ("6", "17", "IPPROTO_TCP", "IPPROTO_UDP"):
                    raise PolicyLoadError(plan.where, f"protocol {v!r} is not IPPROTO_TCP (6) or IPPROTO_UDP (17)",
                                          field=f"{sf}.matchArgs")


# --------------------------------------------------------------------------------------------------
# User-space selector evaluation (fanotify)
# --------------------------------------------------------------------------------------------------


class ProcessFacts:
    """What selectors ask about a process, read lazily from /proc (each fact at most once per event)."""

    _NS: ClassVar[dict[str, str]] = {
        "Uts": "uts", "Ipc": "ipc", "Mnt": "mnt", "Pid": "pid", "PidForChildren": "pid_for_children",
        "Net": "net", "Time": "time", "TimeForChildren": "time_for_children", "Cgroup": "cgroup", "User": "user"}

    def __init__(self, pid: int, proc: str = "/proc") -> None:
        self.pid = pid
        self._proc = proc
        self._c: dict[str, Any] = {}

    def _read(self, name: str) -> str:
        try:
            with open(f"{self._proc}/{self.pid}/{name}") as f:
                return f.read()
        except OSError:
            return ""

    @property
    def cgroup2(self) -> str | None:
        if "cg" not in self._c:
            cg = None
            for line in self._read("cgroup").splitlines():
                if line.startswith("0::"):
                    cg = line[3:]
            self._c["cg"] = cg
        return self._c["cg"]

    @property
    def binary(self) -> str:
        if "exe" not in self._c:
            try:
                self._c["exe"] = os.readlink(f"{self._proc}/{self.pid}/exe")
            except OSError:
                self._c["exe"] = ""
        return self._c["exe"]

    def status(self) -> Mapping[str, str]:
        if "status" not in self._c:
            d = {}
            for line in self._read("status").splitlines():
                k, _, v = line.partition(":")
                d[k] = v.strip()
            self._c["status"] = d
        return self._c["status"]

    @property
    def ppid(self) -> int:
        try:
            return int(self.status().get("PPid", "0"))
        except ValueError:
            return 0

    def ancestors(self, limit: int = 64) -> Iterable[ProcessFacts]:
        pid, n = self.ppid, 0
        while pid > 0 and n < limit:
            f = ProcessFacts(pid, self._proc)
            yield f
            pid, n = f.ppid, n + 1

    def ns(self, kind: str) -> int:
        try:
            return os.stat(f"{self._proc}/{self.pid}/ns/{self._NS[kind]}").st_ino
        except OSError:
            return 0

    def caps(self, which: str) -> int:
        key = {"Effective": "CapEff", "Permitted": "CapPrm", "Inheritable": "CapInh"}[which]
        try:
            return int(self.status().get(key, "0"), 16)
        except ValueError:
            return 0


def _path_match(op: str, values: Sequence[str], path: str) -> bool:
    if op == "Equal":
        return path in values
    if op == "NotEqual":
        return path not in values
    if op == "Prefix":
        return any(path.startswith(v) for v in values)
    if op == "NotPrefix":
        return not any(path.startswith(v) for v in values)
    if op == "Postfix":
        return any(path.endswith(v) for v in values)
    if op == "NotPostfix":
        return not any(path.endswith(v) for v in values)
    return False


def _binary_match(op: str, values: Sequence[str], binary: str) -> bool:
    if op == "In":
        return binary in values
    if op == "NotIn":
        return binary not in values
    return _path_match(op, values, binary)


def selector_matches(plan: HookPlan, sel: Selector, path_by_index: Mapping[int, str], facts: ProcessFacts) -> bool:
    """Whether every filter of ``sel`` holds for this call (AND within a selector)."""
    for m in sel.matchArgs:
        for idx in m.indexes:
            v = path_by_index.get(idx)
            if v is None or not _path_match(m.op, m.values, v):
                return False
    for b in sel.matchBinaries:
        ok = _binary_match(b.operator, b.values, facts.binary)
        if not ok and b.followChildren and b.operator in ("In", "Prefix", "Postfix"):
            ok = any(_binary_match(b.operator, b.values, a.binary) for a in facts.ancestors())
        if not ok:
            return False
    for p in sel.matchPIDs:
        pids = {facts.pid} | ({a.pid for a in facts.ancestors()} if p.followForks else set())
        hit = bool(pids & set(p.values))
        if hit != (p.operator == "In"):
            return False
    for n in sel.matchNamespaces:
        mine = facts.ns(n.namespace)
        vals = {ProcessFacts(os.getpid()).ns(n.namespace) if v == "host_ns" else int(v) for v in n.values}
        if (mine in vals) != (n.operator == "In"):
            return False
    for c in sel.matchCapabilities:
        have = facts.caps(c.type)
        hit = any(have & (1 << CAPABILITIES[v.upper()]) for v in c.values)
        if hit != (c.operator == "In"):
            return False
    return True


def first_match(plan: HookPlan, path_by_index: Mapping[int, str],
                facts: ProcessFacts) -> tuple[int, list[MatchAction]] | None:
    """(selector index, actions) of the first selector that matches, as Tetragon evaluates them; None if none.
    A hook without selectors matches every call with Post."""
    if not plan.spec.selectors:
        return -1, [MatchAction(action="Post")]
    for i, sel in enumerate(plan.spec.selectors):
        if selector_matches(plan, sel, path_by_index, facts):
            return i, sel.actions
    return None

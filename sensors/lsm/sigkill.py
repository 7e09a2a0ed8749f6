"""The last-resort fallback: an LSM hook served by the syscalls that reach it, with Sigkill at syscall entry.

Where BPF LSM cannot load and a hook has no pre-emptive fallback (fanotify, cgroup sock_addr), a hook in
`SYSCALLS` is served by raw tracepoint sys_enter programs of the hook library's syscall hooks
(`sensorium.hooks.syscalls`, filtered by syscall number in the kernel): each LSM argument is read from the
syscall parameter that carries it (paths made absolute and normalised in the kernel), the selectors are
the policy's, and Override becomes Sigkill. The meaning changes and the status says so: **the call runs
first** (the process is killed on its way back to user space), a path is the one the process passed
(not a file the kernel resolved through symlinks), and only the listed syscalls are covered (io_uring
and other entry points are not).
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any

from sensorium.hooks.syscalls import SyscallItem
from sensorium.hookspecs import PolicyLoadError, Scope
from sensorium.policy import ArgSpec, MatchAction, MatchArg, Selector

__all__ = ["SYSCALLS", "MECHANISM", "NOTE", "plan_syscalls", "SigkillGuard"]

MECHANISM = "sigkill from tracepoint"
NOTE = ("raw tracepoint sys_enter of the syscalls that reach this hook, Sigkill in the kernel: the call runs "
        "first and the process dies before it returns; Override is served as Sigkill; arguments are the values "
        "the process passed (paths made absolute, symlinks not followed); other entry points (io_uring) are "
        "not covered")

# LSM hook -> [(syscall, {LSM argument index: (syscall parameter, syscall-side type)})]
SYSCALLS: Mapping[str, Sequence[tuple[str, Mapping[int, tuple[int, str]]]]] = {
    "task_kill": [("kill", {2: (1, "int")}), ("tkill", {2: (1, "int")}), ("tgkill", {2: (2, "int")})],
    "path_unlink": [("unlink", {1: (0, "string")}), ("unlinkat", {1: (1, "string")})],
    "inode_unlink": [("unlink", {1: (0, "string")}), ("unlinkat", {1: (1, "string")})],
    "path_rmdir": [("rmdir", {1: (0, "string")}), ("unlinkat", {1: (1, "string")})],
    "inode_rmdir": [("rmdir", {1: (0, "string")}), ("unlinkat", {1: (1, "string")})],
    "path_mkdir": [("mkdir", {1: (0, "string"), 2: (1, "int")}), ("mkdirat", {1: (1, "string"), 2: (2, "int")})],
    "inode_mkdir": [("mkdir", {1: (0, "string"), 2: (1, "int")}), ("mkdirat", {1: (1, "string"), 2: (2, "int")})],
    "path_chmod": [("chmod", {0: (0, "string"), 1: (1, "int")}), ("fchmodat", {0: (1, "string"), 1: (2, "int")})],
    "path_truncate": [("truncate", {0: (0, "string")})],
    "mmap_file": [("mmap", {0: (4, "fd"), 2: (2, "int"), 3: (3, "int")})],
    "file_mprotect": [("mprotect", {2: (2, "int")})],
    "sb_mount": [("mount", {0: (0, "string"), 1: (1, "string"), 3: (3, "int")})],
    "bpf": [("bpf", {0: (0, "int")})],
    "file_ioctl": [("ioctl", {0: (0, "fd"), 1: (1, "int")})],
    "socket_create": [("socket", {0: (0, "int"), 1: (1, "int"), 2: (2, "int")})],
}

_PATHISH = ("file", "path", "dentry", "string", "linux_binprm")


def _syscall_items(plan: Any) -> list[tuple[str, SyscallItem]]:
    """One kprobes item per syscall of the hook, with the LSM arguments and selectors moved to the
    syscall's parameters. ValueError when an argument cannot be mapped."""
    out = []
    for sc, amap in SYSCALLS[plan.hook]:
        args = []
        for a in plan.args:
            if a.index not in amap:
                raise ValueError(f"argument {a.index} ({a.ctype}) of {plan.hook} is not visible at the syscall "
                                 f"{sc}; with {MECHANISM} only arguments {sorted(amap)} can be read")
            param, sc_type = amap[a.index]
            if a.type in _PATHISH and sc_type not in ("string", "fd"):
                raise ValueError(f"argument {a.index} is a {a.type} but syscall {sc} passes it as {sc_type}")
            typ = sc_type if sc_type in ("string", "fd") else (a.type if a.type not in _PATHISH else "int")
            args.append(ArgSpec(index=param, type=typ, label=a.label))
        sels = []
        for sel in plan.spec.selectors:
            margs = []
            for m in sel.matchArgs:
                idx = m.indexes[0]
                margs.append(MatchArg(index=amap[idx][0], operator=m.operator, values=list(m.values)))
            acts: list[MatchAction] = []
            for a in sel.matchActions:
                if a.action == "Override":
                    if not any(x.action == "Sigkill" for x in acts):
                        acts.append(MatchAction(action="Sigkill"))
                else:
                    acts.append(a)
            sels.append(Selector(matchArgs=margs, matchBinaries=list(sel.matchBinaries),
                                 matchPIDs=list(sel.matchPIDs), matchNamespaces=list(sel.matchNamespaces),
                                 matchCapabilities=list(sel.matchCapabilities), matchActions=acts))
        out.append((sc, SyscallItem(call=f"sys_{sc}", args=args, selectors=sels)))
    return out


def plan_syscalls(plan: Any, ctx: Any, policy_id: int) -> list[Any]:
    """The syscall HookPlans (`sensorium.hooks.syscalls.plan_syscall`) for one lsmhooks item (raises
    PolicyLoadError)."""
    from sensorium.hooks.syscalls import plan_syscall

    try:
        items = _syscall_items(plan)
    except ValueError as exc:
        raise PolicyLoadError(plan.where, str(exc), field=f"spec.lsmhooks[{plan.position}].args") from None
    view = types.SimpleNamespace(id=policy_id, section="lsmhooks", name="", mode="enforcement")
    plans = []
    for j, (sc, item) in enumerate(items):
        try:
            hp = plan_syscall(ctx.kernel, view, plan.position * 8 + j, item, sc)
        except PolicyLoadError as exc:
            raise PolicyLoadError(plan.where, f"{MECHANISM} via {sc}: {exc.reason}",
                                  field=f"spec.lsmhooks[{plan.position}]") from None
        if hp is None:
            continue
        hp.hook = f"{plan.where} (syscall {sc})"
        hp.field = f"spec.lsmhooks[{plan.position}]"
        hp.kind = "process_lsm"
        hp.body = {"function_name": plan.hook, "syscall": sc,
                   "enforcement": {"mechanism": MECHANISM, "meaning": NOTE}}
        hp.mechanism = MECHANISM
        hp.note = NOTE
        hp.open_exit_note = None  # these words whatever serves it
        plans.append(hp)
    return plans


class SigkillGuard:
    """The syscall hooks of one policy section (a thin wrapper over the hook library's `HookSet`)."""

    def __init__(self, ring: Any, ctx: Any, policy_id: int, policy_name: str, mode: str) -> None:
        from sensorium.hooks.hookset import HookSet

        self.set = HookSet(ctx, ring, policy_id, policy_name, mode)

    def load(self, plans: Sequence[Any], scope: Scope | None) -> None:
        """All or nothing (raises PolicyLoadError); ``scope`` None: host-wide."""
        self.set.load(plans, scope)

    def prepare(self, plans: Sequence[Any], scope: Scope | None, pin_dir: str | None = None) -> None:
        """The rounds of a transaction (`sensorium.hookspecs.PreparedSection`), by the hook library's `HookSet`;
        with ``pin_dir`` its kill hooks are pinned there at `commit`."""
        self.set.prepare(plans, scope, pin_dir)

    def commit(self) -> None:
        self.set.commit()

    def activate(self) -> None:
        self.set.activate()

    def persistence(self) -> tuple[bool, str]:
        """(pinned, why) of this hook's syscall programs."""
        hooks = self.set.status().get("hooks", [])
        bad = [h.get("persistence", "") for h in hooks if h.get("persistent") is False]
        if bad:
            return False, bad[0]
        return True, f"pinned at {self.set.pin_dir}"

    def set_scope(self, scope: Scope) -> None:
        self.set.set_scope(scope)

    def set_enforce(self, enforce: bool) -> None:
        self.set.set_mode("enforcement" if enforce else "monitoring")

    def counters(self) -> dict[str, int]:
        return self.set.counters()

    def close(self, *, keep_pinned: bool = False) -> None:
        if keep_pinned:
            self.set.release()
        else:
            self.set.unload()

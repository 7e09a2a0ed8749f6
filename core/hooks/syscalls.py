"""Syscall hooks: a ``kprobes`` item on a syscall -> a `HookPlan` served by raw tracepoints sys_enter (and
sys_exit for ``return: true`` or an opened file) filtered by the syscall number in the kernel, first instruction
of the program. They need neither kprobes nor trampolines, so they run on every kernel with BTF.

The kprobe sensor plans its syscall items here, and the lsm sensor's last-resort fallback (Sigkill from the
syscalls that reach an LSM hook) plans the same hooks.
"""

from __future__ import annotations

import dataclasses
import platform
import re
import struct
from typing import Any

from sensorium.hooks import selectors as S
from sensorium.hooks.plan import HookPlan, extras, plan_params, plan_return
from sensorium.hookspecs import PolicyLoadError
from sensorium.policy import KERNEL_STRUCT_TYPES
from sensorium.syscalls_x86_64 import SYSCALLS_X86_64

__all__ = ["PATH_PARAMS", "OPENED_FD_SYSCALLS", "SOCKADDR_PARAMS", "ARCH_PREFIX", "syscall_name", "plan_syscall",
           "merge_syscall_sets", "sysset_table",
           "SYSCALL_SETS_ENABLED"]

# Path parameters of syscalls: parameter -> parameter holding its dirfd (None: relative to the cwd).
# These are made absolute and normalised in the kernel before matching (docs/selectors.md).
PATH_PARAMS: dict[str, dict[int, int | None]] = {
    "open": {0: None}, "openat": {1: 0}, "openat2": {1: 0}, "creat": {0: None}, "unlink": {0: None},
    "unlinkat": {1: 0}, "link": {0: None, 1: None}, "linkat": {1: 0, 3: 2}, "symlink": {1: None},
    "symlinkat": {2: 1}, "rename": {0: None, 1: None}, "renameat": {1: 0, 3: 2}, "renameat2": {1: 0, 3: 2},
    "mkdir": {0: None}, "mkdirat": {1: 0}, "rmdir": {0: None}, "chmod": {0: None}, "fchmodat": {1: 0},
    "fchmodat2": {1: 0}, "chown": {0: None}, "lchown": {0: None}, "fchownat": {1: 0}, "execve": {0: None},
    "execveat": {1: 0}, "truncate": {0: None}, "access": {0: None}, "faccessat": {1: 0}, "faccessat2": {1: 0},
    "stat": {0: None}, "lstat": {0: None}, "newfstatat": {1: 0}, "statx": {1: 0}, "readlink": {0: None},
    "readlinkat": {1: 0}, "chdir": {0: None}, "chroot": {0: None}, "mknod": {0: None}, "mknodat": {1: 0},
    "utimensat": {1: 0}, "pivot_root": {0: None, 1: None}, "mount": {1: None}, "umount2": {0: None},
    "setxattr": {0: None}, "lsetxattr": {0: None}, "getxattr": {0: None}, "lgetxattr": {0: None},
    "removexattr": {0: None}, "lremovexattr": {0: None}, "listxattr": {0: None}, "llistxattr": {0: None},
    "statfs": {0: None}, "swapon": {0: None}, "swapoff": {0: None}, "acct": {0: None}, "uselib": {0: None},
    "utime": {0: None}, "utimes": {0: None}, "futimesat": {1: 0}, "name_to_handle_at": {1: 0},
    "inotify_add_watch": {1: None}, "fanotify_mark": {4: 3},
}

# Syscalls returning an fd of the path they opened: their path argument is taken, at sys_exit, from the
# opened file itself when the call succeeded (symlinks, "..", dirfd all resolved by the kernel's lookup).
OPENED_FD_SYSCALLS = frozenset({"open", "openat", "openat2", "creat"})

_STRUCT_TYPES = ("file", "path", "dentry", "sock", "sockaddr", "skb", "cred", "linux_binprm", "syscall64",
                 *(t for t in KERNEL_STRUCT_TYPES if t != "capability"))

# Syscalls whose parameter is a struct sockaddr __user * the process filled in (read at sys_enter):
# parameter -> whether it names the peer (connect/sendto: the destination, so DAddr/DPort may name it
# as well as Tetragon's SAddr/SPort) or the local end (bind: SAddr/SPort only).
SOCKADDR_PARAMS: dict[str, dict[int, bool]] = {"connect": {1: True}, "sendto": {4: True}, "bind": {1: False}}

ARCH_PREFIX = {"x86_64": "__x64_"}

# False: the syscalls of a list get one object each, as before syscall sets (benchmarks/syscall_list_bench.py
# compares both; the events are the same).
SYSCALL_SETS_ENABLED = True


def syscall_name(call: str) -> str | None:
    """``sys_openat`` / ``__x64_sys_openat`` / ``__se_sys_openat`` / ``openat`` -> ``openat`` (None if not a
    syscall name)."""
    m = re.fullmatch(r"(?:__x64_|__se_|__do_)?sys_([a-z0-9_]+)", call)
    if m:
        return m.group(1)
    if re.fullmatch(r"[a-z0-9_]+", call) and call in SYSCALLS_X86_64:
        return call
    return None


@dataclasses.dataclass(frozen=True)
class SyscallItem:
    """A syscall hook made by a sensor rather than written in a ``kprobes`` section (the lsm sensor's Sigkill
    fallback): the fields `plan_syscall` reads of a kprobes item, without depending on the kprobe sensor's
    schema."""

    call: str
    args: list[Any]
    selectors: list[Any]
    return_: bool = False
    returnArg: Any = None
    ignore: Any = None
    message: str = ""
    tags: tuple[str, ...] = ()


def plan_syscall(kernel: Any, policy: Any, index: int, item: Any, name: str, *, opened_file_paths: bool = True,
                 skipped: list[dict[str, Any]] | None = None) -> HookPlan | None:
    """One ``kprobes`` item on the syscall ``name`` (see `syscall_name`) -> `HookPlan` (attach
    ``("syscall", at_exit)``), or `PolicyLoadError` naming the field. None when the syscall does not exist and
    ``ignore.callNotFound`` skips it (the skip is appended to ``skipped``). ``opened_file_paths``: match the
    path of the file actually opened for open/openat/openat2/creat (`OPENED_FD_SYSCALLS`)."""
    hook = f"{policy.section}[{index}] {item.call}"
    base = f"spec.{policy.section}[{index}]"
    if platform.machine() not in ARCH_PREFIX:
        raise PolicyLoadError(hook, f"syscall hooks are only mapped for x86_64 (this is {platform.machine()})",
                              f"{base}.call")
    nr = SYSCALLS_X86_64.get(name)
    if nr is None:
        if item.ignore is not None and item.ignore.callNotFound:
            if skipped is not None:
                skipped.append({"hook": hook, "mechanism": None, "state": "skipped",
                                "note": f"syscall {name} does not exist on x86_64 (ignore.callNotFound)"})
            return None
        raise PolicyLoadError(hook, f"syscall {name} does not exist on x86_64", f"{base}.call")
    if kernel is not None and not kernel.has("raw_tp"):
        raise PolicyLoadError(hook, "raw tracepoints do not load on this kernel", f"{base}.call")
    paths = PATH_PARAMS.get(name, {})
    def read(a: Any, typ: str, field: str) -> S.ArgPlan:
        if typ in ("string", "filename"):
            dirfd = paths.get(a.index, -1)
            return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_USER_STR,
                             json_key="string_arg", resolve=a.index in paths,
                             dirfd_offset=dirfd if isinstance(dirfd, int) and dirfd >= 0 else None,
                             ret_fd=opened_file_paths and name in OPENED_FD_SYSCALLS and a.index in paths,
                             label=a.label, type_name=typ)
        if typ == "fd":
            return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_FD_PATH,
                             json_key="file_arg", label=a.label, type_name=typ)
        if typ == "sockaddr":
            peer = SOCKADDR_PARAMS.get(name, {}).get(a.index)
            if peer is None:
                where = ", ".join(f"{sc} parameter {i}" for sc, ps in SOCKADDR_PARAMS.items() for i in ps)
                raise PolicyLoadError(hook, f"type sockaddr reads the address a process passes in ({where}); "
                                            f"parameter {a.index} of {name} is not one (an output address, "
                                            f"such as accept's, is only filled in when the call returns)",
                                      f"{field}.type")
            return S.ArgPlan(
                kind=S.ARG_SOCK, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_USER_SOCKADDR,
                json_key="sockaddr_arg", label=a.label, type_name=typ,
                sock_ops=S.SOCKADDR_PEER_OPS if peer else S.SOCKADDR_OPS,
                sock_ops_why=(f"{name}'s address is the peer: SAddr/SPort (Tetragon's names for a sockaddr's "
                              f"one address) and DAddr/DPort both match it; it has no protocol") if peer else
                             (f"{name}'s address is the local one: SAddr/SPort match it; it has no "
                              f"protocol"))
        if typ in _STRUCT_TYPES:
            raise PolicyLoadError(hook, f"type {typ} is a kernel structure; a syscall parameter is a user value "
                                        f"(use int, string, char_buf, fd, or sockaddr for the address passed "
                                        f"to connect, bind or sendto)", f"{field}.type")
        raise PolicyLoadError(hook, f"type {typ} is not supported for syscall hooks", f"{field}.type")

    plans, positions = plan_params(hook, base, item.args, nparams=6, what="syscall hooks", read=read,
                                   index_error="index {index}: syscalls have 6 parameters (0..5)")
    ret_plan = None
    opened_file = any(p.ret_fd for p in plans)
    at_exit = bool(item.return_) or opened_file
    if at_exit:
        ret_plan = plan_return(hook, base, item, default="long", why="a syscall returns an integer")
    try:
        compiled = S.compile_hook(policy_id=policy.id, hook_id=index, kind=S.HOOK_SYSCALL, args=plans,
                                  selectors=list(item.selectors), arg_position=positions, syscall_nr=nr,
                                  at_exit=at_exit, has_return=at_exit)
    except S.SelectorError as e:
        raise PolicyLoadError(hook, e.reason, f"{base}.{e.field}") from None
    mech = "raw_tp sys_enter" + (" + sys_exit" if at_exit else "")
    tail = _note_tail(f"syscall number {nr}", plans, opened_file, compiled.blocking, at_exit)
    note = "no kprobes/fentry on this kernel: served by raw tracepoint sys_enter" + tail
    # an opened file is served by the open-exit object where it loads (HookSet._load_one)
    exit_note = ("no kprobes/fentry on this kernel: served by tp_btf sys_exit alone (arguments from the saved "
                 "registers)," + tail) if opened_file else None
    body = {"function_name": ARCH_PREFIX[platform.machine()] + "sys_" + name, **extras(item)}
    return HookPlan(hook=hook, field=base, compiled=compiled, args=plans, attach=("syscall", at_exit),
                    mechanism=mech, note=note, body=body, kind="process_kprobe", return_plan=ret_plan,
                    open_exit_note=exit_note)


def _note_tail(filtered_by: str, plans: list[S.ArgPlan], opened_file: bool, blocking: bool, at_exit: bool) -> str:
    more = ""
    if opened_file:
        more += ("; the path is that of the file actually opened (from the returned fd at sys_exit: symlinks, "
                 "'..' and dirfd resolved by the kernel); a failed open reports the path made absolute and "
                 "normalised from the string")
    elif any(p.resolve for p in plans):
        more += "; path arguments made absolute (dirfd/cwd) and normalised in the kernel, symlinks not followed"
    if blocking:
        more += ("; Sigkill/Signal are sent at syscall " + ("exit" if at_exit else "entry") +
                 ": the syscall completes, the process dies before it returns to user space")
    return f" filtered by {filtered_by} in the kernel; arguments are the values the process passed{more}"


def _set_key(plan: HookPlan) -> tuple[Any, ...] | None:
    """What must be equal for syscall hooks to share one object: everything but the hook id and the syscall
    number (the selectors compiled the same, the arguments read the same way). None: never in a set (not a
    raw_tp syscall hook, or one whose path comes from the opened file: its own sys_exit object filters by one
    number)."""
    if plan.attach[0] != "syscall" or any(a.ret_fd for a in plan.args) or plan.members:
        return None
    cfg = plan.compiled.cfg
    raw = bytearray(plan.compiled.rodata())
    for name in ("hook_id", "syscall_nr"):
        f = getattr(type(cfg), name)
        raw[f.offset:f.offset + f.size] = bytes(f.size)
    return (plan.attach, bytes(raw), plan.compiled.flags, tuple(plan.args), plan.return_plan, plan.kind,
            plan.mechanism, repr(sorted(plan.compiled.follow_binaries.items())),
            repr(sorted(plan.compiled.follow_pids.items())))


def merge_syscall_sets(entries: list[tuple[HookPlan, int | None]]) -> list[HookPlan]:
    """Plans in order, each with the written "list:" call it came from (None: written out) -> the objects to
    load: the syscalls of one list call that plan alike become ONE object (``syscall_nr`` = `SYSCALL_SET`, its
    ``members`` the syscalls' plans), whose program looks the syscall number up in a table (``sens_sysset``,
    one load whatever the set's size) instead of one program per syscall each running on every syscall of the
    machine. It stands where its first member stood; a list's syscalls that plan differently (a path argument
    of openat, say) make one object per way; a set of one stays the plain hook."""
    groups: dict[tuple[int, tuple[Any, ...]], list[HookPlan]] = {}
    order: list[HookPlan | tuple[int, tuple[Any, ...]]] = []
    for plan, origin in entries:
        key = _set_key(plan) if origin is not None else None
        if key is None or origin is None:
            order.append(plan)
            continue
        gk = (origin, key)
        if gk not in groups:
            groups[gk] = []
            order.append(gk)
        groups[gk].append(plan)
    out: list[HookPlan] = []
    for o in order:
        if isinstance(o, HookPlan):
            out.append(o)
            continue
        members = groups[o]
        if len(members) == 1:
            out.append(members[0])
            continue
        out.append(_syscall_set(members))
    return out


def _syscall_set(members: list[HookPlan]) -> HookPlan:
    first = members[0]
    cfg = type(first.compiled.cfg).from_buffer_copy(first.compiled.cfg)
    cfg.syscall_nr = S.SYSCALL_SET
    compiled = dataclasses.replace(first.compiled, cfg=cfg)
    names = [m.body.get("function_name", m.hook) for m in members]
    shown = ", ".join(names[:4]) + (f", ... ({len(names)} syscalls)" if len(names) > 4 else "")
    ids = [m.compiled.cfg.hook_id for m in members]
    section = first.hook.split("[", 1)[0]
    hook = f"{section}[{min(ids)}..{max(ids)}] syscall list: {shown}"
    at_exit = bool(first.attach[1])
    tail = _note_tail(f"a set of {len(members)} syscall numbers (one table lookup per syscall)", list(first.args),
                      False, compiled.blocking, at_exit)
    note = ("no kprobes/fentry on this kernel: served by raw tracepoint sys_enter, one program for the list's "
            "syscalls," + tail + "; each event names the syscall that ran")
    return dataclasses.replace(first, hook=hook, compiled=compiled, note=note, open_exit_note=None,
                               members=tuple(members))


def sysset_table(plan: HookPlan) -> bytes:
    """The ``sens_sysset`` rodata of a syscall set: per syscall number, its member's hook id + 1 (0: not hooked)."""
    table = [0] * S.SYSSET_NR
    for m in plan.members:
        nr = m.compiled.cfg.syscall_nr
        if not 0 <= nr < S.SYSSET_NR or m.compiled.cfg.hook_id >= 0xFFFF:
            raise PolicyLoadError(m.hook, f"syscall number {nr} or hook id {m.compiled.cfg.hook_id} does not fit "
                                          f"the set's table", m.field)
        table[nr] = m.compiled.cfg.hook_id + 1
    return struct.pack(f"<{S.SYSSET_NR}H", *table)

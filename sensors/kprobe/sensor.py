"""The kprobe sensor: TracingPolicy ``kprobes`` items.

Mechanism per hook, from the kernel probe (`KernelCapabilities`):

* syscalls (``syscall: true``, or ``sys_openat`` / ``__x64_sys_openat`` names): raw tracepoints
  sys_enter (and sys_exit for ``return: true``) filtered by the syscall number in the kernel, first
  instruction of the program. They need neither kprobes nor trampolines, so they run on every kernel
  with BTF, this host included.
* other kernel functions (``syscall: false``): fentry/fexit where BPF trampolines load, else
  kprobe/kretprobe where the kernel has kprobes (`MECHANISMS`, built in kfunc.py / kfunc.bpf.c); on a
  kernel with neither they are refused with the reason. Every item is first checked against the
  function's BTF prototype (exists, index in range, type fits), whatever the kernel can load.
"""

from __future__ import annotations

import platform
import re
from typing import Any, Callable

from sensorium import selectors as S
from sensorium.hookspecs import PolicyLoadError, SensorContext
from sensorium_sensors.kprobe.kfunc import KfuncHookSet, plan_kernel_function, wrap_decode
from sensorium.syscalls_x86_64 import SYSCALLS_X86_64
from sensorium_sensors.tracepoint import tracefs
from sensorium_sensors.tracepoint.engine import HookPlan, HookSensor
from sensorium_sensors.tracepoint.sensor import _extras

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

_STRUCT_TYPES = ("file", "path", "dentry", "sock", "sockaddr", "skb", "cred", "linux_binprm", "syscall64")

# Syscalls whose parameter is a struct sockaddr __user * the process filled in (read at sys_enter):
# parameter -> whether it names the peer (connect/sendto: the destination, so DAddr/DPort may name it
# as well as Tetragon's SAddr/SPort) or the local end (bind: SAddr/SPort only).
SOCKADDR_PARAMS: dict[str, dict[int, bool]] = {"connect": {1: True}, "sendto": {4: True}, "bind": {1: False}}

ARCH_PREFIX = {"x86_64": "__x64_"}


def syscall_name(call: str) -> str | None:
    """``sys_openat`` / ``__x64_sys_openat`` / ``__se_sys_openat`` / ``openat`` -> ``openat`` (None if not a syscall name)."""
    m = re.fullmatch(r"(?:__x64_|__se_|__do_)?sys_([a-z0-9_]+)", call)
    if m:
        return m.group(1)
    if re.fullmatch(r"[a-z0-9_]+", call) and call in SYSCALLS_X86_64:
        return call
    return None


# Mechanisms for kernel functions that are not syscalls, tried in order: (capability, name, builder).
# Both are built by kfunc.plan_kernel_function, which picks fentry/fexit or kprobe/kretprobe per hook.
MECHANISMS: list[tuple[str, str, Callable[..., HookPlan | None] | None]] = [
    ("fentry", "fentry", plan_kernel_function), ("kprobe", "kprobe", plan_kernel_function)]


class KprobeSensor(HookSensor):
    name = "kprobe"
    section = "kprobes"
    supports_scope = True  # every hook (raw_tp syscalls, fentry/fexit/kprobe/fmod_ret) checks sens_scope first
    handle_class = KfuncHookSet

    def __init__(self, ctx: SensorContext) -> None:
        super().__init__(ctx)
        self._skipped: dict[int, list[dict[str, Any]]] = {}
        self.opened_file_paths = bool((ctx.config or {}).get("opened_file_paths", True))

    def plan(self, policy: Any) -> list[HookPlan]:
        self._skipped[policy.id] = []
        return super().plan(policy)

    def start(self) -> None:
        self.ring.decode = wrap_decode(self.ring, self.ring.decode)  # type: ignore[method-assign]
        super().start()

    def plan_item(self, policy: Any, index: int, item: Any) -> HookPlan | None:
        hook = f"{policy.section}[{index}] {item.call}"
        base = f"spec.{policy.section}[{index}]"
        name = syscall_name(item.call)
        if item.call.startswith(("__ia32_", "__ia32_compat_", "__x32_")):
            raise PolicyLoadError(hook, "32-bit compat syscalls are not served (raw_tp sys_enter is filtered by "
                                        "64-bit syscall numbers)", f"{base}.call")
        if not item.syscall and not item.call.startswith(("__x64_sys_", "sys_")):
            name = None
        if name is None:
            if platform.machine() not in ARCH_PREFIX:
                raise PolicyLoadError(hook, f"kernel-function hooks are only built for x86_64 (this is "
                                            f"{platform.machine()})", f"{base}.call")
            return plan_kernel_function(self, policy, index, item)
        if platform.machine() not in ARCH_PREFIX:
            raise PolicyLoadError(hook, f"syscall hooks are only mapped for x86_64 (this is {platform.machine()})",
                                  f"{base}.call")
        nr = SYSCALLS_X86_64.get(name)
        if nr is None:
            if item.ignore is not None and item.ignore.callNotFound:
                self._skipped.setdefault(policy.id, []).append(
                    {"hook": hook, "mechanism": None, "state": "skipped",
                     "note": f"syscall {name} does not exist on x86_64 (ignore.callNotFound)"})
                return None
            raise PolicyLoadError(hook, f"syscall {name} does not exist on x86_64", f"{base}.call")
        kernel = self.ctx.kernel
        if kernel is not None and not kernel.has("raw_tp"):
            raise PolicyLoadError(hook, "raw tracepoints do not load on this kernel", f"{base}.call")
        paths = PATH_PARAMS.get(name, {})
        plans: list[S.ArgPlan] = []
        positions: dict[int, int] = {}
        declared = {a.index for a in item.args}
        for i, a in enumerate(item.args):
            field = f"{base}.args[{i}]"
            if a.index > 5:
                raise PolicyLoadError(hook, f"index {a.index}: syscalls have 6 parameters (0..5)", f"{field}.index")
            typ = a.type or "auto"
            if typ == "nop":
                continue
            if a.returnCopy:
                raise PolicyLoadError(hook, "returnCopy is not supported for syscall hooks", f"{field}.returnCopy")
            if typ == "auto":
                typ = "uint64"
            if typ in tracefs._INT_KEYS:
                plan = tracefs.int_plan(typ, S.FROM_SYSCALL, a.index, a.label)
            elif typ in ("string", "filename"):
                dirfd = paths.get(a.index, -1)
                plan = S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_USER_STR,
                                 json_key="string_arg", resolve=a.index in paths,
                                 dirfd_offset=dirfd if isinstance(dirfd, int) and dirfd >= 0 else None,
                                 ret_fd=self.opened_file_paths and name in OPENED_FD_SYSCALLS and a.index in paths,
                                 label=a.label, type_name=typ)
            elif typ == "char_buf":
                size_pos = None
                if a.sizeArgIndex is not None:
                    if a.sizeArgIndex - 1 not in declared:
                        raise PolicyLoadError(hook, f"sizeArgIndex {a.sizeArgIndex} (parameter {a.sizeArgIndex - 1}) "
                                                    f"must also be declared in args", f"{field}.sizeArgIndex")
                    size_pos = -1 - (a.sizeArgIndex - 1)  # fixed below, once positions are known
                plan = S.ArgPlan(kind=S.ARG_BUF, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_USER_BUF,
                                 json_key="bytes_arg", size_arg=size_pos, label=a.label, type_name=typ)
            elif typ == "fd":
                plan = S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_FD_PATH,
                                 json_key="file_arg", label=a.label, type_name=typ)
            elif typ == "sockaddr":
                peer = SOCKADDR_PARAMS.get(name, {}).get(a.index)
                if peer is None:
                    where = ", ".join(f"{sc} parameter {i}" for sc, ps in SOCKADDR_PARAMS.items() for i in ps)
                    raise PolicyLoadError(hook, f"type sockaddr reads the address a process passes in ({where}); "
                                                f"parameter {a.index} of {name} is not one (an output address, "
                                                f"such as accept's, is only filled in when the call returns)",
                                          f"{field}.type")
                plan = S.ArgPlan(
                    kind=S.ARG_SOCK, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_USER_SOCKADDR,
                    json_key="sockaddr_arg", label=a.label, type_name=typ,
                    sock_ops=S.SOCKADDR_PEER_OPS if peer else S.SOCKADDR_OPS,
                    sock_ops_why=(f"{name}'s address is the peer: SAddr/SPort (Tetragon's names for a sockaddr's "
                                  f"one address) and DAddr/DPort both match it; it has no protocol") if peer else
                                 (f"{name}'s address is the local one: SAddr/SPort match it; it has no "
                                  f"protocol"))
            elif typ in _STRUCT_TYPES:
                raise PolicyLoadError(hook, f"type {typ} is a kernel structure; a syscall parameter is a user value "
                                            f"(use int, string, char_buf, fd, or sockaddr for the address passed "
                                            f"to connect, bind or sendto)", f"{field}.type")
            else:
                raise PolicyLoadError(hook, f"type {typ} is not supported for syscall hooks", f"{field}.type")
            positions[a.index] = len(plans)
            plans.append(plan)
        import dataclasses as _dc
        plans = [(_dc.replace(p, size_arg=positions.get(-1 - p.size_arg)) if p.size_arg is not None and p.size_arg < 0
                  else p) for p in plans]
        ret_plan = None
        opened_file = any(p.ret_fd for p in plans)
        at_exit = bool(item.return_) or opened_file
        if at_exit:
            ra = item.returnArg
            rtyp = (ra.type if ra is not None else "long") or "long"
            if rtyp == "auto":
                rtyp = "long"
            if rtyp not in tracefs._INT_KEYS:
                raise PolicyLoadError(hook, f"returnArg type {rtyp}: a syscall returns an integer",
                                      f"{base}.returnArg.type")
            ret_plan = tracefs.int_plan(rtyp, S.FROM_RETVAL, 0, ra.label if ra is not None else None)
        try:
            compiled = S.compile_hook(policy_id=policy.id, hook_id=index, kind=S.HOOK_SYSCALL, args=plans,
                                      selectors=list(item.selectors), arg_position=positions, syscall_nr=nr,
                                      at_exit=at_exit, has_return=at_exit)
        except S.SelectorError as e:
            raise PolicyLoadError(hook, e.reason, f"{base}.{e.field}") from None
        mech = "raw_tp sys_enter" + (" + sys_exit" if at_exit else "")
        note = ("no kprobes/fentry on this kernel: served by raw tracepoint sys_enter filtered by syscall number "
                f"{nr} in the kernel; arguments are the values the process passed")
        if opened_file:
            note += ("; the path is that of the file actually opened (from the returned fd at sys_exit: symlinks, "
                     "'..' and dirfd resolved by the kernel); a failed open reports the path made absolute and "
                     "normalised from the string")
        elif any(p.resolve for p in plans):
            note += "; path arguments made absolute (dirfd/cwd) and normalised in the kernel, symlinks not followed"
        if compiled.blocking:
            note += ("; Sigkill/Signal are sent at syscall " + ("exit" if at_exit else "entry") +
                     ": the syscall completes, the process dies before it returns to user space")
        body = {"function_name": ARCH_PREFIX[platform.machine()] + "sys_" + name, **_extras(item)}
        return HookPlan(hook=hook, field=base, compiled=compiled, args=plans, attach=("syscall", at_exit),
                        mechanism=mech, note=note, body=body, kind="process_kprobe", return_plan=ret_plan)

"""Kernel functions in ``kprobes`` sections (``call: <kernel function>``, ``syscall: false``).

`plan_kernel_function` checks one item against the function's BTF prototype (the function exists, each
argument index is in range, each declared type fits the C type, Override only where it can be taken)
before anything is loaded, on every kernel, then picks the mechanism from `KernelCapabilities`:

* fentry (fexit for ``return: true``) where BPF trampolines load: arguments read with
  bpf_get_func_arg, the return value with bpf_get_func_ret;
* kprobe (kretprobe for ``return: true``) where the kernel has kprobes;
* otherwise the item is refused with the reason (this project's host: fentry refused, no kprobes).

Both run ``kfunc.bpf.c`` (one object per function), which feeds the shared selector engine
(sensorium/selectors.h). `KfuncHookSet` loads and attaches those objects next to the engine's own
syscall hooks; `sock_event_fixup` turns the kernel's hex cred summary into Tetragon's
``process_credentials_arg`` (sock and sockaddr arguments are read and rendered by the engine itself, as are
the kernel structures of `sensorium.hooks.kstructs`: bpf_attr, perf_event, user_namespace, net_device...).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sensorium import schema
from sensorium.bpf.btf import kernel_functions
from sensorium.hooks import kstructs as K
from sensorium.hooks import selectors as S
from sensorium.hooks.budget import TRACKING, engine_cases
from sensorium.hooks.hookset import HookSet, refused_as
from sensorium.hooks.plan import POLICY_INTS, HookPlan, KfuncAttach, extras, without_override
from sensorium.hooks.render import EV as _EV
from sensorium.hooks.syscalls import ARCH_PREFIX, plan_syscall
from sensorium.hookspecs import PolicyLoadError, ProbeSource

__all__ = ["plan_kernel_function", "plan_syscall_override", "overrides", "KfuncHookSet", "KFUNC_PROBE",
           "sock_event_fixup", "overridable", "KF_PRE_STR", "KF_PRE_SOCK", "KF_PRE_SYSREGS"]

HERE = Path(__file__).resolve().parent
KF_PRE_STR, KF_PRE_SOCK, KF_PRE_DENTRY, KF_PRE_CRED = 1, 2, 3, 4  # KF_PRE_SOCK: unused (sock args are ARG_SOCK)
KF_PRE_SYSREGS = 5  # parameter 0: a syscall wrapper's struct pt_regs *, the syscall's arguments read from it
ACT_OVERRIDE = 8  # an actions bit the engine ignores and copies into the event (kfunc.bpf.c: fmod_ret)
DEBUGFS = "/sys/kernel/debug"
ERROR_INJECTION_LISTS = ("/sys/kernel/debug/error_injection/list", "/sys/kernel/tracing/../debug/error_injection/list")

# C integer types (as sensorium.bpf.btf spells them) -> (size, signed)
_C_INTS: dict[str, tuple[int, bool]] = {
    "int": (4, True), "unsigned int": (4, False), "long int": (8, True), "long unsigned int": (8, False),
    "long long int": (8, True), "long long unsigned int": (8, False), "short int": (2, True),
    "short unsigned int": (2, False), "char": (1, True), "signed char": (1, True), "unsigned char": (1, False),
    "_Bool": (1, False), "bool": (1, False), "size_t": (8, False), "ssize_t": (8, True), "loff_t": (8, True),
    "umode_t": (2, False), "u8": (1, False), "u16": (2, False), "u32": (4, False), "u64": (8, False),
    "s8": (1, True), "s16": (2, True), "s32": (4, True), "s64": (8, True), "__u8": (1, False),
    "__u16": (2, False), "__u32": (4, False), "__u64": (8, False), "__s32": (4, True), "__s64": (8, True),
    "gfp_t": (4, False), "kuid_t": (4, False), "kgid_t": (4, False), "pid_t": (4, True), "dev_t": (4, False),
    "fmode_t": (4, False), "uid_t": (4, False), "gid_t": (4, False), "off_t": (8, True), "time64_t": (8, True),
    "sector_t": (8, False), "blkcnt_t": (8, False), "__le32": (4, False), "__be32": (4, False),
    "__be16": (2, False), "__le16": (2, False), "slab_flags_t": (4, False), "vm_fault_t": (4, False),
    "ino_t": (8, False), "clockid_t": (4, True), "key_serial_t": (4, True), "qid_t": (4, False),
}
# policy struct type -> the C parameter type it reads
_STRUCT_ARGS = {"file": "struct file *", "path": "struct path *", "linux_binprm": "struct linux_binprm *",
                "sock": "struct sock *", "dentry": "struct dentry *", "cred": "struct cred *",
                "sockaddr": "struct sockaddr *", "skb": "struct sk_buff *"}
_AUTO = {v: k for k, v in _STRUCT_ARGS.items()}
# Other spellings of a parameter type that the same reader serves (newer kernels pass connect/bind
# addresses as struct sockaddr_unsized *).
_STRUCT_ALIASES = {"sockaddr": ("struct sockaddr_unsized *",)}
_AUTO.update({alias: typ for typ, aliases in _STRUCT_ALIASES.items() for alias in aliases})

# struct sens_sock (selectors.h) without its tail padding: family, type, protocol, sport, dport, state (u16
# each), saddr[16], daddr[16]
_SOCK = struct.Struct("<HHHHHH16s16s")
# kf_cred in kfunc.bpf.c: uid, gid, suid, sgid, euid, egid, fsuid, fsgid (u32), inheritable, permitted,
# effective (u64)
_CRED = struct.Struct("<8I3Q")


# Kernel functions the verifier budget loads kfunc.bpf.c for (one object per function, like policies do):
# a socket, a file, a string and a cred parameter; fmod_ret only where the kernel allows it.
BUDGET_FUNCTIONS = ("tcp_connect", "security_file_open", "do_sys_openat2", "commit_creds")
KFUNC_PROGRAMS = {"sens_fentry": "fentry", "sens_fexit": "fexit", "sens_fmod_ret": "fmod_ret",
                  "sens_kprobe": "kprobe", "sens_kretprobe": "kprobe"}


def kfunc_budget_cases() -> list[Any]:
    """`BudgetCase`s of kfunc.bpf.c: its own programs with every worst configuration, arguments read from the
    function's parameters (s->raw), each parameter prepared as a cred (the longest preparation); the engine
    programs it carries with the mixed one."""
    cases: list[Any] = []
    for n, func in enumerate(BUDGET_FUNCTIONS):
        try:
            sig = kernel_functions().get(func)
        except (OSError, ValueError):
            sig = None
        nparams = len(sig.params) if sig is not None else 6
        rodata: dict[str, bytes | int] = {
            "kf_pre": bytes([KF_PRE_CRED] * S.MAX_ARGS), "kf_nargs": nparams,
            "kf_errno": struct.pack(f"<{S.MAX_SELECTORS}I", *([1] * S.MAX_SELECTORS))}
        own = [p for p in KFUNC_PROGRAMS if p != "sens_fmod_ret" or overridable(func)[0]]
        kinds = {p: (S.HOOK_RAW_TP, p in ("sens_fexit", "sens_kretprobe")) for p in KFUNC_PROGRAMS}
        needs = {p: frozenset({KFUNC_PROGRAMS[p]}) for p in KFUNC_PROGRAMS}
        probe = KFUNC_PROBE
        targets = {p: func for p in ("sens_fentry", "sens_fexit", "sens_fmod_ret")}
        tag = f" ({func})"
        if n == 0:  # every argument family once; the other functions differ only in their prototype
            cases += engine_cases(probe, full=own, needs=needs, src=S.FROM_SYSCALL, rodata=rodata, kinds=kinds,
                                  tag=tag, targets=targets)
            cases += engine_cases(probe, full=(), others=("sens_tp", "sens_raw", "sens_sys_enter", "sens_sys_exit",
                                                          "sens_uprobe", "sens_uretprobe", *TRACKING), rodata=rodata)
        else:
            cases += engine_cases(probe, full=(), others=own, needs=needs, src=S.FROM_SYSCALL, rodata=rodata,
                                  kinds=kinds, tag=tag, targets=targets)
        if "sens_fmod_ret" in own and n == 1:
            # an Override on a syscall: the arguments read from the pt_regs its wrapper receives (KF_PRE_SYSREGS);
            # measured on a function the lane's kernels let fmod_ret change (their syscalls they do not)
            sysregs = dict(rodata, kf_pre=bytes([KF_PRE_SYSREGS] + [0] * (S.MAX_ARGS - 1)), kf_nargs=1)
            cases += engine_cases(probe, full=("sens_fmod_ret",), needs=needs, rodata=sysregs,
                                  kinds={"sens_fmod_ret": (S.HOOK_SYSCALL, False)},  # a syscall's argument kinds
                                  tag=f" (syscall registers, {func})", targets=targets)
    return cases


# kfunc.bpf.c: one object for every kernel function (the attach target is set at load time), so a policy on
# a new function costs no compile, and an image can ship the object prebuilt.
KFUNC_PROBE = ProbeSource(name="kfunc", source=HERE / "kfunc.bpf.c", include_dirs=(HERE,))


def _error_injection_list() -> set[str] | None:
    for p in ERROR_INJECTION_LISTS:
        try:
            with open(p) as f:
                return {line.split()[0] for line in f if line.strip()}
        except OSError:
            continue
    return None


def overridable(func: str) -> tuple[bool, str]:
    """Whether fmod_ret may change ``func``'s return value, and why (the kernel's own rule: a security_*
    hook, or a function marked ALLOW_ERROR_INJECTION)."""
    if func.startswith("security_"):
        return True, f"{func} is an LSM security_ hook"
    listed = _error_injection_list()
    if listed is None:
        if os.path.ismount(DEBUGFS) and not os.path.isdir(os.path.join(DEBUGFS, "error_injection")):
            # lib/error-inject.c makes that directory whenever the kernel has the list (Debian's do not)
            return False, ("this kernel has no error-injection list (built without CONFIG_FUNCTION_ERROR_INJECTION): "
                           f"fmod_ret may change only security_ hooks on this kernel, and {func} is none")
        return False, (f"{func} is not a security_ hook and the kernel's error-injection list "
                       f"(debugfs error_injection/list) cannot be read to show it is on it")
    if func in listed:
        return True, f"{func} is on the kernel's error-injection list"
    return False, f"{func} is not on the kernel's error-injection list (ALLOW_ERROR_INJECTION) nor a security_ hook"


def _is_int_ctype(ctype: str) -> bool:
    return "*" not in ctype and (ctype in _C_INTS or ctype.startswith("enum ")
                                 or not ctype.startswith(("struct ", "union ", "func", "void")))


def _c_int(ctype: str) -> tuple[int, bool]:
    if ctype.startswith("enum "):
        return 4, False
    return _C_INTS.get(ctype, (8, True))


def _int_key(size: int, signed: bool, typ: str) -> str:
    if typ == "size_t":
        return "size_arg"
    if typ == "int":  # the policy's type names the key; the C type gives the width
        return "int_arg"
    if size == 8:
        return "long_arg" if signed else "size_arg"
    return "int_arg" if signed else "uint_arg"


def _mechanism(kernel: Any, at_exit: bool) -> tuple[str | None, str]:
    """(mechanism, reason it was chosen or why none can serve)."""
    def has(cap: str) -> bool:
        return kernel is not None and kernel.has(cap)

    tramp = "fexit" if at_exit else "fentry"
    if has(tramp) and has("fentry"):
        return tramp, f"{tramp} (BPF trampoline)"
    if has("kprobe"):
        return ("kretprobe" if at_exit else "kprobe"), f"{'kretprobe' if at_exit else 'kprobe'} ({tramp} refused)"
    return None, f"no kprobes and {tramp} refused on this kernel"


def _override_errnos(sensor: Any, hook: str, base: str, item: Any, func: str) -> list[int]:
    """Per selector of ``item``, the errno its Override makes ``func`` return through fmod_ret (0: none), or
    `PolicyLoadError` naming the action where the kernel cannot take it."""
    errnos: list[int] = []
    for si, sel in enumerate(item.selectors):
        err = 0
        for ai, act in enumerate(sel.actions if hasattr(sel, "actions") else sel.matchActions):
            if act.action == "Override":
                field = f"{base}.selectors[{si}].matchActions[{ai}].action"
                ok, why = overridable(func)
                if not ok:
                    raise PolicyLoadError(hook, f"Override cannot apply to {func}: {why}", field)
                kernel = sensor.ctx.kernel
                if kernel is None or not kernel.has("fmod_ret"):
                    raise PolicyLoadError(hook, f"Override on {func} ({why}) needs fmod_ret, which this kernel "
                                                f"refuses: use an lsmhooks section or Sigkill", field)
                if item.return_:
                    raise PolicyLoadError(hook, "Override and 'return: true' together: an overridden function does "
                                                "not run, so it has no return value to report", field)
                err = abs(int(act.argError or -1)) or 1
                if err > 4095:
                    raise PolicyLoadError(hook, f"argError {act.argError} is not an errno (1..4095)",
                                          f"{base}.selectors[{si}].matchActions[{ai}].argError")
        errnos.append(err)
    return errnos


def overrides(item: Any) -> str | None:
    """The field of the first Override action of ``item``'s selectors (None: it has none)."""
    for si, sel in enumerate(item.selectors):
        for ai, act in enumerate(sel.matchActions):
            if act.action == "Override":
                return f"selectors[{si}].matchActions[{ai}].action"
    return None


def plan_syscall_override(sensor: Any, policy: Any, index: int, item: Any, name: str) -> HookPlan | None:
    """A syscall hook with Override: fmod_ret on the syscall's ``__x64_sys_`` wrapper (as Tetragon does), which
    the kernel allows where it has an error-injection list (CONFIG_FUNCTION_ERROR_INJECTION: every syscall is
    on it; Debian's kernels, the lane's, are built without it, and refuse); the arguments are the syscall's,
    read from the registers the wrapper receives (kfunc.bpf.c KF_PRE_SYSREGS) and planned as the raw_tp
    syscall hooks plan them (`plan_syscall`). Where fmod_ret does not load, refused with the reason naming the
    action. None when the syscall does not exist and ``ignore.callNotFound`` skips it."""
    hook = f"{policy.section}[{index}] {item.call}"
    base = f"spec.{policy.section}[{index}]"
    field = f"{base}.{overrides(item)}"
    func = ARCH_PREFIX.get(platform.machine(), "__x64_") + "sys_" + name
    kernel = sensor.ctx.kernel
    if kernel is None or not kernel.has("fmod_ret"):
        raise PolicyLoadError(hook, f"Override on syscall {name} needs fmod_ret on {func} (how Tetragon overrides a "
                                    f"syscall), which this kernel refuses; the raw tracepoints that serve syscall "
                                    f"hooks here cannot change a return value: use Sigkill, or an lsmhooks section",
                              field)
    ok, why = overridable(func)
    if not ok:
        raise PolicyLoadError(hook, f"Override on syscall {name} needs fmod_ret on {func}, which the kernel allows "
                                    f"only for a function on its error-injection list: {why}; use Sigkill, or an "
                                    f"lsmhooks section", field)
    observed = item.model_copy(update={"selectors": [without_override(sel) for sel in item.selectors]})
    plan = plan_syscall(kernel, policy, index, observed, name, opened_file_paths=False,
                        skipped=sensor._skipped.setdefault(policy.id, []))
    if plan is None:
        return None
    try:
        known = kernel_functions().get(func) is not None
    except (OSError, ValueError) as e:
        raise PolicyLoadError(hook, f"cannot read the kernel's BTF to check {func}: {e}", field) from None
    if not known:
        raise PolicyLoadError(hook, f"Override on syscall {name} needs its wrapper {func} in the kernel's BTF; this "
                                    f"kernel has none", field)
    errnos = _override_errnos(sensor, hook, base, item, func)
    compiled = plan.compiled
    for si, err in enumerate(errnos):
        if err:  # carried into the event's actions byte: the decoder reports KPROBE_ACTION_OVERRIDE
            compiled.cfg.sel[si].actions |= ACT_OVERRIDE
    compiled.blocking = True
    pre = (KF_PRE_SYSREGS,) + (0,) * (S.MAX_ARGS - 1)
    note = (f"syscall {name}: served by fmod_ret on {func} (BPF trampoline that returns -errno instead of running "
            f"the syscall); arguments are the values the process passed, read from its registers; Override "
            f"returns the errno before the syscall runs (in monitoring mode it runs and is reported)")
    return dataclasses.replace(plan, attach=("kfunc", func, "fmod_ret", pre,
                                             tuple(errnos + [0] * (S.MAX_SELECTORS - len(errnos))), 1),
                               mechanism="fmod_ret", note=note, open_exit_note=None)


def plan_kernel_function(sensor: Any, policy: Any, index: int, item: Any) -> HookPlan | None:
    """One ``kprobes`` item on a kernel function -> `HookPlan` (attach ``("kfunc", func, mechanism, pre)``),
    or `PolicyLoadError` naming the field. None when ``ignore.callNotFound`` skips a missing function."""
    hook = f"{policy.section}[{index}] {item.call}"
    base = f"spec.{policy.section}[{index}]"
    func = item.call
    try:
        funcs = kernel_functions()
    except (OSError, ValueError) as e:
        raise PolicyLoadError(hook, f"cannot read the kernel's BTF to check {func}: {e}", f"{base}.call") from None
    sig = funcs.get(func)
    if sig is None:
        if item.ignore is not None and item.ignore.callNotFound:
            sensor._skipped.setdefault(policy.id, []).append(
                {"hook": hook, "mechanism": None, "state": "skipped",
                 "note": f"kernel function {func} does not exist in this kernel (ignore.callNotFound)"})
            return None
        raise PolicyLoadError(hook, f"kernel function {func} does not exist in this kernel's BTF (not a kernel "
                                    f"function, inlined, or misspelled)", f"{base}.call")
    proto = sig.c_signature()
    plans: list[S.ArgPlan] = []
    positions: dict[int, int] = {}
    pre = [0] * S.MAX_ARGS
    sock_args: set[int] = set()
    for i, a in enumerate(item.args):
        field = f"{base}.args[{i}]"
        if a.index >= len(sig.params) or a.index >= S.MAX_ARGS:
            n = min(len(sig.params), S.MAX_ARGS)
            valid = f"valid: 0..{n - 1}" if n else f"{func} takes no parameters"
            more = f" (the first {S.MAX_ARGS} can be read)" if len(sig.params) > S.MAX_ARGS else ""
            raise PolicyLoadError(hook, f"index {a.index} is out of range: {proto} has {len(sig.params)} "
                                        f"parameter(s){more}; {valid}", f"{field}.index")
        p = sig.params[a.index]
        typ = a.type or "auto"
        if typ == "nop":
            continue
        if typ == "auto":
            if _is_int_ctype(p.ctype):
                typ = "int64" if _c_int(p.ctype)[1] else "uint64"
                size, signed = _c_int(p.ctype)
            elif p.ctype == "char *":
                typ = "string"
            elif p.ctype in _AUTO:
                typ = _AUTO[p.ctype]
            elif p.ctype in K.AUTO:
                typ = K.AUTO[p.ctype]
            else:
                raise PolicyLoadError(hook, f"parameter {a.index} '{p.name}' of {func} is {p.ctype}, which has no "
                                            f"automatic type: declare one", f"{field}.type")
        mismatch = (f"type {typ} does not match parameter {a.index} '{p.name}' of {proto}, which is {p.ctype}")
        label = a.label
        if typ in POLICY_INTS or typ == "fd":
            if not _is_int_ctype(p.ctype):
                raise PolicyLoadError(hook, mismatch, f"{field}.type")
            if typ == "fd":
                plan = S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_FD_PATH,
                                 json_key="file_arg", label=label, type_name=typ)
            else:
                csize, csigned = _c_int(p.ctype)
                size, signed = POLICY_INTS[typ]
                if typ in ("int", "auto"):
                    size, signed = csize, csigned
                plan = S.ArgPlan(kind=S.ARG_INT, from_=S.FROM_SYSCALL, offset=a.index, size=size, signed=signed,
                                 json_key=_int_key(size, signed, typ), label=label, type_name=typ)
        elif typ == "string":
            if p.ctype not in ("char *", "unsigned char *"):
                raise PolicyLoadError(hook, mismatch + " (string reads a char *)", f"{field}.type")
            pre[a.index] = KF_PRE_STR
            plan = S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_KERNEL_STR,
                             json_key="string_arg", label=label, type_name=typ)
        elif typ in K.KTYPES:
            # a kernel structure read field by field in the kernel (sensorium.hooks.kstructs)
            kt = K.KTYPES[typ]
            if p.ctype not in kt.ctypes:
                raise PolicyLoadError(hook, mismatch + f" ({typ} reads {' or '.join(kt.ctypes)})", f"{field}.type")
            plan = K.arg_plan(typ, S.FROM_SYSCALL, a.index, label)
        elif typ in _STRUCT_ARGS:
            if p.ctype != _STRUCT_ARGS[typ] and p.ctype not in _STRUCT_ALIASES.get(typ, ()):
                raise PolicyLoadError(hook, mismatch + f" ({typ} reads a {_STRUCT_ARGS[typ]})", f"{field}.type")
            if typ == "sock":
                # read in the kernel into a struct sens_sock: matched by SAddr/DAddr/SPort/DPort/Protocol/Family
                plan = S.ArgPlan(kind=S.ARG_SOCK, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_SOCK,
                                 json_key="sock_arg", label=label, type_name=typ, sock_ops=S.SOCK_OPS)
            elif typ == "skb":
                # the packet's IP header and ports, read in the kernel: matched by the socket operators
                plan = S.ArgPlan(kind=S.ARG_SOCK, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_SKB,
                                 json_key="skb_arg", label=label, type_name=typ, sock_ops=S.SKB_OPS)
            elif typ == "sockaddr":
                plan = S.ArgPlan(kind=S.ARG_SOCK, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_SOCKADDR,
                                 json_key="sockaddr_arg", label=label, type_name=typ, sock_ops=S.SOCKADDR_OPS,
                                 sock_ops_why="a sockaddr holds one address and port, which Tetragon names SAddr/"
                                              "SPort whatever the direction, and no protocol")
            elif typ == "cred":
                pre[a.index] = KF_PRE_CRED
                sock_args.add(a.index)  # a summary: reported, not matched
                plan = S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_KERNEL_STR,
                                 json_key="process_credentials_arg", label=label, type_name=typ)
            elif typ == "dentry":
                # a dentry knows no mount: its path is walked up to the root of its own filesystem
                pre[a.index] = KF_PRE_DENTRY
                plan = S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_PATH,
                                 json_key="path_arg", label=label, type_name=typ)
            else:
                deref = {"file": S.DEREF_FILE, "path": S.DEREF_PATH, "linux_binprm": S.DEREF_BINPRM}[typ]
                plan = S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=deref,
                                 json_key=f"{typ}_arg", label=label, type_name=typ)
        else:
            raise PolicyLoadError(hook, f"type {typ} is not supported on kernel functions yet (supported: integers, "
                                        f"fd, string, file, path, dentry, linux_binprm, sock, sockaddr, skb, cred, "
                                        f"{', '.join(K.KTYPES)})", f"{field}.type")
        if a.index in positions:
            raise PolicyLoadError(hook, f"index {a.index} is declared twice", f"{field}.index")
        positions[a.index] = len(plans)
        plans.append(plan)
    # Override: only where the kernel lets fmod_ret change the return value (and fmod_ret loads).
    errnos = _override_errnos(sensor, hook, base, item, func)
    for si, sel in enumerate(item.selectors):
        for mi, m in enumerate(getattr(sel, "matchArgs", None) or []):
            idxs = list(m.indexes) if hasattr(m, "indexes") else [m.index]
            if any(ix in sock_args for ix in idxs):
                raise PolicyLoadError(hook, "matchArgs on a cred argument is not supported on kernel functions yet: it "
                                            "is reported, not matched", f"{base}.selectors[{si}].matchArgs[{mi}]")
    at_exit = bool(item.return_)
    ret_plan = None
    if at_exit:
        ra = item.returnArg
        rtyp = (ra.type if ra is not None else None) or "auto"
        if sig.ret == "void":
            if ra is not None:
                raise PolicyLoadError(hook, f"returnArg: {func} returns void", f"{base}.returnArg")
        elif rtyp == "sock" or (rtyp == "auto" and sig.ret == _STRUCT_ARGS["sock"]):
            if sig.ret != _STRUCT_ARGS["sock"]:
                raise PolicyLoadError(hook, f"returnArg type sock does not match the return type {sig.ret} of {func} "
                                            f"(sock reads a struct sock *)", f"{base}.returnArg.type")
            if len(plans) >= S.MAX_ARGS:
                raise PolicyLoadError(hook, f"a returned sock is read like an argument: at most {S.MAX_ARGS - 1} args "
                                            "with it", f"{base}.returnArg")
            # read at return into a struct sens_sock after the arguments (the record's last one)
            ret_plan = S.ArgPlan(kind=S.ARG_SOCK, from_=S.FROM_RETVAL, offset=0, deref=S.DEREF_SOCK,
                                 json_key="sock_arg", label=ra.label if ra is not None else None, type_name="sock",
                                 sock_ops=S.SOCK_OPS)
        else:
            if not _is_int_ctype(sig.ret):
                raise PolicyLoadError(hook, f"returnArg: {func} returns {sig.ret}; only integer return values are "
                                            f"reported", f"{base}.returnArg.type")
            csize, csigned = _c_int(sig.ret)
            if rtyp == "auto" or rtyp == "int":
                size, signed = csize, csigned
            elif rtyp in POLICY_INTS:
                size, signed = POLICY_INTS[rtyp]
            else:
                raise PolicyLoadError(hook, f"returnArg type {rtyp} does not match the return type {sig.ret} of "
                                            f"{func}", f"{base}.returnArg.type")
            ret_plan = S.ArgPlan(kind=S.ARG_INT, from_=S.FROM_RETVAL, offset=0, size=size, signed=signed,
                                 json_key=_int_key(size, signed, rtyp), label=ra.label if ra is not None else None,
                                 type_name=rtyp)
    ret_flags = 0
    if item.returnArgAction in ("TrackSock", "UntrackSock"):
        if ret_plan is None or ret_plan.kind != S.ARG_SOCK:
            raise PolicyLoadError(hook, f"returnArgAction {item.returnArgAction} needs 'return: true' and a returnArg "
                                        f"of type sock (a function returning struct sock *)",
                                  f"{base}.returnArgAction")
        ret_flags = S.CFG_RET_TRACK if item.returnArgAction == "TrackSock" else S.CFG_RET_UNTRACK
    overriding = any(errnos)
    selectors = [without_override(sel) for sel in item.selectors] if overriding else list(item.selectors)
    captured = plans + [ret_plan] if ret_plan is not None and ret_plan.kind == S.ARG_SOCK else plans
    # argSock is the position in the item's args list (Tetragon's kernel reads argsoff[argSock]); nop args are
    # not captured, so it maps to the position of the captured argument
    sock_positions = {i: positions[a.index] for i, a in enumerate(item.args) if a.index in positions}
    try:
        compiled = S.compile_hook(policy_id=policy.id, hook_id=index, kind=S.HOOK_RAW_TP, args=captured,
                                  selectors=selectors, arg_position=positions, at_exit=at_exit,
                                  has_return=at_exit, sock_positions=sock_positions)
    except S.SelectorError as e:
        raise PolicyLoadError(hook, e.reason, f"{base}.{e.field}") from None
    compiled.cfg.flags |= ret_flags
    compiled.flags |= ret_flags
    mech: str | None
    if overriding:
        for si, err in enumerate(errnos):
            if err:  # carried into the event's actions byte: the decoder reports KPROBE_ACTION_OVERRIDE
                compiled.cfg.sel[si].actions |= ACT_OVERRIDE
        compiled.blocking = True
        mech, why = "fmod_ret", "fmod_ret (BPF trampoline that returns -errno instead of running the function)"
    else:
        mech, why = _mechanism(sensor.ctx.kernel, at_exit)
    if mech is None:
        raise PolicyLoadError(hook, f"{why}: kernel function {func} cannot be hooked (only syscalls can be served "
                                    f"here, through raw_tp sys_enter/sys_exit)", f"{base}.call")
    note = f"{proto}: served by {why}"
    if overriding:
        note += "; Override returns the errno before the function runs (in monitoring mode it runs and is reported)"
    elif compiled.blocking:
        note += ("; Sigkill/Signal are sent " + ("when the function returns" if at_exit else "on entry") +
                 ": the function runs to completion, the process dies before it returns to user space")
    body = {"function_name": func, **extras(item)}
    return HookPlan(hook=hook, field=base, compiled=compiled, args=plans,
                    attach=("kfunc", func, mech, tuple(pre), tuple(errnos + [0] * (S.MAX_SELECTORS - len(errnos))),
                            len(sig.params)),
                    mechanism=mech, note=note, body=body, kind="process_kprobe", return_plan=ret_plan)


class KfuncHookSet(HookSet):
    """The engine's `HookSet`, plus kernel-function hooks (attach ``("kfunc", ...)``) from kfunc.bpf.c.
    Preparation, scope and process tracking are the engine's (`HookSet.prepare_object`/`start_object`/
    `attach_tracking`); the rounds of a transaction too (`HookSet.prepare`/`commit`/`activate`)."""

    def enforces(self, plan: HookPlan) -> bool:
        # fmod_ret makes the function fail: enforcement as much as a signal
        return super().enforces(plan) or (plan.attach[0] == "kfunc" and plan.attach[2] == "fmod_ret")

    def _load_one(self, plan: HookPlan) -> None:
        at = plan.attach
        if at[0] != "kfunc":
            super()._load_one(plan)
            return
        self._load_kfunc(plan, at)

    def _load_kfunc(self, plan: HookPlan, at: KfuncAttach, index: int | None = None) -> None:
        """Load the object of one kernel-function hook (round 1; ``at`` is its ``plan.attach``), appended to
        `objects`, or in place of object ``index`` (a kprobe taking over from a trampoline the kernel
        refused to attach)."""
        _kind, func, mech, pre, errnos, nparams = at
        try:
            obj = self.ctx.open_object(self.ctx.build(KFUNC_PROBE))
        except Exception as e:
            raise PolicyLoadError(plan.hook, f"cannot build the kernel-function program: {e}") from e
        if index is None:
            self.objects.append((plan, obj))
        else:
            self.objects[index] = (plan, obj)
        prog = {"fentry": "sens_fentry", "fexit": "sens_fexit", "kprobe": "sens_kprobe",
                "kretprobe": "sens_kretprobe", "fmod_ret": "sens_fmod_ret"}[mech]
        with refused_as(plan):
            progs = {prog, "sens_kprobe"} if mech == "kretprobe" else {prog}
            wanted = self.prepare_object(plan, obj, progs, inflight=mech == "kretprobe")
            obj.set_rodata("kf_pre", bytes(pre))
            obj.set_rodata("kf_nargs", nparams)
            obj.set_rodata("kf_errno", struct.pack(f"<{S.MAX_SELECTORS}I", *errnos))
            if mech in ("fentry", "fexit", "fmod_ret"):
                obj.program(prog).set_attach_target(func)
            obj.load()
            self.start_object(plan, obj, wanted)

        def attach() -> None:
            with refused_as(plan):
                self.attach_tracking(plan, obj, wanted)
                if mech in ("kprobe", "kretprobe"):
                    try:
                        if mech == "kretprobe":  # the return side first: no entry without its exit
                            obj.program("sens_kretprobe").attach_kprobe(func, retprobe=True)
                        obj.program("sens_kprobe").attach_kprobe(func)
                    except OSError as e:
                        reason = os.strerror(e.errno) if e.errno else str(e)
                        raise _KprobeRefused(plan.hook, f"kernel function {func} cannot be attached on this kernel: "
                                                        f"{mech} refused ({reason}); it may be inlined or excluded "
                                                        "from tracing here", plan.field, reason) from None
                else:
                    try:
                        obj.program(prog).attach()
                    except OSError as e:
                        if mech not in ("fentry", "fexit"):
                            raise
                        self._trampoline_refused(plan, at, obj, e)

        if index is None:
            self._attach.append(attach)
        else:
            self._attach[index] = attach

    def _trampoline_refused(self, plan: HookPlan, at: KfuncAttach, obj: Any, e: OSError) -> None:
        """The trampoline loaded but the kernel will not attach it to this function (e.g. EBUSY: 6.1 on
        dev_queue_xmit). A kprobe observes the same call; it cannot Override, so only fentry/fexit fall back:
        its object is loaded here, in the commit round, in place of the refused one, and attached inert."""
        mech = at[2]
        reason = os.strerror(e.errno) if e.errno else str(e)
        kernel = getattr(self.ctx, "kernel", None)
        if kernel is None or not kernel.has("kprobe"):
            raise PolicyLoadError(plan.hook, f"{type(e).__name__}: {e}", plan.field) from None
        index = next(i for i, (_p, o) in enumerate(self.objects) if o is obj)
        scope_map = obj.map("sens_scope")
        self._scope_maps = [sm for sm in self._scope_maps if sm.map is not scope_map]  # must not be updated later
        try:
            obj.close()
        except Exception:  # noqa: BLE001 - closing a half-used object must not hide why it failed
            pass
        fallback = "kretprobe" if mech == "fexit" else "kprobe"
        note = (f"{plan.note}; {mech} attach refused by the kernel ({reason}), served by {fallback}"
                if plan.note else f"{mech} attach refused by the kernel ({reason}), served by {fallback}")
        kind, func, _mech, pre, errnos, nparams = at
        at = (kind, func, fallback, pre, errnos, nparams)
        plan = dataclasses.replace(plan, attach=at, mechanism=fallback, note=note)
        self._load_kfunc(plan, at, index)
        try:
            self._attach[index]()
        except _KprobeRefused as k:
            raise PolicyLoadError(plan.hook, f"kernel function {func} cannot be attached on this kernel: "
                                             f"{mech} refused ({reason}) and {fallback} refused ({k.kernel_reason}); "
                                             "it may be inlined or excluded from tracing here", plan.field) from None


class _KprobeRefused(PolicyLoadError):
    """The kprobe program loaded but the kernel refused to attach it to the function (not in kallsyms, on
    the kprobe blocklist): the error for the user, and the kernel's reason for a combined message when the
    kprobe was the fallback of a refused trampoline (`KfuncHookSet._trampoline_refused`)."""

    def __init__(self, hook: str, reason: str, field: str | None, kernel_reason: str) -> None:
        super().__init__(hook, reason, field)
        self.kernel_reason = kernel_reason


def decode_sock(text: str) -> dict[str, Any] | None:
    """A hex-encoded ``struct sens_sock`` (its first 44 bytes at least) -> Tetragon's KprobeSock fields (None if
    malformed). The engine renders sock arguments itself (`sensorium.selectors.render_sock`); this is the same
    decoding for a summary passed around as text."""
    try:
        raw = bytes.fromhex(text[: 2 * _SOCK.size])
        _SOCK.unpack(raw)
    except (ValueError, struct.error):
        return None
    return S.render_sock("sock_arg", raw.ljust(ctypes.sizeof(S.SensSock), b"\0"))


def decode_cred(text: str) -> dict[str, Any] | None:
    """The hex cred summary from kfunc.bpf.c -> Tetragon's process_credentials_arg (None if malformed)."""
    try:
        raw = bytes.fromhex(text[: 2 * _CRED.size])
        uid, gid, suid, sgid, euid, egid, fsuid, fsgid, inh, perm, eff = _CRED.unpack(raw)
    except (ValueError, struct.error):
        return None
    return {"uid": uid, "gid": gid, "euid": euid, "egid": egid, "suid": suid, "sgid": sgid, "fsuid": fsuid,
            "fsgid": fsgid, "caps": {"permitted": list(schema.cap_names(perm)),
                                                           "effective": list(schema.cap_names(eff)),
                                                           "inheritable": list(schema.cap_names(inh))}}


_DECODERS = {"process_credentials_arg": decode_cred}


def wrap_decode(ring: Any, decode: Any) -> Any:
    """The ring's decoder with the kernel-function additions: decoded sock/cred arguments, and for fmod_ret
    hooks the Override outcome (action, errno, mode) read from each record's header."""
    def run(records: Sequence[bytes]) -> Sequence[Any]:
        if not any(h[0].attach[0] == "kfunc" for h in ring.hooks.values()):
            return decode(records)  # syscall hooks only: nothing to add (keeps the engine's fast path)
        decode_dicts = ring.decode_dicts  # bodies changed below: events whose JSON is encoded afterwards
        if not any(len(h[0].attach) > 2 and h[0].attach[0] == "kfunc" and h[0].attach[2] == "fmod_ret"
                   for h in ring.hooks.values()):
            return sock_event_fixup(decode_dicts(records))
        out: list[Any] = []
        for rec in records:  # one by one: the record's header says whether this event overrode the call
            evs = decode_dicts([rec])
            if evs and len(rec) >= _EV.size:
                f = _EV.unpack_from(rec)
                policy_id, hook_id, sel, actions, flags = f[6], f[7], f[10], f[11], f[12]
                entry = ring.hooks.get((policy_id, hook_id))
                if entry is not None and actions & ACT_OVERRIDE:
                    plan = entry[0]
                    fmod = plan.attach[0] == "kfunc" and plan.attach[2] == "fmod_ret"
                    err = plan.attach[4][sel] if fmod and sel < plan.compiled.cfg.nsel else 0
                    if not err:  # only a selector with Override of an fmod_ret hook sets the bit
                        ring.dropped["bad_selector"] += 1
                        entry[2].events -= 1  # counted by decode_dicts: this record is no event after all
                        continue
                    monitoring = bool(flags & S.EV_MONITOR)
                    body = evs[0].body
                    body["action"] = "KPROBE_ACTION_OVERRIDE"
                    body["override_return"] = -err
                    body["policy_mode"] = "monitoring" if monitoring else "enforcement"
                    body["action_taken"] = not monitoring
            out.extend(evs)
        return sock_event_fixup(out)
    return run


def sock_event_fixup(events: list[Any]) -> list[Any]:
    """Replace ``{"sock_arg": "<hex>"}`` / ``{"process_credentials_arg": "<hex>"}`` arguments (as the engine
    renders them) with the decoded dicts."""
    for ev in events:
        body = ev.body
        if ev.kind != "process_kprobe" or not isinstance(body, dict):
            continue
        for a in body.get("args") or ():
            if not isinstance(a, dict):
                continue
            for key, dec in _DECODERS.items():
                v = a.get(key)
                if isinstance(v, str):
                    d = dec(v)
                    a[key] = d if d is not None else {"error": "undecodable"}
    return events

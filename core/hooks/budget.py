"""Verifier budget cases of the hook engine's programs (`sensorium.hookspecs.BudgetCase`).

Each program of the engine's objects is loaded with the most expensive configurations that
`worst_case_cfgs` builds from the kernel limits: the program kinds that evaluate a
policy (tracepoint, raw tracepoint, syscall enter/exit, uprobe/uretprobe, the open-exit program) with
every argument family their hooks can have; the process-tracking programs with the mixed one. Sensors
built on the hook library (tracepoint, kprobe, uprobe, lsm) list the cases of the programs they load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sensorium.hooks import selectors as S
from sensorium.hookspecs import BudgetCase, ProbeSource

__all__ = ["engine_cases", "prepare_hook", "worst_case_cfgs"]

# program -> (hook kind of its configurations, evaluated at exit)
_KINDS: dict[str, tuple[int, bool]] = {
    "sens_tp": (S.HOOK_TP, False),
    "sens_raw": (S.HOOK_RAW_TP, False),
    "sens_sys_enter": (S.HOOK_SYSCALL, False),  # evaluated at entry (a hook at exit only stashes there)
    "sens_sys_exit": (S.HOOK_SYSCALL, True),
    "sens_uprobe": (S.HOOK_SYSCALL, False),     # reads the function's parameters like a syscall's
    "sens_uretprobe": (S.HOOK_SYSCALL, True),
    "sens_open_exit": (S.HOOK_SYSCALL, True),
}
TRACKING = ("sens_fork", "sens_exec", "sens_exit")


def prepare_hook(cfg: S.HookCfg, open_exit: bool = False,
                 rodata: Mapping[str, bytes | int] | None = None,
                 targets: Mapping[str, str] | None = None) -> Callable[[Any], None]:
    """A `BudgetCase.prepare` that sets ``sens_cfg`` (and the open-exit program's early-rejection table, and
    any other rodata) before load, and the attach target of the programs named in ``targets`` (program ->
    kernel function or LSM hook)."""
    raw = bytes(cfg)
    pq = None
    if open_exit:
        from sensorium.hooks.openexit import open_exit_filter

        pq = bytes(open_exit_filter(cfg))
    extra = dict(rodata or {})
    attach = dict(targets or {})

    def prepare(obj: Any) -> None:
        obj.set_rodata("sens_cfg", raw)
        if pq is not None:
            obj.set_rodata("sens_pq", pq)
        for k, v in extra.items():
            obj.set_rodata(k, v)
        for prog, target in attach.items():
            if obj.program(prog).autoload:
                obj.program(prog).set_attach_target(target)
    return prepare


def _cfgs(kind: int, at_exit: bool, src: int | None) -> dict[str, S.HookCfg]:
    out = worst_case_cfgs(kind)
    for cfg in out.values():
        if not at_exit:
            cfg.flags &= ~S.CFG_AT_EXIT
        if src is not None:
            for i in range(cfg.nargs):
                if cfg.args[i].src in (S.FROM_RAW, S.FROM_SYSCALL):
                    cfg.args[i].src = src
    return out


def engine_cases(probe: ProbeSource, full: Iterable[str], others: Iterable[str] = (),
                 needs: Mapping[str, frozenset[str]] | None = None, src: int | None = None,
                 rodata: Mapping[str, bytes | int] | None = None,
                 kinds: Mapping[str, tuple[int, bool]] | None = None, tag: str = "",
                 targets: Mapping[str, str] | None = None) -> list[BudgetCase]:
    """Cases for the programs ``full`` (every worst configuration of their kind) and ``others`` (the mixed
    one) of ``probe``. ``kinds`` names the configuration kind of programs this module does not know
    (e.g. the kprobe sensor's fentry); ``src`` forces where arguments are read from (a sensor that fills
    s->raw itself); ``needs`` per program: the kernel capabilities without which it cannot load; ``tag`` is
    added to the configuration labels (one object measured against several functions); ``targets``: attach
    targets set before load (see `prepare_hook`)."""
    known = dict(_KINDS)
    known.update(kinds or {})
    needs = needs or {}
    cases: list[BudgetCase] = []
    for prog in full:
        kind, at_exit = known[prog]
        for label, cfg in _cfgs(kind, at_exit, src).items():
            cases.append(BudgetCase(probe, prog, label + tag,
                                    prepare_hook(cfg, prog == "sens_open_exit", rodata, targets),
                                    needs.get(prog, frozenset())))
    for prog in others:
        kind, at_exit = known.get(prog, (S.HOOK_SYSCALL, True))
        cfg = _cfgs(kind, at_exit, src)["mixed"]
        cases.append(BudgetCase(probe, prog, "mixed" + tag,
                                prepare_hook(cfg, prog == "sens_open_exit", rodata, targets),
                                needs.get(prog, frozenset())))
    return cases


# Argument families of the worst cases: (name, hook kinds it applies to, how to fill one sens_arg)
_WORST_ARGS: tuple[tuple[str, tuple[int, ...], dict[str, int]], ...] = (
    ("resolved strings", (S.HOOK_SYSCALL,), dict(kind=S.ARG_STR, src=S.FROM_SYSCALL, deref=S.DEREF_USER_STR,
                                                 resolve=1, has_dirfd=1)),
    ("kernel strings", (S.HOOK_RAW_TP, S.HOOK_SYSCALL),
     dict(kind=S.ARG_STR, src=S.FROM_SYSCALL, deref=S.DEREF_KERNEL_STR)),
    ("user buffers", (S.HOOK_SYSCALL,), dict(kind=S.ARG_BUF, src=S.FROM_SYSCALL, deref=S.DEREF_USER_BUF)),
    ("file paths", (S.HOOK_RAW_TP, S.HOOK_SYSCALL), dict(kind=S.ARG_STR, src=S.FROM_SYSCALL, deref=S.DEREF_FILE)),
    ("struct paths", (S.HOOK_RAW_TP, S.HOOK_SYSCALL), dict(kind=S.ARG_STR, src=S.FROM_SYSCALL, deref=S.DEREF_PATH)),
    ("binprm paths", (S.HOOK_RAW_TP, S.HOOK_SYSCALL), dict(kind=S.ARG_STR, src=S.FROM_SYSCALL, deref=S.DEREF_BINPRM)),
    ("fd paths", (S.HOOK_SYSCALL,), dict(kind=S.ARG_STR, src=S.FROM_SYSCALL, deref=S.DEREF_FD_PATH)),
    ("sockets", (S.HOOK_RAW_TP, S.HOOK_SYSCALL), dict(kind=S.ARG_SOCK, src=S.FROM_SYSCALL, deref=S.DEREF_SOCK)),
    ("packets", (S.HOOK_RAW_TP, S.HOOK_SYSCALL), dict(kind=S.ARG_SOCK, src=S.FROM_SYSCALL, deref=S.DEREF_SKB)),
    ("user sockaddrs", (S.HOOK_SYSCALL,), dict(kind=S.ARG_SOCK, src=S.FROM_SYSCALL, deref=S.DEREF_USER_SOCKADDR)),
    ("integers", (S.HOOK_TP, S.HOOK_RAW_TP, S.HOOK_SYSCALL),
     dict(kind=S.ARG_INT, src=S.FROM_SYSCALL, size=4, is_signed=1)),
    ("tracepoint strings", (S.HOOK_TP,), dict(kind=S.ARG_STR, src=S.FROM_CTX, deref=S.DEREF_DATALOC)),
    ("tracepoint arrays", (S.HOOK_TP,), dict(kind=S.ARG_STR, src=S.FROM_CTX, deref=S.DEREF_INLINE)),
    # last, so the mixed configuration (the first S.MAX_ARGS families) stays what it was
    ("kernel structures", (S.HOOK_RAW_TP,), dict(kind=S.ARG_STRUCT, src=S.FROM_SYSCALL, deref=S.DEREF_PERF_EVENT)),
    ("net devices", (S.HOOK_RAW_TP,), dict(kind=S.ARG_STR, src=S.FROM_SYSCALL, deref=S.DEREF_NETDEV)),
    ("capability sets", (S.HOOK_RAW_TP,), dict(kind=S.ARG_INT, src=S.FROM_SYSCALL, deref=S.DEREF_KCAP)),
)


def worst_case_cfgs(kind: int = S.HOOK_SYSCALL, syscall_nr: int = 257) -> dict[str, S.HookCfg]:
    """The most expensive hook configurations the kernel limits above allow, one per argument family that
    hooks of ``kind`` can have, plus a mix: S.MAX_ARGS arguments of the family (the opened-file path of the
    open family in the mix), S.MAX_SELECTORS selectors each with S.MAX_MATCH_ARGS matchArgs of S.MAX_VALUES
    values, S.MAX_PIDF matchPIDs, S.MAX_NS matchNamespaces, S.MAX_CAPS matchCapabilities and as many
    matchCapabilityChanges (namespace capabilities), S.MAX_BINS matchBinaries (one following children), a
    matchReturnArgs, a rate-limited Sigkill, a Post with both stack traces, a TrackSock or UntrackSock,
    S.MAX_STRINGS string values of S.STR_MAX - 1 bytes, and every flag (scoped, at exit, binaries, follow,
    socket owners, returnArgAction TrackSock, capability changes)."""
    fams = [(n, f) for n, kinds, f in _WORST_ARGS if kind in kinds]
    out: dict[str, S.HookCfg] = {}
    for name, fill in fams + [("mixed", {})]:
        cfg = S.HookCfg()
        cfg.kind, cfg.syscall_nr, cfg.policy_id, cfg.hook_id = kind, syscall_nr, 1, 1
        cfg.flags = (S.CFG_CGROUP_SCOPED | S.CFG_NEED_BINARY | S.CFG_FOLLOW | S.CFG_SOCK_OWNER | S.CFG_RET_TRACK
                     | S.CFG_CAP_CHANGES | (S.CFG_AT_EXIT if kind == S.HOOK_SYSCALL else 0))
        cfg.nargs = S.MAX_ARGS
        for i in range(S.MAX_ARGS):
            a = cfg.args[i]
            f = fill if fill else fams[i % len(fams)][1]
            a.kind, a.src, a.deref = f["kind"], f["src"], f.get("deref", S.DEREF_NONE)
            if kind == S.HOOK_RAW_TP and a.src == S.FROM_SYSCALL:
                a.src = S.FROM_RAW
            a.size, a.is_signed = f.get("size", 8), f.get("is_signed", 0)
            a.offset = 8 * i if a.src == S.FROM_CTX else i
            a.max, a.resolve, a.has_dirfd = S.STR_MAX, f.get("resolve", 0), f.get("has_dirfd", 0)
            a.size_arg = (i + 1) % S.MAX_ARGS if a.kind == S.ARG_BUF else 0xFF
            if name == "mixed" and i == 1 and kind == S.HOOK_SYSCALL:
                a.kind, a.deref, a.ret_fd, a.resolve, a.has_dirfd = S.ARG_STR, S.DEREF_USER_STR, 1, 1, 1
        cfg.nsel = S.MAX_SELECTORS
        nstr = 0
        for si in range(S.MAX_SELECTORS):
            sel = cfg.sel[si]
            sel.actions, sel.signal = S.ACT_POST | S.ACT_SIGKILL, 9
            sel.stacks = S.STACK_KERNEL | S.STACK_USER
            sel.sock_act, sel.sock_arg = S.SOCK_TRACK if si % 2 == 0 else S.SOCK_UNTRACK, si % S.MAX_ARGS
            sel.rl_ns, sel.rl_scope = 1_000_000_000, S.RL_SCOPES["process"]
            sel.nargs = S.MAX_MATCH_ARGS
            for k in range(S.MAX_MATCH_ARGS):
                m = sel.args[k]
                m.arg = (si + k) % S.MAX_ARGS
                ak = cfg.args[m.arg].kind
                m.nvals = S.MAX_VALUES
                if ak == S.ARG_INT:
                    m.op = S.OPS["NotEqual"]
                elif ak == S.ARG_SOCK:
                    m.op = S.OPS["NotDAddr"] if k % 2 else S.OPS["NotDPort"]
                else:
                    m.op = (S.OPS["NotPostfix"], S.OPS["Prefix"], S.OPS["NotEqual"], S.OPS["Postfix"])[k]
                m.str_first = nstr % (S.MAX_STRINGS - S.MAX_VALUES + 1)
                nstr += S.MAX_VALUES
                for q in range(S.MAX_VALUES):
                    m.vals[q] = q | (q + 1) << 16
            sel.nret, sel.ret.op, sel.ret.nvals = 1, S.OPS["NotEqual"], S.MAX_VALUES
            sel.npids = S.MAX_PIDF
            for k in range(S.MAX_PIDF):
                sel.pids[k].op, sel.pids[k].nvals = S.OPS["NotIn"] if k else S.OPS["In"], S.MAX_VALUES
                sel.pids[k].flags = S.PID_NS | (S.PID_FOLLOW if k == 0 else 0)
            sel.nns = S.MAX_NS
            for k in range(S.MAX_NS):
                sel.ns[k].ns, sel.ns[k].op, sel.ns[k].nvals = 1 + (si * S.MAX_NS + k) % 10, S.OPS["NotIn"], S.MAX_VALUES
            sel.ncaps = sel.ncapch = S.MAX_CAPS
            for k in range(S.MAX_CAPS):
                for c in (sel.caps[k], sel.capch[k]):
                    c.set, c.op, c.mask, c.userns = 1 + k, S.OPS["NotIn"], 1 << 21, 0xF0000000
            sel.nbins = S.MAX_BINS
            for k in range(S.MAX_BINS):
                b = sel.bins[k]
                b.op, b.nvals, b.follow = S.OPS["Prefix"] if k == 0 else S.OPS["NotPostfix"], S.MAX_VALUES, int(k == 0)
                b.str_first = (k * S.MAX_VALUES) % (S.MAX_STRINGS - S.MAX_VALUES + 1)
        for i in range(S.MAX_STRINGS):
            cfg.strs[i].len = S.STR_MAX - 1
            cfg.strs[i].s = b"/" + b"w" * (S.STR_MAX - 2)
        out[name] = cfg
    if kind == S.HOOK_SYSCALL:
        # the open family on the opened file: every matchArgs a positive string operator on that path, so
        # the early-rejection table (sens_pq) is full too
        cfg = S.HookCfg.from_buffer_copy(bytes(out["mixed"]))
        for si in range(S.MAX_SELECTORS):
            for k in range(S.MAX_MATCH_ARGS):
                m = cfg.sel[si].args[k]
                m.arg, m.op = 1, (S.OPS["Equal"], S.OPS["Prefix"], S.OPS["Postfix"], S.OPS["In"])[k]
        out["opened file"] = cfg
        # the mix served as one object for a list of syscalls: the number looked up in sens_sysset first
        cfg = S.HookCfg.from_buffer_copy(bytes(out["mixed"]))
        cfg.syscall_nr = S.SYSCALL_SET
        out["syscall set"] = cfg
    return out

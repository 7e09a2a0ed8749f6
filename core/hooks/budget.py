"""Verifier budget cases of the hook engine's programs (`sensorium.hookspecs.BudgetCase`).

Each program of the engine's objects is loaded with the most expensive configurations that
`sensorium.hooks.selectors.worst_case_cfgs` builds from the kernel limits: the program kinds that evaluate a
policy (tracepoint, raw tracepoint, syscall enter/exit, uprobe/uretprobe, the open-exit program) with
every argument family their hooks can have; the process-tracking programs with the mixed one. Sensors
built on the hook library (tracepoint, kprobe, uprobe, lsm) list the cases of the programs they load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sensorium.hooks import selectors as S
from sensorium.hookspecs import BudgetCase, ProbeSource

__all__ = ["engine_cases", "prepare_hook"]

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
    out = S.worst_case_cfgs(kind)
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

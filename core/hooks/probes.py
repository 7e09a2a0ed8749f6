"""The hook engine's BPF objects: ``hook.bpf.c`` (tracepoints, raw tracepoints, syscalls through raw_tp
sys_enter/sys_exit, uprobes) and its open-exit build (``SENS_OPEN_EXIT``: opened-file syscalls at sys_exit
alone). Both are configured entirely by the rodata ``sens_cfg`` (`sensorium.hooks.selectors.compile_hook`);
their C is ``sensorium/selectors.h`` and ``sensorium/hook/*.h``.
"""

from __future__ import annotations

from pathlib import Path

from sensorium.hookspecs import ProbeSource

__all__ = ["HOOK_PROBE", "HOOK_OPEN_PROBE", "OPEN_EXIT_MECHANISM", "OPEN_EXIT_NEEDS", "PAIR_MECHANISM",
           "MODE_INACTIVE"]

HOOK_PROBE = ProbeSource(name="sens_hook", source=Path(__file__).resolve().parent / "hook.bpf.c")
# The same object with sens_open_exit (selectors.h, SENS_OPEN_EXIT): opened-file syscalls at sys_exit alone.
HOOK_OPEN_PROBE = ProbeSource(name="sens_hook_open", source=HOOK_PROBE.source, defines={"SENS_OPEN_EXIT": "1"})
OPEN_EXIT_MECHANISM = "tp_btf sys_exit"
# What the open-exit object needs to load at all (its kfunc is resolved for the whole object).
OPEN_EXIT_NEEDS = frozenset({"tp_btf", "bpf_rdonly_cast"})
PAIR_MECHANISM = "raw_tp sys_enter + sys_exit"  # as the syscall planner (syscalls.py) names it
# sens_mode values (sensorium/hook/defs.h): 0 enforcement, 1 monitoring, 2 attached but not active yet
# (SENS_MODE_INACTIVE: a transaction's hooks between commit and activate do nothing at all).
MODE_INACTIVE = 2

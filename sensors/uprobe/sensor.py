"""The uprobe sensor: TracingPolicy ``uprobes`` items, served by the hook library (`sensorium.hooks`).

One hook object per (item, symbol or offset), attached as a uprobe on the binary (and a uretprobe too
for ``return: true``). Function parameters are read from the user calling convention's registers
(PT_REGS_PARM1..6) into the same slots syscall hooks use, so argument capture, selectors (matchArgs,
matchReturnArgs, matchBinaries, matchPIDs, ...) and actions (Post, NoPost, Sigkill, Signal) are the
engine's, evaluated in the kernel. Events are ``process_uprobe`` with path, symbol, args.

The binary and its symbols are checked before anything is loaded: a missing binary or a symbol the
ELF symbol tables do not define is a `PolicyLoadError` naming it and the field.
"""

from __future__ import annotations

import os
from typing import Any

from sensorium.elf import function_symbols
from sensorium.hooks import selectors as S
from sensorium.hooks.hookset import read_binary
from sensorium.hooks.plan import HookPlan, extras, plan_params, plan_return
from sensorium.hooks.sensor import HookSensor
from sensorium.hookspecs import PolicyLoadError, SensorContext

HOOK_UPROBE = 4  # SENS_HOOK_UPROBE in sensorium/selectors.h (informational in the kernel)
MAX_PARAMS = 6   # parameters passed in registers on x86_64 (rdi, rsi, rdx, rcx, r8, r9)
HOOKS_PER_ITEM = 128  # hook_id = item index * HOOKS_PER_ITEM + target: up to 64 symbols + 64 offsets (policy.py)


class UprobeSensor(HookSensor):
    name = "uprobe"
    section = "uprobes"
    supports_scope = True  # every hook checks the policy scope (sens_scope) before anything else

    def __init__(self, ctx: SensorContext) -> None:
        super().__init__(ctx)

    def plan(self, policy: Any) -> list[HookPlan]:
        # An item names several symbols/offsets: each is its own hook (its own event "symbol").
        plans: list[HookPlan] = []
        for i, item in enumerate(policy.items):
            plans.extend(self.plan_targets(policy, i, item))
        return plans

    def plan_item(self, policy: Any, index: int, item: Any) -> HookPlan | None:
        plans = self.plan_targets(policy, index, item)
        return plans[0] if plans else None

    # -- one item ---------------------------------------------------------------------------------
    def _check_binary(self, hook: str, base: str, path: str) -> dict[str, int]:
        return read_binary(hook, f"{base}.path", path, function_symbols)

    def _arg_plans(self, hook: str, base: str, item: Any) -> tuple[list[S.ArgPlan], dict[int, int]]:
        def read(a: Any, typ: str, field: str) -> S.ArgPlan:
            if typ == "string":
                return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_USER_STR,
                                 json_key="string_arg", label=a.label, type_name=typ)
            raise PolicyLoadError(hook, f"type {typ} is not supported for uprobes (integers: int, uint, s64, u64, "
                                        f"size_t...; string; char_buf)", f"{field}.type")

        return plan_params(hook, base, item.args, nparams=MAX_PARAMS, what="uprobes", read=read,
                           index_error=f"index {{index}}: only the first {MAX_PARAMS} parameters (0..5, passed in "
                                       f"registers) can be read")

    def plan_targets(self, policy: Any, index: int, item: Any) -> list[HookPlan]:
        base = f"spec.{policy.section}[{index}]"
        hook = f"{policy.section}[{index}] {item.path}"
        known = self._check_binary(hook, base, item.path)
        for j, sym in enumerate(item.symbols):
            if sym not in known:
                raise PolicyLoadError(f"{hook}:{sym}", f"symbol {sym} is not a function defined in {item.path}",
                                      f"{base}.symbols[{j}]")
        size = os.stat(item.path).st_size
        for j, off in enumerate(item.offsets):
            if off >= size:
                raise PolicyLoadError(f"{hook}:{off:#x}", f"offset {off:#x} is past the end of {item.path} "
                                                          f"({size} bytes)", f"{base}.offsets[{j}]")
        args, positions = self._arg_plans(hook, base, item)
        at_exit = bool(item.return_)
        ret_plan = None
        if at_exit:
            ret_plan = plan_return(hook, base, item, default="int", why="only integer return values are read")
        targets: list[tuple[str | None, int, str]] = [(s, 0, s) for s in item.symbols]
        targets += [(None, o, f"{o:#x}") for o in item.offsets]
        plans: list[HookPlan] = []
        for t, (sym, off, shown) in enumerate(targets):
            thook = f"{hook}:{shown}"
            try:
                compiled = S.compile_hook(policy_id=policy.id, hook_id=index * HOOKS_PER_ITEM + t, kind=HOOK_UPROBE,
                                          args=args, selectors=list(item.selectors), arg_position=positions,
                                          at_exit=at_exit, has_return=at_exit)
            except S.SelectorError as e:
                raise PolicyLoadError(thook, e.reason, f"{base}.{e.field}") from None
            mech = "uprobe" + (" + uretprobe" if at_exit else "")
            note = ""
            if at_exit:
                note = "arguments are read at entry and posted with the return value at the uretprobe"
            if compiled.blocking:
                note = (note + "; " if note else "") + ("Sigkill/Signal are sent from the uprobe" +
                        (" at return: the function has run" if at_exit else
                         " at entry: the process gets them before the function's first instruction"))
            # Tetragon's ProcessUprobe: "symbol" for a symbol, "offset" (mutually exclusive) for an offset.
            body: dict[str, Any] = {"path": item.path, **({"symbol": sym} if sym is not None else {"offset": off}),
                                    **extras(item)}
            plans.append(HookPlan(hook=thook, field=base, compiled=compiled, args=args,
                                  attach=("uprobe", at_exit, item.path, sym, off), mechanism=mech, note=note,
                                  body=body, kind="process_uprobe", return_plan=ret_plan))
        return plans

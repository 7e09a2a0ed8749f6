"""Planning: one policy item -> a `HookPlan` (what to load, how to attach it, how to render its events).

The sensors plan their own items (tracefs formats, syscalls, kernel functions, user functions, LSM hooks);
what every planner shares lives here: how an integer type of the policy is read and reported (`INT_KEYS`,
`int_plan`), the one planner of function parameters (`plan_params`: syscall and uprobe hooks read their
arguments the same way, from the calling convention's registers) and of the return value (`plan_return`),
and the optional event fields of an item (`extras`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from sensorium import schema
from sensorium.hooks import selectors as S
from sensorium.hookspecs import PolicyLoadError

__all__ = ["HookPlan", "Attach", "TpAttach", "RawAttach", "SyscallAttach", "UprobeAttach", "KfuncAttach",
           "UsdtAttach",
           "FastInt", "FastArg", "ArgPlanError", "INT_KEYS", "POLICY_INTS", "I64_ARGS", "int_plan", "extras",
           "plan_params", "plan_return", "ParamReader", "without_override"]

I64_ARGS = schema.i64_keys("tetragon.KprobeArgument")  # size_arg, long_arg: JSON strings in Tetragon's JSON

# A policy's integer type -> (Tetragon's KprobeArgument key, size in bytes, signed)
INT_KEYS: Mapping[str, tuple[str, int, bool]] = {
    "int": ("int_arg", 4, True), "int8": ("int_arg", 1, True), "int16": ("int_arg", 2, True),
    "int32": ("int_arg", 4, True), "s8": ("int_arg", 1, True), "s16": ("int_arg", 2, True),
    "s32": ("int_arg", 4, True), "uint8": ("uint_arg", 1, False), "uint16": ("uint_arg", 2, False),
    "uint32": ("uint_arg", 4, False), "u8": ("uint_arg", 1, False), "u16": ("uint_arg", 2, False),
    "u32": ("uint_arg", 4, False), "uint": ("uint_arg", 4, False), "int64": ("long_arg", 8, True),
    "s64": ("long_arg", 8, True), "long": ("long_arg", 8, True), "uint64": ("size_arg", 8, False),
    "u64": ("size_arg", 8, False), "ulong": ("size_arg", 8, False), "size_t": ("size_arg", 8, False),
}


# A policy's integer type -> (size in bytes, signed): what a BTF-typed planner (kernel functions, LSM hooks)
# reads when the policy names the width
POLICY_INTS: Mapping[str, tuple[int, bool]] = {name: (size, signed) for name, (_key, size, signed) in INT_KEYS.items()}


class ArgPlanError(ValueError):
    """An argument cannot be read as declared; ``field`` is its path in the policy."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


def int_plan(type_name: str, from_: int, offset: int, label: str | None, field_size: int | None = None) -> S.ArgPlan:
    """An integer argument of the policy type ``type_name`` (a key of `INT_KEYS`). ``field_size``: the size of
    a tracepoint field, which narrows what is read."""
    key, size, signed = INT_KEYS[type_name]
    if from_ == S.FROM_CTX and field_size is not None:
        size = min(size, field_size) if field_size in (1, 2, 4, 8) else size
    return S.ArgPlan(kind=S.ARG_INT, from_=from_, offset=offset, json_key=key, size=size, signed=signed,
                     label=label, type_name=type_name)


def extras(item: Any) -> dict[str, Any]:
    """Tetragon's optional event fields from the policy item: message and tags."""
    out: dict[str, Any] = {}
    if getattr(item, "message", None):
        out["message"] = item.message
    if getattr(item, "tags", None):
        out["tags"] = list(item.tags)
    return out


ParamReader = Callable[[Any, str, str], S.ArgPlan]
"""``read(arg, type, field) -> ArgPlan`` for a parameter type `plan_params` does not read itself; raises
`PolicyLoadError` for a type it refuses."""


def plan_params(hook: str, base: str, args: Sequence[Any], *, nparams: int, index_error: str, what: str,
                read: ParamReader) -> tuple[list[S.ArgPlan], dict[int, int]]:
    """The ``args[]`` of a hook whose arguments are function parameters (syscalls, user functions): their
    plans in order and ``{parameter index: position}`` (what a selector's ``matchArgs.index`` names).

    Integers and ``char_buf`` (a user buffer whose length is another declared parameter, ``sizeArgIndex``)
    are read here; ``nop`` is skipped; every other type goes to ``read``. ``index_error`` is the reason for an
    index >= ``nparams`` (``{index}`` is replaced), ``what`` names the hooks in "returnCopy is not supported
    for <what>"."""
    plans: list[S.ArgPlan] = []
    positions: dict[int, int] = {}
    declared = {a.index for a in args}
    for i, a in enumerate(args):
        field = f"{base}.args[{i}]"
        if a.index >= nparams:
            raise PolicyLoadError(hook, index_error.format(index=a.index), f"{field}.index")
        typ = a.type or "auto"
        if typ == "nop":
            continue
        if a.returnCopy:
            raise PolicyLoadError(hook, f"returnCopy is not supported for {what}", f"{field}.returnCopy")
        if typ == "auto":
            typ = "uint64"
        if typ in INT_KEYS:
            plan = int_plan(typ, S.FROM_SYSCALL, a.index, a.label)
        elif typ == "char_buf":
            size_pos = None
            if a.sizeArgIndex is not None:
                if a.sizeArgIndex - 1 not in declared:
                    raise PolicyLoadError(hook, f"sizeArgIndex {a.sizeArgIndex} (parameter {a.sizeArgIndex - 1}) "
                                                f"must also be declared in args", f"{field}.sizeArgIndex")
                size_pos = -1 - (a.sizeArgIndex - 1)  # resolved below, once positions are known
            plan = S.ArgPlan(kind=S.ARG_BUF, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_USER_BUF,
                             json_key="bytes_arg", size_arg=size_pos, label=a.label, type_name=typ)
        else:
            plan = read(a, typ, field)
        positions[a.index] = len(plans)
        plans.append(plan)
    plans = [(dataclasses.replace(p, size_arg=positions.get(-1 - p.size_arg))
              if p.size_arg is not None and p.size_arg < 0 else p) for p in plans]
    return plans, positions


def plan_return(hook: str, base: str, item: Any, *, default: str, why: str) -> S.ArgPlan:
    """The return value of a hook with ``return: true``: an integer of ``returnArg.type`` (``default`` when
    absent or auto); ``why`` is the reason a non-integer type is refused (``returnArg type X: <why>``)."""
    ra = item.returnArg
    rtyp = (ra.type if ra is not None else default) or default
    if rtyp == "auto":
        rtyp = default
    if rtyp not in INT_KEYS:
        raise PolicyLoadError(hook, f"returnArg type {rtyp}: {why}", f"{base}.returnArg.type")
    return int_plan(rtyp, S.FROM_RETVAL, 0, ra.label if ra is not None else None)


def without_override(sel: Any) -> Any:
    """A selector without its Override actions (Post when nothing else is left): for a program that returns
    the errno itself (fmod_ret, BPF LSM: the errno goes to its own rodata), since the selector engine has no
    Override (a tracepoint cannot change a return value)."""
    from sensorium.policy import MatchAction

    acts = [a for a in sel.matchActions if a.action != "Override"]
    if sel.matchActions and not acts:
        acts = [MatchAction(action="Post")]
    return sel.model_copy(update={"matchActions": acts})


# How a hook is attached, by kind (the first item). The hook library attaches the first four itself
# (`hookset.HookSet._load_object`); "kfunc" is attached by the kprobe sensor's subclass of `HookSet`.
TpAttach: TypeAlias = tuple[Literal["tp"], str, str]  # (kind, subsystem, event)
RawAttach: TypeAlias = tuple[Literal["raw"], str]  # (kind, raw tracepoint name)
SyscallAttach: TypeAlias = tuple[Literal["syscall"], bool]  # (kind, at_exit)
# (kind, at_exit, binary, symbol, offset)
UprobeAttach: TypeAlias = tuple[Literal["uprobe"], bool, str, str | None, int]
# (kind, function, mechanism, pre-checked parameter indices, errno per selector, number of parameters)
KfuncAttach: TypeAlias = tuple[Literal["kfunc"], str, str, tuple[int, ...], tuple[int, ...], int]
# (kind, binary, file offset of the probe, file offset of its semaphore or 0, the sens_usdt rodata, Set used):
# attached by the usdt sensor's subclass of `HookSet`
UsdtAttach: TypeAlias = tuple[Literal["usdt"], str, int, int, bytes, bool]
Attach: TypeAlias = TpAttach | RawAttach | SyscallAttach | UprobeAttach | KfuncAttach | UsdtAttach

# What the decoder renders inline (`HookPlan.fast`): (json key, value mask, sign bit, quoted) for a plain
# integer, ("string_arg",) for a plain string.
FastInt: TypeAlias = tuple[bytes, int, int, bool]
FastArg: TypeAlias = FastInt | tuple[Literal["string_arg"]]


# The integer keys rendered as the number itself (a capability or capability set has a shape of its own).
_PLAIN_INTS = frozenset({"int_arg", "uint_arg", "long_arg", "size_arg"})


@dataclasses.dataclass
class HookPlan:
    """Everything needed to load one hook and render its events."""

    hook: str                          # for errors/status, e.g. "tracepoints[0] syscalls/sys_enter_openat"
    field: str                         # field path of the item, e.g. "spec.tracepoints[0]"
    compiled: S.CompiledHook
    args: Sequence[S.ArgPlan]
    attach: Attach                     # ("tp", subsys, event) | ("raw", name) | ("syscall", at_exit) ...
    mechanism: str
    note: str
    body: Mapping[str, Any]            # fixed event fields (subsys/event or function_name ...)
    kind: str = "process_tracepoint"
    return_plan: S.ArgPlan | None = None
    # The note when the open-exit object serves the hook (an opened-file syscall, at sys_exit alone, see
    # hookset.HookSet._load_one); None: the plan keeps its words whatever serves it.
    open_exit_note: str | None = None
    fast: list[tuple[S.ArgPlan, FastArg | None]] = dataclasses.field(default_factory=list)
    ret_fast: FastInt | None = None
    # A syscall set (``compiled.cfg.syscall_nr == SYSCALL_SET``): the plans of the syscalls this one object
    # serves, each with its own hook id and body; the kernel reports the member that ran and the decoder renders
    # its record with that member's plan (`sensorium.hooks.syscalls.merge_syscall_sets`).
    members: tuple[HookPlan, ...] = ()

    def __post_init__(self) -> None:
        # Per argument, what the decoder can render inline: (json key, value mask, sign bit, quoted) for
        # plain integers (quoted: a 64-bit integer, a JSON string as in Tetragon's JSON), (json key,) for
        # plain strings; None means "call the general renderer".
        fast: list[tuple[S.ArgPlan, FastArg | None]] = []
        for ap in self.args:
            f: FastArg | None = None
            if ap.label is None and ap.json_key not in ("syscall_id",):
                if ap.kind == S.ARG_INT and ap.json_key in _PLAIN_INTS:
                    bits = ap.size * 8
                    f = (ap.json_key.encode(), (1 << bits) - 1, (1 << (bits - 1)) if ap.signed else 1 << 64,
                         ap.json_key in I64_ARGS)
                elif ap.json_key == "string_arg":
                    f = ("string_arg",)
            fast.append((ap, f))
        self.fast = fast
        rp = self.return_plan
        self.ret_fast = None
        if rp is not None and rp.kind == S.ARG_INT and rp.label is None and rp.json_key != "syscall_id":
            bits = rp.size * 8
            self.ret_fast = (rp.json_key.encode(), (1 << bits) - 1, (1 << (bits - 1)) if rp.signed else 1 << 64,
                             rp.json_key in I64_ARGS)


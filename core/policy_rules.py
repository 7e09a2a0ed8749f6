"""What Sensorium's kernel side can never serve, known without a kernel.

A policy can be a valid TracingPolicy (`sensorium.policy` parses it: Tetragon's schema, Sensorium's
models) and still be something no kernel lets Sensorium serve: parameter 6 of a syscall, a NUL byte in a
string the kernel compares, a call name that cannot name any function, a selector the kernel's selector
tables cannot hold. The sensors refuse these while planning a load; this module refuses them before any
sensor is asked, so ``sensorium policy check`` (no agent, no kernel) and ``sensorium policy add`` refuse
the same policies with the same message. Parsing stays Tetragon's schema alone (docs/tetragon-compat.md
records that stage per example policy); these rules are the second stage of both commands.

The rules are kept to what holds on every kernel and host: anything that depends on the running kernel
(a function's BTF, a tracepoint's format, a binary's symbols, a program type) stays with the sensors.
"""

from __future__ import annotations

import re
from typing import Any

from sensorium.policy import (INT_ARG_TYPES, KProbeSpec, Policy, TracepointSpec, UProbeSpec, combine_problems,
                              parse_policies)
from sensorium.yamlsrc import SourceError

# A kernel symbol: a C identifier, with the compiler's suffixes (``tcp_v4_connect.isra.0``, ``foo.cold``).
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
# Names that are syscalls whatever ``syscall:`` says (as the kprobe sensor reads them).
_SYSCALL_FORM = re.compile(r"(?:__x64_)?sys_[a-z0-9_]+")
_COMPAT_PREFIXES = ("__ia32_", "__ia32_compat_", "__x32_")
MAX_PARAMS = 6  # parameters a hook can read: six syscall parameters, six registers for functions
# Types that read a kernel structure: a syscall's parameters are the values a process passed, never one.
_STRUCT_TYPES = ("file", "path", "dentry", "sock", "skb", "cred", "linux_binprm", "syscall64")


def hook_name(section: str, index: int, item: Any) -> str:
    """How the sensors name a hook in their refusals (``kprobes[0] sys_openat``)."""
    if isinstance(item, KProbeSpec):
        what = item.call
    elif isinstance(item, TracepointSpec):
        what = f"{item.subsystem}/{item.event}"
    elif isinstance(item, UProbeSpec):
        what = item.path
    else:
        what = item.describe() if hasattr(item, "describe") else ""
    if not what.isprintable():
        what = repr(what)  # a refusal is one line, whatever the name holds
    return f"{section}[{index}]{' ' + what if what else ''}"


def _char_buf_size(i: int, a: Any, declared: set[int]) -> list[tuple[str, str]]:
    n = a.sizeArgIndex
    if a.type == "char_buf" and n is not None and n - 1 not in declared:
        return [(f"args[{i}].sizeArgIndex", f"sizeArgIndex {n} (parameter {n - 1}) must also be declared in args")]
    return []


def _kprobe(item: KProbeSpec) -> list[tuple[str, str]]:
    """(field relative to the item, reason) for a ``kprobes`` item."""
    call = item.call
    if call.startswith("list:"):
        return [("call", "a 'list:' reference is expanded from spec.lists when the policy is parsed; this one "
                         "was not")]
    if call.startswith(_COMPAT_PREFIXES):
        return [("call", "32-bit compat syscalls are not served (raw_tp sys_enter is filtered by 64-bit syscall "
                         "numbers)")]
    if not _SYMBOL.fullmatch(call):
        return [("call", f"call {call!r} cannot name a kernel function or syscall (letters, digits and '_', "
                         "with '.' suffixes such as .isra.0)")]
    # Only names that are syscalls whatever the kernel get the syscall rules; a bare name may be either.
    syscall = bool(_SYSCALL_FORM.fullmatch(call))
    declared = {a.index for a in item.args}
    for i, a in enumerate(item.args):
        if a.index >= MAX_PARAMS:
            why = (f"index {a.index}: syscalls have 6 parameters (0..5)" if syscall else
                   f"index {a.index}: the first {MAX_PARAMS} parameters (0..5) of a kernel function or syscall can "
                   "be read")
            return [(f"args[{i}].index", why)]
        typ = a.type or "auto"
        if not syscall or typ == "nop":
            continue
        if a.returnCopy:
            return [(f"args[{i}].returnCopy", "returnCopy is not supported for syscall hooks")]
        if typ in _STRUCT_TYPES:
            return [(f"args[{i}].type", f"type {typ} is a kernel structure; a syscall parameter is a user value (use "
                                        "int, string, char_buf, fd, or sockaddr for the address passed to connect, "
                                        "bind or sendto)")]
        if found := _char_buf_size(i, a, declared):
            return found
    if syscall and item.return_:
        rtyp = (item.returnArg.type if item.returnArg is not None else "long") or "long"
        if rtyp != "auto" and rtyp not in INT_ARG_TYPES:
            return [("returnArg.type", f"returnArg type {rtyp}: a syscall returns an integer")]
    return []


def _uprobe(item: UProbeSpec) -> list[tuple[str, str]]:
    if "\0" in item.path:
        return [("path", "a path cannot contain a NUL byte")]
    declared = {a.index for a in item.args}
    for i, a in enumerate(item.args):
        if a.index >= MAX_PARAMS:
            return [(f"args[{i}].index", f"index {a.index}: only the first {MAX_PARAMS} parameters (0..5, passed in "
                                         f"registers) can be read")]
        typ = a.type or "auto"
        if typ == "nop":
            continue
        if a.returnCopy:
            return [(f"args[{i}].returnCopy", "returnCopy is not supported for uprobes")]
        if typ not in INT_ARG_TYPES and typ not in ("auto", "string", "char_buf"):
            return [(f"args[{i}].type", f"type {typ} is not supported for uprobes (integers: int, uint, s64, u64, "
                                        f"size_t...; string; char_buf)")]
        if found := _char_buf_size(i, a, declared):
            return found
    if item.return_:
        rtyp = (item.returnArg.type if item.returnArg is not None else "int") or "int"
        if rtyp != "auto" and rtyp not in INT_ARG_TYPES:
            return [("returnArg.type", f"returnArg type {rtyp}: only integer return values are read")]
    return []


def _selectors(item: Any) -> list[tuple[str, str]]:
    from sensorium.hooks.selectors import SelectorError, check_selectors  # ctypes structures: loaded when needed

    try:
        check_selectors(list(item.selectors))
    except SelectorError as e:
        return [(e.field, e.reason)]
    # Which argument a matchArgs index names: a tracepoint's by position in its args list (as Tetragon), a
    # kprobe's or uprobe's by the parameter it declares (not nop).
    if isinstance(item, TracepointSpec):
        positions = list(range(len(item.args)))
    else:
        positions = sorted({a.index for a in item.args if (a.type or "auto") != "nop"})
    for si, sel in enumerate(item.selectors):
        for mi, m in enumerate(sel.matchArgs):
            if m.index is not None and m.index not in positions:
                return [(f"selectors[{si}].matchArgs[{mi}].index",
                         f"index {m.index} names no declared argument (declared: {positions})")]
    return []


def problems(policy: Policy) -> list[SourceError]:
    """Every hook of ``policy`` that no kernel lets Sensorium serve: one problem per hook (its first)."""
    found: list[SourceError] = []
    for section in policy.sections:
        for index, item in enumerate(section.items):
            if isinstance(item, KProbeSpec):
                mine = _kprobe(item)
            elif isinstance(item, UProbeSpec):
                mine = _uprobe(item)
            elif isinstance(item, TracepointSpec):
                mine = []
            else:
                continue  # lsmhooks and third-party sections: their sensors own their rules
            # Selectors of the shared hook engine (kprobes, tracepoints, uprobes: sensorium.hooks.selectors).
            mine = mine or _selectors(item)
            for field, reason in mine[:1]:
                path = f"spec.{section.key}[{index}].{field}"
                loc = ("spec", section.key, index, *_loc(field))
                found.append(SourceError(f"refused {hook_name(section.key, index, item)}: {reason}",
                                         file=policy.file, line=policy.source.line_of(loc) if policy.source else None,
                                         path=path))
    return found


def _loc(field: str) -> tuple:
    """``selectors[0].matchArgs[1].values`` -> ``("selectors", 0, "matchArgs", 1, "values")``."""
    return tuple(int(i) if i else n for n, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field))


def check_rules(policy: Policy) -> None:
    """Raise `PolicyError` (every problem, first one first) if ``policy`` breaks a rule."""
    found = problems(policy)
    if found:
        raise combine_problems(found, policy.file)


def validate_policies(text: str | bytes, file: str | None, registry: Any, *,
                      scoping_supported: bool = False) -> list[Policy]:
    """`parse_policies`, then the rules for each policy: what ``policy check`` and ``policy add`` both run
    before anything reaches a sensor. Raises `SourceError` (a `PolicyError` for policy problems)."""
    policies = parse_policies(text, file, registry, scoping_supported=scoping_supported)
    found: list[SourceError] = []
    for p in policies:
        found.extend(problems(p))
    if found:
        raise combine_problems(found, file)
    return policies


__all__ = ["check_rules", "problems", "validate_policies", "hook_name", "MAX_PARAMS"]


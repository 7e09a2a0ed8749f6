"""What Sensorium's kernel side can never serve, known without a kernel.

A policy can be a valid TracingPolicy (`sensorium.policy` parses it: Tetragon's schema, Sensorium's
models) and still be something no kernel lets Sensorium serve: parameter 6 of a syscall, a NUL byte in a
string the kernel compares, a call name that cannot name any function, a selector the kernel's selector
tables cannot hold. The sensors refuse these while planning a load; this module refuses them before any
sensor is asked, so ``sensorium policy check`` (no agent, no kernel) and ``sensorium policy add`` refuse
the same policies with the same message. Parsing stays Tetragon's schema alone (docs/tetragon-compat.md
records that stage per example policy); these rules are the second stage of both commands.

Each section's model carries its rules (`HookSpec.rules`, in the sensor's ``schema.py``); this module runs
them and names the hook and the line. The rules are kept to what holds on every kernel and host: anything
that depends on the running kernel (a function's BTF, a tracepoint's format, a binary's symbols, a program
type) stays with the sensors' planning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sensorium.policy import Policy, combine_problems, parse_policies
from sensorium.yamlsrc import SourceError

MAX_PARAMS = 6  # parameters a hook can read: six syscall parameters, six registers for functions


def hook_name(section: str, index: int, item: Any) -> str:
    """How the sensors name a hook in their refusals (``kprobes[0] sys_openat``)."""
    what = item.target() if hasattr(item, "target") else (item.describe() if hasattr(item, "describe") else "")
    if not what.isprintable():
        what = repr(what)  # a refusal is one line, whatever the name holds
    return f"{section}[{index}]{' ' + what if what else ''}"


def char_buf_size_problem(i: int, a: Any, declared: set[int]) -> list[tuple[str, str]]:
    """A ``char_buf`` argument ``args[i]`` whose size argument is not declared (for a section's `rules`)."""
    n = a.sizeArgIndex
    if a.type == "char_buf" and n is not None and n - 1 not in declared:
        return [(f"args[{i}].sizeArgIndex", f"sizeArgIndex {n} (parameter {n - 1}) must also be declared in args")]
    return []


def engine_selector_rules(item: Any, positions: Sequence[int]) -> list[tuple[str, str]]:
    """The selector rules of the shared hook engine (`sensorium.hooks.selectors`), for the `rules` of a section it
    serves (kprobes, tracepoints, uprobes). ``positions``: the argument indexes a matchArgs ``index`` may
    name (a tracepoint's by position in its args list, as Tetragon; a kprobe's or uprobe's by the parameter
    it declares, not nop)."""
    from sensorium.hooks.selectors import SelectorError, check_selectors  # ctypes structures: loaded when needed

    try:
        check_selectors(list(item.selectors))
    except SelectorError as e:
        return [(e.field, e.reason)]
    positions = list(positions)
    args = list(getattr(item, "args", None) or [])
    for si, sel in enumerate(item.selectors):
        for mi, m in enumerate(sel.matchArgs):
            if m.index is not None and m.index not in positions:
                return [(f"selectors[{si}].matchArgs[{mi}].index",
                         f"index {m.index} names no declared argument (declared: {positions})")]
        for ai, a in enumerate(sel.matchActions):
            if a.action in ("TrackSock", "UntrackSock"):
                n = 0 if a.argSock is None else a.argSock
                if n >= len(args) or args[n].type != "sock":
                    return [(f"selectors[{si}].matchActions[{ai}].argSock",
                             f"argSock {n} names no sock argument: it is the position in args ({len(args)} declared) "
                             "of an argument of type sock")]
    return []


def problems(policy: Policy) -> list[SourceError]:
    """Every hook of ``policy`` that no kernel lets Sensorium serve: one problem per hook (its first)."""
    found: list[SourceError] = []
    for section in policy.sections:
        for index, item in enumerate(section.items):
            rules = getattr(item, "rules", None)  # (a third-party item model need not derive from HookSpec)
            mine = list(rules()) if callable(rules) else []
            for field, reason in mine[:1]:
                path = f"spec.{section.key}[{index}].{field}"
                loc = ("spec", section.key, index, *_loc(field))
                found.append(SourceError(f"refused {hook_name(section.key, index, item)}: {reason}",
                                         file=policy.file, line=policy.source.line_of(loc) if policy.source else None,
                                         path=path))
    return found


def _loc(field: str) -> tuple[str | int, ...]:
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


__all__ = ["check_rules", "problems", "validate_policies", "hook_name", "engine_selector_rules",
           "char_buf_size_problem", "MAX_PARAMS"]


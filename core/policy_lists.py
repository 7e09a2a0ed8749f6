"""Named lists of a policy (``spec.lists``) and their ``list:NAME`` references, expanded before the models.

A "syscalls" list names syscalls, a "generated_syscalls" list every syscall of the x86_64 table: a kprobes item
whose call is "list:NAME" becomes one item per syscall (syscall: true; the kprobe sensor serves them with one
program, and the policy's hook limit counts the call once), and a "list:NAME" value of an InMap/NotInMap (or
Equal/NotEqual) matchArgs becomes the syscalls' numbers, as Tetragon does for the id argument of raw_syscalls.
Expanded items keep the source lines of the item they come from, so errors still name the line the author wrote.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from sensorium.policy import ARG_OPERATORS, MAX_LIST_VALUES, MAX_LISTS
from sensorium.yamlsrc import Located

__all__ = ["NamedList", "parse_lists", "expand_lists", "mentions_list", "syscall_id", "LIST_TYPES"]

LIST_TYPES = ("syscalls", "generated_syscalls", "generated_ftrace")


@dataclasses.dataclass(frozen=True)
class NamedList:
    name: str
    type: str
    values: tuple[str, ...]


def parse_lists(raw: Any, doc: Located) -> dict[str, NamedList]:
    err = doc.error
    if not isinstance(raw, list):
        raise err(("spec", "lists"), "must be a list of {name, type, values}")
    if len(raw) > MAX_LISTS:
        raise err(("spec", "lists"), f"{len(raw)} lists: at most {MAX_LISTS}")
    out: dict[str, NamedList] = {}
    for i, item in enumerate(raw):
        loc = ("spec", "lists", i)
        if not isinstance(item, dict):
            raise err(loc, "a list is a mapping with name, type and values")
        for k in item:
            if k not in ("name", "type", "values", "pattern", "validated"):
                raise err(loc + (k,), "unknown field (expected name, type, values, pattern, validated)")
        name, typ, values = item.get("name"), item.get("type"), item.get("values")
        if not isinstance(name, str) or not name:
            raise err(loc + ("name",), "name (a non-empty string) is required")
        if name in out:
            raise err(loc + ("name",), f"list {name!r} is defined twice")
        if typ not in LIST_TYPES:
            raise err(loc + ("type",), f"list type {typ!r} is not one of {', '.join(LIST_TYPES)}")
        if typ == "generated_ftrace":
            if values is not None:
                raise err(loc + ("values",), "a generated_ftrace list is the kernel functions its pattern matches: "
                                             "it takes no values")
            out[name] = NamedList(name, typ, ftrace_functions(item.get("pattern"), loc + ("pattern",), doc))
            continue
        if "pattern" in item:
            raise err(loc + ("pattern",), "pattern belongs to generated_ftrace lists")
        if typ == "generated_syscalls":
            # Tetragon fills it with every syscall of the node's architecture; here the x86_64 table
            if values is not None:
                raise err(loc + ("values",), "a generated_syscalls list is every syscall: it takes no values")
            out[name] = NamedList(name, typ, tuple(f"sys_{n}" for n in sorted(_syscall_table(),
                                                                            key=_syscall_table().__getitem__)))
            continue
        if not isinstance(values, list) or not values:
            raise err(loc + ("values",), "a syscalls list needs values (syscall names such as sys_dup)")
        if len(values) > MAX_LIST_VALUES:
            raise err(loc + ("values",), f"{len(values)} values: at most {MAX_LIST_VALUES}")
        for j, v in enumerate(values):
            if not isinstance(v, str) or not re.fullmatch(r"(?:i386/|x64/)?[A-Za-z0-9_]{1,64}", v):
                raise err(loc + ("values", j), f"{v!r} is not a syscall name")
        validated = item.get("validated")
        if validated is not None and not isinstance(validated, bool):
            raise err(loc + ("validated",), "validated must be true or false")
        out[name] = NamedList(name, typ, tuple(values))
    return out


MAX_PATTERN = 256


def ftrace_functions(pattern: Any, loc: tuple[Any, ...], doc: Located) -> tuple[str, ...]:
    """The kernel functions of this node a generated_ftrace ``pattern`` matches, as Tetragon finds them: an RE2
    regular expression searched in each name (``^ksys_`` anchors, a bare ``read`` matches anywhere). The
    names are the kernel's traceable functions: its BTF functions (what fentry and the argument checks need),
    kept to those in tracefs' available_filter_functions where this host lets us read it. RE2 (Go's syntax,
    linear time): a policy's pattern cannot make the agent backtrack for ever."""
    import re2  # type: ignore[import-untyped]  # google-re2 (no type stubs)

    err = doc.error
    if not isinstance(pattern, str) or not pattern:
        raise err(loc, "a generated_ftrace list needs a pattern (a regular expression over kernel function names)")
    if len(pattern) > MAX_PATTERN or "\0" in pattern:
        raise err(loc, f"pattern: at most {MAX_PATTERN} characters, no NUL")
    opts = re2.Options()
    opts.log_errors = False
    try:
        rx = re2.compile(pattern, opts)
    except Exception as e:  # noqa: BLE001 - re2.error carries the parser's reason as bytes
        why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise err(loc, f"pattern {pattern!r} is not a regular expression (RE2 syntax): {why}") from None
    from sensorium.bpf.btf import kernel_functions

    try:
        names = set(kernel_functions())
    except Exception as e:  # noqa: BLE001 - no BTF on this node
        raise err(loc, f"the kernel functions of this node cannot be listed (BTF: {e})") from None
    traceable = _available_filter_functions()
    if traceable is not None:
        names &= traceable
    found = tuple(sorted(n for n in names if rx.search(n)))
    if not found:
        raise err(loc, f"pattern {pattern!r} matches no traceable kernel function on this node")
    if len(found) > MAX_LIST_VALUES:
        raise err(loc, f"pattern {pattern!r} matches {len(found)} kernel functions on this node: at most "
                       f"{MAX_LIST_VALUES} ({', '.join(found[:5])}, ...)")
    return found


def _available_filter_functions() -> set[str] | None:
    """tracefs' list of the functions ftrace (kprobes, fentry) can attach to, or None where it cannot be read
    (no tracefs, or kernel lockdown as on this host)."""
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        try:
            with open(f"{base}/available_filter_functions") as f:
                return {line.split()[0] for line in f if line.strip()}
        except OSError:
            continue
    return None


def _syscall_table() -> Mapping[str, int]:
    from sensorium.syscalls_x86_64 import SYSCALLS_X86_64

    return SYSCALLS_X86_64


def syscall_id(name: str) -> int | None:
    """A list's syscall name as the id raw_syscalls reports (Tetragon's syscall64): an x86_64 number, or for
    the 32-bit table (``__ia32_sys_dup``, ``i386/sys_dup``) the i386 number with bit 31 set, which only a
    32-bit (compat) task's syscall carries. None: no such syscall."""
    m = re.fullmatch(r"(?:(i386|x64)/|__(ia32|x64)_)?(?:compat_)?(?:sys_)?(\w+)", name)
    if m is None:
        return None
    if "i386" in (m.group(1), m.group(2)) or m.group(2) == "ia32":
        from sensorium.syscalls_i386 import SYSCALLS_I386

        nr = SYSCALLS_I386.get(m.group(3))
        return None if nr is None else nr | 0x80000000
    return _syscall_table().get(m.group(3))


def mentions_list(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith("list:")
    if isinstance(value, list):
        return any(mentions_list(v) for v in value)
    if isinstance(value, dict):
        return any(mentions_list(v) for v in value.values())
    return False


def _list_ref(v: Any, lists: Mapping[str, NamedList], doc: Located, loc: tuple[Any, ...]) -> NamedList | None:
    if not isinstance(v, str) or not v.startswith("list:") or "\0" in v:
        return None  # (a NUL byte: not a name; the selector rules refuse it)
    lst = lists.get(v[len("list:"):])
    if lst is None:
        raise doc.error(loc, f"{v!r} names no list of spec.lists")
    return lst


def expand_lists(spec: dict[str, Any], lists: Mapping[str, NamedList],
                 doc: Located) -> tuple[dict[str, Any], dict[str, list[int | None]]]:
    """``spec`` with every list reference replaced (see above); ``doc``'s line map follows the items. Also, per
    section, each item's origin: the index of the written "list:" call it was expanded from, None for an item
    written out (a policy's hooks are counted as written: one list call is one hook)."""
    out = dict(spec)
    listed: dict[str, list[int | None]] = {}
    for key, value in spec.items():
        if key == "lists" or not isinstance(value, list):
            continue
        items: list[Any] = []
        origin: list[int] = []
        from_list: list[int | None] = []
        for i, written in enumerate(value):
            raw = copy.deepcopy(written)  # expanded below; the document's own value stays as written
            if isinstance(raw, dict) and isinstance(raw.get("selectors"), list):  # (else the model names it)
                for si, sel in enumerate(raw["selectors"]):
                    for mi, m in enumerate((sel.get("matchArgs") or []) if isinstance(sel, dict) else []):
                        if not isinstance(m, dict) or not isinstance(m.get("values"), list):
                            continue
                        if not isinstance(m.get("operator"), str) or m["operator"] not in ARG_OPERATORS:
                            continue  # the model refuses the operator itself
                        vals: list[Any] = []
                        for vi, v in enumerate(m["values"]):
                            vloc = ("spec", key, i, "selectors", si, "matchArgs", mi, "values", vi)
                            lst = _list_ref(v, lists, doc, vloc)
                            if lst is None:
                                vals.append(v)
                                continue
                            if lst.type == "generated_ftrace":
                                raise doc.error(vloc, f"list {lst.name!r} is kernel functions, not syscalls: only a "
                                                      "syscalls list gives numbers to compare")
                            if m.get("operator") not in ("InMap", "NotInMap", "Equal", "NotEqual"):
                                raise doc.error(vloc, f"a list of syscalls compares by number: use it with InMap "
                                                      f"or NotInMap, not {m.get('operator')}")
                            for name in lst.values:
                                nr = syscall_id(name)
                                if nr is None:
                                    raise doc.error(vloc, f"list {lst.name!r}: {name} is not a syscall of x86_64 "
                                                          "or of its 32-bit table (__ia32_sys_...)")
                                vals.append(str(nr))
                        m["values"] = vals
            lst = _list_ref(raw.get("call"), lists, doc, ("spec", key, i, "call")) if isinstance(raw, dict) else None
            if lst is None:
                items.append(raw)
                origin.append(i)
                from_list.append(None)
                continue
            functions = lst.type == "generated_ftrace"
            if raw.get("syscall") is functions:
                raise doc.error(("spec", key, i, "syscall"),
                                f"list {lst.name!r} names kernel functions: syscall: true contradicts it" if functions
                                else f"list {lst.name!r} names syscalls: syscall: false contradicts it")
            for name in lst.values:
                items.append({**copy.deepcopy(raw), "call": name, "syscall": not functions})
                origin.append(i)
                # a syscall list is one hook (one program); each kernel function is a hook of its own
                from_list.append(None if functions else i)
        if len(origin) != len(value) or origin != list(range(len(value))):
            prefix = ("spec", key)
            old = {k: ln for k, ln in doc.lines.items() if k[:2] == prefix and len(k) > 2}
            for k in old:
                del doc.lines[k]
            for j, o in enumerate(origin):
                for k, ln in old.items():
                    if k[2] == o:
                        doc.lines[prefix + (j,) + k[3:]] = ln
        out[key] = items
        listed[key] = from_list
    return out, listed


"""Capability filters of a selector in the kernel's form: ``matchCapabilities`` and ``matchCapabilityChanges``.

Tetragon's semantics (docs/selectors.md): an entry names one set (Effective, Inheritable, Permitted), In
(the set holds one of the values) or NotIn (none of them); ``isNamespaceCapability: true`` makes the entry
fail for a task in the host's user namespace, whatever the operator. A change entry compares the set
now with the one recorded for the process at exec (or fork, or first sight: ``sens_execcaps``): In, one
of the values changed; NotIn, only other capabilities changed. Entries of one selector are ANDed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sensorium.hooks import selectors as S
from sensorium.policy import CAPABILITIES

__all__ = ["check_caps", "compile_caps", "CAP_FILTERS"]

# selector field -> name of its entries in the kernel's selector (sens_selector)
CAP_FILTERS = (("matchCapabilities", "caps", "ncaps"), ("matchCapabilityChanges", "capch", "ncapch"))


def _entries(sel: Any, key: str) -> list[Any]:
    v = sel.get(key) if isinstance(sel, dict) else getattr(sel, key, None)
    return list(v or [])


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def check_caps(sel: Any, base: str) -> None:
    """The kernel's limits on a selector's capability filters (`SelectorError`)."""
    for key, _arr, _n in CAP_FILTERS:
        entries = _entries(sel, key)
        if len(entries) > S.MAX_CAPS:
            raise S.SelectorError(f"{base}.{key}", f"{len(entries)} entries: at most {S.MAX_CAPS} in the kernel")


def compile_caps(sel: Any, out: Any, base: str, host_userns: Callable[[], int | None]) -> bool:
    """Fill ``out`` (a `SensSelector`) from ``sel``'s capability filters; returns whether the selector has
    matchCapabilityChanges (the hook then tracks each process's capabilities: ``CFG_CAP_CHANGES``).
    ``host_userns`` gives the host's user namespace inode (Tetragon's /proc/1/ns/user), asked only when
    an entry has isNamespaceCapability."""
    check_caps(sel, base)
    for key, arr, count in CAP_FILTERS:
        entries = _entries(sel, key)
        setattr(out, count, len(entries))
        for ci, c in enumerate(entries):
            field = f"{base}.{key}[{ci}]"
            mask = 0
            for v in _get(c, "values") or []:
                name = str(v).upper()
                bit = CAPABILITIES.get(name, CAPABILITIES.get("CAP_" + name))
                if bit is None:
                    raise S.SelectorError(f"{field}.values", f"unknown capability {v}")
                mask |= 1 << bit
            op = _get(c, "operator")
            if op not in ("In", "NotIn"):
                raise S.SelectorError(f"{field}.operator", f"operator {op} is not In or NotIn")
            o = getattr(out, arr)[ci]
            o.set, o.op, o.mask = S.CAP_SETS[_get(c, "type", "Effective") or "Effective"], S.OPS[op], mask
            o.userns = 0
            if _get(c, "isNamespaceCapability", False):
                inum = host_userns()
                if not inum:
                    raise S.SelectorError(f"{field}.isNamespaceCapability", "cannot read the host's user namespace")
                o.userns = inum
    return bool(_entries(sel, "matchCapabilityChanges"))

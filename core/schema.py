"""The exported shape of events: Tetragon's messages by default, Sensorium's own fields on request.

Sensors and stages build event bodies with everything they know (a process's cgroup, a connection's byte
counts, the mechanism that saw it); that full body is what filters, the Kubernetes stage and tests read.
What leaves the agent is its *rendering* in the configured format (``events.format`` in the config,
``events.format`` in the chart's values.yaml), done here and nowhere else:

- ``tetragon`` (default): every event of a Tetragon kind decodes strictly (unknown fields rejected) with
  Tetragon's own protobuf messages, as protojson gives them: fields Tetragon's message lacks are left out,
  64-bit integers are JSON strings, nulls are left out.
- ``extended``: the same values and types, plus our own fields where they were made (docs/events.md lists
  them). A consumer that decodes it with Tetragon's messages must ignore unknown fields.

The format is chosen once at start (`set_format`) for the whole process: an event's JSON is encoded once
and shared by every exporter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sensorium.tetragon_fields import ENUMS, FIELDS

__all__ = ["FORMATS", "set_format", "set_process_fields", "current_format", "extended", "exported", "conform",
           "conform_process", "conform_body", "conform_arg", "i64_keys", "capabilities", "securebits"]

FORMATS = ("tetragon", "extended")
_ROOT = "tetragon.GetEventsResponse"
_PROCESS = "tetragon.Process"
_KINDS = {k: v for k, v in FIELDS[_ROOT].items() if v}  # event kind -> its message
_state = {"format": "tetragon"}
# Process field groups off by default, as in Tetragon (--enable-process-cred, --enable-process-ns): the key
# of each group's fields in a Process; `set_process_fields` turns them on.
_GROUPS = {"credentials": ("process_credentials", "cap"), "namespaces": ("ns",)}
_dropped: dict[str, tuple[str, ...]] = {"v": _GROUPS["credentials"] + _GROUPS["namespaces"]}


def set_format(name: str) -> None:
    """Choose the exported format for this process (`FORMATS`); the agent calls it once at start."""
    if name not in FORMATS:
        raise ValueError(f"unknown event format {name!r}: expected one of {', '.join(FORMATS)}")
    _state["format"] = name


def set_process_fields(*, credentials: bool, namespaces: bool) -> None:
    """Whether every exported process and parent carries its credentials (``process_credentials`` and
    ``cap``) and its namespaces (``ns``): ``events.process_credentials`` / ``events.process_namespaces``
    in the config, chosen once at start like the format. Both off by default, as in Tetragon."""
    _dropped["v"] = (() if credentials else _GROUPS["credentials"]) + (() if namespaces else _GROUPS["namespaces"])


def current_format() -> str:
    return _state["format"]


def extended() -> bool:
    """True when our own fields are exported beside Tetragon's (format ``extended``)."""
    return _state["format"] == "extended"


def exported(kind: str, field: str) -> bool:
    """Whether field ``field`` of an event body of ``kind`` is written out in the current format."""
    message = _KINDS.get(kind)
    return message is None or extended() or field in FIELDS[message]


def i64_keys(message: str) -> frozenset[str]:
    """The fields of a Tetragon message that are 64-bit integers (written as JSON strings)."""
    return frozenset(k for k, v in FIELDS[message].items() if v == "i64")


_CAPS = ENUMS["tetragon.CapabilitiesType"]
_SECBITS = ENUMS["tetragon.SecureBitsType"]


def cap_names(mask: int) -> tuple[str | int, ...]:
    """The capabilities of a kernel capability set (bit i = capability i) by the names of Tetragon's
    CapabilitiesType (its value 1 is DAC_OVERRIDE, without the CAP_ prefix). A capability newer than
    Tetragon's enum: its number, as protojson writes an unknown enum value."""
    return tuple(_CAPS.get(i, i) for i in range(64) if mask >> i & 1)


def capabilities(permitted: int, effective: int, inheritable: int) -> dict[str, tuple[str | int, ...]]:
    """Tetragon's Capabilities message from the kernel's capability sets (bit i = capability i), by the
    names of Tetragon's CapabilitiesType; an empty set is left out, as protojson does."""
    out = {"permitted": cap_names(permitted), "effective": cap_names(effective),
           "inheritable": cap_names(inheritable)}
    return {k: v for k, v in out.items() if v}


def securebits(bits: int) -> tuple[str, ...]:
    """The SECBIT_* bits of cred->securebits by the names of Tetragon's SecureBitsType (value 1 << bit)."""
    return tuple(_SECBITS[1 << i] for i in range(8) if bits >> i & 1 and (1 << i) in _SECBITS)


def _i64(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return [_i64(x) for x in v]
    return v


def _walk(obj: Mapping[str, Any], message: str, keep: bool) -> dict[str, Any]:
    fields = FIELDS[message]
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if v is None:
            if keep and k not in fields:
                out[k] = v
            continue
        kind = fields.get(k)
        if kind is None:
            if keep:
                out[k] = v
        elif not kind:
            out[k] = v
        elif kind == "i64":
            out[k] = _i64(v)
        elif kind == _PROCESS and isinstance(v, Mapping):
            out[k] = conform_process(v)
        elif isinstance(v, Mapping):
            out[k] = _sub(v, kind, keep)
        elif isinstance(v, list):
            out[k] = [_walk(x, kind, keep) if isinstance(x, Mapping) else x for x in v]
        else:
            out[k] = v
    return out


# The sub-messages of a process (namespaces, credentials, capabilities) are dicts the process cache shares
# between processes and keeps: each is rendered once. The memo holds the dict, so its id stays its own.
_memo: dict[tuple[int, str, bool], tuple[Mapping[str, Any], dict[str, Any]]] = {}
_MEMO_MAX = 4096


def _sub(obj: Mapping[str, Any], message: str, keep: bool) -> dict[str, Any]:
    key = (id(obj), message, keep)
    got = _memo.get(key)
    if got is not None and got[0] is obj:
        return got[1]
    out = _walk(obj, message, keep)
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[key] = (obj, out)
    return out


def conform_process(proc: Mapping[str, Any]) -> dict[str, Any]:
    """A process (or parent) dict in the exported format. Not memoized: the process cache hands out a new
    view per lookup, and the hook engine already encodes each process once per batch."""
    out = _walk(proc, _PROCESS, extended())
    for k in _dropped["v"]:
        out.pop(k, None)
    return out


def conform_body(kind: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
    """An event body of ``kind`` in the exported format; a kind Tetragon does not have is left as it is."""
    message = _KINDS.get(kind)
    if message is None:
        return body
    return _walk(body, message, extended())


def conform_arg(arg: Mapping[str, Any]) -> dict[str, Any]:
    """One argument (Tetragon's KprobeArgument) in the exported format."""
    return _walk(arg, "tetragon.KprobeArgument", extended())


def conform(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """A whole event (``{kind: body, "node_name": ..., "time": ...}``) in the exported format."""
    out: dict[str, Any] = {}
    for k, v in event.items():
        if k in _KINDS and isinstance(v, Mapping):
            out[k] = conform_body(k, v)
        else:
            out[k] = v
    return out

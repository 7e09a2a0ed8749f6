"""The compact one-line view of an event, in the shape of ``tetra getevents -o compact``: an icon and a word
for the event type, the pod (``namespace/name``) or else the node, the binary and its arguments, and for
exits the signal or the exit status. Control characters from the event (a process's own arguments are
attacker-controlled) are escaped so they cannot drive the terminal.

Used by the stdout exporter (``format: compact``) and by ``sensorium events -o compact``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping  # fast isinstance() (typing.Mapping is slow)
from typing import Any

from sensorium.events import Event

__all__ = ["compact"]

_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(value: Any) -> str:
    text = "" if value is None else str(value)
    return _CTRL.sub(lambda m: "\\x%02x" % ord(m.group()), text)


def _head(icon: str, word: str) -> str:
    return f"{icon} {word:<7}"  # Tetragon pads the word to 7 columns


def _source(ev: Event, proc: Mapping[str, Any]) -> str:
    pod = proc.get("pod")
    if isinstance(pod, Mapping) and (pod.get("name") or pod.get("namespace")):
        return f"{_clean(pod.get('namespace'))}/{_clean(pod.get('name'))}"
    return _clean(ev.node_name)


def compact(ev: Event) -> str:
    """One human-readable line for ``ev`` (no newline)."""
    raw: object = ev.body  # a line for any event, even one whose body is not what the contract says
    body: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    p = body.get("process")
    proc: Mapping[str, Any] = p if isinstance(p, Mapping) else {}
    who = f"{_source(ev, proc)} {_clean(proc.get('binary'))}"
    kind = ev.kind
    if kind == "process_exec":
        return f"{_head('🚀', 'process')} {who} {_clean(proc.get('arguments'))}".rstrip()
    if kind == "process_exit":
        status = body.get("signal") or body.get("status", 0)
        return f"{_head('💥', 'exit')} {who} {_clean(proc.get('arguments'))} {_clean(status)}"
    if kind == "process_kprobe":
        line = f"{_head('❓', 'syscall')} {who} {_clean(body.get('function_name'))}"
    elif kind == "process_tracepoint":
        line = f"{_head('⁉️', 'tracepoint')} {who} {_clean(body.get('subsys'))} {_clean(body.get('event'))}"
    elif kind == "process_uprobe":
        line = f"{_head('🕵️', 'uprobe')} {who} {_clean(body.get('path'))} {_clean(body.get('symbol'))}"
    elif kind == "process_lsm":
        line = f"{_head('🔒', 'LSM')} {who} {_clean(body.get('function_name'))}"
    elif kind == "rate_limit_info":
        dropped = _clean(body.get("number_of_dropped_process_events"))
        return f"{_head('🧬', 'ratelimit')} {_clean(ev.node_name)} dropped {dropped} events"
    else:
        line = f"{_head('❔', _clean(kind))} {who}"
    action = body.get("action")
    if action and action not in ("KPROBE_ACTION_POST", "POST"):
        line += f" {_clean(action)}"
    return line

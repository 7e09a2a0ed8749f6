"""A small real `SensorContext` for driving hook sensors directly in tests (no agent, no pipeline).

It builds and opens real objects, drains real ring buffers on `poll`, and keeps the decoded events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sensorium.events import Event, ktime_to_wall_ns

__all__ = ["DirectContext", "make_policy_view"]


def _prog_id(prog: Any) -> int | None:
    """The kernel id of a loaded program, from /proc/self/fdinfo of its fd (None if not loaded)."""
    try:
        fd = prog.fd
        if fd < 0:
            return None
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("prog_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class DirectContext:
    node_name = "test-node"

    def __init__(self, process_cache: Any = None, config: Mapping[str, Any] | None = None, *,
                 actions: Any = None) -> None:
        """``actions``: a started `sensorium.actions.ActionRunner` for the GetUrl/DnsLookup requests of the
        policies loaded here (None: the rings count them as ``no_runner``)."""
        from sensorium.bpf.probe import probe_kernel
        from sensorium.bpf.ringbuf import RingBufferReader

        self.log = logging.getLogger("sensorium.test")
        self.kernel = probe_kernel()
        self.process_cache = process_cache
        self.config: Mapping[str, Any] = dict(config or {})
        self.reader = RingBufferReader()
        self.events: list[Event] = []
        self.objects: list[Any] = []
        self.loaded_prog_ids: set[int] = set()
        if actions is not None:
            self.run_action = actions.submit

    def build(self, probe: Any) -> Path:
        from sensorium.bpf.build import build_object

        return build_object(probe)

    def open_object(self, path: Path) -> Any:
        from sensorium.bpf.libbpf import BpfObject

        obj = BpfObject.open(path)
        self.objects.append(obj)
        real_load = obj.load

        def load(stats: bool = False) -> None:
            """Remember the kernel ids of what this context loaded (tests check they go away)."""
            real_load(stats)
            self.loaded_prog_ids.update(i for i in (_prog_id(p) for p in obj.programs.values()) if i)

        obj.load = load  # type: ignore[method-assign]
        return obj

    def add_ring_buffer(self, bpf_map: Any, decode: Callable[[Sequence[bytes]], Iterable[Event]], *,
                        native_drain: bool = False) -> Any:
        return self.reader.add(bpf_map, lambda recs: self.events.extend(decode(recs)), native_drain=native_drain)

    def emit(self, events: Iterable[Event]) -> None:
        self.events.extend(events)

    def make_event(self, kind: str, body: Mapping[str, Any], ktime_ns: int | None = None) -> Event:
        t = ktime_to_wall_ns(ktime_ns) if ktime_ns is not None else time.time_ns()
        return Event(kind, body, self.node_name, t)

    def poll(self, timeout_ms: int = 50) -> list[Event]:
        self.reader.poll(timeout_ms)
        return self.events

    def close(self) -> None:
        for obj in self.objects:
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - test teardown closes every object whatever one raised
                pass
        self.objects.clear()
        self.reader.close()


class _Sections:
    """The registry face `sensorium.policy.parse_policy` needs: which sensor owns which section."""

    def policy_sections(self) -> Mapping[str, tuple[str, Any]]:
        from sensorium.policy import SECTION_MODELS

        owners = {"tracepoints": "tracepoint", "kprobes": "kprobe", "uprobes": "uprobe", "lsmhooks": "lsm",
                  "usdts": "usdt"}
        return {k: (owners[k], m) for k, m in SECTION_MODELS.items()}


def make_policy_view(text: str, section: str, policy_id: int = 7, mode: str | None = None,
                     file: str | None = None) -> Any:
    """Parse a TracingPolicy document with the real parser and return the `PolicyView` of ``section``."""
    from sensorium.policy import parse_policy

    policy = parse_policy(text, file or "<test>", _Sections())
    for s in policy.sections:
        if s.key == section:
            return policy.view(s, policy_id, mode)
    raise KeyError(f"policy has no {section} section")

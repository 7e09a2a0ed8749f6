"""What a sensor running one BPF object of its own shares: its ring's size, closing the object, reading its
counters. The exec and network sensors build on it; a third-party sensor may."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sensorium.hookspecs import SensorContext


def ring_bytes(kib: int) -> int:
    """A ring buffer's size from a ``ring_buffer_kb`` option: the next power of two (the kernel wants one), in bytes."""
    p = 1
    while p < kib:
        p <<= 1
    return p * 1024


class ObjectSensor:
    """``obj`` is the loaded object (None when stopped); `stop` closes it and never raises."""

    name = "sensor"

    def __init__(self, ctx: SensorContext) -> None:
        self.ctx = ctx
        self.obj: Any = None
        self.state = "stopped"

    def stop(self) -> None:
        obj, self.obj = self.obj, None
        if obj is not None:
            try:
                obj.close()  # destroys its links first
            except Exception:
                self.ctx.log.exception("closing the %s sensor's BPF object", self.name)
        self.state = "stopped"

    def read_counters(self, map_name: str, names: Sequence[str]) -> dict[str, int]:
        """The object's counter map ``map_name`` (SENSORIUM_COUNTERS in sensorium/common.h) by name; {} when
        stopped or unreadable (status must not raise)."""
        obj = self.obj
        if obj is None:
            return {}
        try:
            return obj.map(map_name).counters(names)
        except Exception:  # noqa: BLE001 - status must not raise
            return {}

"""The exec sensor at run time: build, load and attach probe.bpf.c, and hand its ring to the decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sensorium.bpf.object_sensor import ObjectSensor, ring_bytes
from sensorium.hookspecs import SensorContext
from sensorium_sensors.exec.decoder import ExecDecoder
from sensorium_sensors.exec.plugin import PROBE


class ExecSensor(ObjectSensor):
    name = "exec"

    def __init__(self, ctx: SensorContext) -> None:
        super().__init__(ctx)
        self.decoder = ExecDecoder(ctx)
        self.error: str | None = None

    def start(self) -> None:
        from sensorium.bpf.libbpf import num_possible_cpus

        opts = dict(self.ctx.config or {})
        path = self.ctx.build(PROBE)
        obj = self.ctx.open_object(path)
        self.obj = obj
        try:
            obj.set_rodata("max_args_bytes", int(opts.get("max_args_bytes", 4096)))
            # One scratch slot per possible CPU (see exec_scratch in probe.bpf.c).
            obj.map("exec_scratch").set_max_entries(num_possible_cpus())
            obj.map("exec_events").set_max_entries(ring_bytes(int(opts.get("ring_buffer_kb", 4096))))
            obj.load()
            obj.attach_all()
            self.ctx.add_ring_buffer(obj.map("exec_events"), self.decoder.decode_batch)
            cache = self.ctx.process_cache
            if cache is not None:
                # Every process from now on has an exec or fork record in this ring: a cache miss means the
                # record is still in flight (ProcessJoin waits for it). Reading /proc then would race with the
                # exec and mint a second exec_id for the same process. (The host's scan of /proc at start
                # reads it explicitly, whatever this says.)
                cache.proc_root = None
        except BaseException:
            self.stop()
            raise
        self.state = "running"

    def drops(self) -> dict[str, int]:
        """Records the kernel could not submit: ring full, or no scratch slot for the CPU."""
        return self.read_counters("exec_drops", ("ring_full", "no_scratch"))

    def status(self) -> Mapping[str, Any]:
        drops = self.drops()
        # lost_events: what the agent turns into sensorium_kernel_events_lost (kernel drops only; records
        # that failed to decode are in records.bad_*).
        return {"state": self.state, "records": dict(self.decoder.counters), "kernel_drops": drops,
                "lost_events": sum(drops.values())}

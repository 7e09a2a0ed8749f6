"""The network sensor at run time: build and load probe.bpf.c, attach the TCP tracepoint and the UDP
cgroup programs, seed the listener map from /proc, and hand the ring to the decoder."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Any

from sensorium.bpf.object_sensor import ObjectSensor, ring_bytes
from sensorium.hookspecs import SensorContext
from sensorium_sensors.network.decoder import TCP_MECHANISM, NetworkDecoder
from sensorium_sensors.network.plugin import PROBE

UDP_PROGRAMS = {"net_udp_sendmsg4": "cgroup/sendmsg4", "net_udp_sendmsg6": "cgroup/sendmsg6",
                "net_udp_connect4": "cgroup/connect4", "net_udp_connect6": "cgroup/connect6"}
TCP_PROGRAM = "net_sock_state"
COUNTERS = ("ring_full", "untracked", "owner_unknown", "udp_dedup")  # CNT_* in probe.bpf.c
BPF_NOEXIST = 1


class NetworkSensor(ObjectSensor):
    name = "network"

    def __init__(self, ctx: SensorContext) -> None:
        super().__init__(ctx)
        opts = dict(ctx.config or {})
        self.opts = opts
        self.decoder = NetworkDecoder(ctx, udp_dedup_seconds=float(opts.get("udp_dedup_seconds", 10.0)))
        self.hooks: list[dict[str, str]] = []
        self.seeded_listeners = 0
        self.notes: list[str] = []

    def _udp_cgroup(self) -> str | None:
        path = self.opts.get("cgroup_path") or getattr(self.ctx.kernel, "cgroup2", None)
        return str(path) if path else None

    def start(self) -> None:
        opts = self.opts
        want_tcp = bool(opts.get("tcp", True))
        want_udp = bool(opts.get("udp", True))
        cgroup = self._udp_cgroup() if want_udp else None
        if want_udp and not self.ctx.kernel.has("cgroup_sock_addr"):
            self.notes.append("UDP not reported: this kernel does not load cgroup sock_addr programs")
            want_udp = False
        if want_udp and cgroup is None:
            self.notes.append("UDP not reported: no cgroup2 mount to attach to")
            want_udp = False
        if not (want_tcp or want_udp):
            raise RuntimeError("network sensor: neither TCP nor UDP can be reported (see options tcp/udp)")
        obj = self.ctx.open_object(self.ctx.build(PROBE))
        self.obj = obj
        try:
            obj.set_rodata("udp_dedup_ns", int(float(opts.get("udp_dedup_seconds", 10.0)) * 1e9))
            obj.map("net_events").set_max_entries(ring_bytes(int(opts.get("ring_buffer_kb", 1024))))
            obj.map("net_socks").set_max_entries(int(opts.get("max_sockets", 65536)))
            obj.map("net_listeners").set_max_entries(int(opts.get("max_listeners", 8192)))
            obj.map("net_udp_seen").set_max_entries(int(opts.get("udp_dedup_entries", 16384)))
            obj.program(TCP_PROGRAM).set_autoload(want_tcp)
            for name in UDP_PROGRAMS:
                obj.program(name).set_autoload(want_udp)
            obj.load()
            if want_tcp:
                obj.program(TCP_PROGRAM).attach_tracepoint("sock", "inet_sock_set_state")
                self.hooks.append({"hook": "tcp connect/accept/close", "mechanism": TCP_MECHANISM,
                                   "note": "accept is attributed to the process that called listen()"})
                self._seed_listeners()
            if want_udp:
                assert cgroup is not None
                try:
                    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as exc:
                    raise RuntimeError(f"network sensor: cannot open the cgroup2 directory {cgroup!r} the UDP "
                                       f"programs attach to (sensors.network.cgroup_path): {exc.strerror}") from None
                try:
                    for name, mech in UDP_PROGRAMS.items():
                        obj.program(name).attach_cgroup(fd)
                        dedup_s = opts.get("udp_dedup_seconds", 10.0)
                        self.hooks.append({"hook": name.replace("net_", "").rstrip("46"), "mechanism": mech,
                                           "note": f"observe only, attached to {cgroup}; one report per "
                                                   f"(process, destination) per {dedup_s} s"})
                finally:
                    os.close(fd)
            # Last, as the exec sensor does: a failed start must not leave a ring registered with the
            # reader. Records made since the attach wait in the ring meanwhile.
            self.ctx.add_ring_buffer(obj.map("net_events"), self.decoder.decode_batch)
        except BaseException:
            self.stop()
            raise
        self.state = "running"

    def _seed_listeners(self) -> None:
        """Listeners opened before the probe attached (see procnet). Entries the probe made meanwhile win."""
        from sensorium_sensors.network.procnet import scan_listeners

        try:
            listeners = scan_listeners()
        except OSError as exc:
            self.notes.append(f"listeners older than the agent not seeded: {exc}")
            return
        m = self.obj.map("net_listeners")
        for li in listeners:
            key = struct.pack("<IHH16s", li.netns, li.family, li.port, li.addr)
            val = struct.pack("<QII", 0, li.pid, li.pid)
            try:
                m.update(key, val, BPF_NOEXIST)
                self.seeded_listeners += 1
            except OSError:
                pass  # EEXIST: the probe saw this listen() itself

    def kernel_counters(self) -> dict[str, int]:
        return self.read_counters("net_counters", COUNTERS)

    def status(self) -> Mapping[str, Any]:
        st: dict[str, Any] = {"state": self.state, "hooks": list(self.hooks), "records": dict(self.decoder.counters),
                              "kernel": self.kernel_counters(), "seeded_listeners": self.seeded_listeners}
        if self.notes:
            st["notes"] = list(self.notes)
        return st

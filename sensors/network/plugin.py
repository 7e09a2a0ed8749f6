"""The network sensor plugin: TCP connect, accept and close (5-tuple, bytes, owning process) and UDP
sends, as Tetragon-shaped ``process_kprobe`` events. Off unless enabled (``network: true``,
``sensorium run --network``, or ``sensors: {network: {enabled: true}}``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from sensorium.hookspecs import BudgetCase, ProbeSource, SensorSpec
from sensorium.provide import provide
from sensorium_sensors.network.decoder import RECORD_LAYOUTS

if TYPE_CHECKING:
    from sensorium.hookspecs import Sensor, SensorContext

HERE = Path(__file__).resolve().parent


class NetworkOptions(BaseModel):
    """``sensors: {network: {...}}``"""

    model_config = ConfigDict(extra="forbid")
    tcp: bool = Field(default=True, description="Report TCP connect, accept and close")
    udp: bool = Field(default=True, description="Report UDP sends (cgroup sock_addr programs on the cgroup2 root)")
    udp_dedup_seconds: float = Field(
        default=10.0, ge=0.0, le=86400.0,
        description="A (process, UDP destination) pair is reported at most once per this many seconds",
    )
    max_sockets: int = Field(default=65536, ge=1024, le=1 << 22,
                             description="TCP sockets tracked at once (an LRU map: the oldest are forgotten)")
    max_listeners: int = Field(default=8192, ge=64, le=1 << 20,
                               description="Listening sockets remembered for accept attribution (LRU)")
    udp_dedup_entries: int = Field(default=16384, ge=64, le=1 << 22,
                                   description="(process, destination) pairs remembered for UDP dedup (LRU)")
    ring_buffer_kb: int = Field(default=1024, ge=64, le=1 << 20,
                                description="Size of the sensor's ring buffer (rounded up to a power of two, KiB)")
    cgroup_path: str | None = Field(
        default=None,
        description="cgroup2 directory the UDP programs attach to (default: the cgroup2 mount, i.e. every process)",
    )


PROBE = ProbeSource(name="network", source=HERE / "probe.bpf.c", include_dirs=(HERE,))


def _factory(ctx: SensorContext) -> Sensor:
    # Imported here: discovery (``sensorium plugins``) must not need the run-time modules.
    from sensorium_sensors.network.sensor import NetworkSensor

    return NetworkSensor(ctx)


def _budget() -> list[BudgetCase]:
    cases = [BudgetCase(PROBE, "net_sock_state", "default", None, frozenset({"tracepoint"}))]
    cases += [BudgetCase(PROBE, p, "default", None, frozenset({"cgroup_sock_addr"}))
              for p in ("net_udp_sendmsg4", "net_udp_sendmsg6", "net_udp_connect4", "net_udp_connect6")]
    return cases


sensorium_sensor = provide(SensorSpec(
    name="network",
    description="Network connections: TCP connect/accept/close with the 5-tuple, bytes and owning process "
    "(tracepoint sock/inet_sock_set_state) and UDP sends (cgroup sock_addr, observe only), "
    "as process_kprobe events",
    factory=_factory, probes=[PROBE], options=NetworkOptions, record_layouts=dict(RECORD_LAYOUTS),
    requires=frozenset({"tracepoint", "ringbuf", "btf"}), enabled_by_default=False, budget_cases=_budget,
))

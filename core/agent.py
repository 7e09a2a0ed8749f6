"""The agent daemon: probes the kernel, starts allowed sensors and exporters, runs the pipeline, stops cleanly.

Every plugin is contained: a sensor that fails to build, load or attach is marked failed with its reason
and the agent runs on with the others. Start order matters: exporters first (nothing emitted is lost),
then sensors (programs attached), then the /proc scan (so processes that started before the agent have
cache entries; the ring buffer holds what happens meanwhile), then the reader thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from sensorium import __version__
from sensorium.bpf.progstats import by_name, enable_stats, program_stats
from sensorium.config import AgentConfig, validate_sensor_options
from sensorium.events import Event, ktime_to_wall_ns
from sensorium.hookspecs import ProbeSource, Sensor, SensorSpec
from sensorium.pipeline import Pipeline, ProcessJoin, ReaderThread
from sensorium.plugins import PluginRegistry

log = logging.getLogger("sensorium.agent")


class _SensorContext:
    """The host's side of `sensorium.hookspecs.SensorContext` for one sensor."""

    def __init__(self, agent: "Agent", name: str, config: Mapping[str, Any]) -> None:
        self._agent = agent
        self.name = name
        self.node_name = agent.cfg.node_name
        self.log = logging.getLogger(f"sensorium.sensor.{name}")
        self.kernel = agent.kernel
        self.process_cache = agent.process_cache
        self.config = config
        self.objects: list[Any] = []

    def build(self, probe: ProbeSource) -> Path:
        from sensorium.bpf.build import build_object

        return build_object(probe)

    def open_object(self, path: Path) -> Any:
        from sensorium.bpf.libbpf import BpfObject

        obj = BpfObject.open(path)
        self.objects.append(obj)
        return obj

    def add_ring_buffer(self, bpf_map: Any, decode: Callable[[Sequence[bytes]], Iterable[Event]]) -> None:
        self._agent.reader.add(bpf_map, self._agent.pipeline.decoder_sink(self.name, decode))

    def emit(self, events: Iterable[Event]) -> None:
        batch = list(events)
        if batch:
            self._agent.pipeline.count(self.name, batch)
            self._agent.pipeline.submit(batch)

    def make_event(self, kind: str, body: Mapping[str, Any], ktime_ns: int | None = None) -> Event:
        t = ktime_to_wall_ns(ktime_ns) if ktime_ns is not None else time.time_ns()
        return Event(kind, body, self.node_name, t)


class SensorSlot:
    """A sensor the agent tried to start, with its state for `status`."""

    def __init__(self, spec: SensorSpec) -> None:
        self.spec = spec
        self.sensor: Sensor | None = None
        self.ctx: _SensorContext | None = None
        self.state = "stopped"
        self.reason: str | None = None

    def status(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.spec.name, "state": self.state}
        if self.reason:
            d["reason"] = self.reason
        if self.sensor is not None:
            try:
                d.update({k: v for k, v in dict(self.sensor.status()).items() if k != "state"})
            except Exception as exc:  # noqa: BLE001
                d["status_error"] = f"{type(exc).__name__}: {exc}"
        return d


class Agent:
    def __init__(self, cfg: AgentConfig, registry: PluginRegistry | None = None) -> None:
        self.cfg = cfg
        self.registry = registry or PluginRegistry(cfg.plugins.allow, cfg.plugins.deny).discover()
        self.slots: dict[str, SensorSlot] = {}
        self.kernel: Any = None
        self.process_cache: Any = None
        self.pipeline = Pipeline()
        self.reader: Any = None
        self.reader_thread: ReaderThread | None = None
        self.runners: list[Any] = []
        self.metrics: Any = None
        self.policies: Any = None
        self.api: Any = None
        self.enricher: Any = None
        self.scope_provider: Any = None  # sensorium.k8s.scope.ScopeProvider when Kubernetes is on
        self._stop = threading.Event()
        self._stopped = False
        self._stats_fd: int | None = None
        self.started_at = time.time()

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        from sensorium.bpf.probe import ensure_mounts, probe_kernel
        from sensorium.bpf.ringbuf import RingBufferReader
        from sensorium.exporting import build_runners
        from sensorium.process import ProcessCache

        mounted = ensure_mounts()
        if mounted:
            log.info("mounted %s", ", ".join(mounted))
        self.kernel = probe_kernel()
        self.process_cache = ProcessCache(
            self.cfg.node_name, max_size=self.cfg.process_cache.max_size,
            exited_grace_s=self.cfg.process_cache.exited_grace_s,
        )
        self.metrics = self._make_metrics()
        self.runners = build_runners(self.cfg, self.registry, self.cfg.node_name, self.metrics)
        for runner in self.runners:
            runner.start()
        self.pipeline.runners = self.runners
        self.pipeline.metrics = self.metrics
        self.pipeline.stages = [ProcessJoin(self.process_cache)]
        self._start_kubernetes()
        self.reader = RingBufferReader()

        self._start_sensors()
        scanned = self.process_cache.scan_proc()
        log.info("process cache: %d running processes read from /proc", scanned)
        if self.slots.get("exec") is not None and self.slots["exec"].state == "running":
            # Every process from now on has an exec or fork record: a cache miss means the record is
            # still in flight (ProcessJoin waits for it). Reading /proc then would race with the exec and
            # mint a second exec_id for the same process.
            self.process_cache.proc_root = None
        self.reader_thread = ReaderThread(self.reader, self.cfg.pipeline.poll_interval_ms, self.pipeline)
        self.reader_thread.start()

        self._start_policies()
        self._start_api()
        self._housekeeping = threading.Thread(target=self._housekeep, name="sensorium-housekeeping", daemon=True)
        self._housekeeping.start()
        if self.metrics is not None and self.cfg.metrics.enabled:
            if self.cfg.metrics.bpf_stats:
                try:
                    self._stats_fd = enable_stats()
                except OSError as exc:
                    log.warning("BPF run-time statistics not enabled: %s", exc)
            self.metrics.serve(self.cfg.metrics.address, self.cfg.metrics.port)
        running = [n for n, s in self.slots.items() if s.state == "running"]
        failed = [f"{n} ({s.reason})" for n, s in self.slots.items() if s.state == "failed"]
        log.info(
            "ready: node %s, sensors running: %s%s; exporters: %s",
            self.cfg.node_name, ", ".join(running) or "none",
            f"; failed: {'; '.join(failed)}" if failed else "",
            ", ".join(getattr(r, "name", "?") for r in self.runners) or "none",
        )

    def _start_kubernetes(self) -> None:
        """Pod enrichment (sensorium.k8s) when the config wants it: a stage after ProcessJoin."""
        from sensorium.k8s import start_kubernetes

        try:
            self.enricher = start_kubernetes(self.cfg)
        except Exception as exc:  # noqa: BLE001 - no API server access: events go out without pods
            log.error("kubernetes enrichment not started: %s: %s", type(exc).__name__, exc)
            self.enricher = None
        if self.enricher is not None:
            self.pipeline.stages.append(self.enricher.enricher)

    def _make_metrics(self) -> Any:
        try:
            from sensorium.metrics import Metrics
        except ImportError:
            return None
        return Metrics()  # its own CollectorRegistry (Metrics takes a registry, not the agent)

    HOUSEKEEPING_S = 5.0
    REAP_EVERY = 6  # housekeeping rounds between /proc checks for processes whose exit record was lost

    def _housekeep(self) -> None:
        """Metrics that are read rather than pushed, and cache upkeep, every few seconds."""
        lost_seen: dict[str, int] = {}
        rounds = 0
        while not self._stop.wait(self.HOUSEKEEPING_S) and not self._stopped:
            rounds += 1
            try:
                for name, slot in list(self.slots.items()):
                    if slot.state != "running" or slot.sensor is None:
                        continue
                    lost = int(dict(slot.sensor.status()).get("lost_events", 0) or 0)
                    if self.metrics is not None and lost > lost_seen.get(name, 0):
                        self.metrics.lost(lost - lost_seen.get(name, 0), name)
                    lost_seen[name] = lost
                if rounds % self.REAP_EVERY == 0:
                    self.process_cache.reap_dead()
                if self.metrics is not None:
                    self.metrics.set_process_cache_size(len(self.process_cache))
                    self.metrics.set_program_stats(by_name(program_stats()))
            except Exception:  # noqa: BLE001 - upkeep must never take the agent down
                log.exception("housekeeping")

    def _enabled(self, name: str, spec: SensorSpec) -> bool:
        section = self.cfg.sensors.get(name, {})
        if name == "network" and self.cfg.network and "enabled" not in section:
            return True  # `network: true` / `run --network` is the documented shortcut for this sensor
        return bool(section.get("enabled", spec.enabled_by_default))

    def _start_sensors(self) -> None:
        doc = self.cfg.source
        for name in self.cfg.sensors:
            if name not in self.registry.sensors and not self.registry.record("sensor", name):
                raise ValueError(f"sensors.{name}: no such sensor plugin is installed")
        if self.cfg.network and "network" not in self.registry.sensors:
            rec = self.registry.record("sensor", "network")
            why = f"{rec.state}: {rec.reason}" if rec is not None else "not installed"
            raise ValueError(f"network: true needs the network sensor, which is {why}")
        for name, spec in sorted(self.registry.sensors.items()):
            slot = SensorSlot(spec)
            self.slots[name] = slot
            if not spec.implemented:
                slot.state, slot.reason = "not implemented", "placeholder plugin"
                continue
            if not self._enabled(name, spec):
                slot.state = "disabled"
                continue
            missing = sorted(c for c in spec.requires if not self.kernel.has(c))
            if missing:
                slot.state = "failed"
                slot.reason = f"kernel lacks {', '.join(missing)} (see `sensorium probe`)"
                log.error("sensor %s not started: %s", name, slot.reason)
                continue
            options = validate_sensor_options(name, self.cfg.sensors.get(name, {}), spec.options, doc)
            slot.ctx = _SensorContext(self, name, options)
            try:
                slot.sensor = spec.factory(slot.ctx)
                slot.sensor.start()
            except Exception as exc:  # noqa: BLE001 - containment: the agent runs on without it
                slot.state = "failed"
                slot.reason = f"{type(exc).__name__}: {exc}"
                log.error("sensor %s failed to start: %s", name, slot.reason)
                self._stop_sensor(slot)
                slot.state = "failed"
                continue
            slot.state = "running"
            rec = self.registry.record("sensor", name)
            if rec is not None:
                rec.state = "running"

    def _stop_sensor(self, slot: SensorSlot) -> None:
        if slot.sensor is not None:
            try:
                slot.sensor.stop()
            except Exception:  # noqa: BLE001
                log.exception("sensor %s raised in stop()", slot.spec.name)
        if slot.ctx is not None:
            for obj in slot.ctx.objects:  # whatever the sensor forgot to close
                try:
                    obj.close()
                except Exception:  # noqa: BLE001
                    log.exception("closing a BPF object of sensor %s", slot.spec.name)
            slot.ctx.objects.clear()
        slot.state = "stopped"

    def _start_policies(self) -> None:
        try:
            from sensorium.policy_manager import PolicyManager
        except ImportError:
            return
        sensors = {n: s.sensor for n, s in self.slots.items() if s.state == "running" and s.sensor is not None}
        if self.enricher is not None:
            # Pod-scoped policies (podSelector, containerSelector, hostSelector, TracingPolicyNamespaced):
            # scopes from the pod watcher and the kubepods cgroups, live.
            from sensorium.k8s.scope import ScopeProvider

            self.scope_provider = ScopeProvider(self.enricher.watcher)
        self.policies = PolicyManager(self.registry, sensors, metrics=self.metrics, scope_provider=self.scope_provider)
        if self.cfg.policies.directory is not None:
            self.policies.load_directory(self.cfg.policies.directory)
        if self.enricher is not None:
            self.enricher.start_policy_crds(self.policies)

    def _start_api(self) -> None:
        if not self.cfg.api.enabled:
            return
        try:
            from sensorium.api import ApiServer
        except ImportError:
            return
        self.api = ApiServer(self.cfg.api.socket, self)
        self.api.start()

    def stop(self) -> None:
        """Detach everything and flush exporters. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.api is not None:
            self.api.stop()
        if self.enricher is not None and self.enricher.policy_crds is not None:
            self.enricher.policy_crds.stop()  # no policy object may load while everything unloads
        if self.policies is not None:
            try:
                self.policies.unload_all()
            except Exception:  # noqa: BLE001
                log.exception("unloading policies")
        if self.scope_provider is not None:
            self.scope_provider.close()
        for slot in self.slots.values():
            if slot.state == "running":
                self._stop_sensor(slot)
        if self.reader_thread is not None:
            self.reader_thread.stop()  # drains what the programs submitted before they were detached
        if self.enricher is not None:
            self.pipeline.submit(self.enricher.stop())  # events still waiting for their pod, marked
        if self.reader is not None:
            self.reader.close()
        from sensorium.exporting import stop_runners

        undrained = [n for n, ok in stop_runners(self.runners).items() if not ok]
        if undrained:
            log.warning("exporters not fully drained at stop (dropped and counted): %s", ", ".join(undrained))
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None
        if self.metrics is not None and hasattr(self.metrics, "close"):
            self.metrics.close()
        log.info("stopped")

    def run_forever(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        try:
            self.start()
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    # ---- views ------------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Sequence[Event]], None]) -> Callable[[], None]:
        return self.pipeline.subscribe(callback)

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "node_name": self.cfg.node_name,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "sensors": [s.status() for s in self.slots.values()],
            "pipeline": self.pipeline.stats(),
            "reader": {
                "polls": getattr(self.reader_thread, "polls", 0),
                "records": getattr(self.reader_thread, "records", 0),
            },
            "process_cache": self.process_cache.stats() if self.process_cache is not None else {},
            "policies": self.policies.list() if self.policies is not None else [],
            "kubernetes": ({**self.enricher.status(), "pod_cgroups": self.scope_provider.status()}
                           if self.enricher is not None and self.scope_provider is not None else
                           self.enricher.status() if self.enricher is not None else None),
        }

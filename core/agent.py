"""The agent daemon: probes the kernel, starts allowed sensors and exporters, runs the pipeline, stops cleanly.

Every plugin is contained: a sensor that fails to build, load or attach is marked failed with its reason
and the agent runs on with the others. Start order matters: first what the operator can get wrong and
no retry can fix (exporter targets that can never be written, the metrics port, the API socket path),
each a one-line error before anything is loaded; then exporters (nothing emitted is lost), then sensors
(programs attached), then the /proc scan (so processes that started before the agent have cache
entries; the ring buffer holds what happens meanwhile), then the reader thread.

Stop keeps a deadline: ``shutdown_grace_s`` (default 5 s) after SIGTERM the agent is gone, whatever its
sinks do; what the exporters could not deliver by then is counted and logged, per exporter.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sensorium import __version__, schema
from sensorium.bpf.memory import PROJECTED_CPUS, PROJECTED_KEY
from sensorium.bpf.progstats import by_name, enable_stats, program_stats
from sensorium.config import AgentConfig, validate_sensor_options
from sensorium.events import Event, ktime_to_wall_ns
from sensorium.hookspecs import ProbeSource, RingDecoder, RingHandle, Sensor, SensorSpec
from sensorium.pipeline import Pipeline, ReaderThread, StageContextImpl, build_stages
from sensorium.plugins import PluginRegistry
from sensorium.yamlsrc import SourceError, format_path

log = logging.getLogger("sensorium.agent")

DEFAULT_SHUTDOWN_GRACE_S = 5.0
# Stop's last steps after the exporters (closing the stats fd, the final log lines) get this much of the grace.
STOP_TAIL_S = 0.3
# When stop overruns the grace by this much anyway (a sensor or sink stuck in the kernel), exit regardless.
WATCHDOG_MARGIN_S = 1.0


class _SensorContext:
    """The host's side of `sensorium.hookspecs.SensorContext` for one sensor."""

    def __init__(self, agent: Agent, name: str, config: Mapping[str, Any]) -> None:
        self._agent = agent
        self.name = name
        self.node_name = agent.cfg.node_name
        self.log = logging.getLogger(f"sensorium.sensor.{name}")
        self.kernel = agent.kernel
        self.process_cache = agent.process_cache
        self.config = config
        self.objects: list[Any] = []
        self.rings: list[RingHandle] = []  # given out by add_ring_buffer, closed when the sensor stops

    def build(self, probe: ProbeSource) -> Path:
        from sensorium.bpf.build import build_object

        return build_object(probe)

    def open_object(self, path: Path) -> Any:
        from sensorium.bpf.libbpf import BpfObject

        obj = BpfObject.open(path)
        self.objects.append(obj)
        return obj

    def add_ring_buffer(self, bpf_map: Any, decode: RingDecoder, *, native_drain: bool = False) -> RingHandle:
        handle = self._agent.reader.add(bpf_map, self._agent.pipeline.decoder_sink(self.name, decode),
                                        native_drain=native_drain)
        self.rings = [r for r in self.rings if not r.closed] + [handle]
        return handle

    def emit(self, events: Iterable[Event]) -> None:
        batch = list(events)
        if batch:
            self._agent.pipeline.count(self.name, batch)
            self._agent.pipeline.submit(batch)

    def make_event(self, kind: str, body: Mapping[str, Any], ktime_ns: int | None = None) -> Event:
        t = ktime_to_wall_ns(ktime_ns) if ktime_ns is not None else time.time_ns()
        return Event(kind, body, self.node_name, t)

    def run_action(self, policy: str, action: str, target: str) -> bool:
        return self._agent.actions.submit(policy, action, target)


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
    def __init__(self, cfg: AgentConfig, registry: PluginRegistry | None = None, *,
                 shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S) -> None:
        self.cfg = cfg
        schema.set_format(cfg.events.format)  # one format per process: an event's JSON is encoded once
        schema.set_process_fields(credentials=cfg.events.process_credentials,
                                  namespaces=cfg.events.process_namespaces)
        self.shutdown_grace_s = shutdown_grace_s
        self._stop_requested_at: float | None = None  # monotonic time of SIGTERM/SIGINT
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
        self._stopped_fully = threading.Event()
        self._ready = False
        self._stats_fd: int | None = None
        self.started_at = time.time()
        self.enforcement_store: Any = None  # sensorium.persistence.EnforcementStore (enforcement.persist)
        self.kept_enforcing: list[str] = []  # policies left enforcing in the kernel at stop
        from sensorium.actions import runner_from_config

        self.actions = runner_from_config(cfg.actions)  # GetUrl/DnsLookup requests: started with the sensors

    # ---- lifecycle --------------------------------------------------------------------------------

    def _config_error(self, loc: tuple, reason: str) -> SourceError:
        doc = self.cfg.source
        return doc.error(loc, reason) if doc is not None else SourceError(reason, path=format_path(loc))

    def _preflight(self) -> None:
        """What no retry can fix, checked before anything is loaded: every exporter's config and target,
        the metrics port, the API socket. Raises `SourceError` (one line naming the config key)."""
        from sensorium.exporting import build_runners, check_runners

        self.metrics = self._make_metrics()
        self.runners = build_runners(self.cfg, self.registry, self.cfg.node_name, self.metrics)
        check_runners(self.cfg, self.runners)
        if self.metrics is not None and self.cfg.metrics.enabled:
            try:
                self.metrics.serve(self.cfg.metrics.address, self.cfg.metrics.port)
            except OSError as exc:
                raise self._config_error(("metrics", "port"), exc.strerror or str(exc)) from None
        if self.cfg.api.enabled:
            try:
                from sensorium.api import ApiServer
            except ImportError:
                return
            api = ApiServer(self.cfg.api.socket, self, metrics=self.metrics)
            try:
                api.bind()  # served once everything is up (`_start_api`); clients wait in the backlog
            except OSError as exc:
                raise self._config_error(("api", "socket"), exc.strerror or str(exc)) from None
            self.api = api

    def start(self) -> None:
        from sensorium.bpf.probe import ensure_mounts, probe_kernel
        from sensorium.bpf.ringbuf import RingBufferReader
        from sensorium.process import ProcessCache

        self._preflight()
        mounted = ensure_mounts()
        if mounted:
            log.info("mounted %s", ", ".join(mounted))
        self.kernel = probe_kernel()
        self._check_enforcement()
        self.process_cache = ProcessCache(
            self.cfg.node_name, max_size=self.cfg.process_cache.max_size,
            exited_grace_s=self.cfg.process_cache.exited_grace_s,
        )
        for runner in self.runners:
            runner.start()
        self.pipeline.runners = self.runners
        self.pipeline.metrics = self.metrics
        self._start_stages()
        self.reader = RingBufferReader()
        self.actions.start()

        self._start_sensors()
        # Processes that started before the sensors (a sensor that records every exec and fork, the exec
        # sensor, has meanwhile told the cache to stop reading /proc on a miss: `ProcessCache.proc_root`).
        scanned = self.process_cache.scan_proc()
        log.info("process cache: %d running processes read from /proc", scanned)
        self.reader_thread = ReaderThread(self.reader, self.cfg.pipeline.poll_interval_ms, self.pipeline)
        self.reader_thread.start()

        self._start_policies()
        self._start_api()
        self._housekeeping = threading.Thread(target=self._housekeep, name="sensorium-housekeeping", daemon=True)
        self._housekeeping.start()
        if self.metrics is not None and self.cfg.metrics.enabled and self.cfg.metrics.bpf_stats:
            try:
                self._stats_fd = enable_stats()
            except OSError as exc:
                log.warning("BPF run-time statistics not enabled: %s", exc)
        self._ready = True
        running = [n for n, s in self.slots.items() if s.state == "running"]
        failed = [f"{n} ({s.reason})" for n, s in self.slots.items() if s.state == "failed"]
        log.info(
            "ready: node %s, sensors running: %s%s; exporters: %s",
            self.cfg.node_name, ", ".join(running) or "none",
            f"; failed: {'; '.join(failed)}" if failed else "",
            ", ".join(getattr(r, "name", "?") for r in self.runners) or "none",
        )

    def _check_enforcement(self) -> None:
        """With ``enforcement.persist``: the pin directory must be in bpffs and the state directory writable,
        before any sensor loads (one line naming the config key, exit 1)."""
        ec = self.cfg.enforcement
        if not ec.persist:
            return
        from sensorium.persistence import EnforcementStore

        store = EnforcementStore(ec.pin_dir, ec.state_dir, refuse_non_persistent=ec.non_persistent == "refuse")
        problem = store.check()
        if problem is not None:
            raise self._config_error(("enforcement", problem[0]), problem[1])
        self.enforcement_store = store

    def _start_stages(self) -> None:
        """Every pipeline-stage plugin in its order (`sensorium.pipeline.build_stages`: one that fails is marked
        failed and the agent runs on). The Kubernetes stage also scopes policies to pods (`_start_policies`)."""
        from sensorium.k8s import KubernetesStage

        ctx = StageContextImpl(node_name=self.cfg.node_name, config=self.cfg, process_cache=self.process_cache)
        self.pipeline.stages = build_stages(self.registry, ctx)
        self.enricher = next((s for s in self.pipeline.stages if isinstance(s, KubernetesStage)), None)

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
                    if self.policies is not None:
                        self.metrics.set_policy_memory(
                            {p["name"]: (p["kernel_memory_bytes"], p[PROJECTED_KEY]) for p in self.policies.list()
                             if p["state"] == "enabled"}, PROJECTED_CPUS)
            except Exception:  # upkeep must never take the agent down
                log.exception("housekeeping")

    def _start_sensors(self) -> None:
        doc = self.cfg.source
        sections = self.cfg.sensor_sections()
        for name, section in sections.items():
            if name in self.registry.sensors:
                continue
            rec = self.registry.record("sensor", name)
            if rec is None:
                raise ValueError(f"sensors.{name}: no such sensor plugin is installed")
            if section.get("enabled"):  # asked for, yet not available: contained like any plugin failure, and said
                log.error("sensor %s is enabled in the config but not started: %s: %s", name, rec.state, rec.reason)
        for name, spec in sorted(self.registry.sensors.items()):
            slot = SensorSlot(spec)
            self.slots[name] = slot
            if not spec.implemented:
                slot.state, slot.reason = "not implemented", "placeholder plugin"
                continue
            if not sections.get(name, {}).get("enabled", spec.enabled_by_default):
                slot.state = "disabled"
                continue
            missing = sorted(c for c in spec.requires if not self.kernel.has(c))
            if missing:
                slot.state = "failed"
                slot.reason = f"kernel lacks {', '.join(missing)} (see `sensorium probe`)"
                log.error("sensor %s not started: %s", name, slot.reason)
                continue
            options = validate_sensor_options(name, sections.get(name, {}), spec.options, doc)
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
            except Exception:
                log.exception("sensor %s raised in stop()", slot.spec.name)
        if slot.ctx is not None:
            for ring in slot.ctx.rings:  # what is left in them is delivered (`RingHandle.close`)
                ring.close()
            slot.ctx.rings.clear()
            for obj in slot.ctx.objects:  # whatever the sensor forgot to close
                try:
                    obj.close()
                except Exception:
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

            self.scope_provider = ScopeProvider(self.enricher.watcher, cgroup_root=self.cfg.kubernetes.cgroup_root)
        self.policies = PolicyManager(self.registry, sensors, metrics=self.metrics, scope_provider=self.scope_provider,
                                      persistence=self.enforcement_store, user_actions=self.cfg.actions.enabled)
        if self.enforcement_store is not None:
            # What a previous agent pinned keeps enforcing until this agent's generation of the same policy
            # is active (then it goes, policy by policy): the block never lapses across a restart.
            found = self.policies.scan_pins()
            if found:
                log.info("enforcement: %d pinned policy generation(s) of a previous agent found under %s: %s",
                         len(found), self.enforcement_store.pin_root, ", ".join(sorted({g.key for g in found})))
            report = self.policies.restore()
            if report["restored"] or report["failed"]:
                log.info("enforcement: %d kept policies restored, %d failed", len(report["restored"]),
                         len(report["failed"]))
        if self.cfg.policies.directory is not None:
            self.policies.load_directory(self.cfg.policies.directory)
        crds = False
        if self.enricher is not None:
            self.enricher.start_policy_crds(self.policies)
            crds = self.enricher.policy_crds is not None
        if self.enforcement_store is not None:
            if crds:  # CRD policies come back through the watcher: sweep once it has listed them
                threading.Thread(target=self._sweep_after_crds, name="sensorium-pin-sweep", daemon=True).start()
            else:
                self.policies.sweep_stale()

    CRD_SWEEP_WAIT_S = 120.0

    def _sweep_after_crds(self) -> None:
        crds = self.enricher.policy_crds
        if not crds.wait_synced(self.CRD_SWEEP_WAIT_S):
            log.warning("enforcement: TracingPolicy objects not listed after %.0fs: pins of a previous agent are "
                        "kept until the next start", self.CRD_SWEEP_WAIT_S)
            return
        if not self._stopped:
            self.policies.sweep_stale()

    def _start_api(self) -> None:
        if self.api is not None:  # bound in `_preflight`
            self.api.serve()

    def stop(self) -> None:
        """Detach everything and flush exporters, within `shutdown_grace_s` of the stop request (or of
        now). Idempotent. What an exporter could not deliver in time is counted and logged."""
        if self._stopped:
            return
        self._stopped = True
        t0 = self._stop_requested_at if self._stop_requested_at is not None else time.monotonic()
        deadline = t0 + self.shutdown_grace_s
        left = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
        # The front doors first: no new requests or scrapes while everything unloads. The metrics server
        # takes up to its poll interval (0.5 s) to stop: in the background, not out of the exporters' time.
        if self.api is not None:
            self.api.stop()
        metrics_closing = None
        if self.metrics is not None and hasattr(self.metrics, "close"):
            metrics_closing = threading.Thread(target=self.metrics.close, name="sensorium-metrics-close", daemon=True)
            metrics_closing.start()
        if self.enricher is not None and self.enricher.policy_crds is not None:
            self.enricher.policy_crds.stop()  # no policy object may load while everything unloads
        if self.policies is not None:
            try:
                if self.enforcement_store is not None:
                    # Persistent enforcement: pinned blocks stay; what cannot outlive the agent ends here.
                    self.kept_enforcing = self.policies.release_all()
                    log.info("enforcement: %d policies keep enforcing in the kernel after exit (pinned under %s)%s",
                             len(self.kept_enforcing), self.enforcement_store.pin_root,
                             f": {', '.join(self.kept_enforcing)}" if self.kept_enforcing else "")
                else:
                    self.policies.unload_all()
            except Exception:
                log.exception("unloading policies")
        if self.scope_provider is not None:
            self.scope_provider.close()
        for slot in self.slots.values():
            if slot.state == "running":
                self._stop_sensor(slot)
        if self.reader_thread is not None:
            # drains what the programs submitted before they were detached
            self.reader_thread.stop(min(5.0, max(0.1, left() / 2)))
        if self.enricher is not None:
            self.pipeline.submit(self.enricher.stop())  # events still waiting for their pod, marked
        if self.reader is not None:
            self.reader.close()
        # GetUrl/DnsLookup requests still queued are dropped and counted; one in flight gets its own timeout
        self.actions.stop(min(self.actions.timeout_s, max(0.0, left() / 4)))
        from sensorium.exporting import stop_runners

        stop_runners(self.runners, timeout=max(0.0, left() - STOP_TAIL_S))
        undelivered = 0
        for r in self.runners:
            n = r.stats()["dropped_by_reason"].get("shutdown", 0)
            undelivered += n
            # An agent that never got ready (a startup error) says only that error, unless events were lost.
            (log.warning if n else log.info if self._ready else log.debug)("%s", r.undelivered_summary())
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None
        if metrics_closing is not None:
            metrics_closing.join(left())
        (log.info if self._ready or undelivered else log.debug)(
            "stopped in %.1fs (grace %.1fs): %d events left undelivered%s", time.monotonic() - t0,
                 self.shutdown_grace_s, undelivered,
                 "" if not self.runners else " (" + ", ".join(
                     f"{r.name} {r.stats()['dropped_by_reason'].get('shutdown', 0)}" for r in self.runners) + ")")

    def _watchdog(self) -> None:
        """Last resort: if stopping overruns the grace (something stuck in the kernel), leave anyway."""
        assert self._stop_requested_at is not None
        end = self._stop_requested_at + self.shutdown_grace_s + WATCHDOG_MARGIN_S
        while not self._stopped_fully.wait(max(0.0, end - time.monotonic())):
            if time.monotonic() >= end:
                log.error("stop overran the %.1fs shutdown grace; exiting now", self.shutdown_grace_s)
                for h in logging.getLogger().handlers:
                    try:
                        h.flush()
                    except Exception:  # noqa: BLE001
                        pass
                os._exit(1)

    def run_forever(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self._stop_requested_at is None:
                self._stop_requested_at = time.monotonic()
                log.info("received %s, stopping (grace %.1fs)", signal.Signals(signum).name, self.shutdown_grace_s)
                threading.Thread(target=self._watchdog, name="sensorium-stop-watchdog", daemon=True).start()
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        try:
            self.start()
            while not self._stop.wait(1.0):
                pass
        finally:
            try:
                self.stop()
            finally:
                self._stopped_fully.set()

    # ---- views ------------------------------------------------------------------------------------

    def _enforcement_status(self) -> dict[str, Any]:
        ec = self.cfg.enforcement
        if self.enforcement_store is None:
            return {"persist": False, "note": "blocks end with the agent (enforcement.persist is off)"}
        out: dict[str, Any] = {
            "persist": True, "pin_dir": str(ec.pin_dir), "state_dir": str(ec.state_dir),
            "non_persistent": ec.non_persistent,
            "note": "pinned programs keep enforcing when the agent stops or dies; fanotify decisions do not "
                    "(the kernel allows those opens once the agent is gone)"}
        if self.policies is not None:
            rows = self.policies.list()
            out["policies_persistent"] = sorted(r["key"] for r in rows if r.get("persistent") is True)
            out["policies_not_persistent"] = sorted(r["key"] for r in rows if r.get("persistent") is False)
            out["start"] = self.policies.restore_report
            out["adopted_only"] = self.policies.adopted_only()
        return out

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
            "api": self.api.status() if self.api is not None else None,
            "reader": {
                "polls": getattr(self.reader_thread, "polls", 0),
                "records": getattr(self.reader_thread, "records", 0),
            },
            "process_cache": self.process_cache.stats() if self.process_cache is not None else {},
            "policies": self.policies.list() if self.policies is not None else [],
            "enforcement": self._enforcement_status(),
            "actions": self.actions.status(),
            "kubernetes": ({**self.enricher.status(), "pod_cgroups": self.scope_provider.status()}
                           if self.enricher is not None and self.scope_provider is not None else
                           self.enricher.status() if self.enricher is not None else None),
        }

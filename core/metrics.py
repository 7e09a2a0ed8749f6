"""Prometheus metrics of one agent, on its own registry (never the process-global default one).

The pipeline, the exporter runners and the agent call small methods on a `Metrics` object
(``metrics.event("process_exec", "exec")``, ``metrics.lost(3, "exec")``...); `Metrics.serve` exposes
them over HTTP at ``metrics.address:metrics.port``. Tests build their own `Metrics` and scrape it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import start_http_server

NAMESPACE = "sensorium"

POLICY_STATES = ("loaded", "enabled", "disabled", "error", "load_error")


class Metrics:
    """Every metric the agent exports. All methods are thread-safe and cheap (no I/O)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_total = Counter(
            "events", "Events produced by sensors, by event type and sensor", ["type", "sensor"],
            namespace=NAMESPACE, registry=r,
        )
        self.kernel_lost_total = Counter(
            "kernel_events_lost", "Events lost in the kernel (ring buffer full) or not decodable",
            ["sensor", "reason"], namespace=NAMESPACE, registry=r,
        )
        self.exported_total = Counter(
            "exporter_events_exported", "Events that left the agent through an exporter (delivered + unconfirmed)",
            ["exporter"], namespace=NAMESPACE, registry=r,
        )
        self.delivered_total = Counter(
            "exporter_events_delivered", "Events the sink took (written, handed to a stream, acknowledged)",
            ["exporter"], namespace=NAMESPACE, registry=r,
        )
        self.unconfirmed_total = Counter(
            "exporter_events_unconfirmed", "Events sent on a transport that cannot confirm delivery (UDP) "
            "with no refusal seen", ["exporter"], namespace=NAMESPACE, registry=r,
        )
        self.dropped_total = Counter(
            "exporter_events_dropped", "Events an exporter gave up on, by reason (queue_full, rate_limit, "
            "filter_error, shutdown, rejected)", ["exporter", "reason"], namespace=NAMESPACE, registry=r,
        )
        self.retried_events_total = Counter(
            "exporter_events_retried", "Events written again after a failed write, by the reason it failed "
            "(peer_refused, peer_closed, peer_unreachable, timeout, disk_full, rejected, write_error)",
            ["exporter", "reason"], namespace=NAMESPACE, registry=r,
        )
        self.failures_by_reason_total = Counter(
            "exporter_failures", "Failed opens, writes and flushes of an exporter, by reason",
            ["exporter", "reason"], namespace=NAMESPACE, registry=r,
        )
        self.api_stream_dropped_total = Counter(
            "api_stream_events_dropped", "Events not sent to an API subscriber (`sensorium events`), by reason "
            "(subscriber_queue_full: that client reads too slowly; total_cap: all subscribers together hold "
            "the API's whole budget)", ["reason"], namespace=NAMESPACE, registry=r,
        )
        self.api_stream_queued = Gauge(
            "api_stream_queued_events", "Events queued for API subscribers, all subscribers together",
            namespace=NAMESPACE, registry=r,
        )
        self.filtered_total = Counter(
            "exporter_events_filtered", "Events removed by an exporter's allow/deny filters", ["exporter"],
            namespace=NAMESPACE, registry=r,
        )
        self.failed_total = Counter(
            "exporter_write_failures", "Failed write attempts (the batch is kept and retried)", ["exporter"],
            namespace=NAMESPACE, registry=r,
        )
        self.retries_total = Counter(
            "exporter_retries", "Retries of a failed batch or of a failed open", ["exporter"],
            namespace=NAMESPACE, registry=r,
        )
        self.queue_depth = Gauge(
            "exporter_queue_depth", "Events waiting in an exporter's queue (including its in-flight batch)",
            ["exporter"], namespace=NAMESPACE, registry=r,
        )
        self.exporter_up = Gauge(
            "exporter_up", "1 when the exporter's sink is open and its last write succeeded", ["exporter"],
            namespace=NAMESPACE, registry=r,
        )
        self.exporter_custom_total = Counter(
            "exporter_plugin_events", "Exporter-specific counters (ExporterContext.count)", ["exporter", "metric"],
            namespace=NAMESPACE, registry=r,
        )
        self.process_cache_size = Gauge(
            "process_cache_size", "Entries in the process cache", namespace=NAMESPACE, registry=r,
        )
        self.policies_loaded = Gauge(
            "policies_loaded", "TracingPolicies known to the agent", namespace=NAMESPACE, registry=r,
        )
        self.policy_state = Gauge(
            "policy_state", "1 for the current state of each policy", ["policy", "state"],
            namespace=NAMESPACE, registry=r,
        )
        self.bpf_programs = Gauge(
            "bpf_programs", "BPF programs the agent holds, by program name", ["program"],
            namespace=NAMESPACE, registry=r,
        )
        self.bpf_program_runs = Gauge(
            "bpf_program_runs", "Runs of the agent's BPF programs, by program name (while run-time "
            "statistics are on: metrics.bpf_stats)", ["program"], namespace=NAMESPACE, registry=r,
        )
        self.bpf_program_run_seconds = Gauge(
            "bpf_program_run_seconds", "Time spent in the agent's BPF programs, by program name (while "
            "run-time statistics are on: metrics.bpf_stats)", ["program"], namespace=NAMESPACE, registry=r,
        )
        self.policy_kernel_memory = Gauge(
            "policy_kernel_memory_bytes", "Kernel memory of a loaded policy's BPF maps and programs: the kernel's "
            "own figure (node_cpus=\"here\") and the same on a node of node_cpus CPUs (per-CPU maps grow with "
            "it)", ["policy", "node_cpus"], namespace=NAMESPACE, registry=r,
        )
        self._memory_policies: set[str] = set()
        self._program_names: set[str] = set()
        self._lock = threading.Lock()
        self._policy_states: dict[str, str] = {}
        self._server: Any = None
        self._server_thread: threading.Thread | None = None

    # ---- sensors / pipeline ---------------------------------------------------------------------

    def event(self, kind: str, sensor: str, n: int = 1) -> None:
        self.events_total.labels(kind, sensor).inc(n)

    def lost(self, n: int, sensor: str, reason: str = "ring_buffer") -> None:
        if n > 0:
            self.kernel_lost_total.labels(sensor, reason).inc(n)

    def set_program_stats(self, stats: dict[str, tuple[int, int, int]]) -> None:
        """``{program name: (programs, runs, run_time_ns)}`` as of now; names gone since are removed."""
        with self._lock:
            for name in self._program_names - set(stats):
                for g in (self.bpf_programs, self.bpf_program_runs, self.bpf_program_run_seconds):
                    g.remove(name)
            for name, (n, runs, ns) in stats.items():
                self.bpf_programs.labels(name).set(n)
                self.bpf_program_runs.labels(name).set(runs)
                self.bpf_program_run_seconds.labels(name).set(ns / 1e9)
            self._program_names = set(stats)

    def set_policy_memory(self, memory: dict[str, tuple[int, int]], node_cpus: int) -> None:
        """{policy: (bytes here, bytes on a node of ``node_cpus`` CPUs)} of every loaded policy; the series
        of a policy no longer listed are removed."""
        with self._lock:
            for name, (here, projected) in memory.items():
                self.policy_kernel_memory.labels(name, "here").set(here)
                self.policy_kernel_memory.labels(name, str(node_cpus)).set(projected)
            for name in self._memory_policies - set(memory):
                for cpus in ("here", str(node_cpus)):
                    try:
                        self.policy_kernel_memory.remove(name, cpus)
                    except KeyError:
                        pass
            self._memory_policies = set(memory)

    def set_process_cache_size(self, n: int) -> None:
        self.process_cache_size.set(n)

    def policy(self, name: str, state: str) -> None:
        """Record a policy's current state (one series per policy is 1, its old state goes to 0)."""
        with self._lock:
            old = self._policy_states.get(name)
            if old is not None and old != state:
                self.policy_state.labels(name, old).set(0)
            self._policy_states[name] = state
            self.policy_state.labels(name, state).set(1)
            self.policies_loaded.set(len(self._policy_states))

    def policy_removed(self, name: str) -> None:
        with self._lock:
            old = self._policy_states.pop(name, None)
            if old is not None:
                self.policy_state.remove(name, old)
            self.policies_loaded.set(len(self._policy_states))

    # ---- exporters ------------------------------------------------------------------------------

    def exported(self, exporter: str, n: int, unconfirmed: int = 0) -> None:
        """``n`` events left through ``exporter``, ``unconfirmed`` of them without a delivery confirmation."""
        if n:
            self.exported_total.labels(exporter).inc(n)
            if n - unconfirmed:
                self.delivered_total.labels(exporter).inc(n - unconfirmed)
            if unconfirmed:
                self.unconfirmed_total.labels(exporter).inc(unconfirmed)

    def retried_events(self, exporter: str, n: int, reason: str) -> None:
        if n:
            self.retried_events_total.labels(exporter, reason).inc(n)

    def api_stream_dropped(self, n: int, reason: str) -> None:
        if n:
            self.api_stream_dropped_total.labels(reason).inc(n)

    def watch_api_stream(self, queued: Callable[[], float]) -> None:
        self.api_stream_queued.set_function(queued)

    def dropped(self, exporter: str, n: int, reason: str) -> None:
        if n:
            self.dropped_total.labels(exporter, reason).inc(n)

    def filtered(self, exporter: str, n: int) -> None:
        if n:
            self.filtered_total.labels(exporter).inc(n)

    def failed(self, exporter: str, n: int = 1, reason: str = "write_error") -> None:
        self.failed_total.labels(exporter).inc(n)
        self.failures_by_reason_total.labels(exporter, reason).inc(n)

    def retried(self, exporter: str, n: int = 1) -> None:
        self.retries_total.labels(exporter).inc(n)

    def exporter_count(self, exporter: str, metric: str, n: int = 1) -> None:
        self.exporter_custom_total.labels(exporter, metric).inc(n)

    def watch_exporter(self, exporter: str, depth: Callable[[], float], up: Callable[[], float]) -> None:
        """Read queue depth and health from the runner at scrape time (no per-event gauge updates)."""
        self.queue_depth.labels(exporter).set_function(depth)
        self.exporter_up.labels(exporter).set_function(up)
        # Make the counters visible at 0 before anything happened, so dashboards see the exporter.
        for c in (self.exported_total, self.delivered_total, self.unconfirmed_total, self.filtered_total,
                  self.failed_total, self.retries_total):
            c.labels(exporter)
        # Losses at 0 too: "no shutdown drops" is a fact a dashboard can show, not a missing series.
        for reason in ("queue_full", "shutdown"):
            self.dropped_total.labels(exporter, reason)

    # ---- exposition -----------------------------------------------------------------------------

    def scrape(self) -> bytes:
        """The text exposition, as an HTTP scrape would return it."""
        return generate_latest(self.registry)

    def serve(self, address: str = "127.0.0.1", port: int = 2112) -> tuple[str, int]:
        """Start the HTTP endpoint on a daemon thread; returns the bound (address, port).

        Port 0 picks a free port (tests). Call `shutdown` to stop it.
        """
        if self._server is not None:
            raise RuntimeError("metrics server already running")
        try:
            server, thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics: cannot listen on {address}:{port}: {exc.strerror}") from None
        self._server, self._server_thread = server, thread
        host, bound = server.server_address[:2]
        return (host if isinstance(host, str) else bytes(host).decode()), bound

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._server_thread is not None:
                self._server_thread.join(timeout=5)
            self._server = self._server_thread = None

    close = shutdown  # the agent calls metrics.close() at stop
    start_http_server = serve  # the name prometheus_client users expect


class NullMetrics(Metrics):
    """A `Metrics` on a private registry that nobody serves: for runners built without an agent."""

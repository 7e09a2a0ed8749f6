"""Test helpers shipped with the library, so plugin authors' tests stay short.

    from sensorium.testing import CaptureExporter, make_event, run_exporter

    def test_my_sink(tmp_path):
        events = [make_event("process_exec", binary="/bin/true", pid=i) for i in range(10)]
        stats = run_exporter(MyExporter(...), events)
        assert stats["exported"] == 10

`CaptureExporter` records what it receives and can fail or stall on command (for runner tests);
`make_event` builds an event in Tetragon's shape; `runner_for` and `run_exporter` drive any exporter
through the real `ExporterRunner`; `capture_registry` registers exporter plugins in-process, and
`plugin_registry` sensor, exporter and stage plugins (a sensor's policy section parses through it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sensorium.config import ExporterItem
from sensorium.events import Event
from sensorium.exporting import ExporterContextImpl, ExporterRunner
from sensorium.filters import FilterChain, build_filters
from sensorium.metrics import Metrics

_t0 = time.time_ns()


def make_event(
    kind: str = "process_exec",
    *,
    binary: str = "/usr/bin/true",
    arguments: str = "",
    pid: int = 1000,
    namespace: str | None = None,
    pod: str | None = None,
    labels: Mapping[str, str] | None = None,
    container_id: str | None = None,
    parent_binary: str | None = None,
    node_name: str = "test-node",
    time_ns: int | None = None,
    **extra: Any,
) -> Event:
    """An event in Tetragon's export shape; ``extra`` keys go into the body (e.g. ``status=1``)."""
    process: dict[str, Any] = {
        "exec_id": f"{node_name}:{pid}",
        "pid": pid,
        "uid": 0,
        "cwd": "/",
        "binary": binary,
        "arguments": arguments,
    }
    if pod is not None or namespace is not None:
        process["pod"] = {
            "namespace": namespace or "default",
            "name": pod or "pod",
            "pod_labels": dict(labels or {}),
            "container": {"id": container_id or "", "name": "c"},
        }
    if container_id is not None:
        process["docker"] = container_id[:31]
    body: dict[str, Any] = {"process": process}
    if parent_binary is not None:
        body["parent"] = {"binary": parent_binary, "pid": 1}
    body.update(extra)
    return Event(kind, body, node_name, time_ns if time_ns is not None else _t0 + pid)


class CaptureExporter:
    """An in-memory exporter. ``fail_next(n)`` makes the next n writes raise; ``delay_s`` slows each
    write; ``block()``/``unblock()`` stall writes until released."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.events: list[Event] = []
        self.batches: list[list[Event]] = []
        self.opens = 0
        self.closes = 0
        self.flushes = 0
        self.delay_s = delay_s
        self._fail = 0
        self._fail_open = 0
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()

    # Exporter protocol
    def open(self) -> None:
        with self._lock:
            self.opens += 1
            if self._fail_open:
                self._fail_open -= 1
                raise ConnectionError("capture: open failed on request")

    def write_batch(self, events: Sequence[Event]) -> None:
        self._gate.wait()
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            if self._fail:
                self._fail -= 1
                raise OSError("capture: write failed on request")
            self.batches.append(list(events))
            self.events.extend(events)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closes += 1

    # Controls
    def fail_next(self, writes: int = 1, opens: int = 0) -> None:
        with self._lock:
            self._fail += writes
            self._fail_open += opens

    def block(self) -> None:
        self._gate.clear()

    def unblock(self) -> None:
        self._gate.set()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Event]:
        """Wait until at least n events arrived; returns them (raises TimeoutError otherwise)."""
        return wait_until(lambda: self.events if len(self.events) >= n else None, timeout,
                          f"{n} events (got {len(self.events)})")


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy; return it, or raise TimeoutError naming ``what``."""
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= end:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def runner_for(
    exporter: Any,
    *,
    name: str = "test",
    filters: FilterChain | Mapping[str, Any] | None = None,
    metrics: Metrics | None = None,
    node_name: str = "test-node",
    backoff_initial_s: float = 0.05,
    backoff_max_s: float = 0.5,
    ctx: ExporterContextImpl | None = None,
    **item: Any,
) -> ExporterRunner:
    """A not-yet-started runner around ``exporter``; ``item`` holds host keys (queue_size, batch_size...)."""
    it = ExporterItem(type=name, **item)
    chain = filters if isinstance(filters, FilterChain) else build_filters(filters, node_name)
    ctx = ctx or ExporterContextImpl(name, node_name, metrics)
    return ExporterRunner(name, exporter, it, ctx, chain, metrics=metrics,
                          backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)


def run_exporter(exporter: Any, events: Iterable[Event], timeout: float = 10.0, **kw: Any) -> dict[str, Any]:
    """Start a runner, submit ``events``, stop (drain) it, return its stats."""
    r = runner_for(exporter, **kw)
    r.start()
    r.submit(list(events))
    r.stop(timeout)
    return r.stats()


def capture_registry(**exporters: Any) -> Any:
    """A `PluginRegistry` with in-process exporter plugins: ``capture_registry(mine=my_module)``."""
    from sensorium.hookspecs import EXPORTER_GROUP
    from sensorium.plugins import PluginRegistry

    reg = PluginRegistry()
    for name, obj in exporters.items():
        reg.add(EXPORTER_GROUP, name, obj)
    return reg


def plugin_registry(*, sensors: Mapping[str, Any] = {}, exporters: Mapping[str, Any] = {},
                    stages: Mapping[str, Any] = {}) -> Any:
    """A `PluginRegistry` holding in-process plugins by name (objects implementing the hooks), registered with
    the checks of discovery: ``plugin_registry(sensors={"widget": my_plugin})``. Parsing a policy with it
    (``sensorium.policy.parse_policy(text, file, reg)``) composes the sections its sensors declare. Raises
    ``AssertionError`` naming the reason when one does not register."""
    from sensorium.hookspecs import EXPORTER_GROUP, SENSOR_GROUP, STAGE_GROUP
    from sensorium.plugins import PluginRegistry

    reg = PluginRegistry()
    for group, plugins in ((SENSOR_GROUP, sensors), (EXPORTER_GROUP, exporters), (STAGE_GROUP, stages)):
        for name, obj in plugins.items():
            rec = reg.add(group, name, obj)
            assert rec.state in ("loaded", "not implemented"), f"{rec.kind} {name!r}: {rec.state}: {rec.reason}"
    return reg

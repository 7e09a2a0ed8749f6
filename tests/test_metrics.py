"""Prometheus metrics on the agent's own registry, scraped over HTTP like Prometheus would."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sensorium.metrics import Metrics
from sensorium.testing import CaptureExporter, make_event, runner_for


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def served():
    m = Metrics()
    host, port = m.serve("127.0.0.1", 0)
    try:
        yield m, f"http://{host}:{port}/metrics"
    finally:
        m.shutdown()


def test_sensor_and_agent_metrics_are_scraped(served) -> None:
    m, url = served
    m.event("process_exec", "exec", 3)
    m.event("process_exit", "exec")
    m.lost(7, "exec")
    m.set_process_cache_size(1234)
    m.policy("block-curl", "loaded")
    m.policy("block-curl", "enabled")
    m.policy("audit-open", "error")
    got = scrape(url)
    assert got[("sensorium_events_total", (("sensor", "exec"), ("type", "process_exec")))] == 3
    assert got[("sensorium_events_total", (("sensor", "exec"), ("type", "process_exit")))] == 1
    assert got[("sensorium_kernel_events_lost_total", (("reason", "ring_buffer"), ("sensor", "exec")))] == 7
    assert got[("sensorium_process_cache_size", ())] == 1234
    assert got[("sensorium_policies_loaded", ())] == 2
    assert got[("sensorium_policy_state", (("policy", "block-curl"), ("state", "enabled")))] == 1
    assert got[("sensorium_policy_state", (("policy", "block-curl"), ("state", "loaded")))] == 0
    assert got[("sensorium_policy_state", (("policy", "audit-open"), ("state", "error")))] == 1
    m.policy_removed("audit-open")
    got = scrape(url)
    assert ("sensorium_policy_state", (("policy", "audit-open"), ("state", "error"))) not in got
    assert got[("sensorium_policies_loaded", ())] == 1


def test_policy_kernel_memory_series_follow_the_loaded_policies(served) -> None:
    m, url = served
    m.set_policy_memory({"a": (140_000, 750_000), "b": (2_000, 3_000)}, 96)
    got = scrape(url)
    assert got[("sensorium_policy_kernel_memory_bytes", (("node_cpus", "here"), ("policy", "a")))] == 140_000
    assert got[("sensorium_policy_kernel_memory_bytes", (("node_cpus", "96"), ("policy", "a")))] == 750_000
    m.set_policy_memory({"b": (2_000, 3_000)}, 96)
    got = scrape(url)
    assert not [k for k in got if k[0] == "sensorium_policy_kernel_memory_bytes" and ("policy", "a") in k[1]]
    assert got[("sensorium_policy_kernel_memory_bytes", (("node_cpus", "96"), ("policy", "b")))] == 3_000


def test_exporter_metrics_come_from_the_runner(served) -> None:
    m, url = served
    cap = CaptureExporter()
    cap.block()
    r = runner_for(cap, name="cap", metrics=m, queue_size=16, batch_size=4, filters={"deny": [{"pid": [3]}]})
    r.start()
    r.submit([make_event(pid=i) for i in range(4)])
    # The first batch is stuck in write_batch; 16 more fill the queue, 4 overflow.
    time.sleep(0.2)
    r.submit([make_event(pid=i) for i in range(4, 24)])
    got = scrape(url)
    assert got[("sensorium_exporter_queue_depth", (("exporter", "cap"),))] == 16 + 3
    assert got[("sensorium_exporter_events_dropped_total", (("exporter", "cap"), ("reason", "queue_full")))] == 4
    cap.unblock()
    cap.wait_for(19)
    r.stop(5)
    got = scrape(url)
    assert got[("sensorium_exporter_events_exported_total", (("exporter", "cap"),))] == 19
    assert got[("sensorium_exporter_events_filtered_total", (("exporter", "cap"),))] == 1
    assert got[("sensorium_exporter_queue_depth", (("exporter", "cap"),))] == 0


def test_metrics_are_not_on_the_global_default_registry() -> None:
    m = Metrics()
    m.event("process_exec", "exec")
    assert REGISTRY.get_sample_value("sensorium_events_total", {"type": "process_exec", "sensor": "exec"}) is None
    assert b"sensorium_events_total" in m.scrape()


def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
            Metrics().serve("127.0.0.1", port)

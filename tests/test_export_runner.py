"""The exporter runner: order, retries without loss or duplicates, bounded queues, isolation of sinks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from sensorium.config import load_config
from sensorium.events import Event
from sensorium.exporting import PartialWrite, build_runners
from sensorium.metrics import Metrics
from sensorium.plugins import PluginRegistry
from sensorium.testing import CaptureExporter, make_event, runner_for, wait_until
from sensorium.yamlsrc import SourceError


def pids(events: Sequence[Event]) -> list[int]:
    return [e.process["pid"] for e in events]


def events(n: int, start: int = 0) -> list[Event]:
    return [make_event(pid=i) for i in range(start, start + n)]


def test_events_arrive_in_order_in_batches_of_batch_size() -> None:
    cap = CaptureExporter()
    r = runner_for(cap, batch_size=7)
    r.start()
    r.submit(events(50))
    cap.wait_for(50)
    assert r.stop(5)
    assert pids(cap.events) == list(range(50))
    assert max(len(b) for b in cap.batches) <= 7
    assert r.stats()["exported"] == 50 and r.stats()["state"] == "stopped"


def test_failed_writes_are_retried_in_order_without_duplicates() -> None:
    cap = CaptureExporter()
    cap.fail_next(writes=3)
    r = runner_for(cap, batch_size=10)
    r.start()
    for i in range(0, 100, 10):
        r.submit(events(10, i))
    cap.wait_for(100)
    r.stop(5)
    assert pids(cap.events) == list(range(100))
    st = r.stats()
    assert st["failed"] == 3 and st["retries"] == 3 and st["exported"] == 100 and st["dropped"] == 0
    assert cap.opens == 4  # the exporter is closed and reopened after each failure


def test_open_failure_is_retried_with_backoff() -> None:
    cap = CaptureExporter()
    cap.fail_next(writes=0, opens=2)
    r = runner_for(cap)
    r.start()
    r.submit(events(5))
    cap.wait_for(5)
    r.stop(5)
    assert pids(cap.events) == list(range(5)) and r.stats()["failed"] == 2


def test_partial_write_resends_only_the_undelivered_tail() -> None:
    class HalfOnce(CaptureExporter):
        failed = False

        def write_batch(self, evs: Sequence[Event]) -> None:
            if not self.failed:
                self.failed = True
                self.events.extend(evs[:4])
                raise PartialWrite(4)
            super().write_batch(evs)

    cap = HalfOnce()
    r = runner_for(cap, batch_size=10)
    r.start()
    r.submit(events(10))
    cap.wait_for(10)
    r.stop(5)
    assert pids(cap.events) == list(range(10))
    assert r.stats()["exported"] == 10


def test_submit_never_blocks_and_counts_overflow_when_the_sink_stalls() -> None:
    cap = CaptureExporter()
    cap.block()
    r = runner_for(cap, queue_size=100, batch_size=10)
    r.start()
    r.submit(events(10))  # taken by the runner thread, stuck in write_batch
    wait_until(lambda: r.stats()["queued"] == 10 and len(r._q) == 0, 5, "the first batch in flight")
    t0 = time.monotonic()
    for i in range(100):
        r.submit(events(10, 10 + i * 10))
    assert time.monotonic() - t0 < 0.5
    st = r.stats()
    assert st["queued"] == 110 and st["dropped"] == 900 and st["dropped_by_reason"] == {"queue_full": 900}
    cap.unblock()
    cap.wait_for(110)
    r.stop(5)
    # The oldest events are kept, in order; the newest were dropped.
    assert pids(cap.events) == list(range(110))


def test_a_slow_sink_does_not_hold_up_the_others() -> None:
    slow, fast = CaptureExporter(delay_s=0.5), CaptureExporter()
    rs = [runner_for(slow, name="slow", batch_size=10, queue_size=50), runner_for(fast, name="fast", batch_size=10)]
    for r in rs:
        r.start()
    t0 = time.monotonic()
    for i in range(0, 500, 10):
        for r in rs:
            r.submit(events(10, i))
    fast.wait_for(500, timeout=2)
    assert time.monotonic() - t0 < 1.0
    assert len(slow.events) < 50
    assert rs[0].stats()["dropped"] > 0 and rs[1].stats()["dropped"] == 0
    for r in rs:
        r.stop(0.1)


def test_stop_drains_what_is_queued() -> None:
    cap = CaptureExporter(delay_s=0.01)
    r = runner_for(cap, batch_size=5)
    r.start()
    r.submit(events(100))
    assert r.stop(10) is True
    assert pids(cap.events) == list(range(100)) and cap.closes >= 1


def test_stop_timeout_drops_and_counts_what_could_not_be_written() -> None:
    cap = CaptureExporter()
    cap.fail_next(writes=10_000)
    r = runner_for(cap, batch_size=10)
    r.start()
    r.submit(events(30))
    assert r.stop(0.3) is False
    st = r.stats()
    assert st["dropped_by_reason"].get("shutdown") == 30 and st["exported"] == 0 and st["state"] == "stopped"


def test_flush_runs_on_the_flush_interval() -> None:
    cap = CaptureExporter()
    r = runner_for(cap, flush_interval_ms=50)
    r.start()
    r.submit(events(3))
    wait_until(lambda: cap.flushes >= 1, 2, "a flush")
    r.stop(2)


def test_runner_counts_go_to_metrics() -> None:
    m = Metrics()
    cap = CaptureExporter()
    cap.fail_next(1)
    r = runner_for(cap, name="cap", metrics=m, queue_size=16)
    r.start()
    r.submit(events(20))
    cap.wait_for(16)
    r.stop(2)
    text = m.scrape().decode()
    assert 'sensorium_exporter_events_exported_total{exporter="cap"} 16.0' in text
    assert 'sensorium_exporter_events_dropped_total{exporter="cap",reason="queue_full"} 4.0' in text
    assert 'sensorium_exporter_write_failures_total{exporter="cap"} 1.0' in text


# ---- building runners from config -----------------------------------------------------------------


def registry() -> PluginRegistry:
    return PluginRegistry(allow=["stdout", "file"]).discover()


def test_build_runners_from_config(tmp_path: Path) -> None:
    p = tmp_path / "agent.yaml"
    p.write_text(f"exporters:\n  - type: stdout\n  - type: file\n    path: {tmp_path}/ev.log\n    name: audit\n")
    runners = build_runners(load_config(p), registry(), "n1", Metrics())
    assert [r.name for r in runners] == ["stdout", "audit"]
    r = runners[1]
    r.start()
    r.submit(events(3))
    r.stop(5)
    assert len((tmp_path / "ev.log").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "item, where",
    [
        ("  - type: nosuch\n", ":3: exporters[1].type"),
        ("  - type: file\n    path: /tmp/x\n    max_size_mb: big\n", "exporters[1].max_size_mb"),
        ("  - type: file\n    path: /tmp/x\n    colour: red\n", "exporters[1].colour: unknown key"),
        ("  - type: file\n    path: /tmp/x\n    filters:\n      allow:\n        - binary_regex: ['(']\n",
         "exporters[1].filters.allow[0].binary_regex[0]"),
        ("  - type: file\n    path: /tmp/x\n    name: stdout\n", ":5: exporters[1].name: duplicate exporter name 'stdout'"),
    ],
)
def test_bad_exporter_items_name_key_path(tmp_path: Path, item: str, where: str) -> None:
    p = tmp_path / "agent.yaml"
    p.write_text("exporters:\n  - type: stdout\n" + item)
    with pytest.raises(SourceError) as err:
        build_runners(load_config(p), registry(), "n1")
    assert where in str(err.value) and str(p) in str(err.value)


def test_a_third_party_exporter_plugin_is_built_from_config_like_the_built_ins(tmp_path: Path) -> None:
    """What a plugin author writes: a module with a hook; sensorium.testing registers it in-process."""
    import types

    from pydantic import BaseModel, ConfigDict

    from sensorium import hookimpl
    from sensorium.hookspecs import ExporterSpec
    from sensorium.testing import capture_registry

    sink = CaptureExporter()

    class Opts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prefix: str

    plugin = types.ModuleType("my_sink")
    plugin.sensorium_exporter = hookimpl(lambda: ExporterSpec(name="mysink", description="test", options=Opts,
                                                               factory=lambda opts, ctx: sink))
    p = tmp_path / "agent.yaml"
    p.write_text("exporters:\n  - type: mysink\n    prefix: x\n    filters:\n      allow: [{binary_regex: [ls]}]\n")
    [r] = build_runners(load_config(p), capture_registry(mysink=plugin), "n1")
    r.start()
    r.submit([make_event(binary="/bin/ls"), make_event(binary="/bin/cat")])
    sink.wait_for(1)
    r.stop(5)
    assert [e.process["binary"] for e in sink.events] == ["/bin/ls"]

    p.write_text("exporters:\n  - type: mysink\n    prefix: 3\n    colour: red\n")
    with pytest.raises(SourceError) as err:
        build_runners(load_config(p), capture_registry(mysink=plugin), "n1")
    assert "line 3: exporters[0].prefix" in str(err.value) and "line 4: exporters[0].colour: unknown key" in str(err.value)


def test_stop_runners_stops_all_sinks_in_parallel() -> None:
    from sensorium.exporting import stop_runners

    stuck, ok = CaptureExporter(), CaptureExporter(delay_s=0.05)
    stuck.block()
    rs = [runner_for(stuck, name="stuck", batch_size=10), runner_for(ok, name="ok", batch_size=10)]
    for r in rs:
        r.start()
        r.submit(events(50))
    t0 = time.monotonic()
    try:
        result = stop_runners(rs, timeout=0.5)
    finally:
        stuck.unblock()
    assert result == {"stuck": False, "ok": True}
    assert pids(ok.events) == list(range(50))  # drained while the other one hung
    assert time.monotonic() - t0 < 8
    assert rs[0].stats()["state"] in ("stuck", "stopped")

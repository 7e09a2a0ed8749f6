"""Faults for real: a collector that stops reading, with a file exporter and the producer alongside."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from sensorium.exporting import ExporterContextImpl
from sensorium.metrics import Metrics
from sensorium.testing import make_event, runner_for, wait_until
from sensorium_exporters.file import FileExporter, FileOptions
from sensorium_exporters.syslog import SyslogExporter, SyslogOptions


def test_a_stalled_tcp_collector_holds_up_neither_the_producer_nor_the_file_exporter(tmp_path: Path) -> None:
    # A collector that accepts connections and never reads: the kernel buffers fill, then send() blocks.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    m = Metrics()
    port = server.getsockname()[1]
    slow = runner_for(
        SyslogExporter(SyslogOptions(address=f"tcp://127.0.0.1:{port}", connect_timeout_s=1.0),
                       ExporterContextImpl("syslog", "n")),
        name="syslog", metrics=m, queue_size=10_000, batch_size=200,
    )
    fast = runner_for(FileExporter(FileOptions(path=tmp_path / "ev.log", max_size_mb=1000),
                                   ExporterContextImpl("file", "n")),
                      name="file", metrics=m, batch_size=200)
    try:
        slow.start()
        fast.start()
        total = 20_000
        events = [make_event(pid=i, arguments="x" * 2000) for i in range(total)]  # 50 MB: more than socket buffers hold
        t0 = time.monotonic()
        longest = 0.0
        for i in range(0, total, 100):
            s = time.monotonic()
            for r in (slow, fast):
                r.submit(events[i:i + 100])
            longest = max(longest, time.monotonic() - s)
        submit_s = time.monotonic() - t0
        wait_until(lambda: fast.stats()["exported"] == total, 30, "the file exporter to write everything")
        # The producer never waited on the stalled sink.
        assert longest < 0.05, f"a submit took {longest:.3f}s"
        assert submit_s < 2.0
        st = slow.stats()
        assert st["dropped_by_reason"].get("queue_full", 0) > 0 and st["exported"] < total
        lines = (tmp_path / "ev.log").read_bytes().splitlines()
        assert len(lines) == total and lines[-1] == events[-1].json()
        text = m.scrape().decode()
        assert f'sensorium_exporter_events_exported_total{{exporter="file"}} {float(total)}' in text
        assert 'sensorium_exporter_events_dropped_total{exporter="syslog",reason="queue_full"}' in text
        # The stalled sink's send times out (connect_timeout_s bounds every socket call) and is retried.
        wait_until(lambda: slow.stats()["failed"] >= 1, 10, "the stalled send to time out")
        assert "timed out" in (slow.stats()["last_error"] or "")
        assert slow.stats()["failures_by_reason"].get("timeout", 0) >= 1
    finally:
        fast.stop(5)
        slow.stop(0.5)
        stop.set()
        for c in conns:
            c.close()
        server.close()

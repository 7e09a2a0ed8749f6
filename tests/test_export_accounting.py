"""The runner's books: every event received ends delivered, unconfirmed, dropped by reason, filtered or
queued; failures and re-writes are counted by reason; a stop keeps its deadline even with a stuck sink."""

from __future__ import annotations

import errno
import time
from collections.abc import Sequence
from typing import Any

from sensorium.events import Event
from sensorium.exporting import PartialWrite, failure_reason, stop_runners
from sensorium.metrics import Metrics
from sensorium.testing import CaptureExporter, make_event, runner_for, wait_until


def events(n: int, start: int = 0) -> list[Event]:
    return [make_event(pid=i) for i in range(start, start + n)]


def balanced(st: dict[str, Any]) -> bool:
    """What came in equals where it went: nothing can be lost without a counter saying so."""
    return st["received"] + st["generated"] == (st["delivered"] + st["unconfirmed"] + st["dropped"]
                                                + st["filtered"] + st["queued"])


class FailingWith(CaptureExporter):
    """Fails its next writes with a given OSError errno (what a real socket or file raises)."""

    def __init__(self, err: int, times: int) -> None:
        super().__init__()
        self.err, self.times = err, times

    def write_batch(self, evs: Sequence[Event]) -> None:
        if self.times:
            self.times -= 1
            raise OSError(self.err, f"{errno.errorcode[self.err]} on request")
        super().write_batch(evs)


def test_a_refused_write_is_counted_by_reason_and_its_events_as_retried() -> None:
    sink = FailingWith(errno.ECONNREFUSED, 2)
    r = runner_for(sink, batch_size=10)
    r.start()
    r.submit(events(10))
    sink.wait_for(10)
    r.stop(5)
    st = r.stats()
    assert st["failures_by_reason"] == {"peer_refused": 2}
    assert st["retried_by_reason"] == {"peer_refused": 20}  # the batch of 10 was written again twice
    assert st["delivered"] == 10 and st["dropped"] == 0 and balanced(st)


def test_failure_reasons_come_from_the_errno_or_the_exporters_code() -> None:
    assert failure_reason(OSError(errno.ENOSPC, "full"), "write_error") == "disk_full"
    assert failure_reason(ConnectionResetError(), "write_error") == "peer_closed"
    assert failure_reason(TimeoutError(), "write_error") == "timeout"
    assert failure_reason(RuntimeError("?"), "write_error") == "write_error"
    chained = PartialWrite(3, "send failed")
    chained.__cause__ = OSError(errno.EHOSTUNREACH, "no route")
    assert failure_reason(chained, "write_error") == "peer_unreachable"
    assert failure_reason(PartialWrite(3, code="rejected"), "write_error") == "rejected"


def test_events_a_transport_cannot_confirm_are_unconfirmed_not_delivered() -> None:
    class Udpish(CaptureExporter):
        def write_batch(self, evs: Sequence[Event]) -> int:
            super().write_batch(evs)
            return len(evs)  # sent, but nothing says they arrived

    m = Metrics()
    r = runner_for(Udpish(), name="u", metrics=m)
    r.start()
    r.submit(events(7))
    r.stop(5)
    st = r.stats()
    assert (st["delivered"], st["unconfirmed"], st["exported"]) == (0, 7, 7) and balanced(st)
    text = m.scrape().decode()
    assert 'sensorium_exporter_events_unconfirmed_total{exporter="u"} 7.0' in text
    assert 'sensorium_exporter_events_delivered_total{exporter="u"} 0.0' in text


def test_queue_overflow_filters_and_rate_limit_keep_the_books_balanced() -> None:
    sink = CaptureExporter()
    sink.block()
    r = runner_for(sink, queue_size=50, batch_size=10,
                   filters={"deny": [{"pid": [5]}], "rate_limit": {"events": 5, "interval_s": 0.2}})
    r.start()
    for i in range(0, 200, 10):
        r.submit(events(10, i))
    sink.unblock()
    wait_until(lambda: r.stats()["queued"] == 0, 10, "the queue to drain")
    r.stop(5)
    st = r.stats()
    assert st["dropped_by_reason"]["queue_full"] > 0 and st["dropped_by_reason"]["rate_limit"] > 0
    assert balanced(st), st


def test_stop_keeps_its_deadline_with_a_sink_stuck_in_a_write_and_counts_what_it_held() -> None:
    stuck = CaptureExporter()
    stuck.block()
    r = runner_for(stuck, batch_size=10)
    r.start()
    r.submit(events(35))
    wait_until(lambda: len(stuck.batches) == 0 and r.stats()["queued"] == 35 and r.depth() == 35, 5,
               "a batch in flight")
    time.sleep(0.1)
    t0 = time.monotonic()
    try:
        drained = stop_runners([r], timeout=1.0)
    finally:
        elapsed = time.monotonic() - t0
        stuck.unblock()
    assert drained == {"test": False}
    assert elapsed < 1.5, f"stop took {elapsed:.2f}s with a 1s deadline"
    st = r.stats()
    assert st["state"] == "stuck" and st["dropped_by_reason"] == {"shutdown": 35}
    time.sleep(0.2)  # the released write returns: it must not count the events a second time
    st = r.stats()
    assert st["delivered"] == 0 and balanced(st)


def test_a_partial_write_restarts_the_backoff() -> None:
    class Trickle(CaptureExporter):
        """Takes 2 events per attempt, then fails: a sink that frees room slowly (a disk being cleaned)."""

        def write_batch(self, evs: Sequence[Event]) -> None:
            super().write_batch(evs[:2])
            if len(evs) > 2:
                raise PartialWrite(2, "room for two", code="disk_full")

    sink = Trickle()
    r = runner_for(sink, batch_size=40, backoff_initial_s=0.01, backoff_max_s=5.0)
    r.start()
    r.submit(events(40))
    # 20 failures in a row would back off for minutes; progress keeps every wait at the initial 10 ms.
    sink.wait_for(40, timeout=5)
    r.stop(5)
    assert [e.process["pid"] for e in sink.events] == list(range(40))
    st = r.stats()
    assert st["failures_by_reason"] == {"disk_full": 19} and st["delivered"] == 40 and balanced(st)


def test_a_repeated_failure_is_logged_once_counted_every_time_and_the_recovery_said(caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="sensorium.exporting")
    sink = FailingWith(errno.ENOSPC, 20)
    r = runner_for(sink, batch_size=10, backoff_initial_s=0.001, backoff_max_s=0.001)
    r.start()
    r.submit(events(10))
    sink.wait_for(10)
    r.stop(5)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].endswith("[disk_full]")
    assert r.stats()["failures_by_reason"] == {"disk_full": 20}
    assert any("writing again (19 more failed attempts after the last warning)" in rec.getMessage()
               for rec in caplog.records)

"""The event pipeline: ring buffers -> decode -> process cache -> enrichment stages -> each exporter.

Data flows one way. The reader thread drains every ring buffer in batches on a short timer (programs submit
without per-event wakeups), each sensor's decoder turns a batch of records into events (joining the process
cache), stages derive new events (Kubernetes enrichment), and every exporter runner gets the batch on its own
bounded queue: a slow or failing sink never stalls the kernel side or the other sinks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

from sensorium.events import Event

log = logging.getLogger("sensorium.pipeline")

Stage = Callable[[list[Event]], list[Event]]
"""A batch stage: returns the events to pass on (new values where it changed one; fewer to drop)."""


class Pipeline:
    def __init__(self, runners: Sequence[Any] = (), stages: Sequence[Stage] = ()) -> None:
        self.runners = list(runners)
        self.stages = list(stages)
        self._subscribers: dict[int, Callable[[Sequence[Event]], None]] = {}
        self._sub_lock = threading.Lock()
        self._next_sub = 0
        self._lock = threading.Lock()  # submit() is called by the reader thread and by ctx.emit() callers
        self.events_by_kind: Counter[str] = Counter()
        self.events_by_sensor: Counter[str] = Counter()
        self.decode_errors: Counter[str] = Counter()
        self.stage_errors = 0

    # ---- producers --------------------------------------------------------------------------------

    def decoder_sink(self, sensor: str, decode: Callable[[Sequence[bytes]], Iterable[Event]]) -> Callable[[list[bytes]], None]:
        """Wrap a sensor's batch decoder as a ring-buffer batch callback, containing its failures."""

        def on_batch(records: list[bytes]) -> None:
            try:
                events = list(decode(records))
            except Exception:  # noqa: BLE001 - a decoder bug must not stop the reader thread
                self.decode_errors[sensor] += len(records)
                log.exception("decoder of sensor %r failed on a batch of %d records (dropped)", sensor, len(records))
                return
            if events:
                self.events_by_sensor[sensor] += len(events)
                self.submit(events)

        return on_batch

    def submit(self, events: list[Event]) -> None:
        with self._lock:
            for stage in self.stages:
                try:
                    events = stage(events)
                except Exception:  # noqa: BLE001
                    self.stage_errors += 1
                    log.exception("pipeline stage %r failed; batch passed on unchanged", stage)
                if not events:
                    return
            for ev in events:
                self.events_by_kind[ev.kind] += 1
            for runner in self.runners:
                runner.submit(events)
            if self._subscribers:
                with self._sub_lock:
                    subs = list(self._subscribers.values())
                for cb in subs:
                    try:
                        cb(events)
                    except Exception:  # noqa: BLE001 - a subscriber must never break export
                        log.exception("event subscriber failed")

    # ---- live subscribers (the API's event stream) ------------------------------------------------

    def subscribe(self, callback: Callable[[Sequence[Event]], None]) -> Callable[[], None]:
        """Receive every batch after the stages. ``callback`` must not block (queue and return)."""
        with self._sub_lock:
            key = self._next_sub
            self._next_sub += 1
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._sub_lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def stats(self) -> dict[str, Any]:
        return {
            "events_by_kind": dict(self.events_by_kind),
            "events_by_sensor": dict(self.events_by_sensor),
            "decode_errors": dict(self.decode_errors),
            "stage_errors": self.stage_errors,
            "exporters": {getattr(r, "name", str(i)): r.stats() for i, r in enumerate(self.runners)},
        }


class ReaderThread(threading.Thread):
    """Drains all ring buffers every ``interval_ms`` (or sooner when a ring asks for a wakeup)."""

    def __init__(self, reader: Any, interval_ms: int) -> None:
        super().__init__(name="sensorium-reader", daemon=True)
        self.reader = reader
        self.interval_ms = interval_ms
        self._stop_event = threading.Event()
        self.polls = 0
        self.records = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.records += self.reader.poll(self.interval_ms)
            except Exception:  # noqa: BLE001
                log.exception("ring buffer poll failed")
                time.sleep(self.interval_ms / 1000)
            self.polls += 1
        # Final drain so nothing submitted before stop is lost.
        try:
            self.records += self.reader.poll(0)
        except Exception:  # noqa: BLE001
            log.exception("final ring buffer drain failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

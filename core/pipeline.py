"""The event pipeline: ring buffers -> decode -> process cache -> enrichment stages -> each exporter.

Data flows one way. The reader thread drains every ring buffer in batches on a short timer (programs submit
without per-event wakeups), each sensor's decoder turns a batch of records into events (joining the process
cache), stages derive new events (the process join, Kubernetes enrichment), and every exporter runner gets the
batch on its own bounded queue: a slow or failing sink never stalls the kernel side or the other sinks.

Stages are plugins (`sensorium.hookspecs.StageSpec`, entry-point group ``sensorium.stages``), built in their
order by `build_stages`; the process join below registers this way like any third-party stage.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from sensorium import hookimpl
from sensorium.events import BOOT_WALL_NS, Event, EventBatch, kinds_of
from sensorium.hookspecs import Decoder, HoldingStage, Stage, StageSpec
from sensorium.process import exec_pending

log = logging.getLogger("sensorium.pipeline")

__all__ = ["Pipeline", "ProcessJoin", "ReaderThread", "Stage", "StageContextImpl", "build_stages"]


class ProcessJoin:
    """Stage: give every event its process and parent from the process cache, holding it briefly when
    the process is not there yet.

    Each sensor has its own ring buffer, and nothing orders records across rings: a kill() from a
    process that has just exec'd can be drained before the exec record that creates its cache entry.
    Such an event (``process`` with a ``pid`` but no ``exec_id``; with a ``binary`` too when the sensor knows
    which image ran, and then only an entry of that binary resolves it) is held and retried on every batch and
    tick until ``hold_s`` passes; then it goes out as it is, with ``process.cache_miss = true`` so
    nobody mistakes the missing fields for facts. Held events are bounded in number.
    """

    PASS_KINDS = frozenset({"process_exec", "process_exit"})

    def __init__(self, cache: Any, hold_s: float = 2.0, max_held: int = 65536) -> None:
        self.cache = cache
        self.hold_s = hold_s
        self.max_held = max_held
        self.held: deque[tuple[float, Event]] = deque()
        self.resolved_late = 0
        self.unresolved = 0

    def _resolve(self, ev: Event) -> Event | None:
        held = ev.body["process"]
        process, parent = self.cache.get(held["pid"], ev.time_ns - BOOT_WALL_NS)  # the image running at the event
        if process is None:
            return None
        if "binary" in held and exec_pending(process, held["binary"]):
            return None  # a sensor saw this binary run (fanotify): its exec record is not read yet
        body = dict(ev.body)
        body["process"] = process
        if parent is not None:
            body["parent"] = parent
        return ev.replace(body=body)

    @staticmethod
    def _release(ev: Event) -> Event:
        body = dict(ev.body)
        body["process"] = {**ev.body["process"], "cache_miss": True}
        return ev.replace(body=body)

    def __call__(self, events: Sequence[Event]) -> Sequence[Event]:
        if not self.held and isinstance(events, EventBatch) and events.resolved:
            return events  # the decoder joined every event already: nothing to do, nothing to make
        out: list[Event] = []
        now = time.monotonic()
        if self.held:
            keep: deque[tuple[float, Event]] = deque()
            for deadline, ev in self.held:
                got = self._resolve(ev)
                if got is not None:
                    self.resolved_late += 1
                    out.append(got)
                elif deadline <= now:
                    self.unresolved += 1
                    out.append(self._release(ev))
                else:
                    keep.append((deadline, ev))
            self.held = keep
        if isinstance(events, EventBatch) and events.resolved:
            out.extend(events)
            return out
        for ev in events:
            proc = ev.process if ev.kind not in self.PASS_KINDS else None
            if not proc or proc.get("exec_id") or "pid" not in proc:
                out.append(ev)
                continue
            got = self._resolve(ev)
            if got is not None:
                out.append(got)
            elif len(self.held) >= self.max_held:
                self.unresolved += 1
                out.append(self._release(ev))
            else:
                self.held.append((now + self.hold_s, ev))
        return out

    def flush(self) -> list[Event]:
        """Every held event now, as it is (``process.cache_miss``): the agent is stopping."""
        out = [self._release(ev) for _deadline, ev in self.held]
        self.unresolved += len(out)
        self.held = deque()
        return out

    def stats(self) -> dict[str, int]:
        return {"held": len(self.held), "resolved_late": self.resolved_late, "unresolved": self.unresolved}


@hookimpl
def sensorium_stage() -> StageSpec:
    """The process join, a pipeline-stage plugin (entry point ``process`` in ``sensorium.stages``)."""
    return StageSpec(name="process", description="gives every event its process and parent from the process "
                     "cache, holding an event briefly when its exec record has not been drained yet",
                     factory=lambda ctx: ProcessJoin(ctx.process_cache), order=100)


@dataclasses.dataclass
class StageContextImpl:
    """The host's `sensorium.hookspecs.StageContext`."""

    node_name: str
    config: Any
    process_cache: Any
    log: logging.Logger = dataclasses.field(default_factory=lambda: logging.getLogger("sensorium.stage"))


def build_stages(registry: Any, ctx: Any) -> list[Stage]:
    """Every usable stage plugin of ``registry`` made with ``ctx``, in their order. A factory that raises or
    returns something that is not a `Stage` marks that plugin failed (its record says why) and the others
    are built; one that returns None (not wanted by the config) is marked ``off``. Records of the stages
    made say ``running``."""
    stages: list[Stage] = []
    for spec in registry.ordered_stages():
        rec = registry.record("stage", spec.name)
        try:
            stage = spec.factory(dataclasses.replace(ctx, log=logging.getLogger(f"sensorium.stage.{spec.name}")))
            if stage is not None and not isinstance(stage, Stage):
                raise TypeError(f"factory returned {type(stage).__name__}, which is not a Stage (not callable)")
        except Exception as exc:  # noqa: BLE001 - a stage plugin may raise anything; the agent runs on
            log.error("pipeline stage %r not started: %s: %s", spec.name, type(exc).__name__, exc)
            if rec is not None:
                rec.state, rec.reason = "failed", f"{type(exc).__name__}: {exc}"
            continue
        if stage is None:
            if rec is not None:
                rec.state, rec.reason = "off", "not wanted by the agent config"
            continue
        if rec is not None:
            rec.state, rec.reason = "running", None
        stages.append(stage)
    log.info("pipeline stages: %s", ", ".join(s.name for s in registry.ordered_stages()
                                              if (r := registry.record("stage", s.name)) and r.state == "running")
             or "none")
    return stages


class Pipeline:
    def __init__(self, runners: Sequence[Any] = (), stages: Sequence[Stage] = (), metrics: Any = None) -> None:
        self.metrics = metrics
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

    def decoder_sink(self, sensor: str, decode: Decoder) -> Callable[[Sequence[bytes]], None]:
        """Wrap a sensor's batch decoder (`sensorium.hookspecs.Decoder`) as a ring-buffer batch callback,
        containing its failures."""

        def on_batch(records: Sequence[bytes]) -> None:
            try:
                events = decode(records)
                if not isinstance(events, (list, EventBatch)):
                    events = list(events)
            except Exception:  # a decoder bug must not stop the reader thread
                self.decode_errors[sensor] += len(records)
                log.exception("decoder of sensor %r failed on a batch of %d records (dropped)", sensor, len(records))
                return
            if events:
                self.count(sensor, events)
                self.submit(events)

        return on_batch

    def count(self, sensor: str, events: Sequence[Event]) -> None:
        """Events produced by ``sensor`` (before filters), by kind: one metric update per kind per batch."""
        self.events_by_sensor[sensor] += len(events)
        if self.metrics is not None:
            for kind, n in Counter(kinds_of(events)).items():
                self.metrics.event(kind, sensor, n)

    def tick(self) -> None:
        """Let stages release what they hold (called by the reader thread after every poll)."""
        if any(isinstance(s, HoldingStage) and s.held for s in self.stages):
            self.submit([])

    def submit(self, events: Sequence[Event]) -> None:
        """Run the stages on one batch and hand it to every runner and subscriber (one lock per batch)."""
        with self._lock:
            for stage in self.stages:
                try:
                    events = stage(events)
                except Exception:
                    self.stage_errors += 1
                    log.exception("pipeline stage %r failed; batch passed on unchanged", stage)
                if not events:
                    return
            self.events_by_kind.update(kinds_of(events))
            for runner in self.runners:
                runner.submit(events)
            if self._subscribers:
                with self._sub_lock:
                    subs = list(self._subscribers.values())
                for cb in subs:
                    try:
                        cb(events)
                    except Exception:  # a subscriber must never break export
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
            "stages": {type(s).__name__: s.stats() for s in self.stages if hasattr(s, "stats")},
            "exporters": {getattr(r, "name", str(i)): r.stats() for i, r in enumerate(self.runners)},
        }


class ReaderThread(threading.Thread):
    """Drains all ring buffers every ``interval_ms`` (or sooner when a ring asks for a wakeup)."""

    def __init__(self, reader: Any, interval_ms: int, pipeline: Pipeline | None = None) -> None:
        super().__init__(name="sensorium-reader", daemon=True)
        self.reader = reader
        self.pipeline = pipeline
        self.interval_ms = interval_ms
        self._stop_event = threading.Event()
        self.polls = 0
        self.records = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.records += self.reader.poll(self.interval_ms)
            except Exception:
                log.exception("ring buffer poll failed")
                time.sleep(self.interval_ms / 1000)
            self.polls += 1
            if self.pipeline is not None:
                self.pipeline.tick()
        # Final drain so nothing submitted before stop is lost.
        try:
            self.records += self.reader.poll(0)
        except Exception:
            log.exception("final ring buffer drain failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

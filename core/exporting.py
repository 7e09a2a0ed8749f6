"""One runner per configured exporter: a bounded queue, its own thread, filters, batching, retries.

The pipeline calls `ExporterRunner.submit` with every batch of events; submit never blocks (when the
queue is full the newest events are dropped and counted). The runner's thread takes up to
``batch_size`` events, runs the exporter's filter chain, and calls ``write_batch``. When a write
raises, the runner keeps that same (already filtered) batch, closes and reopens the exporter after a
capped exponential backoff and writes it again, so after recovery events arrive in order and without
duplicates, except where the exporter itself says otherwise (a sink that may have taken part of a
batch before failing raises `PartialWrite` with the count it delivered). One failing or slow sink
only fills its own queue: the producer and the other runners are never held up.

Every event a runner receives ends in exactly one of: ``delivered`` (the sink took it), ``unconfirmed``
(sent on a transport that cannot confirm delivery, UDP), ``dropped`` by reason (`DROP_REASONS`),
``filtered`` (removed by the user's filters), or still ``queued``: ``received + generated`` (rate-limit
notices the filters add) always equals their sum, so a loss cannot go uncounted. ``exported`` is
``delivered + unconfirmed``. Failures and the events written again after them are counted by reason
(`FAILURE_REASONS`). A runner stops within the deadline it is given: what is still queued then is
dropped as ``shutdown`` and counted, even when the sink is stuck inside a write.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sensorium.config import AgentConfig, ExporterItem, validate_exporter_options
from sensorium.events import Event, EventBatch
from sensorium.filters import FilterChain, build_filters
from sensorium.hookspecs import (  # noqa: F401 - re-exported
    DROP_REASONS,
    FAILURE_REASONS,
    Exporter,
    ExportError,
    ExporterSpec,
    PartialWrite,
    TargetError,
)
from sensorium.metrics import Metrics
from sensorium.yamlsrc import SourceError, format_path

log = logging.getLogger("sensorium.exporting")

_ERRNO_REASONS = {
    errno.ECONNREFUSED: "peer_refused",
    errno.ECONNRESET: "peer_closed", errno.EPIPE: "peer_closed", errno.ECONNABORTED: "peer_closed",
    errno.ENOTCONN: "peer_closed",
    errno.EHOSTUNREACH: "peer_unreachable", errno.ENETUNREACH: "peer_unreachable",
    errno.EHOSTDOWN: "peer_unreachable", errno.ENETDOWN: "peer_unreachable", errno.EADDRNOTAVAIL: "peer_unreachable",
    errno.ETIMEDOUT: "timeout",
    errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full",
}

# A full disk is a local condition: trying again costs one write that fails at once, and the sink should
# resume as soon as space is freed, so it is retried at least this often whatever the backoff has grown to.
LOCAL_RETRY_MAX_S = 0.25
# The same failure again within this time is not logged again (it is counted); the next log line says how
# many there were. A full disk retried four times a second must not flood the log.
FAILURE_LOG_EVERY_S = 30.0
# How long `join` waits past the stop deadline for the runner thread to notice it (it checks between
# writes and during backoff); a thread still inside the exporter after that is left behind.
JOIN_MARGIN_S = 0.2


def failure_reason(exc: BaseException | None, default: str) -> str:
    """The stable reason (`FAILURE_REASONS`) of an exporter failure, for per-reason counters."""
    seen = 0
    while exc is not None and seen < 5:  # follow ``raise X from Y`` a few levels
        code = getattr(exc, "code", None) if isinstance(exc, (ExportError, PartialWrite)) else None
        if isinstance(code, str) and code:
            return code
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return "timeout"
        if isinstance(exc, socket.gaierror):
            return "peer_unreachable"
        if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[exc.errno]
        if isinstance(exc, ConnectionRefusedError):
            return "peer_refused"
        if isinstance(exc, ConnectionError):
            return "peer_closed"
        exc = exc.__cause__
        seen += 1
    return default


class ExporterContextImpl:
    """The host side of `sensorium.hookspecs.ExporterContext` for one exporter."""

    def __init__(self, name: str, node_name: str, metrics: Metrics | None = None, log: logging.Logger | None = None):
        self.name = name
        self.node_name = node_name
        self.metrics = metrics
        self.log = log or logging.getLogger(f"sensorium.exporter.{name}")
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.stopping = threading.Event()  # set by the runner's request_stop (`ExporterContext.stopping`)

    def count(self, metric: str, value: int = 1) -> None:
        with self._lock:
            self.counters[metric] = self.counters.get(metric, 0) + value
        if self.metrics is not None:
            self.metrics.exporter_count(self.name, metric, value)


class ExporterRunner:
    """Drives one `Exporter` on its own thread. See the module docstring for the guarantees."""

    def __init__(
        self,
        name: str,
        exporter: Exporter,
        item: ExporterItem,
        ctx: Any,
        filters: FilterChain | Sequence[Callable[[Event], Event | None]] | None = None,
        *,
        metrics: Metrics | None = None,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.exporter = exporter
        self.item = item
        self.ctx = ctx
        self.filters = filters if isinstance(filters, FilterChain) else FilterChain(list(filters or ()))
        self.metrics = metrics if metrics is not None else getattr(ctx, "metrics", None)
        self.queue_size = item.queue_size
        self.batch_size = item.batch_size
        self.flush_interval = item.flush_interval_ms / 1000.0
        self.backoff_initial = backoff_initial_s
        self.backoff_max = backoff_max_s
        self._check = check

        # Batches as the pipeline submitted them (lists or `EventBatch`es, never split on the way in), and
        # the number of events they hold: queueing costs one append per batch, not one per event.
        self._q: collections.deque[Sequence[Event]] = collections.deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: Sequence[Event] = []  # the batch being written (already filtered); kept across retries
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._abandoned = False  # the thread was left stuck in the exporter at stop: it counts nothing more
        self._deadline = float("inf")
        self._open = False
        self._state = "created"
        self._last_error: str | None = None
        self._n = dict(received=0, generated=0, exported=0, delivered=0, unconfirmed=0, dropped=0, filtered=0,
                       rate_limited=0, failed=0, retries=0, retried=0)
        self._dropped_by: dict[str, int] = {}
        self._retried_by: dict[str, int] = {}
        self._failures_by: dict[str, int] = {}
        self._logged_reason: str | None = None  # failure log throttling (`_fail`)
        self._logged_at = 0.0
        self._unlogged = 0
        if self.metrics is not None:
            self.metrics.watch_exporter(name, lambda: float(self.depth()),
                                        lambda: 1.0 if self._state == "running" else 0.0)

    # ---- producer side --------------------------------------------------------------------------

    def submit(self, events: Sequence[Event]) -> None:
        """Queue events for export. Never blocks; what does not fit is dropped and counted."""
        if not events:
            return
        with self._cond:
            self._n["received"] += len(events)
            if self._stopping:
                self._drop(len(events), "shutdown")
                return
            room = self.queue_size - self._queued
            if room >= len(events):
                self._q.append(events)
                self._queued += len(events)
            else:
                if room > 0:
                    self._q.append(events[:room])
                    self._queued += room
                self._drop(len(events) - max(room, 0), "queue_full")
            self._cond.notify()

    def _drop(self, n: int, reason: str) -> None:
        # caller holds the lock (or is the only thread touching the counters at that point)
        if n <= 0:
            return
        self._n["dropped"] += n
        self._dropped_by[reason] = self._dropped_by.get(reason, 0) + n
        if self.metrics is not None:
            self.metrics.dropped(self.name, n, reason)

    def depth(self) -> int:
        return self._queued + len(self._pending)

    # ---- lifecycle ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise `TargetError` when the exporter's target can never be written (`ExporterSpec.check`)."""
        if self._check is not None:
            self._check()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"exporter {self.name}: already started")
        self._state = "opening"
        # A daemon thread: a sink stuck in a system call must not keep the agent from exiting.
        self._thread = threading.Thread(target=self._run, name=f"exporter-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Drain the queue (up to ``timeout`` seconds), flush and close. True when fully drained.

        Events still queued when the time is up are dropped and counted (reason ``shutdown``).
        Calling it again after it finished does nothing.
        """
        if self._state in ("stopped", "stuck"):
            return self._dropped_by.get("shutdown", 0) == 0
        self.request_stop(timeout)
        return self.join()

    def request_stop(self, timeout: float = 10.0) -> None:
        """Start stopping without waiting (`stop_runners` stops all sinks in parallel this way): the runner
        drains what it can until ``timeout`` seconds from now, then drops the rest as ``shutdown``."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._deadline = time.monotonic() + max(0.0, timeout)
            self._cond.notify_all()
        if isinstance(self.ctx, ExporterContextImpl):
            self.ctx.stopping.set()  # a sink waiting in its own backoff returns to us (we retry until the deadline)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the runner to stop: until the deadline `request_stop` set (plus a short margin), or
        ``timeout`` seconds when given. A runner whose sink is still stuck in a call by then is left
        behind (state ``stuck``): what it held is counted as dropped (``shutdown``) at once, and nothing
        it does later is counted. True when everything was delivered."""
        if self._state in ("stopped", "stuck"):
            return self._dropped_by.get("shutdown", 0) == 0
        if self._thread is None:  # never started
            self._state = "stopped"
            with self._cond:
                left = self._queued
                self._drop(left, "shutdown")
                self._q.clear()
                self._queued = 0
            return left == 0
        if not self._stopping:  # join without request_stop: stop now, with stop()'s default time
            self.request_stop(timeout if timeout is not None else 10.0)
        wait = timeout if timeout is not None else max(0.0, self._deadline - time.monotonic()) + JOIN_MARGIN_S
        self._thread.join(wait)
        if self._thread.is_alive():
            # Stuck inside the exporter (a write that does not return): leave it, count what it held.
            with self._cond:
                self._abandoned = True
                self._drop(self._queued + len(self._pending), "shutdown")
                self._q.clear()
                self._queued = 0
                self._pending = []
            self._state = "stuck"
            self._last_error = "did not stop in time (blocked in the exporter)"
            log.error("exporter %s: %s", self.name, self._last_error)
            return False
        return self._dropped_by.get("shutdown", 0) == 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._n)
            out["queued"] = self._queued + len(self._pending)
            out["dropped_by_reason"] = dict(self._dropped_by)
            out["retried_by_reason"] = dict(self._retried_by)
            out["failures_by_reason"] = dict(self._failures_by)
            out["state"] = self._state
            out["last_error"] = self._last_error
            counters = getattr(self.ctx, "counters", None)
            if counters:
                out["exporter"] = dict(counters)
            return out

    # ---- the runner thread ----------------------------------------------------------------------

    def _take(self, wait_s: float) -> Sequence[Event]:
        """Up to ``batch_size`` events. An `EventBatch` goes out alone (sliced if larger) so that it stays
        one; plain lists are joined up to the size."""
        with self._cond:
            if not self._q and not self._stopping and wait_s > 0:
                self._cond.wait(wait_s)
            q, size = self._q, self.batch_size
            if not q:
                return []
            head = q[0]
            if isinstance(head, EventBatch):
                if len(head) <= size:
                    q.popleft()
                    taken: Sequence[Event] = head
                else:
                    taken, q[0] = head[:size], head[size:]
            else:
                out: list[Event] = []
                while q and len(out) < size and not isinstance(q[0], EventBatch):
                    chunk = q[0]
                    room = size - len(out)
                    if len(chunk) <= room:
                        out.extend(q.popleft())
                    else:
                        out.extend(chunk[:room])
                        q[0] = chunk[room:]
                taken = out
            self._queued -= len(taken)
            # Held as pending from here on (the caller sets it): depth() and a stuck-thread join count it.
            self._pending = taken
            return taken

    def _sleep(self, seconds: float) -> None:
        """Back off, but wake up on stop and never sleep past the stop deadline."""
        with self._cond:
            end = min(time.monotonic() + seconds, self._deadline)
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
                if self._stopping and time.monotonic() >= self._deadline:
                    return
                if self._stopping:
                    end = min(end, self._deadline)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._n[key] += n

    def _fail(self, what: str, exc: BaseException, reason: str) -> None:
        self._last_error = f"{what}: {type(exc).__name__}: {exc}"
        with self._lock:
            if self._abandoned:
                return
            self._n["failed"] += 1
            self._failures_by[reason] = self._failures_by.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.failed(self.name, reason=reason)
        now = time.monotonic()
        if reason == self._logged_reason and now - self._logged_at < FAILURE_LOG_EVERY_S:
            self._unlogged += 1
        else:
            more = f" ({self._unlogged} more failures since the last report)" if self._unlogged else ""
            log.warning("exporter %s: %s [%s]%s", self.name, self._last_error, reason, more)
            self._logged_reason, self._logged_at, self._unlogged = reason, now, 0
        if self._open:
            self._close()

    def _close(self) -> None:
        self._open = False
        try:
            self.exporter.close()
        except Exception as exc:  # noqa: BLE001 - close must not raise; contain it if it does
            log.warning("exporter %s: close raised %s: %s", self.name, type(exc).__name__, exc)

    def _filter(self, raw: Sequence[Event]) -> Sequence[Event]:
        if raw and self.filters:
            kept, drops = self.filters.apply(raw)
            removed = sum(drops.values())
            with self._lock:
                # rate_limit_info notices the chain adds: counted so the books still balance
                self._n["generated"] += max(0, len(kept) - (len(raw) - removed))
                if drops:
                    self._n["filtered"] += drops.get("filtered", 0)
                    if drops.get("filter_error"):
                        self._drop(drops["filter_error"], "filter_error")
                    self._n["rate_limited"] += drops.get("rate_limit", 0)
                    if drops.get("rate_limit"):
                        self._drop(drops["rate_limit"], "rate_limit")
            if drops and self.metrics is not None:
                self.metrics.filtered(self.name, drops.get("filtered", 0))
            return kept
        if self.filters:
            kept = self.filters.tick()
            if kept:
                self._count("generated", len(kept))
            return kept
        return raw

    def _run(self) -> None:
        backoff = self.backoff_initial
        attempts = 0  # consecutive failures (open or write)
        retry_reason: str | None = None  # why the pending batch failed: its re-write is counted under it
        local_failure = False
        last_flush = time.monotonic()
        dirty = False
        while True:
            now = time.monotonic()
            if self._stopping and (now >= self._deadline or (not self._queued and not self._pending)):
                break
            if attempts:
                self._state = "retrying"
                self._sleep(min(backoff, LOCAL_RETRY_MAX_S) if local_failure else backoff)
                backoff = min(backoff * 2, self.backoff_max)
                if self._stopping and time.monotonic() >= self._deadline:
                    break
                self._count("retries")
                if self.metrics is not None:
                    self.metrics.retried(self.name)
            if not self._open:
                try:
                    self.exporter.open()
                    self._open = True
                except Exception as exc:  # noqa: BLE001 - contain any sink error
                    reason = failure_reason(exc, "open_error")
                    local_failure = reason == "disk_full"
                    self._fail("open", exc, reason)
                    attempts += 1
                    continue
            if not self._pending:
                wait = self.flush_interval - (now - last_flush) if dirty else self.flush_interval
                kept = self._filter(self._take(max(0.0, wait)))
                with self._lock:
                    self._pending = kept
            if self._pending:
                batch = self._pending
                if retry_reason is not None:
                    self._retried(len(batch), retry_reason)
                    retry_reason = None
                try:
                    result = self.exporter.write_batch(batch)
                except PartialWrite as exc:
                    done = max(0, min(exc.delivered, len(batch)))
                    self._delivered(done, max(0, min(exc.unconfirmed, done)))
                    gone = max(0, min(exc.dropped, len(batch) - done))  # refused for good: not resent
                    with self._lock:
                        if not self._abandoned:
                            self._drop(gone, "rejected")
                        self._pending = batch[done + gone:]
                    reason = exc.code or failure_reason(exc.__cause__, "write_error")
                    self._fail("write", exc, reason)
                    retry_reason = reason if done + gone < len(batch) else None
                    local_failure = reason == "disk_full"
                    if done or gone:  # progress: start the backoff over, the sink is answering again
                        attempts, backoff = 0, self.backoff_initial
                    attempts += 1
                    continue
                except Exception as exc:  # noqa: BLE001
                    reason = failure_reason(exc, "write_error")
                    self._fail("write", exc, reason)
                    retry_reason = reason
                    local_failure = reason == "disk_full"
                    attempts += 1
                    continue
                unconfirmed = result if isinstance(result, int) and not isinstance(result, bool) else 0
                self._delivered(len(batch), max(0, min(unconfirmed, len(batch))))
                with self._lock:
                    self._pending = []
                dirty = True
            if attempts:
                attempts, backoff, local_failure = 0, self.backoff_initial, False
                if self._logged_reason is not None:
                    log.info("exporter %s: writing again (%d more failed attempts after the last warning)",
                             self.name, self._unlogged)
                    self._logged_reason, self._unlogged = None, 0
            self._state = "stopping" if self._stopping else "running"
            if dirty and time.monotonic() - last_flush >= self.flush_interval:
                try:
                    self.exporter.flush()
                except Exception as exc:  # noqa: BLE001
                    self._fail("flush", exc, failure_reason(exc, "write_error"))
                    attempts += 1
                    continue
                dirty, last_flush = False, time.monotonic()
        # Shutdown: whatever could not be written in time is dropped, and counted.
        with self._cond:
            if self._abandoned:  # join() gave up on us and counted what we held
                return
            self._drop(self._queued + len(self._pending), "shutdown")
            self._q.clear()
            self._queued = 0
            self._pending = []
        if self._open:
            try:
                self.exporter.flush()
            except Exception as exc:  # noqa: BLE001
                log.warning("exporter %s: final flush failed: %s", self.name, exc)
            self._close()
        self._state = "stopped"

    def _retried(self, n: int, reason: str) -> None:
        with self._lock:
            if self._abandoned or n <= 0:
                return
            self._n["retried"] += n
            self._retried_by[reason] = self._retried_by.get(reason, 0) + n
        if self.metrics is not None:
            self.metrics.retried_events(self.name, n, reason)

    def _delivered(self, n: int, unconfirmed: int = 0) -> None:
        if n <= 0:
            return
        with self._lock:
            if self._abandoned:
                return
            self._n["exported"] += n
            self._n["delivered"] += n - unconfirmed
            self._n["unconfirmed"] += unconfirmed
        if self.metrics is not None:
            self.metrics.exported(self.name, n, unconfirmed=unconfirmed)

    def undelivered_summary(self) -> str:
        """One line for the shutdown log: what was left undelivered and every loss since start, by reason."""
        st = self.stats()
        left = st["dropped_by_reason"].get("shutdown", 0)
        lost = ", ".join(f"{k} {v}" for k, v in sorted(st["dropped_by_reason"].items())) or "none"
        return (f"exporter {self.name}: {left} events left undelivered at shutdown; delivered {st['delivered']}, "
                f"unconfirmed {st['unconfirmed']}, dropped since start: {lost}")


def stop_runners(runners: Sequence[ExporterRunner], timeout: float = 10.0) -> dict[str, bool]:
    """Stop every runner in parallel (one slow sink does not delay the others' drain), all within
    ``timeout`` seconds (plus `JOIN_MARGIN_S`); returns ``{name: fully drained}``."""
    for r in runners:
        r.request_stop(timeout)
    return {r.name: r.join() for r in runners}


# --------------------------------------------------------------------------------------------------
# Building runners from the agent config
# --------------------------------------------------------------------------------------------------


def _err(cfg: AgentConfig, loc: tuple, reason: str) -> SourceError:
    doc = cfg.source
    return doc.error(loc, reason) if doc is not None else SourceError(reason, path=format_path(loc))


def build_runners(cfg: AgentConfig, registry: Any, node_name: str,
                  metrics: Metrics | None = None) -> list[ExporterRunner]:
    """Validate every exporter item, then build one (not yet started) runner per item.

    Raises `SourceError` naming the key path (``exporters[1].max_size_mb``) and line; nothing is
    built unless every item is valid.
    """
    specs: dict[str, ExporterSpec] = registry.exporters
    validated: list[tuple[int, ExporterItem, ExporterSpec, Any, str]] = []
    names: dict[str, int] = {}
    type_counts = collections.Counter(item.type for item in cfg.exporters)
    for i, item in enumerate(cfg.exporters):
        spec = specs.get(item.type)
        if spec is None:
            rec = registry.record("exporter", item.type) if hasattr(registry, "record") else None
            if rec is not None and rec.reason:
                why = f"exporter plugin {item.type!r} is {rec.state}: {rec.reason}"
            else:
                why = f"unknown exporter type {item.type!r} (available: {', '.join(sorted(specs)) or 'none'})"
            raise _err(cfg, ("exporters", i, "type"), why)
        options = validate_exporter_options(item, i, spec.options, cfg.source)
        name = item.name or (item.type if type_counts[item.type] == 1 else f"{item.type}-{i}")
        if name in names:
            raise _err(cfg, ("exporters", i, "name"),
                       f"duplicate exporter name {name!r} (also exporters[{names[name]}])")
        names[name] = i
        validated.append((i, item, spec, options, name))
    runners = []
    for i, item, spec, options, name in validated:
        ctx = ExporterContextImpl(name, node_name, metrics)
        try:
            exporter = spec.factory(options, ctx)
        except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; name it
            raise _err(cfg, ("exporters", i),
                       f"exporter {item.type!r} could not be created: {type(exc).__name__}: {exc}") from None
        check = (lambda spec=spec, options=options: spec.check(options)) if spec.check is not None else None
        runners.append(ExporterRunner(name, exporter, item, ctx, build_filters(item.filters, node_name),
                                      metrics=metrics, check=check))
    return runners


def check_runners(cfg: AgentConfig, runners: Sequence[ExporterRunner]) -> None:
    """Ask every exporter whether its target can be written at all (`ExporterSpec.check`); raise
    `SourceError` naming the item (``exporters[1].path: ...``) for the first that cannot."""
    for i, runner in enumerate(runners):
        try:
            runner.check()
        except TargetError as exc:
            loc: tuple = ("exporters", i) + ((exc.key,) if exc.key else ())
            raise _err(cfg, loc, f"exporter {runner.name!r} cannot write: {exc}") from None

"""The agent's local API: newline-delimited JSON over a root-only unix socket, used by the CLI.

Request (one line): ``{"method": "policy.add", "params": {...}, "id": 1}`` (``id``: an integer or a string,
echoed in the response; lines of only whitespace are skipped; every other line gets exactly one response).
Response (one line): ``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"code": "invalid_policy", "message": "file:line: field: reason"}}``.

``events.subscribe`` answers once, then streams: each following line is either an event in Tetragon's
JSON shape or a control line ``{"stream": {"dropped": n, "dropped_by_reason": {...}}}`` saying how many
events this subscriber missed (cumulative) and why: ``subscriber_queue_full`` when it read too slowly for
its own ``queue_size``, ``total_cap`` when it reached its share of the budget all subscribers share
(``max_total_events``, split evenly among the subscribers of the moment). The pipeline never waits for a
subscriber: a full queue drops, and the drops are counted in ``status`` (``api``) and in metrics.

Methods: ``status``, ``plugins``, ``policy.add`` (text, file?, mode?), ``policy.delete`` (name),
``policy.list``, ``policy.get`` (name), ``policy.enable`` / ``policy.disable`` (name),
``policy.set_mode`` (name, mode), ``events.subscribe`` (filters?, queue_size?). A policy ``name`` is its
key: ``namespace/name`` for a TracingPolicyNamespaced, ``name`` for a cluster-wide one; ``policy.add``
returns the keys, ``policy.list`` gives each policy's ``key`` and its ``scope`` (None: host-wide).

The agent runs as root and this socket changes what the kernel enforces, so: the socket is 0600 in a
0700 directory, peers whose SO_PEERCRED uid is not allowed (root only by default) are refused before
anything is read, request lines are bounded, every parameter is validated, and no request can crash
the server or hold its lock while reading from a client. A request line must arrive whole within
``REQUEST_TIMEOUT_S`` of its first byte, so a client trickling bytes cannot hold a connection slot.
`decode_request` and `ApiServer.answer` are the request decoder without the socket (the fuzzers drive them).

The wire protocol (limits, parameter models, decoder, encoder) is `sensorium.api_protocol`, the client is
`sensorium.api_client`; this module is the server, and re-exports both so callers import from one place.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from sensorium.api_client import ApiClient
from sensorium.api_protocol import (
    DEFAULT_QUEUE_EVENTS,
    IDLE_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_FILTER_PATTERNS,
    MAX_PATTERN_LEN,
    MAX_QUEUE_EVENTS,
    MAX_REQUEST_BYTES,
    MAX_TOTAL_QUEUED_EVENTS,
    METHODS,
    POLICY_KEY_MAX,
    REQUEST_TIMEOUT_S,
    SEND_CHUNK_EVENTS,
    SEND_TIMEOUT_S,
    AddParams,
    ApiError,
    ModeParams,
    NameParams,
    NoParams,
    Params,
    StreamFilters,
    SubscribeParams,
    compile_stream_filter,
    decode_request,
    encode_response,
    error_response,
)
from sensorium.events import Event
from sensorium.yamlsrc import SourceError

# The server's own names, and the protocol's and the client's that callers have always imported from here.
__all__ = ["DEFAULT_QUEUE_EVENTS", "IDLE_TIMEOUT_S", "MAX_CONNECTIONS", "MAX_FILTER_PATTERNS", "MAX_PATTERN_LEN",
           "MAX_QUEUE_EVENTS", "MAX_REQUEST_BYTES", "MAX_TOTAL_QUEUED_EVENTS", "METHODS", "POLICY_KEY_MAX",
           "REQUEST_TIMEOUT_S", "SEND_CHUNK_EVENTS", "SEND_TIMEOUT_S", "AddParams", "AgentApi", "ApiClient",
           "ApiError", "ApiServer", "ModeParams", "NameParams", "NoParams", "StreamBudget", "StreamFilters",
           "SubscribeParams", "decode_request", "encode_response"]

log = logging.getLogger("sensorium.api")


class AgentApi(Protocol):
    """What the API needs from the agent (`sensorium.agent.Agent` provides it)."""

    policies: Any  # sensorium.policy_manager.PolicyManager | None (None until policies are started)
    registry: Any  # sensorium.plugins.PluginRegistry (for ``plugins``: ``registry.as_list()``)

    def status(self) -> Mapping[str, Any]:
        """JSON-able agent status."""

    def subscribe(self, callback: Callable[[Sequence[Event]], None]) -> Callable[[], None]:
        """Call ``callback`` with every batch of exported events (it must not block); returns unsubscribe."""



class _StreamRequest:
    """A valid ``events.subscribe``: what `ApiServer._stream` needs to start streaming."""

    def __init__(self, req_id: Any, params: SubscribeParams, match: Callable[[Event], bool]) -> None:
        self.req_id, self.params, self.match = req_id, params, match


# ---- the server -----------------------------------------------------------------------------------


def _peer_uid(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected peer, from the kernel (SO_PEERCRED), not from anything it sent."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def _prepare_directory(d: Path) -> None:
    if not d.exists():
        try:
            d.mkdir(parents=True, mode=0o700)
            os.chmod(d, 0o700)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the API socket directory {d}: {exc.strerror}") from None
        return
    st = d.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"API socket directory {d} is not a directory")
    # Someone else able to write here could replace our socket with theirs: refuse such directories
    # (a sticky world-writable one such as /tmp is safe: nobody can remove our entry).
    if st.st_uid != os.geteuid():
        raise PermissionError(f"API socket directory {d} is owned by uid {st.st_uid}, not by us")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise PermissionError(f"API socket directory {d} is writable by others (mode {oct(st.st_mode & 0o777)})")


def _clear_stale(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{path} is a directory, not a socket path")
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left over from an agent that died
        return
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise FileExistsError(f"another agent is already serving the API at {path}")


class ApiServer:
    """Serves the API for ``agent`` on ``socket_path`` (threads: one acceptor, one per connection)."""

    def __init__(self, socket_path: str | os.PathLike[str], agent: AgentApi, *,
                 allowed_uids: Sequence[int] = (0,), max_total_events: int = MAX_TOTAL_QUEUED_EVENTS,
                 metrics: Any = None, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.path = Path(socket_path)
        self.agent = agent
        self.allowed_uids = frozenset(allowed_uids)
        self.idle_timeout_s, self.request_timeout_s = idle_timeout_s, request_timeout_s
        self.budget = StreamBudget(max_total_events, metrics)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.refused_peers = 0
        self.requests = 0

    def status(self) -> dict[str, Any]:
        """For the agent's status: connections, and the event stream's budget and drops."""
        with self._conns_lock:
            conns = len(self._conns)
        return {"connections": conns, "requests": self.requests, "refused_peers": self.refused_peers,
                "stream": self.budget.status()}

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.bind()
        self.serve()

    def bind(self) -> None:
        """Create and bind the socket (the agent does this first, so that a bad path fails before any
        program is loaded); connections wait in the backlog until `serve`. Raises `OSError` saying why."""
        if len(os.fsencode(self.path)) > 107:  # sun_path is 108 bytes with its NUL
            raise OSError(errno.ENAMETOOLONG, f"API socket path is longer than 107 bytes: {self.path}")
        _prepare_directory(self.path.parent)
        _clear_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window in which others could connect
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        sock.settimeout(0.5)
        self._sock = sock

    def serve(self) -> None:
        """Start answering on the bound socket (`bind` first)."""
        if self._sock is None:
            self.bind()
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="sensorium-api", daemon=True)
        self._thread.start()
        log.info("API listening on %s", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:  # wakes the acceptor at once instead of at its next 0.5 s timeout (shutdown's budget)
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- connections --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("API accept failed")
                time.sleep(0.1)
                continue
            try:
                pid, uid, _gid = _peer_uid(conn)
            except OSError:
                conn.close()
                continue
            if uid not in self.allowed_uids:
                self.refused_peers += 1
                log.warning("API: refused connection from pid %d uid %d (only uid %s allowed)", pid, uid,
                            ",".join(map(str, sorted(self.allowed_uids))))
                self._send_and_close(conn, {"ok": False, "error": {"code": "permission_denied",
                                                                   "message": "the Sensorium API is for root only"}})
                continue
            with self._conns_lock:
                if len(self._conns) >= MAX_CONNECTIONS:
                    busy = True
                else:
                    busy = False
                    self._conns.add(conn)
            if busy:
                busy_error = {"code": "busy", "message": f"more than {MAX_CONNECTIONS} connections"}
                self._send_and_close(conn, {"ok": False, "error": busy_error})
                continue
            threading.Thread(target=self._serve, args=(conn,), name=f"sensorium-api-{pid}", daemon=True).start()

    @staticmethod
    def _send_and_close(conn: socket.socket, msg: Mapping[str, Any]) -> None:
        try:
            conn.settimeout(1.0)
            conn.sendall(orjson.dumps(msg) + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    def _lines(self, conn: socket.socket) -> Iterator[bytes | ApiError]:
        """Request lines from ``conn``; an over-long line, or one that does not arrive whole within
        ``request_timeout_s`` of its first byte, yields an error and ends the connection."""
        buf = bytearray()
        begun: float | None = None  # when the unfinished line in ``buf`` got its first byte
        while not self._stop.is_set():
            nl = buf.find(b"\n")
            if nl > MAX_REQUEST_BYTES or (nl < 0 and len(buf) > MAX_REQUEST_BYTES):
                # the same limit whether or not the newline came in the chunk that crossed it
                yield ApiError("request_too_large", f"request line longer than {MAX_REQUEST_BYTES} bytes")
                return
            if nl >= 0:
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                begun = time.monotonic() if buf else None
                if line.strip():
                    yield line
                continue
            timeout = self.idle_timeout_s
            if begun is not None:
                left = begun + self.request_timeout_s - time.monotonic()
                if left <= 0:
                    yield ApiError("request_timeout", f"request line not complete within {self.request_timeout_s:g} s "
                                                      f"of its first byte ({len(buf)} bytes, no newline)")
                    return
                timeout = min(timeout, left)
            try:
                conn.settimeout(timeout)
                chunk = conn.recv(65536)
            except TimeoutError:
                if begun is not None:
                    continue  # the deadline check above answers it
                return  # idle: closed without a word, as before
            except OSError:
                return
            if not chunk:
                return
            if begun is None:
                begun = time.monotonic()
            buf += chunk

    def _serve(self, conn: socket.socket) -> None:
        try:
            for line in self._lines(conn):
                if isinstance(line, ApiError):
                    self._send(conn, error_response(None, line))
                    return
                self.requests += 1
                msg, stream = self.answer(line)
                if stream is not None:
                    self._stream(conn, msg, stream)
                    return
                if not self._send(conn, msg):
                    return
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def answer(self, line: bytes) -> tuple[dict[str, Any], _StreamRequest | None]:
        """The response to one request line, never an exception (a handler's bug is an ``internal`` error,
        logged). For a valid ``events.subscribe``, the response is its acknowledgement and the second item
        says what to stream; it is None for every other line."""
        req_id: Any = None
        try:
            req_id, method, params = decode_request(line)
            if method == "events.subscribe":
                p = self._params(SubscribeParams, params)
                stream = _StreamRequest(req_id, p, compile_stream_filter(p.filters))
                return {"id": req_id, "ok": True, "result": {"subscribed": True, "queue_size": p.queue_size,
                                                             "max_total_events": self.budget.total}}, stream
            return {"id": req_id, "ok": True, "result": self.dispatch(method, params)}, None
        except ApiError as exc:
            return error_response(exc.req_id if exc.req_id is not None else req_id, exc), None
        except Exception as exc:  # a bug in a handler must not kill the server
            log.exception("API request failed")
            return error_response(req_id, ApiError("internal", f"{type(exc).__name__}: {exc}")), None

    @staticmethod
    def _send(conn: socket.socket, msg: Mapping[str, Any]) -> bool:
        try:
            conn.settimeout(SEND_TIMEOUT_S)
            conn.sendall(encode_response(msg))
            return True
        except OSError:
            return False

    # ---- methods ------------------------------------------------------------------------------------

    @staticmethod
    def _params(model: type[Params], params: Mapping[str, Any]) -> Any:
        try:
            return model.model_validate(params)
        except ValidationError as exc:
            msgs = []
            for e in exc.errors():
                where = ".".join(str(x) for x in e["loc"]) or "params"
                msg = "unknown parameter" if e["type"] == "extra_forbidden" else e["msg"]
                msgs.append(f"{where}: {msg}")
            raise ApiError("invalid_params", "; ".join(msgs)) from None

    def _manager(self) -> Any:
        pm = getattr(self.agent, "policies", None)
        if pm is None:
            raise ApiError("unavailable", "the agent has no policy manager (no sensor serves policies)")
        return pm

    def dispatch(self, method: str, params: Mapping[str, Any]) -> Any:
        """Run one (non-streaming) method; raise `ApiError` for anything the client did wrong."""
        from sensorium.policy_manager import PolicyNotFound

        try:
            if method == "status":
                self._params(NoParams, params)
                st = dict(self.agent.status())
                pm = getattr(self.agent, "policies", None)
                if pm is not None and getattr(pm, "directory_errors", None):
                    # Policy files refused at start: visible in the status, not only in the log.
                    st.setdefault("policy_directory_errors", list(pm.directory_errors))
                return st
            if method == "plugins":
                self._params(NoParams, params)
                return self.agent.registry.as_list()
            if method == "policy.list":
                self._params(NoParams, params)
                return self._manager().list()
            if method == "policy.get":
                p = self._params(NameParams, params)
                return self._manager().get(p.name)
            if method == "policy.add":
                p = self._params(AddParams, params)
                names = self._manager().add(p.text, p.file or "<api>", mode=p.mode, origin="api")
                return {"added": names}
            if method == "policy.delete":
                p = self._params(NameParams, params)
                self._manager().delete(p.name)
                return {"deleted": p.name}
            if method == "policy.enable":
                p = self._params(NameParams, params)
                self._manager().enable(p.name)
                return {"enabled": p.name}
            if method == "policy.disable":
                p = self._params(NameParams, params)
                self._manager().disable(p.name)
                return {"disabled": p.name}
            if method == "policy.set_mode":
                p = self._params(ModeParams, params)
                self._manager().set_mode(p.name, p.mode)
                return {"name": p.name, "mode": p.mode}
        except PolicyNotFound as exc:
            raise ApiError("not_found", str(exc)) from None
        except SourceError as exc:
            raise ApiError("invalid_policy", str(exc)) from None
        raise ApiError("unknown_method", f"unknown method {method[:64]!r} (methods: {', '.join(METHODS)})")

    # ---- event stream -------------------------------------------------------------------------------

    def _stream(self, conn: socket.socket, ack: Mapping[str, Any], req: _StreamRequest) -> None:
        match = req.match
        sub = _Subscriber(req.params.queue_size, self.budget)
        try:
            unsubscribe = self.agent.subscribe(sub.offer)
        except Exception as exc:  # answered, as any handler's bug
            sub.close()
            log.exception("API events.subscribe failed")
            self._send(conn, error_response(req.req_id, ApiError("internal", f"{type(exc).__name__}: {exc}")))
            return
        try:
            if not self._send(conn, ack):
                return
            conn.settimeout(SEND_TIMEOUT_S)
            reported = 0
            while not self._stop.is_set():
                batches = sub.take(timeout=0.5, max_events=SEND_CHUNK_EVENTS)
                try:
                    out = bytearray()
                    for batch in batches:
                        for ev in batch:
                            try:
                                if match(ev):
                                    out += ev.json()
                                    out += b"\n"
                            except Exception:  # noqa: BLE001 - one odd event must not end the stream
                                sub.filter_errors += 1
                    dropped, by_reason = sub.drops()
                    if dropped != reported:
                        out += orjson.dumps({"stream": {"dropped": dropped, "dropped_by_reason": by_reason}}) + b"\n"
                        reported = dropped
                    if out:
                        conn.sendall(out)
                    elif _peer_closed(conn):
                        return
                finally:
                    sub.sent()  # what was taken is gone from memory (or dropped with the connection)
        except OSError:
            return
        finally:
            unsubscribe()
            sub.close()


def _peer_closed(conn: socket.socket) -> bool:
    """Whether the client hung up (readable with EOF). Anything it sends on a stream is ignored."""
    try:
        r, _, _ = select.select([conn], [], [], 0)
        if not r:
            return False
        return conn.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class StreamBudget:
    """The events all subscribers hold together (queued or being sent), bounded by ``total``; each
    subscriber may use at most an equal share of it, so one slow client cannot starve the others."""

    def __init__(self, total: int, metrics: Any = None) -> None:
        self.total = total
        self.metrics = metrics
        self._lock = threading.Lock()
        self.held = 0
        self.peak = 0
        self.subscribers = 0
        self.dropped: dict[str, int] = {}
        if metrics is not None:
            metrics.watch_api_stream(lambda: float(self.held))

    def join(self) -> None:
        with self._lock:
            self.subscribers += 1

    def leave(self, held: int) -> None:
        with self._lock:
            self.subscribers -= 1
            self.held -= held

    def reserve(self, own: int, n: int, own_max: int) -> str | None:
        """Take room for ``n`` events for a subscriber holding ``own``: None when granted, else why not."""
        with self._lock:
            if own + n > own_max:
                reason = "subscriber_queue_full"
            elif own + n > self.total // max(1, self.subscribers) or self.held + n > self.total:
                reason = "total_cap"
            else:
                self.held += n
                self.peak = max(self.peak, self.held)
                return None
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        if self.metrics is not None:
            self.metrics.api_stream_dropped(n, reason)
        return reason

    def release(self, n: int) -> None:
        with self._lock:
            self.held -= n

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"subscribers": self.subscribers, "held_events": self.held, "peak_held_events": self.peak,
                    "max_total_events": self.total, "dropped_by_reason": dict(self.dropped)}


class _Subscriber:
    """A bounded queue between the pipeline thread and one client: `offer` never blocks, it drops (whole
    batches) when the client's own queue or its share of the `StreamBudget` is full, and counts why."""

    def __init__(self, max_events: int, budget: StreamBudget | None = None) -> None:
        self.max_events = max_events
        self.budget = budget if budget is not None else StreamBudget(max_events)
        self.budget.join()
        self._batches: collections.deque[Sequence[Event]] = collections.deque()
        self._queued = 0
        self._inflight = 0  # taken by the sender, still in memory until `sent`
        self._cond = threading.Condition()
        self.dropped = 0
        self.dropped_by: dict[str, int] = {}
        self.filter_errors = 0
        self._closed = False

    def offer(self, batch: Sequence[Event]) -> None:
        n = len(batch)
        with self._cond:
            if self._closed:
                return
            why = self.budget.reserve(self._queued + self._inflight, n, self.max_events)
            if why is not None:
                self.dropped += n
                self.dropped_by[why] = self.dropped_by.get(why, 0) + n
            else:
                self._batches.append(batch)
                self._queued += n
            self._cond.notify()

    def drops(self) -> tuple[int, dict[str, int]]:
        with self._cond:
            return self.dropped, dict(self.dropped_by)

    def take(self, timeout: float, max_events: int = 1 << 62) -> list[Sequence[Event]]:
        """Whole batches, up to ``max_events`` (at least one batch when any is queued)."""
        with self._cond:
            if not self._batches:
                self._cond.wait(timeout)
            out: list[Sequence[Event]] = []
            n = 0
            while self._batches and (not out or n + len(self._batches[0]) <= max_events):
                batch = self._batches.popleft()
                out.append(batch)
                n += len(batch)
            self._queued -= n
            self._inflight += n
            return out

    def sent(self) -> None:
        with self._cond:
            n, self._inflight = self._inflight, 0
        self.budget.release(n)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            held = self._queued + self._inflight
            self._batches.clear()
            self._queued = self._inflight = 0
        self.budget.leave(held)

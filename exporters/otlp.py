"""The OTLP exporter: events as OpenTelemetry log records, over OTLP/gRPC or OTLP/HTTP (protobuf).

    {type: otlp, endpoint: otel-collector.observability:4317, protocol: grpc, insecure: true,
     headers: {authorization: "Bearer ..."}, compression: gzip}

Each event is one ``LogRecord`` of the official `opentelemetry-proto` schema (written by
`otlp_encode.Encoder`, byte for byte what the official message classes serialize): its body is the event's
JSON, byte for byte what the other exporters write; ``time_unix_nano`` is the event's time;
``event_name`` (and the ``event.name`` attribute, for backends that predate the field) is the event
type; the severity is WARN for a policy action that blocked or killed and for rate-limit notices, INFO
otherwise; the acting process is described by ``process.*`` attributes. Records are grouped per
resource, one ``ResourceLogs`` per pod container (``k8s.*`` attributes, ``container.id``) or per host
(``host.name``) in each request, not one per record.

``write_batch`` splits the batch into requests (``max_request_records``, ``max_request_bytes``) and
sends them in order, one at a time (the next is encoded while one is on the wire). A request that fails
with what OTLP calls retryable (gRPC UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED with a
RetryInfo...; HTTP 429, 502, 503, 504; a connection that failed) is sent again after a capped
exponential backoff, or after the delay the collector asked for (``Retry-After``, gRPC ``RetryInfo``),
for up to ``retry_timeout_s``; every resend is counted (``retries``); the waits end when the agent stops
(`ExporterContext.stopping`). After that, or then, the runner keeps what was not delivered and retries
it with its own backoff, so a collector that is down loses nothing while the runner's bounded queue
holds. An error that resending cannot cure (HTTP 400, 401, 403, 413...; gRPC INVALID_ARGUMENT,
UNAUTHENTICATED, PERMISSION_DENIED...) drops that request's events, counted as dropped with reason
``rejected`` (`PartialWrite.dropped`); so do the records a collector reports rejected in a partial
success.
"""

from __future__ import annotations

import email.utils
import gzip
import queue
import re
import threading
import time
from collections.abc import (
    Mapping,  # fast isinstance() (typing.Mapping is slow)
    Sequence,
)
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sensorium.events import Event
from sensorium.hookspecs import ExporterContext, ExportError, ExporterSpec, PartialWrite
from sensorium.provide import provide
from sensorium.targets import check_readable_files
from sensorium_exporters.otlp_encode import Encoder

DEFAULT_PORTS = {"grpc": 4317, "http/protobuf": 4318}
HTTP_LOGS_PATH = "/v1/logs"

# HTTP status codes OTLP/HTTP says to retry (the rest of the 4xx/5xx are permanent for this request).
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
# Headers the exporter sets itself (or the transport owns): a user value would corrupt the request.
RESERVED_HEADERS = frozenset({"content-type", "content-encoding", "content-length", "te", "host", "user-agent",
                              "connection", "transfer-encoding", "accept-encoding"})
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9!#$&'*+.^_`|~-]*$")  # lowercase token (gRPC metadata keys are lowercase)


class OtlpTls(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_file: Path | None = Field(default=None, description="PEM CA bundle that signs the collector's certificate "
                                 "(default: the system's)")
    cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="Client key (mutual TLS)")
    server_name: str | None = Field(default=None, description="Name to verify in the collector's certificate "
                                    "(default: the endpoint's host)")

    @model_validator(mode="after")
    def _pair(self) -> OtlpTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: ``scheme`` is http or https (gRPC: plaintext or TLS), ``path`` only for HTTP."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def parse_endpoint(endpoint: str, protocol: str, insecure: bool | None) -> Endpoint:
    """``HOST:PORT`` or ``http(s)://HOST[:PORT][/path]`` -> `Endpoint`; ValueError saying what is wrong.

    A bare HOST:PORT uses TLS unless ``insecure`` is true; a URL's scheme says it (and must agree with
    ``insecure`` when both are given). OTLP/HTTP posts to ``/v1/logs`` when the URL has no path, to the
    URL's own path otherwise; OTLP/gRPC takes no path."""
    text = endpoint.strip()
    if not text:
        raise ValueError("is empty")
    if "://" in text:
        u = urlsplit(text)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {u.scheme!r} in {endpoint!r} (http:// or https://, or HOST:PORT)")
        if u.query or u.fragment or u.username or u.password:
            raise ValueError(f"{endpoint!r}: no query, fragment or user info (put tokens in headers)")
        scheme = u.scheme
        if insecure is not None and insecure != (scheme == "http"):
            raise ValueError(f"insecure: {str(insecure).lower()} contradicts the {scheme}:// endpoint {endpoint!r}")
        path = u.path
        netloc_host = u.hostname
        try:
            port = u.port
        except ValueError:
            raise ValueError(f"{endpoint!r}: the port must be a number from 1 to 65535") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host or not port_s.isdigit():
            raise ValueError(f"expected HOST:PORT or a URL (http://HOST:PORT), got {endpoint!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"{endpoint!r}: write an IPv6 address in brackets, [::1]:4317")
        netloc_host, port, path = host, int(port_s), ""
        scheme = "http" if insecure else "https"
    if not netloc_host or not re.fullmatch(r"[A-Za-z0-9._:%-]+", netloc_host):
        raise ValueError(f"{endpoint!r}: no valid host")
    if port is None:
        port = DEFAULT_PORTS[protocol]
    if not 0 < port < 65536:
        raise ValueError(f"{endpoint!r}: the port must be a number from 1 to 65535")
    if protocol == "grpc":
        if path not in ("", "/"):
            raise ValueError(f"{endpoint!r}: OTLP/gRPC takes no path (HOST:PORT, or http(s)://HOST:PORT)")
        path = ""
    elif path in ("", "/"):
        path = HTTP_LOGS_PATH
    return Endpoint(scheme, netloc_host, port, path)


class OtlpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(description="HOST:PORT, or a URL (http://HOST:PORT, https://HOST:PORT/v1/logs)")
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    insecure: bool | None = Field(default=None, description="Plaintext (no TLS). Default: TLS, unless the "
                                  "endpoint is an http:// URL")
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request (gRPC metadata): "
                                    "{authorization: Bearer ...}")
    header_files: dict[str, Path] = Field(default_factory=dict, description="Headers whose value is read from a "
                                          "file (a mounted Secret), again each time the exporter reconnects")
    tls: OtlpTls | None = None
    compression: Literal["none", "gzip"] = "none"
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="One request's deadline")
    retry_timeout_s: float = Field(default=30.0, ge=0, le=3600, description="How long one request is resent "
                                   "after retryable errors before the runner takes over (it keeps the events)")
    retry_backoff_ms: int = Field(default=100, ge=1, le=60_000)
    retry_backoff_max_ms: int = Field(default=5_000, ge=1, le=300_000)
    max_request_records: int = Field(default=1_000, ge=1, le=1_000_000)
    max_request_bytes: int = Field(default=3 * 1024 * 1024, ge=4096, le=64 * 1024 * 1024,
                                   description="Split a batch so that one request stays under this (the "
                                   "Collector's gRPC receiver refuses messages over 4 MiB by default)")
    resource_attributes: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Added to every resource: {k8s.cluster.name: prod}")

    @field_validator("headers", "header_files")
    @classmethod
    def _v_headers(cls, v: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in v.items():
            key = name.strip().lower()
            if not _HEADER_NAME.match(key):
                raise ValueError(f"{name!r} is not a valid header name")
            if key in RESERVED_HEADERS or key.startswith("grpc-") or key.startswith(":"):
                raise ValueError(f"header {name!r} is set by the exporter itself")
            if isinstance(value, str) and (("\r" in value) or ("\n" in value) or ("\0" in value)):
                raise ValueError(f"header {name!r}: the value contains a line break or NUL")
            if key in out:
                raise ValueError(f"header {name!r} given twice (names are case-insensitive)")
            out[key] = value
        return out

    @model_validator(mode="after")
    def _v_endpoint(self) -> OtlpOptions:
        try:
            ep = parse_endpoint(self.endpoint, self.protocol, self.insecure)
        except ValueError as exc:
            raise ValueError(f"endpoint: {exc}") from None
        if self.tls is not None and not ep.tls:
            raise ValueError("tls is set but the endpoint is plaintext (insecure: true or an http:// URL)")
        both = set(self.headers) & set(self.header_files)
        if both:
            raise ValueError(f"header {sorted(both)[0]!r} is in both headers and header_files")
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ValueError("retry_backoff_max_ms is smaller than retry_backoff_ms")
        return self

    def parsed_endpoint(self) -> Endpoint:
        return parse_endpoint(self.endpoint, self.protocol, self.insecure)


# ---- transports ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one request came to. ``rejected``: records a successful reply says it refused."""

    ok: bool
    rejected: int = 0
    retryable: bool = False
    reason: str = "rejected"  # a `FAILURE_REASONS` key
    message: str = ""
    retry_after_s: float | None = None
    sent: bool = True  # False: held back (the collector's Retry-After had not passed), nothing was sent


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """A protobuf message's top-level fields (number, int or bytes); enough to read google.rpc.Status."""
    out: list[tuple[int, Any]] = []
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        num, wire = tag >> 3, tag & 7
        v: int | bytes
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type")
        out.append((num, v))
    return out


def grpc_retry_delay(status_details: bytes | None) -> float | None:
    """The ``google.rpc.RetryInfo`` delay in a ``grpc-status-details-bin`` trailer (seconds), if any."""
    if not status_details:
        return None
    try:
        for num, detail in _fields(status_details):  # google.rpc.Status.details: repeated Any (field 3)
            if num != 3:
                continue
            parts = dict(_fields(detail))  # Any{type_url = 1, value = 2}
            if parts.get(1, b"").endswith(b"google.rpc.RetryInfo"):
                duration = dict(_fields(dict(_fields(parts.get(2, b""))).get(1, b"")))  # RetryInfo.retry_delay
                return duration.get(1, 0) + duration.get(2, 0) / 1e9
    except (ValueError, IndexError, TypeError):
        return None
    return None


def http_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) in seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _read_header_files(files: Mapping[str, Path]) -> dict[str, str]:
    out = {}
    for name, path in files.items():
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ExportError(f"otlp: header {name}: cannot read {path}: {exc.strerror}", code="open_error") from None
        if "\n" in value or "\r" in value:
            raise ExportError(f"otlp: header {name}: {path} holds more than one line", code="open_error")
        out[name] = value
    return out


class GrpcTransport:
    # What OTLP/gRPC says to retry (RESOURCE_EXHAUSTED only when the server sends a RetryInfo).
    RETRYABLE = ("CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS")

    def __init__(self, o: OtlpOptions, ep: Endpoint, headers: dict[str, str]) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

        self._grpc = grpc
        opts: list[tuple[str, Any]] = [("grpc.max_send_message_length", o.max_request_bytes * 2),
                                       ("grpc.primary_user_agent", "sensorium-otlp")]
        if ep.tls:
            tls = o.tls or OtlpTls()
            read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
            creds = grpc.ssl_channel_credentials(read(tls.ca_file), read(tls.key_file), read(tls.cert_file))
            if tls.server_name:
                opts.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.secure_channel(ep.authority, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(ep.authority, options=opts)
        # The LogsService/Export method with the request already serialized (`Encoder`).
        self.export: grpc.UnaryUnaryMultiCallable[bytes, ExportLogsServiceResponse] = self.channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export", request_serializer=None,
            response_deserializer=ExportLogsServiceResponse.FromString)
        self.metadata = tuple(headers.items())
        self.compression = grpc.Compression.Gzip if o.compression == "gzip" else grpc.Compression.NoCompression
        self.timeout = o.timeout_s

    def send(self, request: bytes) -> Outcome:
        grpc = self._grpc
        try:
            reply = self.export(request, timeout=self.timeout, metadata=self.metadata, compression=self.compression)
        except grpc.RpcError as exc:
            # What a call raises is also its `grpc.Call` (code, details, trailing metadata).
            call = exc if isinstance(exc, grpc.Call) else None
            code = call.code() if call is not None else None
            name = code.name if code is not None else "UNKNOWN"
            details = call.details() if call is not None else str(exc)
            delay = None
            for k, v in (call.trailing_metadata() or ()) if call is not None else ():
                if k == "grpc-status-details-bin":
                    delay = grpc_retry_delay(v)
            retryable = name in self.RETRYABLE or (name == "RESOURCE_EXHAUSTED" and delay is not None)
            reason = {"DEADLINE_EXCEEDED": "timeout", "CANCELLED": "peer_closed"}.get(name, "rejected")
            if name == "UNAVAILABLE":
                low = (details or "").lower()
                reason = "peer_refused" if "refused" in low else "peer_unreachable"
            return Outcome(False, retryable=retryable, reason=reason, message=f"gRPC {name}: {details}",
                           retry_after_s=delay)
        return Outcome(True, rejected=reply.partial_success.rejected_log_records,
                       message=reply.partial_success.error_message)

    def close(self) -> None:
        self.channel.close()


class HttpTransport:
    def __init__(self, o: OtlpOptions, ep: Endpoint, headers: dict[str, str]) -> None:
        import urllib3

        self._urllib3 = urllib3
        self.path = ep.path
        self.gzip = o.compression == "gzip"
        self.headers = {"Content-Type": "application/x-protobuf", "User-Agent": "sensorium-otlp", **headers}
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        timeout = urllib3.Timeout(total=o.timeout_s)
        if ep.tls:
            import ssl

            tls = o.tls or OtlpTls()
            ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            if tls.cert_file:
                ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            self.pool: Any = urllib3.HTTPSConnectionPool(ep.host, ep.port, ssl_context=ctx, timeout=timeout,
                                                         server_hostname=tls.server_name or None, maxsize=1,
                                                         retries=False)
        else:
            self.pool = urllib3.HTTPConnectionPool(ep.host, ep.port, timeout=timeout, maxsize=1, retries=False)

    def send(self, request: bytes) -> Outcome:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

        u3 = self._urllib3
        body = request
        if self.gzip:
            body = gzip.compress(body, compresslevel=5)
        try:
            resp = self.pool.urlopen("POST", self.path, body=body, headers=self.headers, retries=False,
                                     redirect=False, preload_content=True)
        except u3.exceptions.HTTPError as exc:
            e = u3.exceptions
            if isinstance(exc, e.NewConnectionError):  # before TimeoutError: urllib3 2 derives it from that
                refused = isinstance(exc.__context__, ConnectionRefusedError) or "refused" in str(exc).lower()
                reason = "peer_refused" if refused else "peer_unreachable"
            elif isinstance(exc, e.TimeoutError):
                reason = "timeout"
            elif isinstance(exc, e.SSLError):
                reason = "rejected"  # the TLS handshake failed (an untrusted certificate...)
            elif isinstance(exc, e.ProtocolError):
                reason = "peer_closed"
            else:
                reason = "peer_unreachable"
            return Outcome(False, retryable=True, reason=reason, message=f"HTTP {type(exc).__name__}: {exc}")
        if 200 <= resp.status < 300:
            rejected, msg = 0, ""
            if resp.data:
                try:
                    reply = ExportLogsServiceResponse.FromString(resp.data)
                    rejected, msg = reply.partial_success.rejected_log_records, reply.partial_success.error_message
                except Exception:  # noqa: BLE001 - a 200 with a body we cannot read still took the records
                    pass
            return Outcome(True, rejected=rejected, message=msg)
        text = resp.data[:200].decode("utf-8", "replace").strip()
        retryable = resp.status in RETRYABLE_HTTP
        return Outcome(False, retryable=retryable, reason="rejected",
                       message=f"HTTP {resp.status} {resp.reason or ''}: {text}".rstrip(": "),
                       retry_after_s=http_retry_after(resp.headers.get("Retry-After")) if retryable else None)

    def close(self) -> None:
        self.pool.close()


class _Sender:
    """One daemon thread that runs the requests (`OtlpExporter._send`), so the next one can be encoded
    meanwhile. A daemon, unlike a ThreadPoolExecutor's worker: a request still being retried when the agent
    stops must not hold the process past its shutdown grace (the runner counts what it held)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[Future, Any, tuple] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="otlp-sender", daemon=True).start()

    def submit(self, fn: Any, *args: Any) -> Future:
        f: Future = Future()
        self._q.put((f, fn, args))
        return f

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            f, fn, args = item
            if f.set_running_or_notify_cancel():
                try:
                    f.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting write_batch
                    f.set_exception(exc)

    def shutdown(self) -> None:
        self._q.put(None)


# ---- the exporter ---------------------------------------------------------------------------------


class OtlpExporter:
    def __init__(self, options: OtlpOptions, ctx: ExporterContext) -> None:
        self.options = options
        self.ctx = ctx
        self.endpoint = options.parsed_endpoint()
        self._transport: GrpcTransport | HttpTransport | None = None
        self._encoder: Encoder | None = None
        self._sender: _Sender | None = None  # sends while the next request is encoded
        self._not_before = 0.0  # the collector asked us not to send before this (monotonic)

    def open(self) -> None:
        headers = {**self.options.headers, **_read_header_files(self.options.header_files)}
        if self._encoder is None:
            self._encoder = Encoder(self.options.resource_attributes)
        try:
            if self.options.protocol == "grpc":
                self._transport = GrpcTransport(self.options, self.endpoint, headers)
            else:
                self._transport = HttpTransport(self.options, self.endpoint, headers)
        except OSError as exc:  # a TLS file that went away since the start check
            raise ExportError(f"otlp: {exc}", code="open_error") from None
        self._sender = _Sender()

    def _chunks(self, events: Sequence[Event]) -> list[tuple[int, int]]:
        """[start, stop) ranges of the batch, each one request."""
        o = self.options
        out, start, size = [], 0, 0
        for i, ev in enumerate(events):
            n = len(ev.json()) + 256  # the JSON body plus the record's attributes, roughly
            if i > start and (i - start >= o.max_request_records or size + n > o.max_request_bytes):
                out.append((start, i))
                start, size = i, 0
            size += n
        if start < len(events):
            out.append((start, len(events)))
        return out

    def _send(self, request: bytes, n: int) -> Outcome:
        """Send one request, resending it on retryable errors for up to ``retry_timeout_s``: after the delay
        the collector asked for (which also holds back later requests), else after a doubling backoff.
        Every wait ends early when the host stops the exporter (`ExporterContext.stopping`): the failure
        then goes back to the runner, which keeps the events and retries until its own deadline."""
        o = self.options
        assert self._transport is not None
        give_up = time.monotonic() + o.retry_timeout_s
        backoff = o.retry_backoff_ms / 1000.0
        stopping = self.ctx.stopping
        out: Outcome | None = None
        while True:
            wait = self._not_before - time.monotonic()
            if wait > 0 and (time.monotonic() + wait > give_up or stopping.wait(wait)):
                return out or Outcome(False, retryable=True, reason="rejected", sent=False,
                                      message=f"the collector asked to wait {wait:.1f}s more before sending again")
            if out is not None:
                self.ctx.count("retries")
                self.ctx.count(f"retries_{out.reason}")
            self.ctx.count("requests")
            out = self._transport.send(request)
            if out.ok or not out.retryable:
                return out
            if out.retry_after_s is not None:
                self._not_before = time.monotonic() + out.retry_after_s
            else:
                if time.monotonic() + backoff > give_up or stopping.wait(backoff):
                    return out
                backoff = min(backoff * 2, o.retry_backoff_max_ms / 1000.0)

    def write_batch(self, events: Sequence[Event]) -> None:
        if self._transport is None:
            self.open()
        assert self._encoder is not None and self._sender is not None
        done = 0
        inflight: tuple[Any, int] | None = None
        for start, stop in self._chunks(events):
            try:
                # Encoded while the previous request is on the wire. Requests still go one at a time, each
                # only after the one before it succeeded: order, and `PartialWrite` counts, stay exact.
                request = self._encoder.request(events[start:stop])
            finally:
                if inflight is not None:
                    done = self._settle(*inflight, done)
            inflight = (self._sender.submit(self._send, request, stop - start), stop - start)
        if inflight is not None:
            self._settle(*inflight, done)

    def _settle(self, future: Any, n: int, done: int) -> int:
        """Wait for a request's outcome; return how many events of the batch are done, or raise."""
        out: Outcome = future.result()
        if out.ok:
            rejected = max(0, min(out.rejected, n))
            self.ctx.count("delivered", n - rejected)
            if rejected:
                # The collector took the request but refused some records (partial success). It does not
                # say which: the books count that many as dropped, and the rest as delivered.
                self.ctx.count("rejected", rejected)
                raise PartialWrite(done + n - rejected, f"otlp: the collector rejected {rejected} of {n} "
                                   f"records: {out.message}", code="rejected", dropped=rejected)
            return done + n
        if not out.retryable:
            self.ctx.count("rejected_requests")
            self.ctx.count("rejected", n)
            raise PartialWrite(done, f"otlp: {self.endpoint.url}: {out.message} (permanent: {n} events dropped)",
                               code=out.reason, dropped=n)
        self.ctx.count("send_failed" if out.sent else "deferred")
        raise PartialWrite(done, f"otlp: {self.endpoint.url}: {out.message}", code=out.reason)

    def flush(self) -> None:
        pass  # every write_batch waits for its replies

    def close(self) -> None:
        t, self._transport = self._transport, None
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.shutdown()
        if t is not None:
            try:
                t.close()
            except Exception:  # noqa: BLE001 - close must not raise
                pass


def check_target(options: OtlpOptions) -> None:
    """TLS files and header files that are missing or unreadable never get better by retrying: refuse
    them at start. A collector that is down is not an error here (the runner retries)."""
    files: list[tuple[str, Path | None]] = []
    if options.tls is not None:
        files += [("tls.ca_file", options.tls.ca_file), ("tls.cert_file", options.tls.cert_file),
                  ("tls.key_file", options.tls.key_file)]
    files += [(f"header_files.{k}", p) for k, p in options.header_files.items()]
    check_readable_files(files)


sensorium_exporter = provide(ExporterSpec(
    name="otlp",
    description="OpenTelemetry log records over OTLP/gRPC or OTLP/HTTP: resource attributes per pod, "
                "TLS, headers, gzip, retries",
    options=OtlpOptions, factory=OtlpExporter, check=check_target,
))

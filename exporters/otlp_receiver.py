"""Test helper: real OTLP log receivers (gRPC and HTTP) that record what arrives, for the otlp exporter's
tests and benchmark, and for anyone testing a pipeline that reads our OTLP stream.

    with GrpcReceiver() as rx:                       # or HttpReceiver(); tls=(cert, key) for TLS
        ... OtlpOptions(endpoint=rx.endpoint, protocol=rx.protocol, insecure=True) ...
        rx.wait_for(10)
        rx.bodies()                                  # the events' JSON, decoded, in arrival order

``rx.fail_next(n, status, retry_after_s)`` answers the next n requests with an error (an HTTP status, or
a gRPC status name such as ``"UNAVAILABLE"``), with a Retry-After / RetryInfo when given;
``rx.fail_next(1, "partial", rejected=k)`` takes the next request but says it rejected k of its records. ``stop()`` then
``start()`` again brings the receiver back on the same port (a collector restart).
"""

from __future__ import annotations

import collections
import gzip
import json
import ssl
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc


@dataclass
class Reply:
    status: Any  # HTTP status (int) or gRPC status code name (str), or "partial" (a partial success)
    retry_after_s: float | None = None
    rejected: int = 0  # "partial": how many records the reply says were rejected


def _partial(reply: Reply) -> Any:
    return logs_service_pb2.ExportLogsServiceResponse(partial_success=logs_service_pb2.ExportLogsPartialSuccess(
        rejected_log_records=reply.rejected, error_message="test receiver: rejected"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def status_details(code: int, message: str, retry_after_s: float) -> bytes:
    """A ``google.rpc.Status`` holding a ``google.rpc.RetryInfo`` (what ``grpc-status-details-bin`` carries)."""
    secs = int(retry_after_s)
    nanos = round((retry_after_s - secs) * 1e9)
    duration = _varint(1 << 3) + _varint(secs) + (_varint(2 << 3) + _varint(nanos) if nanos else b"")
    retry_info = _field(1, duration)
    any_msg = _field(1, b"type.googleapis.com/google.rpc.RetryInfo") + _field(2, retry_info)
    return _varint(1 << 3) + _varint(code) + _field(2, message.encode()) + _field(3, any_msg)


class _Receiver:
    protocol = ""

    def __init__(self, tls: tuple[Path, Path] | None = None, port: int = 0, compression_seen: bool = False) -> None:
        self.tls = tls
        self.port = port
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.headers: list[dict[str, str]] = []  # per accepted request
        self.refused = 0  # requests answered with an error
        self.plan: collections.deque[Reply] = collections.deque()
        self.count_only = False  # benchmark mode: count records, keep nothing
        self.records = 0

    # -- what arrived ---------------------------------------------------------------------------

    def fail_next(self, n: int, status: Any, retry_after_s: float | None = None, rejected: int = 0) -> None:
        with self.lock:
            self.plan.extend(Reply(status, retry_after_s, rejected) for _ in range(n))

    def _take_reply(self) -> Reply | None:
        with self.lock:
            return self.plan.popleft() if self.plan else None

    def _accept(self, req: logs_service_pb2.ExportLogsServiceRequest, headers: dict[str, str]) -> None:
        n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
        with self.cond:
            self.records += n
            if not self.count_only:
                self.requests.append(req)
                self.headers.append(headers)
            self.cond.notify_all()

    def records_list(self) -> list[tuple[Any, Any]]:
        """(resource, log record) pairs, in arrival order."""
        with self.lock:
            reqs = list(self.requests)
        return [(rl.resource, rec) for req in reqs for rl in req.resource_logs for sl in rl.scope_logs
                for rec in sl.log_records]

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(rec.body.string_value) for _, rec in self.records_list()]

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while self.records < n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def __enter__(self) -> _Receiver:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class GrpcReceiver(_Receiver):
    """An OTLP/gRPC LogsService server."""

    protocol = "grpc"

    def start(self) -> None:
        import grpc

        rx = self

        class Servicer(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # the generated name
                reply = rx._take_reply()
                if reply is not None and reply.status == "partial":
                    rx._accept(request, {k: v for k, v in context.invocation_metadata()})
                    return _partial(reply)
                if reply is not None:
                    with rx.lock:
                        rx.refused += 1
                    code = getattr(grpc.StatusCode, str(reply.status))
                    if reply.retry_after_s is not None:
                        context.set_trailing_metadata(((
                            "grpc-status-details-bin",
                            status_details(code.value[0], "try later", reply.retry_after_s)),))
                    context.abort(code, f"test receiver: {reply.status}")
                rx._accept(request, {k: v for k, v in context.invocation_metadata()})
                return logs_service_pb2.ExportLogsServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                   options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                            ("grpc.so_reuseport", 0)])
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Servicer(), self._server)
        addr = f"127.0.0.1:{self.port}"
        if self.tls is not None:
            creds = grpc.ssl_server_credentials([(Path(self.tls[1]).read_bytes(), Path(self.tls[0]).read_bytes())])
            self.port = self._server.add_secure_port(addr, creds)
        else:
            self.port = self._server.add_insecure_port(addr)
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


class HttpReceiver(_Receiver):
    """An OTLP/HTTP (protobuf) server: POST /v1/logs."""

    protocol = "http/protobuf"
    path = "/v1/logs"

    def start(self) -> None:
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # http.server's name
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != rx.path:
                    self._answer(404, b"no such path")
                    return
                reply = rx._take_reply()
                if reply is not None and reply.status != "partial":
                    with rx.lock:
                        rx.refused += 1
                    extra = {"Retry-After": str(int(reply.retry_after_s))} if reply.retry_after_s is not None else {}
                    self._answer(int(reply.status), b"test receiver refused", extra)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    self._answer(415, b"not protobuf")
                    return
                req = logs_service_pb2.ExportLogsServiceRequest.FromString(data)
                rx._accept(req, {k.lower(): v for k, v in self.headers.items()})
                answer = _partial(reply) if reply is not None else logs_service_pb2.ExportLogsServiceResponse()
                self._answer(200, answer.SerializeToString())

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-http-receiver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def main(argv: list[str] | None = None) -> int:
    """``python -m sensorium_exporters.otlp_receiver --protocol grpc [--port N]``: a counting receiver in
    its own process (the benchmark's peer, so that its CPU is not charged to the exporter). It prints
    ``listening ENDPOINT`` once ready; SIGTERM stops it, and it says how many records it received."""
    import argparse
    import signal
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    ap.add_argument("--protocol", choices=["grpc", "http/protobuf"], default="grpc")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    rx: _Receiver = GrpcReceiver(port=args.port) if args.protocol == "grpc" else HttpReceiver(port=args.port)
    rx.count_only = True
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rx.start()
    print(f"listening {rx.endpoint}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    rx.stop()
    print(f"records {rx.records}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A small blocking client of the agent's local API (the CLI uses it): requests, and the event stream."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from sensorium.api_protocol import DEFAULT_QUEUE_EVENTS, ApiError

__all__ = ["ApiClient"]


class ApiClient:
    """A small blocking client (the CLI uses it)."""

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float | None = 120.0) -> None:
        self.path = str(socket_path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._next_id = 1

    def connect(self) -> ApiClient:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self._sock = s
        return self

    def close(self) -> None:
        if self._sock is not None:
            try:  # wakes a thread blocked reading this socket and tells the server at once
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ApiClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _readline(self) -> bytes:
        assert self._sock is not None
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            self._buf += chunk

    def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return the raw response object."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        rid = self._next_id
        self._next_id += 1
        self._sock.sendall(orjson.dumps({"id": rid, "method": method, "params": dict(params or {})}) + b"\n")
        return orjson.loads(self._readline())

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """The result, or `ApiError` with the server's code and message."""
        resp = self.request(method, params)
        if not resp.get("ok"):
            err = resp.get("error") or {}
            raise ApiError(str(err.get("code", "error")), str(err.get("message", "unknown error")))
        return resp.get("result")

    def events(self, filters: Mapping[str, Any] | None = None,
               queue_size: int = DEFAULT_QUEUE_EVENTS) -> Iterator[dict[str, Any]]:
        """Subscribe and yield stream lines as dicts: events, and ``{"stream": {"dropped": n}}`` notices."""
        params: dict[str, Any] = {"queue_size": queue_size}
        if filters:
            params["filters"] = {k: v for k, v in filters.items() if v is not None}
        self.call("events.subscribe", params)
        assert self._sock is not None
        self._sock.settimeout(None)
        while True:
            try:
                line = self._readline()
            except ConnectionError:
                return
            if line:
                yield json.loads(line)

"""The syslog exporter: RFC 5424 messages with structured data, over UDP, TCP or a unix socket.

``{type: syslog, address: tcp://127.0.0.1:514, facility: local0}``; ``udp://host:port`` sends one
datagram per event (RFC 5426), ``tcp://host:port`` frames each message with octet counting (RFC 6587
section 3.4.1), ``unix:///dev/log`` sends datagrams to a local socket.

Each message is ``<PRI>1 TIME HOST sensorium PROCID MSGID [sensorium@32473 type=.. namespace=..
pod=.. binary=.. pid=..] {event JSON}``: MSGID is the event type, the severity comes from the event
type and the policy action (a kill or an override is a warning). Over TCP, a connection the collector
closed (restart) is noticed before the next write and reopened, so nothing is written into a dead
socket; a message in flight while the peer dies may still be lost (as with any syslog over TCP), and
when a send fails only the frames not yet handed to the kernel are sent again (`PartialWrite`).
UDP gives no delivery guarantee at all.
"""

from __future__ import annotations

import bisect
import os
import re
import select
import socket
from collections.abc import Mapping  # fast isinstance() (typing.Mapping is slow)
from typing import Any, Sequence
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sensorium import hookimpl
from sensorium.events import Event
from sensorium.hookspecs import PartialWrite
from sensorium.hookspecs import ExporterContext, ExporterSpec

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}

# Policy actions that stop or alter what a process did: reported as warnings.
ENFORCING_ACTIONS = frozenset({
    "KPROBE_ACTION_SIGKILL", "KPROBE_ACTION_OVERRIDE", "KPROBE_ACTION_NOTIFYENFORCER",
    "SIGKILL", "OVERRIDE", "NOTIFY_ENFORCER", "DENY", "BLOCK",
})


class SyslogOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(description="udp://host:port, tcp://host:port or unix:///path")
    facility: str = "local0"
    app_name: str = "sensorium"
    hostname: str | None = Field(default=None, description="HOSTNAME field; default: the node name")
    sd_id: str = Field(default="sensorium@32473", description="SD-ID of the structured data element")
    max_message_bytes: int = Field(default=65000, ge=480, le=16 * 1024 * 1024,
                                   description="Longer messages are truncated (and counted)")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    severity: dict[str, str] = Field(default_factory=dict,
                                     description="Override the severity per event type: {process_exec: notice}")

    @field_validator("address")
    @classmethod
    def _v_address(cls, v: str) -> str:
        parse_address(v)
        return v

    @field_validator("facility")
    @classmethod
    def _v_facility(cls, v: str) -> str:
        if v not in FACILITIES:
            raise ValueError(f"unknown facility {v!r} (one of: {', '.join(FACILITIES)})")
        return v

    @field_validator("severity")
    @classmethod
    def _v_severity(cls, v: dict[str, str]) -> dict[str, str]:
        for kind, sev in v.items():
            if sev not in SEVERITIES:
                raise ValueError(f"unknown severity {sev!r} for {kind} (one of: {', '.join(SEVERITIES)})")
        return v

    @field_validator("app_name", "hostname")
    @classmethod
    def _v_printable(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[\x21-\x7e]{1,255}", v):
            raise ValueError("must be printable ASCII without spaces")
        return v

    @field_validator("sd_id")
    @classmethod
    def _v_sd_id(cls, v: str) -> str:
        if not re.fullmatch(r'[\x21-\x7e]{1,32}', v) or any(c in v for c in '= ]"'):
            raise ValueError("an SD-ID is 1-32 printable ASCII characters without '=', ']' or '\"'")
        return v


def parse_address(addr: str) -> tuple[str, Any]:
    """``udp://h:p`` -> ("udp", (h, p)); ``unix:///p`` -> ("unix", "/p"); ValueError otherwise."""
    u = urlsplit(addr)
    if u.scheme in ("udp", "tcp"):
        try:
            port = u.port
        except ValueError:
            port = None
        if not u.hostname or port is None or u.path not in ("", "/"):
            raise ValueError(f"expected {u.scheme}://host:port, got {addr!r}")
        return u.scheme, (u.hostname, port)
    if u.scheme == "unix":
        if u.netloc or not u.path.startswith("/"):
            raise ValueError(f"expected unix:///absolute/path, got {addr!r}")
        return "unix", u.path
    raise ValueError(f"unsupported syslog address {addr!r} (udp://, tcp:// or unix://)")


# ---- RFC 5424 formatting --------------------------------------------------------------------------

_NON_PRINT = re.compile(r"[^\x21-\x7e]")


def _header_field(value: Any, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or the NILVALUE."""
    text = _NON_PRINT.sub("_", str(value or ""))[:limit]
    return text or "-"


def _sd_escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424_time(ev: Event) -> str:
    """RFC 5424 allows at most 6 fraction digits: microseconds, UTC."""
    t = ev.time  # 2026-11-26T15:20:01.123456789Z
    return t[:26] + "Z" if len(t) >= 27 else t


def severity_of(ev: Event, overrides: Mapping[str, str] | None = None) -> int:
    if overrides and ev.kind in overrides:
        return SEVERITIES[overrides[ev.kind]]
    body = ev.body if isinstance(ev.body, Mapping) else {}
    action = body.get("action")
    if isinstance(action, str) and action.upper() in ENFORCING_ACTIONS:
        return SEVERITIES["warning"]
    if ev.kind == "rate_limit_info":
        return SEVERITIES["warning"]
    if ev.kind == "process_exec":
        return SEVERITIES["info"]
    if ev.kind == "process_exit":
        return SEVERITIES["notice"] if body.get("signal") else SEVERITIES["info"]
    return SEVERITIES["notice"]  # kprobe, tracepoint, uprobe, lsm: a policy matched


def structured_data(ev: Event, sd_id: str) -> str:
    proc = ev.process if isinstance(ev.process, Mapping) else {}
    pod = proc.get("pod") if isinstance(proc.get("pod"), Mapping) else None
    params: list[tuple[str, Any]] = [("type", ev.kind)]
    if pod is not None:
        params += [("namespace", pod.get("namespace")), ("pod", pod.get("name"))]
    params += [("binary", proc.get("binary")), ("pid", proc.get("pid"))]
    body = ev.body if isinstance(ev.body, Mapping) else {}
    params += [("policy", body.get("policy_name")), ("action", body.get("action"))]
    inner = " ".join(f'{k}="{_sd_escape(v)}"' for k, v in params if v is not None and v != "")
    return f"[{sd_id} {inner}]"


def format_message(ev: Event, opts: SyslogOptions, hostname: str, procid: int) -> bytes:
    pri = FACILITIES[opts.facility] * 8 + severity_of(ev, opts.severity)
    header = (
        f"<{pri}>1 {rfc5424_time(ev)} {_header_field(hostname, 255)} {_header_field(opts.app_name, 48)} "
        f"{procid} {_header_field(ev.kind, 32)} {structured_data(ev, opts.sd_id)} "
    )
    return header.encode("utf-8") + ev.json()


# ---- the exporter ---------------------------------------------------------------------------------


class SyslogExporter:
    def __init__(self, options: SyslogOptions, ctx: ExporterContext) -> None:
        self.options = options
        self.ctx = ctx
        self.transport, self.target = parse_address(options.address)
        self.hostname = options.hostname or ctx.node_name
        self.procid = os.getpid()
        self._sock: socket.socket | None = None

    def open(self) -> None:
        if self.transport == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            host, port = self.target
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM)
            family = infos[0][0]
            s = socket.socket(family, socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM)
            self.target = infos[0][4]
        try:
            s.settimeout(self.options.connect_timeout_s)
            # A connected datagram socket reports ICMP port unreachable / a missing unix socket as
            # an error on a later send, so a dead collector shows up as failures, not silence.
            s.connect(self.target)
        except OSError:
            s.close()
            raise
        self._sock = s

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def flush(self) -> None:
        pass  # every write goes to the socket immediately

    def _peer_closed(self) -> bool:
        """TCP: did the collector close its side (EOF or error readable without blocking)?"""
        assert self._sock is not None
        r, _, _ = select.select([self._sock], [], [], 0)
        if not r:
            return False
        try:
            data = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return data == b""

    def _message(self, ev: Event) -> bytes:
        msg = format_message(ev, self.options, self.hostname, self.procid)
        if len(msg) > self.options.max_message_bytes:
            self.ctx.count("truncated")
            msg = msg[: self.options.max_message_bytes]
        return msg

    def write_batch(self, events: Sequence[Event]) -> None:
        if self._sock is None:
            self.open()
        assert self._sock is not None
        if self.transport == "tcp":
            if self._peer_closed():
                self.close()
                self.open()  # the collector restarted between batches: nothing is lost
            frames, ends, total = [], [], 0
            for ev in events:
                msg = self._message(ev)
                frame = b"%d " % len(msg) + msg
                frames.append(frame)
                total += len(frame)
                ends.append(total)
            data = memoryview(b"".join(frames))
            sent = 0
            try:
                while sent < total:
                    sent += self._sock.send(data[sent:])
            except OSError as exc:
                # Frames wholly handed to the kernel are not re-sent; a cut frame dies with this
                # connection (the collector drops an incomplete frame) and is sent again whole.
                done = bisect.bisect_right(ends, sent)
                if done:
                    raise PartialWrite(done, f"send: {exc}") from exc
                raise
            return
        for i, ev in enumerate(events):
            try:
                self._sock.send(self._message(ev))
            except OSError as exc:
                if i:
                    raise PartialWrite(i, f"send: {exc}") from exc
                raise


@hookimpl
def sensorium_exporter() -> ExporterSpec:
    return ExporterSpec(
        name="syslog",
        description="RFC 5424 syslog with structured data over udp://, tcp:// (octet counting) or unix://",
        options=SyslogOptions,
        factory=SyslogExporter,
    )

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

UDP cannot confirm delivery, only report a refusal. The socket is connected and asks for the ICMP
errors themselves (IP_RECVERR): each "port unreachable" quotes the start of the datagram it refused, so
the exporter knows which event was refused and sends it again, in order, once the collector is back.
A refusal surfaces on the next send (the kernel holds it for the socket); after a batch's last datagram
the exporter waits up to ``udp_confirm_ms`` for one. Events sent with no refusal are counted
``unconfirmed``, never ``delivered``: a datagram can still be dropped silently (a full receive buffer,
a firewall that drops instead of rejecting, ICMP rate limits, a refusal slower than the window, counted
as ``refused_after_window``). See docs/reliability.md, "What UDP can and cannot promise".
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import os
import re
import select
import socket
import struct
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sensorium.events import Event
from sensorium.hookspecs import ExporterContext, ExporterSpec, PartialWrite, TargetError
from sensorium.provide import provide
from sensorium.targets import check_socket_target

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
    udp_confirm_ms: float = Field(default=10.0, ge=0, le=5000,
                                  description="UDP: after a batch, wait this long for a refusal (ICMP port "
                                  "unreachable) of its last datagrams; about one round trip to the collector")
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


IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3
_EXTENDED_ERR = struct.Struct("=IBBB")  # struct sock_extended_err: ee_errno, ee_origin, ee_type, ee_code, ...
RECENT_DATAGRAMS = 4096  # earlier datagrams kept to recognise a late refusal


def _icmp_errno(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The errno of an ICMP error read from the error queue (None for other entries)."""
    for level, kind, data in ancillary:
        if (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)) \
                and len(data) >= _EXTENDED_ERR.size:
            ee_errno, origin, _type, _code = _EXTENDED_ERR.unpack_from(data)
            if origin in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6):
                return ee_errno
    return None


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
    body = ev.body
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
    proc = ev.process
    pod = proc.get("pod") if isinstance(proc.get("pod"), Mapping) else None
    params: list[tuple[str, Any]] = [("type", ev.kind)]
    if pod is not None:
        params += [("namespace", pod.get("namespace")), ("pod", pod.get("name"))]
    params += [("binary", proc.get("binary")), ("pid", proc.get("pid"))]
    body = ev.body
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
        # UDP: datagrams of earlier batches, to recognise a refusal that comes after its batch was counted.
        self._recent: collections.deque[bytes] = collections.deque(maxlen=RECENT_DATAGRAMS)
        self._matched = False  # whether the last `_refusals` call read any ICMP error
        # A UDP datagram cannot be larger than this (IPv4: 65535 - 20 - 8); longer messages are truncated.
        self._max_bytes = options.max_message_bytes
        if self.transport == "udp":
            self._max_bytes = min(self._max_bytes, 65507)

    def open(self) -> None:
        if self.transport == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            host, port = self.target
            kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
            infos = socket.getaddrinfo(host, port, type=kind)
            s = socket.socket(infos[0][0], kind)
            self.target = infos[0][4]
        try:
            s.settimeout(self.options.connect_timeout_s)
            if self.transport == "udp":
                # Queue every ICMP error with the start of the datagram it refers to, so that a refusal
                # names the event it refused (a plain connected socket only says "one of them, once").
                if s.family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
                else:
                    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            # A connected datagram socket reports ICMP port unreachable / a missing unix socket as
            # an error on a later send, so a dead collector shows up as failures, not silence.
            s.connect(self.target)
        except OSError:
            s.close()
            raise
        self._sock = s
        self._recent.clear()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

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
        if len(msg) > self._max_bytes:
            self.ctx.count("truncated")
            msg = msg[: self._max_bytes]
        return msg

    def write_batch(self, events: Sequence[Event]) -> int | None:
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
            return None
        if self.transport == "udp":
            return self._write_udp(events)
        for i, ev in enumerate(events):
            try:
                # unix datagrams land in the collector's receive queue or fail here: delivered or not, known
                self._sock.send(self._message(ev))
            except OSError as exc:
                if i:
                    raise PartialWrite(i, f"send: {exc}") from exc
                raise
        return None

    # ---- UDP: refusals, and what cannot be confirmed ---------------------------------------------

    def _write_udp(self, events: Sequence[Event]) -> int:
        """Send one datagram per event; returns how many went out unconfirmed (all of them), or raises
        `PartialWrite` up to the first datagram the collector refused (it and those after it are sent again)."""
        sock = self._sock
        assert sock is not None
        sent: list[bytes] = []
        refused: dict[int, int] = {}  # index in ``sent`` -> errno of its ICMP error
        for ev in events:
            msg = self._message(ev)
            try:
                sock.send(msg)
            except OSError as exc:
                # An error the kernel held for this socket (a refusal of an earlier datagram), or this one
                # could not be sent at all. Either way this datagram did not go out.
                self._refusals(sent, refused)
                if not refused and exc.errno == errno.ECONNREFUSED and sent and not self._matched:
                    # No quote to name it: the kernel reports a refusal on the next send, so it was the last one.
                    refused[len(sent) - 1] = errno.ECONNREFUSED
                self._raise_refused(sent, refused, exc)
            sent.append(msg)
        # The refusal of the last datagrams comes after them: wait one window (on this host it is here already).
        self._refusals(sent, refused, wait_s=self.options.udp_confirm_ms / 1000.0)
        if refused:
            self._raise_refused(sent, refused, None)
        self._recent.extend(sent)
        return len(sent)

    def _raise_refused(self, sent: list[bytes], refused: dict[int, int], exc: OSError | None) -> None:
        first = min(refused) if refused else len(sent)
        if refused:
            self.ctx.count("refused", len(refused))
            err = refused[first]
            why = f"collector refused {len(refused)} datagram(s): {os.strerror(err)}"
            code = "peer_refused" if err == errno.ECONNREFUSED else "peer_unreachable"
        else:
            why, code = f"send: {exc}", None
        # Everything before the first refused datagram went out without a refusal: unconfirmed.
        raise PartialWrite(first, why, code=code, unconfirmed=first) from exc

    def _refusals(self, sent: list[bytes], refused: dict[int, int], wait_s: float = 0.0) -> None:
        """Read the socket's queued ICMP errors (waiting up to ``wait_s`` for the first) and mark the datagrams
        of ``sent`` they quote. A quote of an earlier batch's datagram is counted as refused_after_window."""
        sock = self._sock
        assert sock is not None
        self._matched = False
        if wait_s > 0:
            poller = select.poll()
            poller.register(sock, select.POLLERR)
            poller.poll(wait_s * 1000.0)
        # Non-blocking while reading the error queue: with a timeout set, Python would wait for the socket
        # to become readable before every call, which an empty error queue never makes it.
        sock.settimeout(0.0)
        try:
            entries = []
            while True:
                try:
                    quote, anc, _flags, _addr = sock.recvmsg(2048, 512, socket.MSG_ERRQUEUE)
                except OSError:  # BlockingIOError: the queue is empty
                    break
                entries.append((quote, anc))
        finally:
            sock.settimeout(self.options.connect_timeout_s)
        for quote, anc in entries:
            err = _icmp_errno(anc)
            if err is None:
                continue
            self._matched = True
            j = next((k for k, m in enumerate(sent) if k not in refused and m.startswith(quote)), None)
            if j is not None:
                refused[j] = err
            elif any(m.startswith(quote) for m in self._recent):
                # Counted unconfirmed with an earlier batch already: the window was shorter than the path.
                self.ctx.count("refused_after_window")
                self.ctx.log.warning("syslog: a datagram was refused after udp_confirm_ms (%.0f ms); raise it to "
                                     "about one round trip to %s", self.options.udp_confirm_ms, self.options.address)
            else:
                self.ctx.count("refusals_unmatched")




def check_target(options: SyslogOptions) -> None:
    """A unix socket path that is a directory, not a socket, or on /proc or /sys can never be written; a
    port 0 cannot be sent to. A collector that is not up yet is not an error (the runner retries)."""
    transport, target = parse_address(options.address)
    if transport == "unix":
        check_socket_target(target, key="address")
    elif target[1] == 0:
        raise TargetError(f"{options.address}: port 0 cannot be sent to", key="address")


sensorium_exporter = provide(ExporterSpec(
    name="syslog",
    description="RFC 5424 syslog with structured data over udp://, tcp:// (octet counting) or unix://",
    options=SyslogOptions, factory=SyslogExporter, check=check_target,
))

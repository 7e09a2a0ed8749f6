"""The user-space actions of a policy: ``GetUrl`` (an HTTP GET of ``argUrl``) and ``DnsLookup`` (a DNS query for
``argFqdn``), made by the agent when a selector with one of them matches, as Tetragon does, typically to tell an
external canary service that something happened.

A workload decides how often these selectors match, so the requests are the agent's to bound, never the
workload's: the ring reader only *offers* a request (`ActionRunner.submit`, which never blocks and never does I/O);
a token bucket per (policy, action) refuses what goes past the configured rate; a bounded queue feeds a small pool
of worker threads that make each request with a timeout. Every request ends in exactly one counter of its policy
and action: sent, failed, dropped (rate limit) or dropped (queue full); `sensorium status` shows them
(``actions``), and what is still queued at stop is counted as dropped (stopped).

DNS goes to the system resolver (``getaddrinfo``), or, with ``actions.dns_resolver`` set, as one A query over UDP
to that server, written and parsed here (RFC 1035), so a test or a node can name a resolver of its own.
"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import logging
import os
import queue
import re
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from typing import Any

__all__ = ["ACTIONS", "ActionRunner", "ActionStats", "check_url", "check_fqdn", "parse_host_port", "dns_query",
           "parse_dns_response", "MAX_URL_LEN"]

log = logging.getLogger("sensorium.actions")

ACTIONS = ("GetUrl", "DnsLookup")
MAX_URL_LEN = 2048
MAX_FQDN_LEN = 253
URL_SCHEMES = ("http", "https")
# What a GET reads of the answer at most: the canary only needs to see the request.
MAX_BODY_BYTES = 64 * 1024
# Distinct (policy, action) keys counted; policies are bounded (MAX_POLICIES) and so is this.
MAX_KEYS = 4096

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_CTRL = re.compile(r"[\x00-\x20\x7f]")


# ---- what a policy may name (checked at load, `sensorium.policy`) ------------------------------------------
def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a GetUrl target (None: it can): http or https, a host, no credentials, no spaces
    or control characters, at most `MAX_URL_LEN` bytes."""
    if len(url.encode()) > MAX_URL_LEN:
        return f"the URL is longer than {MAX_URL_LEN} bytes"
    if _CTRL.search(url):
        return "the URL holds a space or a control character"
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if u.scheme.lower() not in URL_SCHEMES:
        return (f"scheme {u.scheme + '://' if u.scheme else '(none)'} is not allowed: only http:// and https:// "
                "URLs are requested")
    if not u.hostname:
        return "the URL names no host"
    if u.username is not None or u.password is not None:
        return "credentials in the URL are not allowed (they would be sent from every node)"
    if port == 0:
        return "port 0 is not a port"
    return None


def check_fqdn(name: str) -> str | None:
    """Why ``name`` cannot be a DnsLookup name (None: it can): dot-separated labels of letters, digits, '-' and
    '_', each 1-63 bytes, at most 253 in all (a final dot allowed)."""
    n = name[:-1] if name.endswith(".") else name
    if not n:
        return "the name is empty"
    if len(n) > MAX_FQDN_LEN:
        return f"the name is longer than {MAX_FQDN_LEN} bytes"
    for label in n.split("."):
        if not _LABEL.match(label):
            return f"label {label!r} is not a DNS label (letters, digits, '-' and '_', 1 to 63, no '-' at an end)"
    return None


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError naming what is wrong."""
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]+):(\d+)$", text)
    if not m:
        raise ValueError(f"{text!r} is not host:port (an IPv6 address in brackets: [::1]:53)")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return m.group(1), port


# ---- DNS on the wire (RFC 1035), for a named resolver ---------------------------------------------------------
def dns_query(name: str, qid: int) -> bytes:
    """One A query for ``name`` with recursion desired."""
    n = name[:-1] if name.endswith(".") else name
    qname = b"".join(bytes([len(p)]) + p for p in (label.encode("ascii") for label in n.split("."))) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def parse_dns_response(data: bytes, qid: int) -> tuple[int, list[str]]:
    """(rcode, the A records' addresses) of an answer to query ``qid``; ValueError for anything else (another
    id, not an answer, cut short, a pointer loop)."""
    if len(data) < 12:
        raise ValueError("shorter than a DNS header")
    rid, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", data)
    if rid != qid:
        raise ValueError(f"answer to another query (id {rid}, asked {qid})")
    if not flags & 0x8000:
        raise ValueError("not an answer (QR is 0)")
    pos = 12

    def skip_name(p: int) -> int:
        for _ in range(128):  # labels and one final pointer; a longer walk is hostile
            if p >= len(data):
                raise ValueError("a name runs past the end")
            ln = data[p]
            if ln == 0:
                return p + 1
            if ln & 0xC0 == 0xC0:
                if p + 2 > len(data):
                    raise ValueError("a name pointer is cut")
                return p + 2
            if ln & 0xC0:
                raise ValueError("a label of an unknown kind")
            p += 1 + ln
        raise ValueError("a name of too many labels")

    for _ in range(qd):
        pos = skip_name(pos) + 4
    addrs: list[str] = []
    for _ in range(an):
        pos = skip_name(pos)
        if pos + 10 > len(data):
            raise ValueError("an answer record is cut")
        rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
        pos += 10
        if pos + rdlen > len(data):
            raise ValueError("an answer's data is cut")
        if rtype == 1 and rclass == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += rdlen
    return flags & 0xF, addrs


# ---- counters ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ActionStats:
    """Where the requests of one policy and action went: every offered request ends in exactly one of these."""

    sent: int = 0              # made and answered (an HTTP status, a DNS answer: whatever the answer said)
    failed: int = 0            # made and not answered: timeout, refused, unresolvable, a malformed answer
    dropped_rate_limit: int = 0
    dropped_queue_full: int = 0
    dropped_stopped: int = 0   # still queued when the agent stopped
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sent": self.sent, "failed": self.failed,
                             "dropped": {"rate_limit": self.dropped_rate_limit, "queue_full": self.dropped_queue_full,
                                         "stopped": self.dropped_stopped}}
        if self.last_error:
            d["last_error"] = self.last_error
        return d


@dataclasses.dataclass
class _Bucket:
    tokens: float
    at: float


_STOP = object()


class ActionRunner:
    """The agent's one maker of GetUrl and DnsLookup requests (see the module docstring).

    rate_per_s / burst: the token bucket of each (policy, action); queue_size: requests waiting at most;
    workers: threads making them; timeout_s: one request's connect+answer time at most; dns_resolver:
    ``(host, port)`` of the DNS server to ask, None for the system resolver."""

    def __init__(self, *, rate_per_s: float = 1.0, burst: int = 5, queue_size: int = 64, workers: int = 1,
                 timeout_s: float = 2.0, dns_resolver: tuple[str, int] | None = None,
                 clock: Any = time.monotonic) -> None:
        self.rate_per_s, self.burst = float(rate_per_s), int(burst)
        self.timeout_s = float(timeout_s)
        self.dns_resolver = dns_resolver
        self.workers = int(workers)
        self._clock = clock
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=int(queue_size))
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._stats: dict[tuple[str, str], ActionStats] = {}
        self._overflow = ActionStats()  # keys past MAX_KEYS (cannot happen with bounded policies; counted anyway)
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- the reader's side: never blocks, never does I/O ------------------------------------------------------
    def submit(self, policy: str, action: str, target: str) -> bool:
        """Offer one request (``action`` GetUrl: ``target`` a URL; DnsLookup: a name) for ``policy``; True when
        it was queued. Refused requests are counted (rate limit, queue full, stopped), never silently lost."""
        key = (policy, action)
        with self._lock:
            st = self._stat(key)
            if self._stopping:
                st.dropped_stopped += 1
                return False
            now = self._clock()
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= MAX_KEYS:
                    self._buckets.clear()  # a fresh full bucket for every key: bounded memory before precision
                b = self._buckets[key] = _Bucket(float(self.burst), now)
            else:
                b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate_per_s)
                b.at = now
            if b.tokens < 1.0:
                st.dropped_rate_limit += 1
                return False
            try:
                self._queue.put_nowait((key, action, target))
            except queue.Full:
                st.dropped_queue_full += 1
                return False
            b.tokens -= 1.0
            return True

    def _stat(self, key: tuple[str, str]) -> ActionStats:
        st = self._stats.get(key)
        if st is None:
            if len(self._stats) >= MAX_KEYS:
                return self._overflow
            st = self._stats[key] = ActionStats()
        return st

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"sensorium-actions-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop taking requests; what is queued is dropped and counted; wait up to ``timeout_s`` for the request
        in flight in each worker (its own timeout bounds it)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                with self._lock:
                    self._stat(item[0]).dropped_stopped += 1
        for _ in self._threads:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:  # a worker takes one soon; it sees _stopping anyway
                pass
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def status(self) -> dict[str, Any]:
        """Per policy, per action: the counters (`ActionStats`), plus the limits in force."""
        with self._lock:
            per: dict[str, dict[str, Any]] = {}
            for (policy, action), st in sorted(self._stats.items()):
                per.setdefault(policy, {})[action] = st.as_dict()
            out: dict[str, Any] = {
                "rate_per_s": self.rate_per_s, "burst": self.burst, "queue_size": self._queue.maxsize,
                "queued": self._queue.qsize(), "workers": self.workers, "timeout_s": self.timeout_s,
                "dns_resolver": (f"{self.dns_resolver[0]}:{self.dns_resolver[1]}" if self.dns_resolver else "system"),
                "policies": per,
            }
            if self._overflow != ActionStats():
                out["other"] = self._overflow.as_dict()
            return out

    def stats(self, policy: str, action: str) -> ActionStats:
        """A copy of one key's counters (tests, metrics)."""
        with self._lock:
            return dataclasses.replace(self._stats.get((policy, action)) or ActionStats())

    # -- the workers -------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            key, action, target = item
            if self._stopping:
                with self._lock:
                    self._stat(key).dropped_stopped += 1
                continue
            try:
                if action == "GetUrl":
                    self._get_url(target)
                else:
                    self._dns_lookup(target)
            except Exception as exc:  # noqa: BLE001 - a failed request is counted, the worker goes on
                why = f"{type(exc).__name__}: {exc}"[:200]
                with self._lock:
                    st = self._stat(key)
                    st.failed += 1
                    st.last_error = why
                log.debug("%s %s for policy %s failed: %s", action, target, key[0], why)
            else:
                with self._lock:
                    self._stat(key).sent += 1

    def _get_url(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        scheme = u.scheme.lower()
        if scheme not in URL_SCHEMES or not u.hostname:  # checked at load; a guard of what reaches the wire
            raise ValueError(f"not an http(s) URL: {url!r}")
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=self.timeout_s,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        try:
            # No redirects are followed: the request is a notification, and a redirect could lead anywhere.
            conn.request("GET", path, headers={"User-Agent": f"sensorium/{_version()}", "Connection": "close"})
            resp = conn.getresponse()
            left = MAX_BODY_BYTES
            while left > 0 and time.monotonic() < deadline:
                chunk = resp.read(min(left, 16384))
                if not chunk:
                    break
                left -= len(chunk)
        finally:
            conn.close()

    def _dns_lookup(self, name: str) -> None:
        if self.dns_resolver is None:
            socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
            return
        host, port = self.dns_resolver
        fam = socket.AF_INET6 if _is_v6(host) else socket.AF_INET
        qid = int.from_bytes(os.urandom(2), "big")
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.settimeout(self.timeout_s)
            s.connect((host, port))
            s.send(dns_query(name, qid))
            deadline = time.monotonic() + self.timeout_s
            while True:  # answers to other ids (late, spoofed) are skipped until the deadline
                s.settimeout(max(0.001, deadline - time.monotonic()))
                data = s.recv(4096)
                try:
                    rcode, _addrs = parse_dns_response(data, qid)
                except ValueError:
                    if time.monotonic() >= deadline:
                        raise
                    continue
                if rcode not in (0, 3):  # NOERROR, NXDOMAIN: the server answered the question
                    raise OSError(f"the DNS server answered with rcode {rcode}")
                return


def _is_v6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _version() -> str:
    from sensorium import __version__

    return str(__version__)


def runner_from_config(cfg: Any) -> ActionRunner:
    """An `ActionRunner` from the agent config's ``actions`` section (`sensorium.config.ActionsConfig`)."""
    res = parse_host_port(cfg.dns_resolver) if cfg.dns_resolver else None
    return ActionRunner(rate_per_s=cfg.rate_per_s, burst=cfg.burst, queue_size=cfg.queue_size,
                        workers=cfg.workers, timeout_s=cfg.timeout_s, dns_resolver=res)

"""Decode the network sensor's ring records (event.h) into Tetragon-shaped ``process_kprobe`` events.

TCP records become ``tcp_connect`` / ``inet_csk_accept`` / ``tcp_close`` and UDP records
``udp_sendmsg`` / ``udp_connect``, each with one ``sock_arg`` (Tetragon's KprobeSock: family, type,
protocol, mark, priority, saddr, daddr, sport, dport, cookie, state) plus our own fields
(``policy_name: "network"``, ``mechanism``, ``bytes_sent``/``bytes_received`` on close), which only the
``extended`` event format writes out (`sensorium.schema`).

Records are kernel input and treated as such: a short record or an unknown type is counted and
skipped, never raised. The kernel socket address is never exported: it becomes an opaque cookie
(a keyed hash, stable for the life of the agent) so connect and close of one socket can be joined
without leaking kernel addresses (KASLR) to every event sink.
"""

from __future__ import annotations

import ctypes
import hashlib
import secrets
import socket
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from sensorium.bpf.records import SensoriumHdr

if TYPE_CHECKING:
    from sensorium.events import Event
    from sensorium.hookspecs import SensorContext

NET_REC_CONNECT = 1
NET_REC_ACCEPT = 2
NET_REC_CLOSE = 3
NET_REC_UDP = 4

NET_F_OWNER_UNKNOWN = 0x0001
NET_F_NOT_ESTABLISHED = 0x0002

NET_UDP_SENDMSG = 1
NET_UDP_CONNECT = 2

TCP_MECHANISM = "tracepoint sock/inet_sock_set_state"
POLICY_NAME = "network"

FAMILIES = {2: "AF_INET", 10: "AF_INET6"}
PROTOCOLS = {6: "IPPROTO_TCP", 17: "IPPROTO_UDP"}
SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}
TCP_STATES = {
    1: "TCP_ESTABLISHED", 2: "TCP_SYN_SENT", 3: "TCP_SYN_RECV", 4: "TCP_FIN_WAIT1", 5: "TCP_FIN_WAIT2",
    6: "TCP_TIME_WAIT", 7: "TCP_CLOSE", 8: "TCP_CLOSE_WAIT", 9: "TCP_LAST_ACK", 10: "TCP_LISTEN",
    11: "TCP_CLOSING", 12: "TCP_NEW_SYN_RECV",
}


class NetTcpRecord(ctypes.Structure):
    _fields_ = [
        ("hdr", SensoriumHdr),
        ("skaddr", ctypes.c_uint64),
        ("bytes_acked", ctypes.c_uint64),
        ("bytes_received", ctypes.c_uint64),
        ("open_ktime", ctypes.c_uint64),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("protocol", ctypes.c_uint16),
        ("netns", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("sk_type", ctypes.c_uint16),
        ("oldstate", ctypes.c_uint8),
        ("newstate", ctypes.c_uint8),
    ]


class NetUdpRecord(ctypes.Structure):
    _fields_ = [
        ("hdr", SensoriumHdr),
        ("cookie", ctypes.c_uint64),
        ("daddr", ctypes.c_uint8 * 16),
        ("saddr", ctypes.c_uint8 * 16),
        ("dport", ctypes.c_uint16),
        ("sport", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("protocol", ctypes.c_uint16),
        ("hook", ctypes.c_uint16),
        ("sk_type", ctypes.c_uint16),
        ("_pad", ctypes.c_uint32),
    ]


RECORD_LAYOUTS: dict[str, type[ctypes.Structure]] = {
    "sensorium_hdr": SensoriumHdr,
    "net_tcp_record": NetTcpRecord,
    "net_udp_record": NetUdpRecord,
}

_HDR_SIZE = ctypes.sizeof(SensoriumHdr)
_TCP_SIZE = ctypes.sizeof(NetTcpRecord)
_UDP_SIZE = ctypes.sizeof(NetUdpRecord)


def format_addr(family: int, raw: bytes) -> str:
    """An address from event.h's 16-byte field (IPv4 in the first 4 bytes), or "" for an unknown family."""
    if family == 2:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == 10:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return ""


class NetworkDecoder:
    """Turns batches of raw records into events; joins the owner from the process cache."""

    def __init__(self, ctx: "SensorContext", *, udp_dedup_seconds: float = 10.0) -> None:
        self.ctx = ctx
        self.counters: Counter[str] = Counter()
        self.udp_dedup_seconds = udp_dedup_seconds
        self._cookie_key = secrets.token_bytes(16)

    def cookie(self, skaddr: int) -> str:
        """Opaque socket id: keyed hash of the kernel address (uint64 as a string, as proto3 JSON has it)."""
        h = hashlib.blake2b(skaddr.to_bytes(8, "little"), key=self._cookie_key, digest_size=8)
        return str(int.from_bytes(h.digest(), "little"))

    def decode_batch(self, records: Sequence[bytes]) -> list["Event"]:
        out: list[Event] = []
        for raw in records:
            if len(raw) < _HDR_SIZE:
                self.counters["short"] += 1
                continue
            rtype = int.from_bytes(raw[0:2], "little")
            if rtype in (NET_REC_CONNECT, NET_REC_ACCEPT, NET_REC_CLOSE):
                if len(raw) < _TCP_SIZE:
                    self.counters["bad_tcp_size"] += 1
                    continue
                ev = self._tcp(rtype, NetTcpRecord.from_buffer_copy(raw[:_TCP_SIZE]))
            elif rtype == NET_REC_UDP:
                if len(raw) < _UDP_SIZE:
                    self.counters["bad_udp_size"] += 1
                    continue
                ev = self._udp(NetUdpRecord.from_buffer_copy(raw[:_UDP_SIZE]))
            else:
                self.counters["unknown_type"] += 1
                continue
            if ev is not None:
                out.append(ev)
        return out

    # ---- records --------------------------------------------------------------------------------

    def _owner(self, pid: int, unknown: bool) -> dict[str, Any]:
        if unknown:
            # No owner was seen (the socket predates the agent): an empty process rather than a wrong
            # one (the task running at that moment is whoever the softirq interrupted).
            return {"process": {}, "owner_unknown": True}
        process, parent = self.ctx.process_cache.get(pid)
        body: dict[str, Any] = {"process": process if process is not None else {"pid": pid}}
        if parent is not None:
            body["parent"] = parent
        return body

    def _tcp(self, rtype: int, r: NetTcpRecord) -> "Event | None":
        fam = r.family
        if fam not in FAMILIES:
            self.counters["bad_family"] += 1
            return None
        flags = r.hdr.flags
        failed = bool(flags & NET_F_NOT_ESTABLISHED)
        if rtype == NET_REC_CONNECT or (rtype == NET_REC_CLOSE and failed):
            function = "tcp_connect"
        elif rtype == NET_REC_ACCEPT:
            function = "inet_csk_accept"
        else:
            function = "tcp_close"
        # A connect is reported in the state the socket has at Tetragon's hook point, tcp_connect(): SYN_SENT
        # (the record comes when it leaves it, to ESTABLISHED or, failed, to CLOSE); accept in ESTABLISHED,
        # close as TCP_CLOSE.
        state = r.oldstate if failed or rtype == NET_REC_CONNECT else r.newstate
        sock = {
            "family": FAMILIES[fam],
            "type": SOCK_TYPES.get(r.sk_type, str(r.sk_type)),
            "protocol": PROTOCOLS.get(r.protocol, str(r.protocol)),
            "mark": r.mark,
            "priority": r.priority,
            "saddr": format_addr(fam, bytes(r.saddr)),
            "daddr": format_addr(fam, bytes(r.daddr)),
            "sport": r.sport,
            "dport": r.dport,
            "cookie": self.cookie(r.skaddr),
            "state": TCP_STATES.get(state, str(state)),
        }
        body = self._owner(r.hdr.pid, bool(flags & NET_F_OWNER_UNKNOWN))
        body.update({
            "function_name": function,
            "args": [{"sock_arg": sock}],
            "action": "KPROBE_ACTION_POST",
            "policy_name": POLICY_NAME,
            "mechanism": TCP_MECHANISM,
            "netns": r.netns,
        })
        if failed:
            body["connect_failed"] = True
        elif rtype == NET_REC_CLOSE:
            body["bytes_sent"] = r.bytes_acked
            body["bytes_received"] = r.bytes_received
            if r.open_ktime and r.hdr.ktime >= r.open_ktime:
                body["duration_ns"] = r.hdr.ktime - r.open_ktime
        self.counters[function] += 1
        return self.ctx.make_event("process_kprobe", body, r.hdr.ktime)

    def _udp(self, r: NetUdpRecord) -> "Event | None":
        fam = r.family
        if fam not in FAMILIES or r.hook not in (NET_UDP_SENDMSG, NET_UDP_CONNECT):
            self.counters["bad_udp"] += 1
            return None
        function = "udp_sendmsg" if r.hook == NET_UDP_SENDMSG else "udp_connect"
        mechanism = ("cgroup/sendmsg" if r.hook == NET_UDP_SENDMSG else "cgroup/connect") + ("4" if fam == 2 else "6")
        sock: dict[str, Any] = {
            "family": FAMILIES[fam],
            "type": SOCK_TYPES.get(r.sk_type, str(r.sk_type)),
            "protocol": PROTOCOLS.get(r.protocol, str(r.protocol)),
            "daddr": format_addr(fam, bytes(r.daddr)),
            "dport": r.dport,
            "cookie": str(r.cookie),
        }
        if r.sport:
            sock["saddr"] = format_addr(fam, bytes(r.saddr))
            sock["sport"] = r.sport
        body = self._owner(r.hdr.pid, False)
        body.update({
            "function_name": function,
            "args": [{"sock_arg": sock}],
            "action": "KPROBE_ACTION_POST",
            "policy_name": POLICY_NAME,
            "mechanism": mechanism,
            "dedup_window_s": self.udp_dedup_seconds,
        })
        self.counters[function] += 1
        return self.ctx.make_event("process_kprobe", body, r.hdr.ktime)

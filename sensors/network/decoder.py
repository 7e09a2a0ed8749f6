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
from typing import TYPE_CHECKING, Any

from sensorium.bpf.decoding import BadRecord, RecordDecoder
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


_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class NetTcpRecord(ctypes.Structure):
    _fields_ = [
        ("hdr", SensoriumHdr), ("skaddr", _u64), ("bytes_acked", _u64), ("bytes_received", _u64), ("open_ktime", _u64),
        ("saddr", _u8 * 16), ("daddr", _u8 * 16), ("sport", _u16), ("dport", _u16), ("family", _u16),
        ("protocol", _u16), ("netns", _u32), ("mark", _u32), ("priority", _u32),
        ("sk_type", _u16), ("oldstate", _u8), ("newstate", _u8),
    ]


class NetUdpRecord(ctypes.Structure):
    _fields_ = [
        ("hdr", SensoriumHdr), ("cookie", _u64), ("daddr", _u8 * 16), ("saddr", _u8 * 16), ("dport", _u16),
        ("sport", _u16), ("family", _u16), ("protocol", _u16), ("hook", _u16), ("sk_type", _u16), ("_pad", _u32),
    ]


RECORD_LAYOUTS: dict[str, type[ctypes.Structure]] = {
    "sensorium_hdr": SensoriumHdr, "net_tcp_record": NetTcpRecord, "net_udp_record": NetUdpRecord,
}


def format_addr(family: int, raw: bytes) -> str:
    """An address from event.h's 16-byte field (IPv4 in the first 4 bytes), or "" for an unknown family."""
    if family == 2:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == 10:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return ""


class NetworkDecoder(RecordDecoder):
    """Turns batches of raw records into events; joins the owner from the process cache."""

    def __init__(self, ctx: SensorContext, *, udp_dedup_seconds: float = 10.0) -> None:
        tcp = ("tcp", NetTcpRecord, self._tcp)
        super().__init__({NET_REC_CONNECT: tcp, NET_REC_ACCEPT: tcp, NET_REC_CLOSE: tcp,
                          NET_REC_UDP: ("udp", NetUdpRecord, self._udp)})
        self.ctx = ctx
        self.udp_dedup_seconds = udp_dedup_seconds
        self._cookie_key = secrets.token_bytes(16)

    def cookie(self, skaddr: int) -> str:
        """Opaque socket id: keyed hash of the kernel address (uint64 as a string, as proto3 JSON has it)."""
        h = hashlib.blake2b(skaddr.to_bytes(8, "little"), key=self._cookie_key, digest_size=8)
        return str(int.from_bytes(h.digest(), "little"))

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

    def _tcp(self, r: NetTcpRecord, raw: bytes) -> Event:
        fam, rtype = r.family, r.hdr.type
        if fam not in FAMILIES:
            raise BadRecord("family")
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

    def _udp(self, r: NetUdpRecord, raw: bytes) -> Event:
        fam = r.family
        if fam not in FAMILIES or r.hook not in (NET_UDP_SENDMSG, NET_UDP_CONNECT):
            raise BadRecord("udp")
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

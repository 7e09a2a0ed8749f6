"""The values policy operators compare, checked and converted for the kernel: socket addresses, ports,
protocols and families (matchArgs SAddr/DPort/Protocol/...), and Linux capability names (matchCapabilities).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

__all__ = ["sock_value", "ADDR_OPERATORS", "PORT_OPERATORS", "PRIV_PORT_OPERATORS", "SOCK_FAMILIES",
           "SOCK_PROTOCOLS", "TCP_STATES", "CAPABILITIES"]

# Socket operators: their values are checked by `sock_value` (CIDRs, ports and ranges, protocol/family names).
ADDR_OPERATORS = ("SAddr", "NotSAddr", "DAddr", "NotDAddr")
PORT_OPERATORS = ("SPort", "NotSPort", "DPort", "NotDPort")
PRIV_PORT_OPERATORS = ("SPortPriv", "NotSPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv")
SOCK_FAMILIES = {"AF_UNSPEC": 0, "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16,
                 "AF_PACKET": 17, "AF_VSOCK": 40, "AF_XDP": 44}
SOCK_PROTOCOLS = {"IPPROTO_IP": 0, "IPPROTO_ICMP": 1, "IPPROTO_IGMP": 2, "IPPROTO_TCP": 6, "IPPROTO_UDP": 17,
                  "IPPROTO_IPV6": 41, "IPPROTO_GRE": 47, "IPPROTO_ICMPV6": 58, "IPPROTO_SCTP": 132,
                  "IPPROTO_UDPLITE": 136, "IPPROTO_RAW": 255, "IPPROTO_MPTCP": 262}
# include/net/tcp_states.h
TCP_STATES = {"TCP_ESTABLISHED": 1, "TCP_SYN_SENT": 2, "TCP_SYN_RECV": 3, "TCP_FIN_WAIT1": 4, "TCP_FIN_WAIT2": 5,
              "TCP_TIME_WAIT": 6, "TCP_CLOSE": 7, "TCP_CLOSE_WAIT": 8, "TCP_LAST_ACK": 9, "TCP_LISTEN": 10,
              "TCP_CLOSING": 11, "TCP_NEW_SYN_RECV": 12}


def _num_range(v: str, names: Mapping[str, int], what: str) -> tuple[int, int]:
    """'443', '1000:2000' (inclusive; reversed ends are swapped, as Tetragon does) or a name -> (lo, hi)."""
    text = str(v).strip()
    if text in names:
        return names[text], names[text]
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"{what} {v!r}: a range is 'min:max'")
    try:
        nums = [int(p, 10) for p in parts]
    except ValueError:
        known = f" or one of {', '.join(sorted(names))}" if names else ""
        raise ValueError(f"{what} {v!r} is not a number, a 'min:max' range{known}") from None
    lo, hi = min(nums), max(nums)
    if lo < 0 or hi > 65535:
        raise ValueError(f"{what} {v!r} is outside 0..65535")
    return lo, hi


def sock_value(op: str, v: Any) -> Any:
    """One value of a socket operator, checked and converted for the kernel.

    SAddr/DAddr (and Not*): an IPv4/IPv6 address or CIDR -> (family 2|10, network 16 bytes, mask 16 bytes),
    network order, IPv4 in the first 4 bytes (host bits beyond the prefix are ignored, as Tetragon's
    net.ParseCIDR does). SPort/DPort: a port or 'min:max' range -> (lo, hi). Protocol/Family: a number,
    a range or a name (IPPROTO_TCP, AF_INET...) -> (lo, hi); State likewise (TCP_ESTABLISHED...). ValueError
    says what is wrong."""
    text = str(v).strip()
    if op in ADDR_OPERATORS:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"address {v!r} is not an IPv4/IPv6 address or CIDR") from None
        width = 4 if net.version == 4 else 16
        raw_net = net.network_address.packed + bytes(16 - width)
        raw_mask = net.netmask.packed + bytes(16 - width)
        return (2 if net.version == 4 else 10), raw_net, raw_mask
    if op in PORT_OPERATORS:
        return _num_range(text, {}, "port")
    if op == "Protocol":
        return _num_range(text, SOCK_PROTOCOLS, "protocol")
    if op == "Family":
        return _num_range(text, SOCK_FAMILIES, "family")
    if op == "State":
        return _num_range(text, TCP_STATES, "TCP state")
    raise ValueError(f"operator {op} is not a socket operator")


# Linux capability names (include/uapi/linux/capability.h), accepted with or without the CAP_ prefix.
_CAPS = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
CAPABILITIES: Mapping[str, int] = {**{c: i for i, c in enumerate(_CAPS)},
                                   **{"CAP_" + c: i for i, c in enumerate(_CAPS)}}

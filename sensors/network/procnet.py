"""Listening TCP sockets that exist before the sensor attaches, and who owns them (from /proc).

The probe learns a listener's owner when listen() runs; a server started before the agent never
shows that transition, so its accepts could not be attributed. At start the sensor reads each network
namespace's /proc/<pid>/net/tcp{,6} for sockets in LISTEN and the /proc/<pid>/fd links that hold them.
Best effort: processes come and go while this runs, and unreadable entries are skipped.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")
_NETNS_LINK = re.compile(r"net:\[(\d+)\]")
TCP_LISTEN_HEX = "0A"


@dataclass(frozen=True)
class Listener:
    netns: int
    family: int  # 2 or 10
    addr: bytes  # 16 bytes, network order (IPv4 in the first 4)
    port: int
    pid: int


def _parse_addr(hexaddr: str, family: int) -> bytes:
    # /proc/net/tcp prints each 32-bit word of the address as the host-order integer it is in memory
    raw = bytes.fromhex(hexaddr)
    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)] if sys.byteorder == "little" else \
        [raw[i:i + 4] for i in range(0, len(raw), 4)]
    out = b"".join(words)
    return out.ljust(16, b"\0") if family == 2 else out


def parse_proc_net_tcp(text: str, family: int) -> list[tuple[bytes, int, int]]:
    """(addr, port, inode) of the LISTEN sockets in a /proc/net/tcp or tcp6 table."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or f[3] != TCP_LISTEN_HEX:
            continue
        try:
            addr_hex, port_hex = f[1].split(":")
            out.append((_parse_addr(addr_hex, family), int(port_hex, 16), int(f[9])))
        except ValueError:
            continue
    return out


def scan_listeners(proc: Path = Path("/proc")) -> list[Listener]:
    netns_pid: dict[int, int] = {}
    inode_pid: dict[int, int] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        try:
            m = _NETNS_LINK.match(os.readlink(d / "ns" / "net"))
            if m:
                netns_pid.setdefault(int(m.group(1)), pid)
            for fd in os.scandir(d / "fd"):
                try:
                    m = _SOCKET_LINK.match(os.readlink(fd.path))
                except OSError:
                    continue
                if m:
                    inode_pid.setdefault(int(m.group(1)), pid)
        except OSError:
            continue
    out = []
    for netns, pid in netns_pid.items():
        for name, family in (("tcp", 2), ("tcp6", 10)):
            try:
                text = (proc / str(pid) / "net" / name).read_text()
            except OSError:
                continue
            for addr, port, inode in parse_proc_net_tcp(text, family):
                owner = inode_pid.get(inode)
                if owner is not None:
                    out.append(Listener(netns, family, addr, port, owner))
    return out

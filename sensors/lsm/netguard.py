"""socket_connect / socket_sendmsg served by cgroup sock_addr programs (sockaddr.bpf.c).

`compile_rules` turns the selectors of one lsmhooks item into `lsm_net_rule` rows; `NetGuard` loads one
object for the item, fills its maps, attaches connect4/connect6 (or sendmsg4/sendmsg6) where `attach_dirs`
says, and decodes its ring records into decisions. Detaching is closing the object: links and maps go with it.

Scope (`sensorium.hookspecs.Scope`, None = host-wide): the object's ``net_scope`` map (sensorium/scope.h) is
checked first in every program. Programs attached to a cgroup run for its descendants too, so a scope made
only of cgroup2 directories is served by attaching there (nothing else on the host runs the program); a
scope with v1 memory cgroups (pods of a runtime with the v1 driver on a hybrid host: they sit at the cgroup2
root) or with ``host`` is served by one attachment at the cgroup2 root, where the in-program check returns
at once for every task outside the scope. `NetGuard.set_scope` moves both live, attaching the new places
before the map changes and detaching the old ones after.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sensorium.bpf.memory import KernelMemory, kernel_memory
from sensorium.bpf.records import SensoriumHdr
from sensorium.bpf.scope import ScopeMap, scope_entries
from sensorium.hookspecs import ProbeSource, Scope
from sensorium.policy import Selector

__all__ = ["NetGuard", "compile_rules", "parse_cidr", "PROBE", "NetRule", "NetConfig", "NetEvent",
           "RECORD_TYPE", "attach_dirs", "event_args"]

HERE = Path(__file__).resolve().parent
PROBE = ProbeSource(name="lsm-sockaddr", source=HERE / "sockaddr.bpf.c", include_dirs=(HERE,),
                    defines={"LSM_NET_SET_RETVAL": "1"})
PROBE_NO_RETVAL = ProbeSource(name="lsm-sockaddr-eperm", source=HERE / "sockaddr.bpf.c", include_dirs=(HERE,))

MAX_RULES, MAX_PORTS, MAX_ADDRS, MAX_PIDS = 8, 16, 16, 16
RECORD_TYPE = 0x4C01
F_DPORT, F_NOT_DPORT, F_DADDR, F_NOT_DADDR, F_FAMILY, F_PROTO, F_PID, F_NOT_PID = (1 << i for i in range(8))
A_POST, A_DENY, A_KILL = 1, 2, 4
VERDICTS = {0: "allowed", 1: "blocked", 2: "would have blocked"}
HOOKS = {1: "socket_connect", 2: "socket_sendmsg"}


class Cidr(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint32), ("net", ctypes.c_uint32 * 4), ("mask", ctypes.c_uint32 * 4)]


class NetRule(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("action", ctypes.c_uint32), ("err", ctypes.c_uint32),
                ("families", ctypes.c_uint32), ("protos", ctypes.c_uint32), ("nports", ctypes.c_uint32),
                ("naddrs", ctypes.c_uint32), ("npids", ctypes.c_uint32),
                ("ports", ctypes.c_uint16 * MAX_PORTS), ("pids", ctypes.c_uint32 * MAX_PIDS),
                ("addrs", Cidr * MAX_ADDRS)]


class NetConfig(ctypes.Structure):
    _fields_ = [("policy_id", ctypes.c_uint32), ("nrules", ctypes.c_uint32), ("enforce", ctypes.c_uint32),
                ("scoped", ctypes.c_uint32), ("matched", ctypes.c_uint64), ("blocked", ctypes.c_uint64),
                ("dropped", ctypes.c_uint64)]


class NetEvent(ctypes.Structure):
    _fields_ = [("hdr", SensoriumHdr), ("policy_id", ctypes.c_uint32), ("rule", ctypes.c_uint32),
                ("hook", ctypes.c_uint8), ("verdict", ctypes.c_uint8), ("family", ctypes.c_uint8),
                ("protocol", ctypes.c_uint8),
                ("dport", ctypes.c_uint16), ("pad", ctypes.c_uint16), ("daddr", ctypes.c_uint32 * 4),
                ("action", ctypes.c_uint32), ("err", ctypes.c_uint32), ("cgroup_id", ctypes.c_uint64),
                ("comm", ctypes.c_char * 16)]


RECORD_LAYOUTS = {"lsm_net_rule": NetRule, "lsm_net_config": NetConfig, "lsm_net_event": NetEvent,
                  "lsm_net_cidr": Cidr}


class NetRules(ctypes.Structure):
    _fields_ = [("r", NetRule * MAX_RULES)]


RECORD_LAYOUTS["lsm_net_rules"] = NetRules


def rules_value(rules: Sequence[NetRule]) -> bytes:
    """The net_rules map value: every rule of the hook, first match wins."""
    v = NetRules()
    for i, r in enumerate(rules):
        v.r[i] = r
    return bytes(v)


def parse_cidr(v: str) -> tuple[int, list[int], list[int]]:
    """'10.0.0.0/8', '127.0.0.1', '::1/128' -> (family, net words, mask words) in network byte order."""
    try:
        net = ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError(f"address {v!r} is not an IP address or CIDR") from None
    raw_net = net.network_address.packed
    raw_mask = net.netmask.packed
    width = 4 if net.version == 4 else 16
    words_n = [int.from_bytes(raw_net[i:i + 4], "little") for i in range(0, width, 4)]
    words_m = [int.from_bytes(raw_mask[i:i + 4], "little") for i in range(0, width, 4)]
    words_n += [0] * (4 - len(words_n))
    words_m += [0] * (4 - len(words_m))
    return (2 if net.version == 4 else 10), words_n, words_m


def compile_rules(selectors: Sequence[Selector], enforce_errno: Callable[[Any], int] | None = None) -> list[NetRule]:
    """One `NetRule` per selector, in order (first match wins). A hook without selectors posts every call."""
    if not selectors:
        r = NetRule()
        r.action = A_POST
        return [r]
    out = []
    for sel in selectors:
        r = NetRule()
        seen_ops: set[str] = set()
        for m in sel.matchArgs:
            op = m.op
            if op in seen_ops:
                raise ValueError(f"operator {op} appears twice in one selector; put the values in one entry")
            seen_ops.add(op)
            if op in ("DPort", "NotDPort"):
                if len(m.values) > MAX_PORTS:
                    raise ValueError(f"{len(m.values)} ports in one entry; this mechanism takes {MAX_PORTS}")
                r.flags |= F_DPORT | (F_NOT_DPORT if op == "NotDPort" else 0)
                r.nports = len(m.values)
                for i, v in enumerate(m.values):
                    r.ports[i] = int(v)
            elif op in ("DAddr", "NotDAddr"):
                if len(m.values) > MAX_ADDRS:
                    raise ValueError(f"{len(m.values)} addresses in one entry; this mechanism takes {MAX_ADDRS}")
                r.flags |= F_DADDR | (F_NOT_DADDR if op == "NotDAddr" else 0)
                r.naddrs = len(m.values)
                for i, v in enumerate(m.values):
                    fam, n, k = parse_cidr(v)
                    r.addrs[i].family = fam
                    for w in range(4):
                        r.addrs[i].net[w], r.addrs[i].mask[w] = n[w], k[w]
            elif op == "Family":
                r.flags |= F_FAMILY
                for v in m.values:
                    r.families |= 1 if v in ("2", "AF_INET") else 2
            elif op == "Protocol":
                r.flags |= F_PROTO
                for v in m.values:
                    r.protos |= 1 if v in ("6", "IPPROTO_TCP") else 2
            else:  # refused earlier by rules._check_selectors
                raise ValueError(f"operator {op} is not supported for sockets by cgroup sock_addr programs")
        if len(sel.matchPIDs) > 1:
            raise ValueError("one matchPIDs entry per selector with cgroup sock_addr programs")
        for p in sel.matchPIDs:
            if len(p.values) > MAX_PIDS:
                raise ValueError(f"{len(p.values)} pids; this mechanism takes {MAX_PIDS}")
            r.flags |= F_PID | (F_NOT_PID if p.operator == "NotIn" else 0)
            r.npids = len(p.values)
            for i, pid in enumerate(p.values):
                r.pids[i] = pid
        post = True
        for a in sel.actions:
            if a.action == "NoPost":
                post = False
            elif a.action == "Override":
                r.action |= A_DENY
                r.err = abs(int(a.argError or -1))
            elif a.action == "Sigkill":
                r.action |= A_KILL
        if post or r.action & A_KILL:  # the kill is done by the agent on the record: it must come
            r.action |= A_POST
        if r.action & A_KILL and not r.err:
            r.err = 1
        out.append(r)
    return out


def cgroup_sock_supports_retval(build: Callable[[ProbeSource], Path], open_object: Callable[[Path], Any]) -> bool:
    """Whether sock_addr programs may call bpf_set_retval here (Override with an errno other than EPERM)."""
    try:
        obj = open_object(build(PROBE))
    except Exception:  # noqa: BLE001 - a build problem shows up again in load
        return False
    try:
        for name, prog in obj.programs.items():
            prog.set_autoload(name == "lsm_connect4")
        obj.load()
        return True
    except OSError:
        return False
    finally:
        obj.close()


def _cgroup2_root() -> str:
    from .rules import cgroup2_root

    return os.path.realpath(cgroup2_root())


def attach_dirs(scope: Scope | None, root: str | None = None) -> list[str]:
    """Where the cgroup programs of a policy with ``scope`` are attached.

    Only cgroup2 directories and no ``host``: those directories (a directory below another one of the list
    is left out: the program would run twice there). ``Scope()``: nowhere. Otherwise (host-wide, memory
    cgroups, ``host``): the cgroup2 root, bounded by the in-program check."""
    root = _cgroup2_root() if root is None else root
    if scope is None or scope.host or any(r.hierarchy != "cgroup2" for r in scope.cgroups):
        return [root]
    paths = sorted({os.path.realpath(r.path) for r in scope.cgroups})
    out: list[str] = []
    for p in paths:  # sorted: a parent comes before its children
        if not any(p == o or p.startswith(o.rstrip("/") + "/") for o in out):
            out.append(p)
    return out


class NetGuard:
    """One lsmhooks item served by sockaddr.bpf.c: cgroup sock_addr programs (``kind="cgroup"``) or its BPF
    LSM socket programs (``kind="lsm"``, attached once, bounded by the map check alone)."""

    def __init__(self, *, hook: str, policy_id: int, rules: Sequence[NetRule], scope: Scope | None,
                 enforce: bool, obj: Any, kind: str = "cgroup") -> None:
        self.hook = hook
        self.policy_id = policy_id
        self.rules = list(rules)
        self.scope = scope
        self.kind = kind
        self.obj = obj
        self._enforce = enforce
        self.scoped = scope is not None
        self._scope_map: ScopeMap | None = None
        self._links: dict[str, list[Any]] = {}   # cgroup directory -> its links (cgroup kind)
        self._lock = threading.Lock()  # set_scope (the pod watcher's thread) against status and close
        self.reader: Any = None
        self._active = False  # until `activate`, the config row holds no rules: nothing matches, nothing posts
        self.pin_dir: str | None = None  # set by `pin`: links made later (set_scope) are pinned there too
        self._pin_seq = 0

    @property
    def programs(self) -> tuple[str, ...]:
        if self.kind == "lsm":
            return ("lsm_socket_connect",) if self.hook == "socket_connect" else ("lsm_socket_sendmsg",)
        return ("lsm_connect4", "lsm_connect6") if self.hook == "socket_connect" else ("lsm_sendmsg4", "lsm_sendmsg6")

    @property
    def attached_dirs(self) -> list[str]:
        with self._lock:
            return sorted(self._links)

    def load(self) -> None:
        """`prepare`, `attach` and `activate` in one step; all or nothing (close() undoes a partial load)."""
        self.prepare()
        self.attach()
        self.activate()

    def prepare(self) -> None:
        """Round 1 of a transaction: load (verify), fill the scope (before anything attaches: a scoped
        program is never live unscoped) and a config row without rules, so that once attached the programs
        let every call through without a record until `activate`."""
        if len(self.rules) > MAX_RULES:
            raise ValueError(f"{len(self.rules)} selectors; cgroup sock_addr serves at most {MAX_RULES}")
        if self.scope is not None:
            scope_entries(self.scope)  # ValueError naming the problem, before anything loads
        keep = self.programs
        for name, prog in self.obj.programs.items():
            prog.set_autoload(name in keep)
        if self.scope is None:  # host-wide: never checked, cannot be scoped later (hash maps are preallocated)
            self.obj.map("net_scope").set_max_entries(64)
        self.obj.load()
        self._scope_map = ScopeMap(self.obj.map("net_scope"))
        if self.scope is not None:
            self._scope_map.set(self.scope)
        self._write_config()

    def attach(self) -> None:
        """Round 2: attach (inert until `activate`). Raises on a refused attach, after detaching."""
        if self.kind == "lsm":
            made = []
            try:
                for name in self.programs:
                    made.append(self.obj.program(name).attach())
            except Exception:
                for link in made:
                    link.destroy()
                raise
        else:
            self._attach(attach_dirs(self.scope))

    def activate(self) -> None:
        """Round 3: the rules, then the config row that counts them (from here on calls are decided)."""
        self.obj.map("net_rules").update(b"\0\0\0\0", rules_value(self.rules))
        self._active = True
        self._write_config()

    def pin(self, directory: str) -> None:
        """Pin every link and the decision maps under ``directory`` (bpffs, existing); links made later by
        `set_scope` are pinned there too and unpinned when detached. Raises OSError (nothing left pinned)."""
        with self._lock:
            self.pin_dir = directory
            try:
                for link in self._all_links():
                    self._pin_link(link)
                for name in ("net_rules", "net_config", "net_scope"):
                    self.obj.map(name).pin(os.path.join(directory, f"map_{name}"))
            except Exception:
                self._unpin_all()
                raise

    def _all_links(self) -> list[Any]:
        return [lk for links in self._links.values() for lk in links] if self.kind == "cgroup" else self.obj.links

    def _pin_link(self, link: Any) -> None:
        self._pin_seq += 1
        link.pin(os.path.join(self.pin_dir or "", f"link{self._pin_seq}"))

    def _unpin_all(self) -> None:
        for link in self._all_links():
            try:
                link.unpin()
            except OSError:
                pass
        if self.pin_dir is not None:
            for name in ("net_rules", "net_config", "net_scope"):
                try:
                    os.unlink(os.path.join(self.pin_dir, f"map_{name}"))
                except OSError:
                    pass
        self.pin_dir = None

    def _attach(self, dirs: Sequence[str]) -> None:
        """Attach to each of ``dirs`` not attached yet; on a failure the links made here are destroyed."""
        made: list[str] = []
        try:
            for d in dirs:
                if d in self._links:
                    continue
                links: list[Any] = []
                self._links[d] = links
                made.append(d)
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    for name in self.programs:
                        links.append(self.obj.program(name).attach_cgroup(fd))
                        if self.pin_dir is not None:  # a scope change of a persistent policy
                            self._pin_link(links[-1])
                finally:
                    os.close(fd)
        except Exception:
            self._detach(made)
            raise

    def _detach(self, dirs: Sequence[str]) -> None:
        for d in dirs:
            for link in self._links.pop(d, []):
                try:
                    link.unpin()
                except OSError:
                    pass
                link.destroy()

    def set_scope(self, scope: Scope) -> None:
        """Replace the scope live: attach to the new places, then update the map (new entries before stale
        ones go), then detach from the places no longer needed. A guard loaded host-wide has no scope to
        replace: ValueError (reload the policy with a scope)."""
        if not isinstance(scope, Scope):
            raise TypeError(f"set_scope expects a sensorium.hookspecs.Scope, got {type(scope).__name__}")
        if not self.scoped:
            raise ValueError("this policy was loaded host-wide: reload it with a scope")
        scope_entries(scope)  # ValueError before anything changes
        want = attach_dirs(scope) if self.kind == "cgroup" else []
        with self._lock:
            if self.obj is None or self._scope_map is None:
                raise ValueError("the policy is unloaded")
            if self.kind == "cgroup":
                self._attach(want)
            self._scope_map.set(scope)
            self.scope = scope
            if self.kind == "cgroup":
                self._detach([d for d in list(self._links) if d not in want])

    def _write_config(self) -> None:
        m = self.obj.map("net_config")
        cur = m.lookup(b"\0\0\0\0")
        cfg = NetConfig.from_buffer_copy(cur) if cur else NetConfig()
        cfg.policy_id = self.policy_id
        cfg.nrules = len(self.rules) if self._active else 0
        cfg.enforce = int(self._enforce)
        cfg.scoped = int(self.scoped)
        m.update(b"\0\0\0\0", bytes(cfg))

    def set_enforce(self, enforce: bool) -> None:
        # A read-modify-write of the config row: counters updated meanwhile may lose an increment; the
        # mode itself switches atomically for the programs (one 4-byte field).
        self._enforce = enforce
        self._write_config()

    @property
    def kernel_memory(self) -> KernelMemory:
        """Its object's maps (its own ring included) and programs, in the kernel's figures."""
        return kernel_memory([self.obj] if self.obj is not None else [])

    def counters(self) -> dict[str, int]:
        try:
            cur = self.obj.map("net_config").lookup(b"\0\0\0\0")
        except Exception:  # noqa: BLE001
            cur = None
        if not cur:
            return {}
        c = NetConfig.from_buffer_copy(cur)
        return {"matched": c.matched, "blocked": c.blocked, "dropped": c.dropped}

    def close(self, *, keep_pinned: bool = False) -> None:
        """Detach and free everything, pins included; ``keep_pinned``: leave what is pinned attached (the
        agent stops, enforcement persists)."""
        with self._lock:
            if self.obj is not None and not keep_pinned:
                self._unpin_all()
            self._links.clear()  # the object destroys (or, keep_pinned, releases) its links on close
            if self.obj is not None:
                self.obj.close(keep_pinned=keep_pinned)
                self.obj = None


PID_MAX_LIMIT = 1 << 22  # the kernel's largest pid (include/linux/threads.h, 64-bit)


def decode_event(raw: bytes, *, policy_id: int | None = None, nrules: int | None = None) -> dict[str, Any] | None:
    """One ``lsm_net_event`` record -> its fields, or None when it is not one sockaddr.bpf.c writes: too short,
    another type, a hook, verdict or family it never writes, a process id no process has (the programs run in
    the connecting process), or (when given) another policy's id or a rule past the guard's ``nrules``. The
    caller counts a None and moves on: a malformed record never becomes a decision or a kill."""
    if len(raw) < ctypes.sizeof(NetEvent):
        return None
    ev = NetEvent.from_buffer_copy(raw[:ctypes.sizeof(NetEvent)])
    fam = ev.family
    if (ev.hdr.type != RECORD_TYPE or ev.hook not in HOOKS or ev.verdict not in VERDICTS or fam not in (2, 10)
            or not 0 < ev.hdr.pid <= PID_MAX_LIMIT):
        return None
    if (policy_id is not None and ev.policy_id != policy_id) or (nrules is not None and ev.rule >= nrules):
        return None
    if fam == 2:
        addr = socket.inet_ntop(socket.AF_INET, int(ev.daddr[0]).to_bytes(4, "little"))
    else:
        addr = socket.inet_ntop(socket.AF_INET6, b"".join(int(w).to_bytes(4, "little") for w in ev.daddr))
    return {"pid": ev.hdr.pid, "tid": ev.hdr.tid, "ktime": ev.hdr.ktime, "policy_id": ev.policy_id, "rule": ev.rule,
            "hook": HOOKS[ev.hook], "verdict": VERDICTS[ev.verdict],
            "family": "AF_INET" if fam == 2 else "AF_INET6",
            "protocol": {6: "IPPROTO_TCP", 17: "IPPROTO_UDP"}.get(ev.protocol, str(ev.protocol)),
            "addr": addr, "port": ev.dport, "action": ev.action, "err": ev.err, "cgroup_id": ev.cgroup_id,
            "comm": ev.comm.decode(errors="replace")}


def event_args(ev: Mapping[str, Any], args: Sequence[Any]) -> list[dict[str, Any]]:
    """The declared ``sock``/``sockaddr`` arguments of a hook (each with ``type`` and ``label``), as Tetragon's
    KprobeArgument dicts, from a decoded socket-guard record (`decode_event`); other arguments are not read."""
    out: list[dict[str, Any]] = []
    for a in args:
        if a.type == "sock":
            item: dict[str, Any] = {"sock_arg": {"family": ev["family"], "protocol": ev["protocol"],
                                                 "daddr": ev["addr"], "dport": ev["port"]}}
        elif a.type == "sockaddr":
            item = {"sockaddr_arg": {"family": ev["family"], "addr": ev["addr"], "port": ev["port"]}}
        else:
            continue
        if a.label:
            item["label"] = a.label
        out.append(item)
    return out

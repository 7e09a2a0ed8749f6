"""lsm sensor on a kernel without BPF LSM: socket_connect / socket_sendmsg served by cgroup sock_addr programs,
bounded to the policy's `Scope`.

A loopback server the test runs; connect() fails with EPERM to one port only and only for processes in the
test's cgroup, while the same connect from outside succeeds. The main case is a v1 memory cgroup: on this
hybrid host that is where a container runtime with the v1 driver puts pods (they stay at the cgroup2 root),
so the programs sit at the cgroup2 root and the in-kernel scope check does the bounding. A cgroup2-only
scope is served by attaching to its directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sensorium_testlib import Cgroup, make_cgroup, v1_memory_mount

from sensorium.hookspecs import Scope
from sensorium.scope import scope_of_directories
from sensorium_sensors.lsm.plugin import LsmSensor
from sensorium_sensors.lsm.rules import cgroup2_root
from sensorium_sensors.lsm.testing import LsmTestContext, popen_in_cgroup, run_in_cgroup, scoped

EXAMPLES = Path(__file__).resolve().parents[1] / "sensors" / "lsm" / "examples"

pytestmark = [pytest.mark.kernel]

if os.geteuid() != 0:
    pytest.skip("needs root (BPF, cgroups)", allow_module_level=True)

CONNECT = """
import errno, socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"""

# A process that stays alive and connects each time it reads a port number: set_scope must change what
# happens to a process already running, not only to new ones.
CONNECTOR = """
import errno, socket, sys
for line in sys.stdin:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", int(line)))
        print("connected", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, e.errno), flush=True)
    finally:
        s.close()
"""

SENDTO = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("127.0.0.1", int(sys.argv[1])))
    print("sent")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"""


def view_of(name: str, mode: str | None = None, **subst: str):
    from sensorium.hooks.testing import make_policy_view

    text = (EXAMPLES / name).read_text()
    for k, v in subst.items():
        text = text.replace("${" + k + "}", v)
    return make_policy_view(text, "lsmhooks", policy_id=5, mode=mode)


def make_view(text: str, mode: str | None = None):
    from sensorium.hooks.testing import make_policy_view

    return make_policy_view(text, "lsmhooks", policy_id=6, mode=mode)


@pytest.fixture
def ctx():
    c = LsmTestContext(config={"force_fallbacks": True})
    if not c.kernel.has("cgroup_sock_addr"):
        pytest.skip("cgroup sock_addr programs do not load on this kernel")
    return c


@pytest.fixture
def sensor(ctx):
    s = LsmSensor(ctx)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def v1_memory_cgroup_b() -> Iterator[Cgroup]:
    """A second v1 memory cgroup, to move a scope between two."""
    mp = v1_memory_mount()
    if mp is None:
        pytest.skip("no cgroup v1 memory hierarchy mounted (a pure cgroup2 node)")
    yield from make_cgroup(mp, 1)


@pytest.fixture
def servers():
    """Two listening loopback TCP sockets (their ports)."""
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


def connect(cg, port: int, host: str = "127.0.0.1") -> str:
    r = run_in_cgroup(cg, [sys.executable, "-c", CONNECT, host, str(port)])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def prog_ids(guard) -> set[int]:
    """Kernel ids of a NetGuard's programs (from the fdinfo of their fds)."""
    out = set()
    for name in guard.programs:
        with open(f"/proc/self/fdinfo/{guard.obj.program(name).fd}") as f:
            for line in f:
                if line.startswith("prog_id:"):
                    out.add(int(line.split()[1]))
    return out


def attached_ids(directory: str) -> set[int]:
    """Program ids attached directly to a cgroup2 directory (bpftool)."""
    r = subprocess.run(["bpftool", "-j", "cgroup", "show", directory], capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(r.stdout.strip() or "[]")}


class Connector:
    def __init__(self, cg) -> None:
        self.p = popen_in_cgroup(cg, [sys.executable, "-c", CONNECTOR], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)

    def __call__(self, port: int) -> str:
        self.p.stdin.write(f"{port}\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(10)


def test_connect_to_one_port_fails_with_eperm_only_in_the_v1_memory_cgroup(sensor, ctx, v1_memory_cgroup, servers):
    blocked, other = servers
    h = sensor.load_policy(scoped(view_of("connect-deny.yaml", PORT=str(blocked)), v1_memory_cgroup))
    assert connect(v1_memory_cgroup, blocked) == "EPERM"
    assert connect(v1_memory_cgroup, other) == "connected"
    assert connect(None, blocked) == "connected"
    ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
    assert ev["function_name"] == "socket_connect"
    assert ev["policy_name"] == "connect-deny"
    assert ev["action"] == "KPROBE_ACTION_OVERRIDE"
    assert ev["args"][1] == {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": blocked}}
    assert ev["args"][0]["sock_arg"]["dport"] == blocked
    assert ev["enforcement"] == {"mechanism": "cgroup/connect4+connect6", "meaning": ev["enforcement"]["meaning"],
                                 "mode": "enforcement", "outcome": "blocked", "errno": "EPERM"}
    st = h.status()
    hook = st["hooks"][0]
    assert hook["mechanism"] == "cgroup/connect4+connect6"
    # memory cgroups cannot be attached to: the programs sit at the cgroup2 root, bounded by the map check
    assert hook["attached_to"] == [os.path.realpath(cgroup2_root())]
    assert hook["scope"] == {"cgroups": [f"memory:{os.path.realpath(v1_memory_cgroup)}"], "host": False}
    assert st["kernel_counters"]["blocked"] == 1


def test_cgroup2_directory_scope_is_served_by_attaching_there(sensor, cgroup2_dir, servers):
    blocked, _ = servers
    h = sensor.load_policy(scoped(view_of("connect-deny.yaml", PORT=str(blocked)), cgroup2_dir))
    assert connect(cgroup2_dir, blocked) == "EPERM"
    assert connect(None, blocked) == "connected"
    assert h.status()["hooks"][0]["attached_to"] == [os.path.realpath(cgroup2_dir)]
    [(_p, g)] = h.net_guards
    ids = prog_ids(g)
    assert ids <= attached_ids(os.fspath(cgroup2_dir))
    assert not ids & attached_ids(cgroup2_root())  # nothing runs for the rest of the host


def test_set_scope_moves_the_block_live_between_cgroups(sensor, v1_memory_cgroup, v1_memory_cgroup_b, cgroup2_dir,
                                                         servers):
    """Between two v1 memory cgroups (map update) and to a cgroup2 directory and back (the programs move
    from the cgroup2 root to the directory and back); processes already running see each change at once."""
    blocked, _ = servers
    a, b = Connector(v1_memory_cgroup), Connector(v1_memory_cgroup_b)
    c = Connector(cgroup2_dir)
    try:
        h = sensor.load_policy(scoped(view_of("connect-deny.yaml", PORT=str(blocked)), v1_memory_cgroup))
        assert (a(blocked), b(blocked), c(blocked)) == ("EPERM", "connected", "connected")
        h.set_scope(scope_of_directories([os.fspath(v1_memory_cgroup_b)]))
        assert (a(blocked), b(blocked), c(blocked)) == ("connected", "EPERM", "connected")
        h.set_scope(scope_of_directories([os.fspath(cgroup2_dir)]))
        assert (a(blocked), b(blocked), c(blocked)) == ("connected", "connected", "EPERM")
        assert h.status()["hooks"][0]["attached_to"] == [os.path.realpath(cgroup2_dir)]
        h.set_scope(scope_of_directories([os.fspath(v1_memory_cgroup), os.fspath(cgroup2_dir)]))
        assert (a(blocked), b(blocked), c(blocked)) == ("EPERM", "connected", "EPERM")
        assert h.status()["hooks"][0]["attached_to"] == [os.path.realpath(cgroup2_root())]
        h.set_scope(scope_of_directories([os.fspath(v1_memory_cgroup)]))
        assert (a(blocked), b(blocked), c(blocked)) == ("EPERM", "connected", "connected")
        assert connect(None, blocked) == "connected"
    finally:
        for x in (a, b, c):
            x.close()


def test_empty_scope_blocks_nothing_until_set(sensor, v1_memory_cgroup, cgroup2_dir, servers):
    """Scope(): a pod-scoped policy whose pods are not on this node applies to nothing (no attachment at all)."""
    blocked, _ = servers
    h = sensor.load_policy(scoped(view_of("connect-deny.yaml", PORT=str(blocked))))
    assert h.scope == Scope()
    assert h.status()["hooks"][0]["attached_to"] == []
    for where in (v1_memory_cgroup, cgroup2_dir, None):
        assert connect(where, blocked) == "connected"
    h.set_scope(scope_of_directories([os.fspath(v1_memory_cgroup)]))
    assert connect(v1_memory_cgroup, blocked) == "EPERM"
    h.set_scope(Scope())
    assert connect(v1_memory_cgroup, blocked) == "connected"
    assert h.status()["hooks"][0]["attached_to"] == []


def test_host_scope_covers_processes_outside_the_container_roots(sensor, ctx, v1_memory_cgroup, servers):
    """``host`` with a container root: in monitoring (a blocking host rule would hit the test runner), a
    connect from the host is reported, one from under the container root is not."""
    blocked, _ = servers
    scope = scope_of_directories([], host=True, container_roots=[os.fspath(v1_memory_cgroup)])
    h = sensor.load_policy(dataclasses.replace(view_of("connect-deny.yaml", mode="monitoring", PORT=str(blocked)),
                                               scope=scope))
    assert connect(v1_memory_cgroup, blocked) == "connected"
    assert connect(None, blocked) == "connected"
    ctx.wait_events(lambda e: e.kind == "process_lsm")
    time.sleep(0.3)  # the container's connect, had it been seen, would be in the ring by now
    evs = [e.as_dict()["process_lsm"] for e in ctx.events if e.kind == "process_lsm"]
    assert len(evs) == 1 and evs[0]["enforcement"]["outcome"] == "would have blocked"
    assert h.status()["kernel_counters"]["matched"] == 1


def test_ipv6_loopback_connect_is_blocked_too(sensor, v1_memory_cgroup):
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s6.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    s6.listen(8)
    port = s6.getsockname()[1]
    try:
        sensor.load_policy(scoped(view_of("connect-deny.yaml", PORT=str(port)), v1_memory_cgroup))
        assert connect(v1_memory_cgroup, port, "::1") == "EPERM"
        assert connect(None, port, "::1") == "connected"
    finally:
        s6.close()


def test_monitoring_reports_and_allows_then_switches_live(sensor, ctx, v1_memory_cgroup, servers):
    blocked, _ = servers
    h = sensor.load_policy(scoped(view_of("connect-deny.yaml", mode="monitoring", PORT=str(blocked)), v1_memory_cgroup))
    assert connect(v1_memory_cgroup, blocked) == "connected"
    ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
    assert ev["enforcement"]["outcome"] == "would have blocked"
    h.set_mode("enforcement")
    assert connect(v1_memory_cgroup, blocked) == "EPERM"


def test_override_errno_and_address_match(sensor, v1_memory_cgroup, servers):
    blocked, other = servers
    policy = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: connect-eacces
spec:
  lsmhooks:
  - hook: socket_connect
    args: [{{index: 1, type: sockaddr}}]
    selectors:
    - matchArgs:
      - {{index: 1, operator: DAddr, values: ["127.0.0.0/8"]}}
      - {{index: 1, operator: DPort, values: ["{other}"]}}
      matchActions: [{{action: Override, argError: -13}}]
"""
    sensor.load_policy(scoped(make_view(policy), v1_memory_cgroup))
    assert connect(v1_memory_cgroup, other) == "EACCES"
    assert connect(v1_memory_cgroup, blocked) == "connected"


def test_sendmsg_udp_to_one_port_is_refused(sensor, v1_memory_cgroup):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    policy = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: udp-deny
spec:
  lsmhooks:
  - hook: socket_sendmsg
    args: [{{index: 0, type: sock}}]
    selectors:
    - matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}]
      matchActions: [{{action: Override, argError: -1}}]
"""
    try:
        h = sensor.load_policy(scoped(make_view(policy), v1_memory_cgroup))
        r = run_in_cgroup(v1_memory_cgroup, [sys.executable, "-c", SENDTO, str(port)])
        assert r.stdout.strip() == "EPERM", r.stderr
        r = run_in_cgroup(None, [sys.executable, "-c", SENDTO, str(port)])
        assert r.stdout.strip() == "sent"
        assert h.status()["hooks"][0]["mechanism"] == "cgroup/sendmsg4+sendmsg6"
    finally:
        udp.close()


def test_unload_detaches_programs(sensor, v1_memory_cgroup, servers):
    blocked, _ = servers
    h = sensor.load_policy(scoped(view_of("connect-deny.yaml", PORT=str(blocked)), v1_memory_cgroup))
    assert connect(v1_memory_cgroup, blocked) == "EPERM"
    [(_p, g)] = h.net_guards
    ids = prog_ids(g)
    assert ids <= attached_ids(cgroup2_root())
    h.unload()
    assert connect(v1_memory_cgroup, blocked) == "connected"
    assert not ids & attached_ids(cgroup2_root())


def test_host_wide_policy_cannot_be_scoped_later(sensor, servers):
    """Loaded without a scope, the programs have no check to narrow: set_scope says so (monitoring, so the
    host-wide rule blocks nothing)."""
    blocked, _ = servers
    h = sensor.load_policy(view_of("connect-deny.yaml", mode="monitoring", PORT=str(blocked)))
    assert h.status()["hooks"][0]["scope"] == "host-wide"
    with pytest.raises(ValueError, match="loaded host-wide"):
        h.set_scope(Scope())

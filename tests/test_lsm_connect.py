"""lsm sensor on a kernel without BPF LSM: socket_connect / socket_sendmsg served by cgroup sock_addr programs.

A loopback server the test runs; connect() fails with EPERM to one port only and only inside the test's
cgroup, while the same connect from outside succeeds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sensorium_sensors.lsm.plugin import LsmSensor
from sensorium_sensors.lsm.testing import LsmTestContext, run_in_cgroup, scratch_cgroup

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
    from sensorium_sensors.tracepoint.testing import make_policy_view

    text = (EXAMPLES / name).read_text()
    for k, v in subst.items():
        text = text.replace("${" + k + "}", v)
    return make_policy_view(text, "lsmhooks", policy_id=5, mode=mode)


def make_view(text: str, mode: str | None = None):
    from sensorium_sensors.tracepoint.testing import make_policy_view

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
def cg():
    with scratch_cgroup() as path:
        yield path


@pytest.fixture
def servers():
    """Two listening loopback TCP sockets (ports), IPv4, and one IPv6 on the first port number if possible."""
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    yield ports
    for s in socks:
        s.close()


def connect(cg: str | None, port: int, host: str = "127.0.0.1") -> str:
    r = run_in_cgroup(cg, [sys.executable, "-c", CONNECT, host, str(port)])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_connect_to_one_port_fails_with_eperm_only_in_cgroup(sensor, ctx, cg, servers):
    blocked, other = servers
    h = sensor.load_policy(view_of("connect-deny.yaml", PORT=str(blocked)), scope=cg)
    assert connect(cg, blocked) == "EPERM"
    assert connect(cg, other) == "connected"
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
    assert st["hooks"][0]["mechanism"] == "cgroup/connect4+connect6"
    assert st["kernel_counters"]["blocked"] == 1


def test_ipv6_loopback_connect_is_blocked_too(sensor, cg):
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s6.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    s6.listen(8)
    port = s6.getsockname()[1]
    try:
        sensor.load_policy(view_of("connect-deny.yaml", PORT=str(port)), scope=cg)
        assert connect(cg, port, "::1") == "EPERM"
        assert connect(None, port, "::1") == "connected"
    finally:
        s6.close()


def test_monitoring_reports_and_allows_then_switches_live(sensor, ctx, cg, servers):
    blocked, _ = servers
    h = sensor.load_policy(view_of("connect-deny.yaml", mode="monitoring", PORT=str(blocked)), scope=cg)
    assert connect(cg, blocked) == "connected"
    ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
    assert ev["enforcement"]["outcome"] == "would have blocked"
    h.set_mode("enforcement")
    assert connect(cg, blocked) == "EPERM"


def test_override_errno_and_address_match(sensor, cg, servers):
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
    sensor.load_policy(make_view(policy), scope=cg)
    assert connect(cg, other) == "EACCES"
    assert connect(cg, blocked) == "connected"


def test_sendmsg_udp_to_one_port_is_refused(sensor, ctx, cg):
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
        h = sensor.load_policy(make_view(policy), scope=cg)
        r = run_in_cgroup(cg, [sys.executable, "-c", SENDTO, str(port)])
        assert r.stdout.strip() == "EPERM", r.stderr
        r = run_in_cgroup(None, [sys.executable, "-c", SENDTO, str(port)])
        assert r.stdout.strip() == "sent"
        assert h.status()["hooks"][0]["mechanism"] == "cgroup/sendmsg4+sendmsg6"
    finally:
        udp.close()


def test_unload_detaches_programs(sensor, cg, servers):
    blocked, _ = servers
    h = sensor.load_policy(view_of("connect-deny.yaml", PORT=str(blocked)), scope=cg)
    assert connect(cg, blocked) == "EPERM"
    h.unload()
    assert connect(cg, blocked) == "connected"
    out = subprocess.run(["bpftool", "cgroup", "show", cg], capture_output=True, text=True)
    assert "connect4" not in out.stdout, out.stdout

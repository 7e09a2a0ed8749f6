"""lsm sensor with real BPF LSM programs (the VM lane: Debian 6.1 and 6.12 booted with lsm=...,bpf).

The same policy files as the fallback tests (sensors/lsm/examples), served here by BPF LSM: the hook
returns -EPERM before the operation, only for processes in the test's cgroup. On a kernel without BPF
LSM (this project's host) these tests are skipped with the reason; in the lane they must run.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
from sensorium_testlib import cgroup2_mount, make_cgroup

from sensorium.hookspecs import Scope
from sensorium.scope import scope_of_directories
from sensorium_sensors.lsm.plugin import LsmSensor
from sensorium_sensors.lsm.testing import LsmTestContext, run_in_cgroup, scoped

EXAMPLES = Path(__file__).resolve().parents[1] / "sensors" / "lsm" / "examples"

pytestmark = [pytest.mark.kernel, pytest.mark.needs("bpf_lsm", "lsm")]

CONNECT = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"""


def view_of(name: str, mode: str | None = None, **subst: str):
    from sensorium.hooks.testing import make_policy_view

    text = (EXAMPLES / name).read_text()
    for k, v in subst.items():
        text = text.replace("${" + k + "}", v)
    return make_policy_view(text, "lsmhooks", policy_id=11, mode=mode)


@pytest.fixture
def ctx():
    return LsmTestContext()


@pytest.fixture
def sensor(ctx):
    s = LsmSensor(ctx)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def cg(cgroup2_dir):
    """The lane's guests are pure cgroup2."""
    return os.fspath(cgroup2_dir)


@pytest.fixture
def cg_b():
    yield from (os.fspath(c) for c in make_cgroup(cgroup2_mount(), 2))


def test_set_scope_moves_file_open_and_connect_blocks_live(sensor, cg, cg_b, tmp_path):
    """One policy with an lsm.bpf.c hook (file_open) and a sockaddr.bpf.c one (socket_connect): set_scope
    moves both between two cgroups at once; Scope() blocks nothing."""
    from sensorium.hooks.testing import make_policy_view

    secret = tmp_path / "secret.txt"
    secret.write_text("s\n")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    text = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: both
spec:
  lsmhooks:
  - hook: file_open
    args: [{{index: 0, type: file}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Equal, values: ["{secret}"]}}]
      matchActions: [{{action: Override, argError: -1}}]
  - hook: socket_connect
    args: [{{index: 1, type: sockaddr}}]
    selectors:
    - matchArgs: [{{index: 1, operator: DPort, values: ["{port}"]}}]
      matchActions: [{{action: Override, argError: -1}}]
"""

    def blocked(where):
        opened = run_in_cgroup(where, ["cat", str(secret)]).returncode == 0
        conn = run_in_cgroup(where, [sys.executable, "-c", CONNECT, str(port)]).stdout.strip()
        return (not opened, conn == "EPERM")

    try:
        h = sensor.load_policy(scoped(make_policy_view(text, "lsmhooks", policy_id=14), cg))
        assert [x["mechanism"] for x in h.status()["hooks"]] == ["bpf_lsm", "bpf_lsm"]
        assert (blocked(cg), blocked(cg_b), blocked(None)) == ((True, True), (False, False), (False, False))
        h.set_scope(scope_of_directories([cg_b]))
        assert (blocked(cg), blocked(cg_b)) == ((False, False), (True, True))
        h.set_scope(Scope())
        assert (blocked(cg), blocked(cg_b)) == ((False, False), (False, False))
    finally:
        srv.close()


def test_file_open_policy_blocks_cat_only_in_the_cgroup(sensor, ctx, cg, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    h = sensor.load_policy(scoped(view_of("file-open-deny.yaml", PROTECTED=str(secret)), cg))
    assert h.status()["hooks"][0]["mechanism"] == "bpf_lsm"
    inside = run_in_cgroup(cg, ["cat", str(secret)])
    assert inside.returncode != 0 and "Operation not permitted" in inside.stderr
    outside = run_in_cgroup(None, ["cat", str(secret)])
    assert outside.returncode == 0 and outside.stdout == "top secret\n"
    ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
    assert ev["function_name"] == "file_open"
    assert ev["args"][0]["file_arg"]["path"] == str(secret)
    assert ev["action"] == "KPROBE_ACTION_OVERRIDE"
    assert ev["enforcement"]["mechanism"] == "bpf_lsm" and ev["enforcement"]["outcome"] == "blocked"
    assert ev["enforcement"]["errno"] == "EPERM"


def test_bprm_check_security_blocks_an_exec(sensor, cg, tmp_path):
    binary = tmp_path / "forbidden-true"
    shutil.copy("/bin/true", binary)
    sensor.load_policy(scoped(view_of("exec-deny.yaml", PROTECTED=str(binary)), cg))
    with pytest.raises(PermissionError):
        run_in_cgroup(cg, [str(binary)])
    assert run_in_cgroup(None, [str(binary)]).returncode == 0


def test_socket_connect_blocks_one_loopback_port_only(sensor, ctx, cg):
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)
    blocked, other = (s.getsockname()[1] for s in socks)
    try:
        h = sensor.load_policy(scoped(view_of("connect-deny.yaml", PORT=str(blocked)), cg))
        assert h.status()["hooks"][0]["mechanism"] == "bpf_lsm"

        def connect(where, port):
            return run_in_cgroup(where, [sys.executable, "-c", CONNECT, str(port)]).stdout.strip()

        assert connect(cg, blocked) == "EPERM"
        assert connect(cg, other) == "connected"
        assert connect(None, blocked) == "connected"
        ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
        assert ev["function_name"] == "socket_connect"
        assert ev["args"][1] == {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": blocked}}
        assert ev["enforcement"]["mechanism"] == "bpf_lsm"
    finally:
        for s in socks:
            s.close()


def test_monitoring_mode_reports_and_allows(sensor, ctx, cg, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s\n")
    h = sensor.load_policy(scoped(view_of("file-open-deny.yaml", mode="monitoring", PROTECTED=str(secret)), cg))
    assert run_in_cgroup(cg, ["cat", str(secret)]).returncode == 0
    ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
    assert ev["enforcement"]["outcome"] == "would have blocked"
    h.set_mode("enforcement")
    assert run_in_cgroup(cg, ["cat", str(secret)]).returncode != 0


def test_any_hook_with_typed_args_task_kill(sensor, ctx, cg):
    """A hook no fallback serves: task_kill with an int argument, Override on signal 10 (SIGUSR1)."""
    from sensorium.hooks.testing import make_policy_view

    text = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: no-sigusr1
spec:
  lsmhooks:
  - hook: task_kill
    args: [{index: 2, type: int}]
    selectors:
    - matchArgs: [{index: 2, operator: Equal, values: ["10"]}]
      matchActions: [{action: Override, argError: -1}]
"""
    sensor.load_policy(scoped(make_policy_view(text, "lsmhooks", policy_id=12), cg))
    r = run_in_cgroup(cg, ["sh", "-c", "sleep 5 & kill -USR1 $!; echo rc=$?; kill -TERM $!"])
    assert "rc=1" in r.stdout, (r.stdout, r.stderr)
    ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
    assert ev["function_name"] == "task_kill" and ev["args"][0]["int_arg"] == 10

"""Socket tracking (Tetragon's TrackSock/UntrackSock and returnArgAction): an event on a tracked socket reports
the process that owns it, not the task the kernel function happens to run in.

Policy checks run on every kernel; the real hooks need fentry/fexit (skipped here with the reason, run in the
VM lane: scripts/vm/run.sh backports tests/test_kprobe_socktrack.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from hook_helpers import rig_fixture, scope_of

from sensorium.hookspecs import PolicyLoadError
from sensorium.policy_rules import validate_policies
from sensorium.process import ProcessCache
from sensorium.yamlsrc import SourceError
from sensorium_sensors.kprobe.sensor import KprobeSensor

rig = rig_fixture(KprobeSensor)

# sk_alloc's returned sock becomes the creator's (AF_INET only, silently); __sk_free forgets it
TRACK = """
  - call: sk_alloc
    syscall: false
    return: true
    args: [{index: 1, type: int, label: family}]
    returnArg: {index: 0, type: sock}
    returnArgAction: TrackSock
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: ["2"]}]
      matchActions: [{action: NoPost}]
  - call: __sk_free
    syscall: false
    args: [{index: 0, type: sock}]
    selectors:
    - matchActions: [{action: UntrackSock, argSock: 0}, {action: NoPost}]
"""


def doc(items: str, name: str = "socktrack") -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  kprobes:""" + items


def check(text: str) -> None:
    from sensorium_sensors.kprobe.schema import KProbeSpec

    class Sections:
        def policy_sections(self) -> dict[str, tuple[str, Any]]:
            return {"kprobes": ("kprobe", KProbeSpec)}

    validate_policies(text.encode(), "p.yaml", Sections())


# ---- policy checks (every kernel) ----------------------------------------------------------------

def test_arg_sock_must_name_a_sock_argument() -> None:
    bad = doc("""
  - call: tcp_close
    syscall: false
    args: [{index: 0, type: sock}, {index: 1, type: int}]
    selectors:
    - matchActions: [{action: UntrackSock, argSock: 1}]
""")
    with pytest.raises(SourceError) as ei:
        check(bad)
    assert ei.value.path == "spec.kprobes[0].selectors[0].matchActions[0].argSock"
    assert "argSock 1 names no sock argument" in ei.value.reason


def test_arg_sock_belongs_to_the_socket_actions() -> None:
    with pytest.raises(SourceError) as ei:
        check(doc("""
  - call: tcp_close
    syscall: false
    args: [{index: 0, type: sock}]
    selectors:
    - matchActions: [{action: Post, argSock: 0}]
"""))
    assert ei.value.path == "spec.kprobes[0].selectors[0].matchActions[0]"
    assert "argSock applies only to the TrackSock and UntrackSock actions" in ei.value.reason


def test_return_track_sock_needs_a_kernel_function_returning_a_sock() -> None:
    with pytest.raises(SourceError) as ei:
        check(doc("""
  - call: sys_socket
    return: true
    returnArg: {index: 0, type: int}
    returnArgAction: TrackSock
"""))
    assert ei.value.path == "spec.kprobes[0].returnArgAction"
    assert "needs a kernel function (syscall: false)" in ei.value.reason


def test_return_sock_type_checked_against_btf(rig) -> None:
    text = doc("""
  - call: security_file_open
    syscall: false
    return: true
    args: [{index: 0, type: file}]
    returnArg: {index: 0, type: sock}
    returnArgAction: TrackSock
""")
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.load_policy(rig.view(text, "kprobes"))
    assert ei.value.field == "spec.kprobes[0].returnArg.type"
    assert "returnArg type sock does not match the return type int of security_file_open" in str(ei.value)


def test_socket_actions_refused_on_syscall_hooks(rig) -> None:
    text = doc("""
  - call: sys_close
    args: [{index: 0, type: int}]
    selectors:
    - matchActions: [{action: TrackSock}]
""")
    with pytest.raises((PolicyLoadError, SourceError)) as ei:
        check(text)
        rig.sensor.load_policy(rig.view(text, "kprobes"))
    assert "argSock 0 names no sock argument" in str(ei.value)


def test_state_operator_takes_tcp_state_names() -> None:
    check(doc("""
  - call: tcp_set_state
    syscall: false
    args: [{index: 0, type: sock}, {index: 1, type: int}]
    selectors:
    - matchArgs: [{index: 0, operator: State, values: ["TCP_SYN_RECV", "10"]}]
"""))
    with pytest.raises(SourceError) as ei:
        check(doc("""
  - call: tcp_set_state
    syscall: false
    args: [{index: 0, type: sock}]
    selectors:
    - matchArgs: [{index: 0, operator: State, values: ["TCP_NOPE"]}]
"""))
    assert "TCP state 'TCP_NOPE' is not a number" in ei.value.reason


# ---- real hooks (VM lane) ------------------------------------------------------------------------

# The owner: makes a UDP socket (sk_alloc: tracked as its own), then runs the sender with that socket's fd;
# the sender shares the owner's stdin/stdout and sends what the test writes.
OWNER = """
import socket, subprocess, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(s.fileno()), "sender-marker"], pass_fds=[s.fileno()])
sys.exit(c.wait())
"""
SENDER = """
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
print("ready", flush=True)
for line in sys.stdin:
    n, port = map(int, line.split())
    s.sendto(b"x" * n, ("127.0.0.1", port))
    print("sent", flush=True)
"""

UDP = TRACK + """
  - call: udp_sendmsg
    syscall: false
    args: [{index: 0, type: sock}, {index: 2, type: size_t, label: len}]
    selectors:
    - matchArgs: [{index: 2, operator: Equal, values: ["13"]}]
      matchActions: [{action: UntrackSock, argSock: 0}]
    - matchArgs: [{index: 2, operator: Equal, values: ["7"]}]
"""


def _send(p: subprocess.Popen, n: int, port: int) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(f"{n} {port}\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "sent"


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.needs("fentry", "fexit")
def test_udp_send_from_a_child_reports_the_socket_owner_until_untracked(rig, cgroup2_dir) -> None:
    cache = ProcessCache("test-node", proc_root=None)
    rig.ctx.process_cache = cache
    h = rig.load(doc(UDP), "kprobes", scope=scope_of(cgroup2_dir))
    assert [x["mechanism"] for x in h.status()["hooks"]] == ["fexit", "fentry", "fentry"]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    owner = cgroup2_dir.popen([sys.executable, "-c", OWNER, SENDER, "owner-marker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        (sender,) = _children(owner.pid)
        cache.scan_proc()  # both processes, with their binaries and arguments
        owner_exe, sender_exe = os.readlink(f"/proc/{owner.pid}/exe"), os.readlink(f"/proc/{sender}/exe")
        _send(owner, 7, port)   # the owner's socket, sent by its child: reported as the owner
        _send(owner, 13, port)  # UntrackSock (this event is still the owner's: read before the action)
        _send(owner, 7, port)   # untracked: reported as the child that sends
        evs = []
        deadline = time.monotonic() + 10
        while len(evs) < 3 and time.monotonic() < deadline:
            evs = rig.events(lambda b: b.get("function_name") == "udp_sendmsg", wait=1.0)
    finally:
        owner.kill()
        owner.wait()
        sink.close()
    assert [e["args"][1]["size_arg"] for e in evs] == [7, 13, 7], evs
    for e in evs:
        assert e["args"][0]["sock_arg"]["family"] == "AF_INET" and e["args"][0]["sock_arg"]["type"] == "SOCK_DGRAM"
    first, untrack, after = evs
    assert first["process"]["pid"] == owner.pid and first["process"]["binary"] == owner_exe
    assert first["process"]["arguments"].endswith("owner-marker")
    assert untrack["process"]["pid"] == owner.pid
    assert after["process"]["pid"] == sender and after["process"]["binary"] == sender_exe
    assert after["process"]["arguments"].endswith("sender-marker")
    c = h.counters()
    assert c["sock_owned"] == 2 and c["sock_track_errors"] == 0, c
    # sk_alloc and __sk_free posted nothing (NoPost): only the three sends
    assert not rig.events(lambda b: b.get("function_name") in ("sk_alloc", "__sk_free"))


# A listener in the owner; the client's SYN is handled in softirq on the client's connect(), so when
# tcp_create_openreq_child runs, current is the client. Its argument (the listening socket) is tracked: the
# event is the listener's, and the child socket it returns is tracked as the listener's too.
LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(4)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"""
CLIENT = """
import socket, sys
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
c.connect(("127.0.0.1", int(sys.argv[1])))
print(c.getsockname()[1], flush=True)
sys.stdin.readline()
"""
ACCEPT = TRACK + """
  - call: tcp_create_openreq_child
    syscall: false
    return: true
    args: [{index: 0, type: sock}]
    returnArg: {index: 0, type: sock}
    returnArgAction: TrackSock
  - call: tcp_set_state
    syscall: false
    args: [{index: 0, type: sock}, {index: 1, type: int, label: state}]
    selectors:
    - matchArgs: [{index: 0, operator: State, values: ["TCP_SYN_RECV"]}, {index: 1, operator: Equal, values: ["1"]}]
"""


@pytest.mark.needs("fentry", "fexit")
def test_tcp_accept_in_softirq_reports_the_listener(rig, cgroup2_dir) -> None:
    cache = ProcessCache("test-node", proc_root=None)
    rig.ctx.process_cache = cache
    rig.load(doc(ACCEPT, name="accept"), "kprobes", scope=scope_of(cgroup2_dir))
    procs = []
    try:
        srv = cgroup2_dir.popen([sys.executable, "-c", LISTEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        procs.append(srv)
        assert srv.stdout is not None
        port = int(srv.stdout.readline())
        cli = cgroup2_dir.popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(cli)
        assert cli.stdout is not None
        cport = int(cli.stdout.readline())
        cache.scan_proc()
        evs = rig.events(lambda b: b.get("function_name") in ("tcp_create_openreq_child", "tcp_set_state"),
                         wait=5.0)
        deadline = time.monotonic() + 5
        while len({e["function_name"] for e in evs}) < 2 and time.monotonic() < deadline:
            evs = rig.events(lambda b: b.get("function_name") in ("tcp_create_openreq_child", "tcp_set_state"),
                             wait=1.0)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    child = [e for e in evs if e["function_name"] == "tcp_create_openreq_child"]
    est = [e for e in evs if e["function_name"] == "tcp_set_state"]
    assert len(child) == 1 and len(est) == 1, evs
    # current was the client (its connect() ran the SYN's softirq): the events are the listener's
    assert child[0]["process"]["pid"] == srv.pid, (child[0]["process"], srv.pid, cli.pid)
    assert child[0]["args"][0]["sock_arg"]["state"] == "TCP_LISTEN"
    ret = child[0]["return"]["sock_arg"]
    assert (ret["sport"], ret["dport"]) == (port, cport)
    # the child socket moving to ESTABLISHED (the client's ACK, softirq again) is the listener's: tracked on return
    assert est[0]["process"]["pid"] == srv.pid, (est[0]["process"], srv.pid, cli.pid)
    assert est[0]["args"][0]["sock_arg"]["sport"] == port and est[0]["args"][1] == {"int_arg": 1, "label": "state"}

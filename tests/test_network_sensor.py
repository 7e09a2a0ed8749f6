"""The network sensor end to end: the real agent (`sensorium run`) with a file exporter, real TCP and
UDP sockets on loopback in processes the test starts, and the process_kprobe events that arrive.

Covers: a TCP connection over IPv4 and IPv6 loopback (connect owned by the client, accept owned by the
server, close with the bytes each side sent and received, both ends' 5-tuple), a failed connect, a
listener opened before the agent started (seeded from /proc), UDP sendto reported once per
(process, destination) however many datagrams, connected UDP, traffic never blocked by the observe-only
cgroup programs, and nothing of the sensor left in the kernel after the agent stops.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sensorium_testlib import DecoderContext


def kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a test that runs the sensor in the real kernel through the real agent."""
    for m in (pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF programs"),
              pytest.mark.needs("tracepoint", "ringbuf", "btf", "cgroup_sock_addr", "cgroup2")):
        fn = m(fn)
    return fn


BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"
OUR_PROGS = ("net_sock_state", "net_udp_sendmsg", "net_udp_connect")  # kernel names are cut at 15 chars

SERVER = textwrap.dedent("""
    import socket, sys
    fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
    n, m = int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((sys.argv[2], 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    if len(sys.argv) > 5:            # wait for the go-ahead before accepting (agent started meanwhile)
        sys.stdin.readline()
    c, _ = s.accept()
    got = 0
    while got < n:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    c.sendall(b"y" * m)
    c.recv(1)                        # the client's FIN
    c.close()
    s.close()
    print(got, flush=True)
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
    n, m = int(sys.argv[4]), int(sys.argv[5])
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.connect((sys.argv[2], int(sys.argv[3])))
    print(c.getsockname()[1], flush=True)
    c.sendall(b"x" * n)
    got = 0
    while got < m:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    c.close()
    print(got, flush=True)
""")

UDP_SENDER = textwrap.dedent("""
    import socket, sys
    fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for i in range(int(sys.argv[4])):
        s.sendto(b"ping %d" % i, (sys.argv[2], int(sys.argv[3])))
    if len(sys.argv) > 5:            # then a connected socket
        c = socket.socket(fam, socket.SOCK_DGRAM)
        c.connect((sys.argv[2], int(sys.argv[3])))
        c.send(b"connected")
    print("sent", flush=True)
""")


def _py(script: str, *args: Any, stdin: Any = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stdin=stdin, text=True)


# extended: these tests read our own fields (mechanism, bytes_sent, ...); test_event_schema.py checks the
# network events in the default format
NET_CONFIG = {"node_name": "net-test-node", "events": {"format": "extended"},
              "sensors": {"network": {"enabled": True, "udp_dedup_seconds": 30}}}


def _check_schema(h: Any) -> None:
    """What the agent wrote decodes as Tetragon's export would (its fields; ours are extra here)."""
    from tetragon_schema import check_agent_run

    check_agent_run({**NET_CONFIG, "exporters": [{"type": "file", "path": str(h.events_path)}]}, h.stdout_path)


def _start_net_agent(workdir: Path, started: list[Any]) -> Any:
    from sensorium_testlib import start_agent

    events = workdir / "events.jsonl"
    h = start_agent(workdir, {**NET_CONFIG, "exporters": [{"type": "file", "path": str(events),
                                                           "flush_interval_ms": 50}]}, started=started)
    h.events_path = events
    return h


@pytest.fixture(scope="module")
def net_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One agent with the network sensor for the module's tests that only observe: each test finds its own
    events by the ports and pids of the connections it makes. Starting an agent costs 40-65 s in the VM
    lane's emulated guests; one per test was most of the lane's time. A test that stops the agent or needs
    another config starts its own (`own_net_agent`)."""
    started: list[Any] = []
    h = _start_net_agent(tmp_path_factory.mktemp("net-agent"), started)
    yield h
    for a in started:
        a.stop()
        _check_schema(a)


@pytest.fixture
def own_net_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An agent of the test's own; ``preexisting``: our programs' ids loaded before it started (the module's
    shared agent may be running)."""
    started: list[Any] = []
    before = _our_prog_ids()
    h = _start_net_agent(tmp_path_factory.mktemp("net-agent"), started)
    h.preexisting = before
    yield h
    for a in started:
        a.stop()
        _check_schema(a)


def _kprobes(h: Any) -> list[dict[str, Any]]:
    return [e["process_kprobe"] for e in h.events(h.events_path)
            if "process_kprobe" in e and e["process_kprobe"].get("policy_name") == "network"]


def _wait(h: Any, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for ev in _kprobes(h):
            if pred(ev):
                return ev
        if time.monotonic() > deadline:
            seen = [(e["function_name"], e["args"][0]["sock_arg"]) for e in _kprobes(h)][-20:]
            raise AssertionError(f"no {what} within {timeout}s; network events seen (last 20): "
                                 f"{json.dumps(seen, indent=1)}\nagent stderr:\n{h.stderr_tail()}")
        time.sleep(0.05)


def _sock(ev: dict[str, Any]) -> dict[str, Any]:
    return ev["args"][0]["sock_arg"]


def _tcp_exchange(family: str, host: str, n: int, m: int) -> tuple[int, int, int, int]:
    """A real connection: server and client processes; returns (server pid, server port, client pid,
    client port) after both have finished and checked that every byte arrived."""
    srv = _py(SERVER, family, host, n, m)
    assert srv.stdout is not None
    sport = int(srv.stdout.readline())
    cli = _py(CLIENT, family, host, sport, n, m)
    out, _ = cli.communicate(timeout=30)
    cport, cgot = (int(x) for x in out.split())
    sgot = int(srv.communicate(timeout=30)[0])
    assert cli.returncode == 0 and srv.returncode == 0
    assert (sgot, cgot) == (n, m), "the connection lost bytes (blocked?)"
    return srv.pid, sport, cli.pid, cport


@kernel
@pytest.mark.parametrize("family,host", [("4", "127.0.0.1"), ("6", "::1")], ids=["ipv4", "ipv6"])
def test_tcp_connection_gives_connect_accept_and_close_with_owner_tuple_and_bytes(net_agent, family, host):
    h = net_agent
    n, m = 100_000, 3_333
    spid, sport, cpid, cport = _tcp_exchange(family, host, n, m)
    fam = "AF_INET" if family == "4" else "AF_INET6"

    def is_client(e: dict[str, Any]) -> bool:
        s = _sock(e)
        return s["sport"] == cport and s["dport"] == sport and s["family"] == fam

    def is_server(e: dict[str, Any]) -> bool:
        s = _sock(e)
        return s["sport"] == sport and s["dport"] == cport and s["family"] == fam

    conn = _wait(h, lambda e: e["function_name"] == "tcp_connect" and is_client(e), "tcp_connect")
    assert conn["process"]["pid"] == cpid
    assert conn["process"].get("binary", "").endswith(Path(sys.executable).name) or "exec_id" in conn["process"]
    s = _sock(conn)
    assert (s["saddr"], s["daddr"], s["protocol"], s["type"], s["state"]) == \
        (host, host, "IPPROTO_TCP", "SOCK_STREAM", "TCP_SYN_SENT")  # as at Tetragon's hook, tcp_connect()
    assert conn["mechanism"] == "tracepoint sock/inet_sock_set_state" and conn["action"] == "KPROBE_ACTION_POST"

    acc = _wait(h, lambda e: e["function_name"] == "inet_csk_accept" and is_server(e), "inet_csk_accept")
    assert acc["process"]["pid"] == spid, f"accept attributed to {acc['process']} (server {spid}, client {cpid})"
    assert not acc.get("owner_unknown")
    assert (_sock(acc)["saddr"], _sock(acc)["daddr"]) == (host, host)

    cclose = _wait(h, lambda e: e["function_name"] == "tcp_close" and is_client(e), "client tcp_close")
    assert cclose["process"]["pid"] == cpid
    assert (cclose["bytes_sent"], cclose["bytes_received"]) == (n, m)
    assert _sock(cclose)["cookie"] == _sock(conn)["cookie"] and _sock(cclose)["state"] == "TCP_CLOSE"
    sclose = _wait(h, lambda e: e["function_name"] == "tcp_close" and is_server(e), "server tcp_close")
    assert sclose["process"]["pid"] == spid
    assert (sclose["bytes_sent"], sclose["bytes_received"]) == (m, n)
    assert _sock(sclose)["cookie"] == _sock(acc)["cookie"] != _sock(conn)["cookie"]


@kernel
def test_refused_connect_is_reported_as_failed(net_agent):
    h = net_agent
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now: the connect is refused
    p = _py("import socket,sys\ntry:\n socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
            "except ConnectionRefusedError:\n print('refused')", port)
    assert p.communicate(timeout=30)[0].strip() == "refused"
    ev = _wait(h, lambda e: e["function_name"] == "tcp_connect" and e.get("connect_failed")
               and _sock(e)["dport"] == port, "failed tcp_connect")
    assert ev["process"]["pid"] == p.pid and _sock(ev)["state"] == "TCP_SYN_SENT"


@kernel
def test_accept_on_a_listener_older_than_the_agent_is_attributed_to_its_owner(agent, tmp_path):
    srv = _py(SERVER, "4", "127.0.0.1", 10, 10, "wait", stdin=subprocess.PIPE)
    assert srv.stdout is not None and srv.stdin is not None
    sport = int(srv.stdout.readline())
    try:
        events = tmp_path / "events.jsonl"
        h = agent({"sensors": {"network": {"enabled": True}},
                   "exporters": [{"type": "file", "path": str(events), "flush_interval_ms": 50}]})
        h.events_path = events
        cli = _py(CLIENT, "4", "127.0.0.1", sport, 10, 10)
        srv.stdin.write("go\n")
        srv.stdin.flush()
        assert cli.communicate(timeout=30)[0].split()[1] == "10"
        acc = _wait(h, lambda e: e["function_name"] == "inet_csk_accept" and _sock(e)["sport"] == sport,
                    "inet_csk_accept")
        assert acc["process"]["pid"] == srv.pid
    finally:
        srv.kill()
        srv.wait()


@kernel
def test_udp_sendto_is_reported_once_per_destination_and_never_blocked(net_agent):
    h = net_agent
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    try:
        p = _py(UDP_SENDER, "4", "127.0.0.1", port, 5, "connected")
        assert p.communicate(timeout=30)[0].strip() == "sent" and p.returncode == 0
        got = sorted(rx.recv(100) for _ in range(6))
        assert got == sorted([b"ping %d" % i for i in range(5)] + [b"connected"]), "datagrams were dropped"
    finally:
        rx.close()
    ev = _wait(h, lambda e: e["function_name"] == "udp_sendmsg" and _sock(e)["dport"] == port, "udp_sendmsg")
    assert ev["process"]["pid"] == p.pid and ev["mechanism"] == "cgroup/sendmsg4"
    s = _sock(ev)
    assert (s["daddr"], s["family"], s["protocol"], s["type"]) == ("127.0.0.1", "AF_INET", "IPPROTO_UDP", "SOCK_DGRAM")
    conn = _wait(h, lambda e: e["function_name"] == "udp_connect" and _sock(e)["dport"] == port, "udp_connect")
    assert conn["process"]["pid"] == p.pid and conn["mechanism"] == "cgroup/connect4"
    time.sleep(1.0)  # let any (wrong) duplicate arrive
    sends = [e for e in _kprobes(h) if e["function_name"] == "udp_sendmsg" and _sock(e)["dport"] == port]
    assert len(sends) == 1, f"{len(sends)} udp_sendmsg events for 5 datagrams to one destination"


@kernel
def test_udp_over_ipv6_is_reported_and_delivered(net_agent):
    h = net_agent
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("::1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    try:
        p = _py(UDP_SENDER, "6", "::1", port, 2)
        assert p.communicate(timeout=30)[0].strip() == "sent"
        assert sorted(rx.recv(100) for _ in range(2)) == [b"ping 0", b"ping 1"]
    finally:
        rx.close()
    ev = _wait(h, lambda e: e["function_name"] == "udp_sendmsg" and _sock(e)["dport"] == port, "udp_sendmsg")
    assert _sock(ev)["daddr"] == "::1" and ev["mechanism"] == "cgroup/sendmsg6" and ev["process"]["pid"] == p.pid


@kernel
def test_observe_only_programs_never_block_traffic(net_agent):
    """Everything the programs see is allowed: TCP to a listener, UDP to nobody (no EPERM from the
    programs; the kernel's own answer, if any, is what comes back). The events show that the programs
    did see this very traffic."""
    h = net_agent
    _tcp_exchange("4", "127.0.0.1", 10, 10)
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            assert s.sendto(b"x", (host, 9)) == 1          # unconnected: sendmsg4/6
            s.connect((host, 9))                            # connected: connect4/6
            assert s.send(b"x") == 1
        finally:
            s.close()
    me = os.getpid()
    for fn, mech in (("udp_sendmsg", "cgroup/sendmsg4"), ("udp_connect", "cgroup/connect4"),
                     ("udp_sendmsg", "cgroup/sendmsg6"), ("udp_connect", "cgroup/connect6")):
        _wait(h, lambda e, fn=fn, mech=mech: e["function_name"] == fn and e["mechanism"] == mech
              and _sock(e)["dport"] == 9 and e["process"].get("pid") == me, f"{fn} via {mech}")


def _bpftool(*args: str) -> Any:
    r = subprocess.run([BPFTOOL, *args, "-j"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip() or "null") or []


# cgroup/connect4, connect6, sendmsg4, sendmsg6 (enum bpf_attach_type)
_SOCK_ADDR_ATTACH = (10, 11, 14, 15)


def _cgroup_prog_ids(root: str) -> set[int]:
    """Programs attached to cgroup ``root`` at the sock_addr hooks, asked of the kernel directly
    (BPF_PROG_QUERY per attach type): `bpftool cgroup show` queries every attach type it knows and fails
    on a kernel that knows fewer (5.10)."""
    import ctypes

    from sensorium.bpf.libbpf import lib

    fn = lib().bpf_prog_query
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids: set[int] = set()
        for at in _SOCK_ADDR_ATTACH:
            buf = (ctypes.c_uint32 * 64)()
            cnt = ctypes.c_uint32(64)
            flags = ctypes.c_uint32(0)
            rc = fn(fd, at, 0, ctypes.byref(flags), buf, ctypes.byref(cnt))
            assert rc == 0, f"BPF_PROG_QUERY({root}, {at}): {os.strerror(-rc if rc < 0 else rc)}"
            ids.update(buf[i] for i in range(cnt.value))
        return ids
    finally:
        os.close(fd)


def _our_prog_ids() -> set[int]:
    return {p["id"] for p in _bpftool("prog", "list") if p.get("name", "").startswith(OUR_PROGS)}


@kernel
def test_everything_is_detached_after_the_agent_stops(own_net_agent):
    h = own_net_agent
    from sensorium.bpf.probe import probe_kernel

    # `from conftest import ...` is ambiguous (tests/vm and tests/k8s have their own conftest).
    root = str(probe_kernel().cgroup2)
    ours = _our_prog_ids() - h.preexisting
    attached = _cgroup_prog_ids(root) & ours
    linked = {lk.get("prog_id") for lk in _bpftool("link", "list")} & ours
    assert len(attached) >= 4 and linked, (
        f"while running, our programs {ours} should be attached to {root} and linked "
        f"(cgroup: {attached}, links: {linked})")
    assert h.stop() == 0
    left = {p["id"] for p in _bpftool("prog", "list")} & (attached | linked)
    assert not left, f"programs still loaded after stop: {left}"
    assert not (_cgroup_prog_ids(root) & (attached | linked))
    assert not ({lk.get("prog_id") for lk in _bpftool("link", "list")} & (attached | linked))


@kernel
def test_dual_stack_listener_gets_the_ipv4_accept(net_agent):
    """An IPv6 wildcard listener also accepts IPv4 (the accepted socket is AF_INET6 with IPv4-mapped
    addresses): the accept must still find the listener's owner."""
    h = net_agent
    srv = _py(SERVER, "6", "::", 10, 10)
    assert srv.stdout is not None
    sport = int(srv.stdout.readline())
    cli = _py(CLIENT, "4", "127.0.0.1", sport, 10, 10)
    cport = int(cli.communicate(timeout=30)[0].split()[0])
    srv.communicate(timeout=30)
    acc = _wait(h, lambda e: e["function_name"] == "inet_csk_accept" and _sock(e)["sport"] == sport
                and _sock(e)["dport"] == cport, "inet_csk_accept")
    assert acc["process"]["pid"] == srv.pid
    assert (_sock(acc)["family"], _sock(acc)["saddr"]) == ("AF_INET6", "::ffff:127.0.0.1")


@kernel
def test_unusable_cgroup_path_fails_the_sensor_with_its_reason_and_the_agent_runs_on(agent, tmp_path):
    missing = tmp_path / "no-such-cgroup"
    h = agent({"sensors": {"network": {"enabled": True, "cgroup_path": str(missing)}}})
    r = subprocess.run([str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "sensorium"), "status", "--json",
                        "--config", str(h.config_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    sensors = st["sensors"] if isinstance(st["sensors"], list) else list(st["sensors"].values())
    [net] = [s for s in sensors if s["name"] == "network"]
    assert net["state"] == "failed" and str(missing) in net["reason"], net
    assert h.proc.poll() is None


# ---- the decoder and the /proc listener scan against damaged or hostile input (no kernel needed) ----


def _tcp_record(rtype: int, **kw: Any) -> bytes:
    from sensorium_sensors.network.decoder import NetTcpRecord

    r = NetTcpRecord()
    r.hdr.type, r.hdr.pid, r.hdr.tid, r.hdr.ktime = rtype, 4242, 4243, 1000
    r.hdr.size = len(bytes(r))
    r.family, r.protocol, r.sk_type, r.sport, r.dport = 2, 6, 1, 1111, 80
    r.skaddr = 0xFFFF888812345678
    r.saddr[:4] = [127, 0, 0, 1]
    r.daddr[:4] = [10, 1, 2, 3]
    for k, v in kw.items():
        setattr(r, k, v)
    return bytes(r)


def test_decoder_renders_a_close_record_in_tetragon_shape_without_the_kernel_address() -> None:
    from sensorium_sensors.network.decoder import NET_REC_CLOSE, NetworkDecoder

    d = NetworkDecoder(DecoderContext())  # type: ignore[arg-type]
    (ev,) = d.decode_batch([_tcp_record(NET_REC_CLOSE, bytes_acked=5, bytes_received=7, newstate=7, oldstate=9)])
    b = ev.body
    assert ev.kind == "process_kprobe" and b["function_name"] == "tcp_close" and b["policy_name"] == "network"
    assert b["process"] == {"pid": 4242}  # not in the cache: the pipeline's ProcessJoin resolves it later
    assert (b["bytes_sent"], b["bytes_received"]) == (5, 7)
    s = b["args"][0]["sock_arg"]
    assert s == {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP", "mark": 0, "priority": 0,
                 "saddr": "127.0.0.1", "daddr": "10.1.2.3", "sport": 1111, "dport": 80, "cookie": s["cookie"],
                 "state": "TCP_CLOSE"}
    assert s["cookie"] != str(0xFFFF888812345678) and "ffff8888" not in json.dumps(b)


def test_decoder_skips_short_unknown_and_inconsistent_records() -> None:
    from sensorium_sensors.network.decoder import NET_REC_CONNECT, NET_REC_UDP, NetworkDecoder

    d = NetworkDecoder(DecoderContext())  # type: ignore[arg-type]
    good = _tcp_record(NET_REC_CONNECT, newstate=1, oldstate=2)
    bad = [b"", b"\x01\x00", good[:40], _tcp_record(99), _tcp_record(NET_REC_CONNECT, family=1),
           NET_REC_UDP.to_bytes(2, "little") + b"\0" * 30, os.urandom(3)]
    out = d.decode_batch(bad + [good])
    assert [e.body["function_name"] for e in out] == ["tcp_connect"]
    assert d.counters["short"] >= 2 and d.counters["unknown_type"] >= 1 and d.counters["bad_family"] == 1


def test_owner_unknown_gives_an_empty_process_not_a_wrong_one() -> None:
    from sensorium_sensors.network.decoder import NET_F_OWNER_UNKNOWN, NET_REC_ACCEPT, NetworkDecoder

    d = NetworkDecoder(DecoderContext())  # type: ignore[arg-type]
    rec = bytearray(_tcp_record(NET_REC_ACCEPT, newstate=1, oldstate=3, pid=0))
    rec[2:4] = NET_F_OWNER_UNKNOWN.to_bytes(2, "little")
    (ev,) = d.decode_batch([bytes(rec)])
    assert ev.body["process"] == {} and ev.body["owner_unknown"] is True


def test_proc_net_tcp_listeners_are_parsed_with_their_addresses() -> None:
    from sensorium_sensors.network.procnet import parse_proc_net_tcp

    v4 = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
          "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1\n"
          "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n"
          "garbage line\n   2: zz:zz 00000000:0000 0A 0 0 0 0 0 x\n")
    assert parse_proc_net_tcp(v4, 2) == [(bytes([127, 0, 0, 1]) + b"\0" * 12, 8080, 12345)]
    v6 = ("  sl  local_address                         remote_address                        st ...\n"
          "   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A "
          "00000000:00000000 00:00000000 00000000     0        0 777 1\n")
    assert parse_proc_net_tcp(v6, 10) == [(socket.inet_pton(socket.AF_INET6, "::1"), 22, 777)]


@kernel
def test_udp_pair_is_reported_again_after_the_dedup_window(agent, tmp_path):
    events = tmp_path / "events.jsonl"
    h = agent({"sensors": {"network": {"enabled": True, "udp_dedup_seconds": 1}},
               "exporters": [{"type": "file", "path": str(events), "flush_interval_ms": 50}]})
    h.events_path = events
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = 9

    def reports() -> list[dict[str, Any]]:
        return [e for e in _kprobes(h) if e["function_name"] == "udp_sendmsg" and _sock(e)["dport"] == port
                and e["process"].get("pid") == os.getpid()]

    try:
        for _ in range(3):
            s.sendto(b"x", ("127.0.0.1", port))
        _wait(h, lambda e: e in reports(), "first udp_sendmsg")
        time.sleep(1.5)
        assert len(reports()) == 1, "three datagrams within the window gave more than one report"
        for _ in range(3):
            s.sendto(b"x", ("127.0.0.1", port))
        deadline = time.monotonic() + 10
        while len(reports()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(reports()) == 2, f"{len(reports())} reports; expected one per window"
    finally:
        s.close()


def test_sensor_is_off_by_default_and_declares_what_it_needs() -> None:
    from sensorium.plugins import PluginRegistry

    spec = PluginRegistry().discover().sensors["network"]
    assert spec.enabled_by_default is False
    assert {"tracepoint", "ringbuf", "btf"} <= set(spec.requires)
    assert {"net_tcp_record", "net_udp_record"} <= set(spec.record_layouts)


def test_bad_option_is_refused_naming_file_line_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"api: {{socket: {tmp_path / 'api.sock'}}}\nsensors:\n  network:\n    enabled: true\n"
                   "    udp_dedup_seconds: -1\n")
    exe = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "sensorium"
    r = subprocess.run([str(exe), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "line 5" in r.stderr and "sensors.network.udp_dedup_seconds" in r.stderr, r.stderr

"""GetUrl and DnsLookup: when a selector with one of them matches, the agent makes the request (an HTTP GET of
argUrl, a DNS A query for argFqdn) off the ring reader, bounded per policy and action, and the event reports the
action. Against real parts: an HTTP server and a DNS responder (UDP, its own packet parsing) this test starts on
loopback, the real agent or the kprobe sensor in this kernel, and real processes opening a file.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hook_helpers import Rig, openat_tracepoint_policy, string_args

from sensorium.actions import ActionRunner, check_fqdn, check_url, parse_dns_response
from sensorium.yamlsrc import SourceError

REPO = Path(__file__).resolve().parents[1]
CLI = [str(REPO / ".venv" / "bin" / "sensorium")] if (REPO / ".venv" / "bin" / "sensorium").exists() else \
    [sys.executable, "-c", "from sensorium.cli import main; main()"]
ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")


# ---- the peers: real servers on loopback -----------------------------------------------------------------------
class _Peer:
    """A loopback server a test starts; ``seen`` is what it received (under ``lock``)."""

    seen: list[Any]
    lock: threading.Lock

    def wait(self, n: int, timeout: float = 10.0) -> list[Any]:
        """What it received once it has ``n`` (or all it has at the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.seen) >= n:
                    return list(self.seen)
            time.sleep(0.02)
        with self.lock:
            return list(self.seen)


class HttpPeer(_Peer):
    """An HTTP server on 127.0.0.1 that records each request's method, path and User-Agent and answers 204;
    ``hold`` (an Event): every request waits for it before the answer."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with peer.lock:
                    peer.seen.append(("GET", self.path, self.headers.get("User-Agent", "")))
                if hold is not None:
                    hold.wait(10)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-peer", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class DnsPeer(_Peer):
    """A DNS responder on 127.0.0.1 (UDP): parses each query (header, one question) and records (name, qtype),
    answering an A query with 192.0.2.7."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[str, int]] = []
        self.bad: list[bytes] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="dns-peer", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                qid, flags, qd = struct.unpack_from("!HHH", data)
                assert qd == 1 and not flags & 0x8000
                pos, labels = 12, []
                while data[pos]:
                    labels.append(data[pos + 1:pos + 1 + data[pos]].decode("ascii"))
                    pos += 1 + data[pos]
                qtype, _qclass = struct.unpack_from("!HH", data, pos + 1)
                question = data[12:pos + 5]
            except Exception:  # noqa: BLE001 - a malformed query is recorded, not answered
                with self.lock:
                    self.bad.append(data)
                continue
            with self.lock:
                self.seen.append((".".join(labels), qtype))
            answer = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question
            answer += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("192.0.2.7")
            self.sock.sendto(answer, addr)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    p = HttpPeer()
    yield p
    p.close()


@pytest.fixture
def dns_peer() -> Iterator[DnsPeer]:
    p = DnsPeer()
    yield p
    p.close()


def _wait(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---- the policy: validated, refused by field -------------------------------------------------------------------
def _policy(name: str, action_lines: str, path: str = "/etc/passwd") -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - {{index: 0, type: int}}
    - {{index: 1, type: string}}
    selectors:
    - matchArgs:
      - {{index: 1, operator: Equal, values: ["{path}"]}}
      matchActions:
{action_lines}"""


def _check(text: str) -> Any:
    from sensorium.plugins import PluginRegistry
    from sensorium.policy_rules import validate_policies

    return validate_policies(text, "p.yaml", PluginRegistry().discover_quietly(), scoping_supported=True)


def _refusal(text: str) -> str:
    with pytest.raises(SourceError) as e:
        _check(text)
    return str(e.value)


@pytest.mark.parametrize("url,why", [
    ("file:///etc/passwd", "scheme file:// is not allowed: only http:// and https:// URLs are requested"),
    ("gopher://x/1", "scheme gopher:// is not allowed"),
    ("ebpf.io/x", "scheme (none) is not allowed"),
    ("http:///nohost", "the URL names no host"),
    ("http://user:pw@h/", "credentials in the URL are not allowed"),
    ("http://h/a b", "the URL holds a space or a control character"),
    ("http://h:99999/", "not a URL"),
])
def test_a_url_other_than_http_or_https_is_refused_naming_argurl(url: str, why: str) -> None:
    msg = _refusal(_policy("u", f"      - action: GetUrl\n        argUrl: {json.dumps(url)}\n"))
    assert "p.yaml:17: spec.kprobes[0].selectors[0].matchActions[0].argUrl: " in msg and why in msg, msg


@pytest.mark.parametrize("lines,where,why", [
    ("      - action: GetUrl\n", "matchActions[0]", "the GetUrl action needs argUrl"),
    ("      - action: DnsLookup\n", "matchActions[0]", "the DnsLookup action needs argFqdn"),
    ("      - action: Sigkill\n        argUrl: http://h/\n", "matchActions[0]", "argUrl applies only to the GetUrl"),
    ("      - action: GetUrl\n        argFqdn: h.example\n", "matchActions[0]", "argFqdn applies only to the DnsLookup"),
    ("      - action: DnsLookup\n        argFqdn: bad..name\n", "matchActions[0].argFqdn", "label '' is not a DNS label"),
    ("      - action: DnsLookup\n        argFqdn: -x.example\n", "matchActions[0].argFqdn", "is not a DNS label"),
    ("      - action: GetUrl\n        argUrl: http://h/\n      - action: NoPost\n", "matchActions[0].action",
     "GetUrl with NoPost: the agent makes the request when it receives the event"),
    ("      - action: GetUrl\n        argUrl: http://h/\n      - action: DnsLookup\n        argFqdn: h.example\n",
     "matchActions[1].action", "one GetUrl or DnsLookup action per selector"),
])
def test_a_misused_action_is_refused_by_field(lines: str, where: str, why: str) -> None:
    msg = _refusal(_policy("u", lines))
    assert f"spec.kprobes[0].selectors[0].{where}: " in msg and why in msg, msg


def test_the_corpus_policies_are_valid() -> None:
    corpus = REPO / "tests" / "data" / "tetragon-policies"
    [p] = _check((corpus / "open_geturl.yaml").read_text())
    assert p.sections[0].items[0].selectors[0].matchActions[0].argUrl == "http://ebpf.io"
    [p] = _check((corpus / "open_dnsrequest.yaml").read_text())
    assert p.sections[0].items[0].selectors[0].matchActions[0].argFqdn == "ebpf.io"


def test_names_and_urls_the_checks_accept() -> None:
    assert check_url("https://canary.example:8443/t/abc?x=1") is None
    assert check_url("http://[::1]:8080/") is None
    assert check_fqdn("ebpf.io") is None and check_fqdn("a_b.example.") is None
    assert check_fqdn("x" * 64 + ".io") is not None and check_fqdn(".".join(["a" * 63] * 5)) is not None


# ---- the runner on its own: rate limit, queue, failures, stop, hostile DNS answers -----------------------------
def test_a_flood_is_cut_at_the_burst_and_the_rest_counted(http_peer: HttpPeer) -> None:
    clock = [100.0]
    r = ActionRunner(rate_per_s=1.0, burst=3, queue_size=64, clock=lambda: clock[0])
    r.start()
    try:
        url = f"http://127.0.0.1:{http_peer.port}/flood"
        offered = [r.submit("p", "GetUrl", url) for _ in range(20)]
        assert offered == [True] * 3 + [False] * 17
        clock[0] += 2.0  # two seconds later: two more tokens
        assert [r.submit("p", "GetUrl", url) for _ in range(3)] == [True, True, False]
        assert r.submit("other-policy", "GetUrl", url)  # each policy has its own bucket
        assert len(http_peer.wait(6)) == 6
        assert _wait(lambda: r.stats("p", "GetUrl").sent == 5)
        st = r.stats("p", "GetUrl")
        assert (st.sent, st.failed, st.dropped_rate_limit, st.dropped_queue_full) == (5, 0, 18, 0)
        assert r.status()["policies"]["p"]["GetUrl"]["dropped"] == {"rate_limit": 18, "queue_full": 0, "stopped": 0}
    finally:
        r.stop()


def test_a_full_queue_drops_and_counts_while_the_worker_is_busy() -> None:
    hold = threading.Event()
    peer = HttpPeer(hold=hold)
    r = ActionRunner(rate_per_s=1000, burst=1000, queue_size=2, timeout_s=5.0)
    r.start()
    try:
        url = f"http://127.0.0.1:{peer.port}/slow"
        assert r.submit("p", "GetUrl", url)
        assert peer.wait(1)  # the one worker is now held inside the request
        got = [r.submit("p", "GetUrl", url) for _ in range(5)]
        assert got == [True, True, False, False, False]
        hold.set()
        assert _wait(lambda: r.stats("p", "GetUrl").sent == 3)
        st = r.stats("p", "GetUrl")
        assert (st.sent, st.dropped_queue_full, st.dropped_rate_limit) == (3, 3, 0)
    finally:
        hold.set()
        r.stop()
        peer.close()


def test_a_request_nobody_answers_is_counted_failed_with_the_reason() -> None:
    with socket.socket() as s:  # a port nobody listens on (bound, not listening: connect is refused)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = ActionRunner(timeout_s=1.0)
        r.start()
        try:
            assert r.submit("p", "GetUrl", f"http://127.0.0.1:{port}/x")
            assert _wait(lambda: r.stats("p", "GetUrl").failed == 1)
            st = r.stats("p", "GetUrl")
            assert st.sent == 0 and "ConnectionRefusedError" in (st.last_error or "")
        finally:
            r.stop()


def test_a_dns_server_that_never_answers_times_out_as_failed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind(("127.0.0.1", 0))
        r = ActionRunner(timeout_s=0.3, dns_resolver=mute.getsockname())
        r.start()
        try:
            t0 = time.monotonic()
            assert r.submit("p", "DnsLookup", "nobody.example")
            assert _wait(lambda: r.stats("p", "DnsLookup").failed == 1, timeout=5)
            assert time.monotonic() - t0 < 3
            assert mute.recv(512)[12:] == b"\x06nobody\x07example\x00\x00\x01\x00\x01"  # the query did go out
        finally:
            r.stop()


def test_what_is_queued_at_stop_is_dropped_and_counted() -> None:
    r = ActionRunner(queue_size=8)  # not started: nothing takes the requests
    for _ in range(4):
        assert r.submit("p", "DnsLookup", "x.example")
    r.stop()
    assert r.stats("p", "DnsLookup").dropped_stopped == 4
    assert not r.submit("p", "DnsLookup", "x.example")
    assert r.stats("p", "DnsLookup").dropped_stopped == 5


@pytest.mark.parametrize("data,why", [
    (b"", "shorter than a DNS header"),
    (struct.pack("!HHHHHH", 7, 0x8180, 0, 0, 0, 0), "another query"),
    (struct.pack("!HHHHHH", 9, 0x0100, 0, 0, 0, 0), "not an answer"),
    (struct.pack("!HHHHHH", 9, 0x8180, 1, 0, 0, 0) + b"\x05ab", "runs past the end"),
    (struct.pack("!HHHHHH", 9, 0x8180, 0, 1, 0, 0) + b"\xc0", "pointer is cut"),
    (struct.pack("!HHHHHH", 9, 0x8180, 0, 1, 0, 0) + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 40), "data is cut"),
    (struct.pack("!HHHHHH", 9, 0x8180, 1, 0, 0, 0) + b"\x01a" * 200 + b"\x00", "too many labels"),
])
def test_hostile_dns_answers_are_refused_by_name(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_dns_response(data, 9)


# ---- in the kernel: the kprobe sensor's syscall hook on this host --------------------------------------------
@pytest.mark.kernel
@ROOT
def test_sensor_event_reports_geturl_and_the_server_sees_the_get(http_peer: HttpPeer, tmp_path: Path) -> None:
    from sensorium_sensors.kprobe.sensor import KprobeSensor

    watched = tmp_path / "watched"
    watched.write_text("x")
    runner = ActionRunner(rate_per_s=100, burst=10)
    runner.start()
    rig = Rig(KprobeSensor, actions=runner)
    try:
        url = f"http://127.0.0.1:{http_peer.port}/canary/sensor-test?node=n1"
        rig.load(_policy("geturl-test", f"      - action: GetUrl\n        argUrl: \"{url}\"\n", str(watched)), "kprobes")
        subprocess.run(["cat", str(watched)], check=True, capture_output=True)
        evs = rig.events(lambda b: str(watched) in string_args(b), wait=5)
        assert len(evs) == 1, evs
        assert evs[0]["policy_name"] == "geturl-test" and evs[0]["action"] == "KPROBE_ACTION_GETURL"
        seen = http_peer.wait(1)
        assert [(m, p) for m, p, _ua in seen] == [("GET", "/canary/sensor-test?node=n1")]
        assert seen[0][2].startswith("sensorium/")
        assert _wait(lambda: runner.stats("geturl-test", "GetUrl").sent == 1)
        assert rig.sensor.status()["action_requests"] == {"queued": 1}
    finally:
        rig.close()
        runner.stop()
    rig.check_schema()  # KPROBE_ACTION_GETURL is Tetragon's enum value


# ---- the real agent: a tracepoint hook, the requests, the flood, `sensorium status` ------------------------------
def _tp_policy(name: str, path: Path, action_lines: str) -> str:
    return openat_tracepoint_policy(name, path, "      matchActions:\n" + action_lines)


def _cli(sock: Path, *args: str) -> str:
    res = subprocess.run([*CLI, *args, "--socket", str(sock)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"sensorium {' '.join(args)}: {res.stdout}{res.stderr}"
    return res.stdout


def _opener(path: Path, times: int) -> None:
    code = f"import os\nfor _ in range({times}):\n    os.close(os.open({str(path)!r}, os.O_RDONLY))"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.kernel
@ROOT
def test_agent_makes_the_requests_reports_the_actions_and_cuts_a_flood(agent, tmp_path: Path, http_peer: HttpPeer,
                                                                      dns_peer: DnsPeer) -> None:
    sock = tmp_path / "run" / "api.sock"
    h = agent({"api": {"socket": str(sock)}, "sensors": {"tracepoint": {"enabled": True}},
               "actions": {"dns_resolver": f"127.0.0.1:{dns_peer.port}", "rate_per_s": 0.001, "burst": 3,
                           "timeout_s": 2.0}})
    url_file, dns_file = tmp_path / "url-canary", tmp_path / "dns-canary"
    url_file.write_text("u")
    dns_file.write_text("d")
    url = f"http://127.0.0.1:{http_peer.port}/tetragon-canary/{tmp_path.name}"
    (tmp_path / "u.yaml").write_text(_tp_policy("canary-url", url_file,
                                                f"      - action: GetUrl\n        argUrl: \"{url}\"\n"))
    (tmp_path / "d.yaml").write_text(_tp_policy("canary-dns", dns_file,
                                                "      - action: DnsLookup\n        argFqdn: canary.sensorium.test\n"))
    assert _cli(sock, "policy", "add", str(tmp_path / "u.yaml")) == "policy canary-url added\n"
    assert _cli(sock, "policy", "add", str(tmp_path / "d.yaml")) == "policy canary-dns added\n"

    _opener(dns_file, 1)
    assert dns_peer.wait(1) == [("canary.sensorium.test", 1)]  # one A query, for the name the policy gives
    ev = h.wait_for(lambda e: e.get("process_tracepoint", {}).get("policy_name") == "canary-dns")
    assert ev["process_tracepoint"]["action"] == "KPROBE_ACTION_DNSLOOKUP"

    _opener(url_file, 30)  # a flood: 30 matches, the bucket holds 3 and refills at one per 1000 s
    h.wait_for(lambda e: sum(1 for x in h.events() if x.get("process_tracepoint", {}).get("policy_name")
                             == "canary-url") >= 30)
    posted = [e["process_tracepoint"] for e in h.events()
              if e.get("process_tracepoint", {}).get("policy_name") == "canary-url"]
    assert len(posted) == 30 and {b["action"] for b in posted} == {"KPROBE_ACTION_GETURL"}
    assert http_peer.wait(3) and [p for _m, p, _ua in http_peer.seen] == [f"/tetragon-canary/{tmp_path.name}"] * 3
    st = json.loads(_cli(sock, "status", "--json"))["actions"]
    assert _wait(lambda: json.loads(_cli(sock, "status", "--json"))["actions"]["policies"]["canary-url"]["GetUrl"]
                 ["sent"] == 3)
    st = json.loads(_cli(sock, "status", "--json"))["actions"]
    assert st["policies"]["canary-url"]["GetUrl"] == {"sent": 3, "failed": 0,
                                                      "dropped": {"rate_limit": 27, "queue_full": 0, "stopped": 0}}
    assert st["policies"]["canary-dns"]["DnsLookup"] == {"sent": 1, "failed": 0,
                                                         "dropped": {"rate_limit": 0, "queue_full": 0, "stopped": 0}}
    assert (st["rate_per_s"], st["burst"], st["dns_resolver"]) == (0.001, 3, f"127.0.0.1:{dns_peer.port}")
    text = _cli(sock, "status")
    assert "action GetUrl    policy canary-url: sent 3, failed 0, dropped rate_limit 27" in text, text
    time.sleep(0.3)
    assert len(http_peer.seen) == 3 and len(dns_peer.seen) == 1 and not dns_peer.bad  # nothing more went out


def test_an_agent_with_actions_off_refuses_the_policy_at_load() -> None:
    from sensorium.plugins import PluginRegistry
    from sensorium.policy_manager import PolicyManager

    pm = PolicyManager(PluginRegistry().discover_quietly(), {}, user_actions=False)
    text = _policy("canary", "      - action: Post\n      - action: DnsLookup\n        argFqdn: canary.example\n")
    with pytest.raises(SourceError) as e:
        pm.add(text, "p.yaml")
    assert str(e.value) == ("p.yaml:17: spec.kprobes[0].selectors[0].matchActions[1].action: DnsLookup is turned off "
                            "on this agent (actions.enabled is false in the agent config): it makes no request a "
                            "policy names")
    assert pm.list() == []


# ---- Tetragon's own example policies, on their kernel function (fd_install: fentry, in the VM lane) ------------
@pytest.mark.needs("fentry")
@ROOT
def test_the_corpus_policies_make_their_requests_when_etc_passwd_is_installed(http_peer: HttpPeer,
                                                                              dns_peer: DnsPeer) -> None:
    """open_geturl.yaml and open_dnsrequest.yaml as Tetragon ships them, their URL and resolver pointed at the
    peers on loopback: opening /etc/passwd (fd_install of that file) makes the GET and the A query."""
    from sensorium_sensors.kprobe.sensor import KprobeSensor

    corpus = REPO / "tests" / "data" / "tetragon-policies"
    url = f"http://127.0.0.1:{http_peer.port}/ebpf.io"
    geturl = (corpus / "open_geturl.yaml").read_text().replace("argUrl: http://ebpf.io", f"argUrl: {url}")
    assert url in geturl
    runner = ActionRunner(rate_per_s=100, burst=100, dns_resolver=("127.0.0.1", dns_peer.port))
    runner.start()
    rig = Rig(KprobeSensor, actions=runner)
    try:
        rig.load(geturl, "kprobes", policy_id=7)
        rig.load((corpus / "open_dnsrequest.yaml").read_text(), "kprobes", policy_id=8)
        with open("/etc/passwd", "rb"):
            pass
        evs = rig.events(lambda b: b.get("function_name") == "fd_install", wait=10)
        mine = [e for e in evs if e["process"]["pid"] == os.getpid()]
        assert {e["policy_name"]: e["action"] for e in mine} == {"url": "KPROBE_ACTION_GETURL",
                                                                "dns": "KPROBE_ACTION_DNSLOOKUP"}, evs
        assert {e["args"][1]["file_arg"]["path"] for e in mine} == {"/etc/passwd"}
        # every match makes a request (other processes of the guest may open /etc/passwd too)
        assert ("GET", "/ebpf.io") in [(m, p) for m, p, _ua in http_peer.wait(1)]
        assert ("ebpf.io", 1) in dns_peer.wait(1)
        assert _wait(lambda: runner.stats("url", "GetUrl").sent >= 1 and runner.stats("dns", "DnsLookup").sent >= 1)
        assert runner.stats("url", "GetUrl").failed == 0 and runner.stats("dns", "DnsLookup").failed == 0
    finally:
        rig.close()
        runner.stop()

"""The local API over a real unix socket: root only, hostile input safe, policies live, events streamed."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from policy_sensors import default_registry

from sensorium.api import MAX_REQUEST_BYTES, ApiClient, ApiError, ApiServer
from sensorium.cli import cli
from sensorium.events import Event
from sensorium.pipeline import Pipeline
from sensorium.policy_manager import PolicyManager
from sensorium.testing import make_event

REPO_DATA = Path(__file__).resolve().parent / "data" / "tetragon-policies"

POLICY = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
"""


class LiveAgent:
    """The parts of the agent the API uses, built from real components (pipeline, registry, manager)."""

    def __init__(self) -> None:
        self.registry, self.sensors = default_registry()
        self.policies = PolicyManager(self.registry, self.sensors)
        self.pipeline = Pipeline()

    def status(self) -> dict[str, Any]:
        return {"version": "test", "node_name": "test-node", "pid": os.getpid(), "uptime_s": 0, "sensors": [],
                "policies": self.policies.list()}

    def subscribe(self, callback: Callable[[Sequence[Event]], None]) -> Callable[[], None]:
        return self.pipeline.subscribe(callback)


@pytest.fixture
def agent() -> LiveAgent:
    return LiveAgent()


@pytest.fixture
def server(agent, tmp_path):
    srv = ApiServer(tmp_path / "run" / "api.sock", agent)
    srv.start()
    yield srv
    srv.stop()


def client(server: ApiServer) -> ApiClient:
    return ApiClient(server.path, timeout=10).connect()


def raw(server: ApiServer, data: bytes, read_lines: int = 1) -> list[dict[str, Any]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(server.path))
    s.sendall(data)
    buf = b""
    while buf.count(b"\n") < read_lines:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return [json.loads(x) for x in buf.splitlines() if x]


# ---- the socket ---------------------------------------------------------------------------------


def test_socket_is_0600_in_a_0700_directory_and_removed_at_stop(agent, tmp_path):
    srv = ApiServer(tmp_path / "run" / "api.sock", agent)
    srv.start()
    try:
        assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(srv.path).st_mode)
        assert stat.S_IMODE(os.stat(srv.path.parent).st_mode) == 0o700
    finally:
        srv.stop()
    assert not srv.path.exists()


def test_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not(agent, tmp_path):
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a killed agent leaves behind
    with ApiServer(path, agent):
        with pytest.raises(FileExistsError, match="another agent is already serving"):
            ApiServer(path, agent).start()
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        ApiServer(path, agent).start()
    assert path.read_text() == "precious"


def test_directory_writable_by_others_is_refused(agent, tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by others"):
        ApiServer(d / "api.sock", agent).start()


@pytest.fixture
def shared_dir():
    # A directory other users can traverse (pytest's tmp_path is root-only, which would hide the test).
    d = Path(tempfile.mkdtemp(prefix="sensorium-api-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


NOBODY_CONNECT = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
# The server answers (and hangs up) before reading anything from a refused peer.
print(s.recv(4096).decode().strip())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_other_users_are_refused_by_file_mode_and_by_peer_credentials(agent, shared_dir):
    with ApiServer(shared_dir / "api.sock", agent) as srv:
        def run() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", NOBODY_CONNECT, str(srv.path)], capture_output=True,
                                  text=True, timeout=30)
        out = run()
        assert out.stdout.strip() == "EACCES", out.stderr
        # Even if the socket's mode were loosened, SO_PEERCRED keeps non-root peers out.
        os.chmod(srv.path, 0o666)
        out = run()
        reply = json.loads(out.stdout)
        assert reply == {"ok": False, "error": {"code": "permission_denied", "message": "the Sensorium API is for root only"}}
        assert srv.refused_peers == 1 and srv.requests == 0


# ---- requests -----------------------------------------------------------------------------------


def test_policy_lifecycle_over_the_socket(server, agent):
    with client(server) as c:
        assert c.call("policy.add", {"text": POLICY.format(name="p1"), "file": "p1.yaml"}) == {"added": ["p1"]}
        [row] = c.call("policy.list")
        assert (row["name"], row["state"], row["mode"]) == ("p1", "enabled", "enforcement")
        assert c.call("policy.set_mode", {"name": "p1", "mode": "monitoring"}) == {"name": "p1", "mode": "monitoring"}
        assert set(agent.sensors["tracepoint"].attached.values()) == {"monitoring"}
        c.call("policy.disable", {"name": "p1"})
        assert agent.sensors["tracepoint"].attached == {}
        c.call("policy.enable", {"name": "p1"})
        assert c.call("policy.get", {"name": "p1"})["state"] == "enabled"
        c.call("policy.delete", {"name": "p1"})
        assert c.call("policy.list") == [] and agent.sensors["tracepoint"].attached == {}
        assert c.call("status")["node_name"] == "test-node"
        assert {p["name"] for p in c.call("plugins")} == {"tracepoint", "lsm"}


def test_errors_have_stable_codes_and_clear_messages(server):
    with client(server) as c:
        with pytest.raises(ApiError) as ei:
            c.call("policy.add", {"text": POLICY.format(name="p1").replace("event:", "evnt:"), "file": "x.yaml"})
        assert ei.value.code == "invalid_policy" and "x.yaml:7: spec.tracepoints[0].event: required field is missing" in ei.value.message
        c.call("policy.add", {"text": POLICY.format(name="p1")})
        with pytest.raises(ApiError) as ei:
            c.call("policy.add", {"text": POLICY.format(name="p1")})
        assert ei.value.code == "invalid_policy" and "already loaded" in ei.value.message
        with pytest.raises(ApiError) as ei:
            c.call("policy.delete", {"name": "nope"})
        assert (ei.value.code, ei.value.message) == ("not_found", "no policy named 'nope' is loaded")
        with pytest.raises(ApiError) as ei:
            c.call("policy.set_mode", {"name": "p1", "mode": "loud"})
        assert ei.value.code == "invalid_params" and ei.value.message.startswith("mode:")
        with pytest.raises(ApiError) as ei:
            c.call("policy.delete", {"name": "p1", "force": True})
        assert ei.value.message == "force: unknown parameter"
        with pytest.raises(ApiError) as ei:
            c.call("rm -rf", {})
        assert ei.value.code == "unknown_method"
        assert [p["name"] for p in c.call("policy.list")] == ["p1"]  # the connection is still usable


@pytest.mark.parametrize("line", [
    b"not json\n", b"[1,2]\n", b'"str"\n', b"{}\n", b'{"method": 5}\n', b'{"method": "status", "params": []}\n',
    b'{"method": "status", "id": {"x": 1}}\n', b'{"method": "status", "evil": 1}\n', b"\xff\xfe\n",
    b'{"method": "policy.add", "params": {"text": 12}}\n', b'{"method": "policy.delete", "params": {"name": ""}}\n',
    b'{"method": "events.subscribe", "params": {"filters": {"binary_regex": ["("]}}}\n',
    b'{"method": "events.subscribe", "params": {"queue_size": 1e99}}\n',
    b'{"method": "status", "id": true}\n',  # found by tests/test_fuzz_api.py: was answered, id true
])
def test_hostile_requests_get_an_error_and_the_server_lives_on(server, line):
    [reply] = raw(server, line)
    assert reply["ok"] is False and reply["error"]["code"] in ("bad_request", "invalid_params")
    with client(server) as c:
        assert c.call("policy.list") == []


def test_an_oversized_request_is_refused_without_reading_it_all(server):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(server.path))
    sent = 0
    chunk = b"x" * 65536
    try:
        while sent < MAX_REQUEST_BYTES * 4:
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = json.loads(s.recv(65536).splitlines()[0])
    s.close()
    assert reply["error"]["code"] == "request_too_large"
    assert sent < MAX_REQUEST_BYTES * 4
    with client(server) as c:
        assert c.call("status")["version"] == "test"


def test_pipelined_requests_on_one_connection_are_answered_in_order(server):
    lines = b"".join(json.dumps({"id": i, "method": "policy.list"}).encode() + b"\n" for i in range(50))
    replies = raw(server, lines, read_lines=50)
    assert [r["id"] for r in replies] == list(range(50)) and all(r["ok"] for r in replies)


# ---- the event stream ---------------------------------------------------------------------------


def subscribe(server: ApiServer, filters: dict[str, Any] | None = None, queue_size: int = 8192):
    c = client(server)
    gen = c.events(filters, queue_size=queue_size)
    return c, gen


def wait_subscribers(agent: LiveAgent, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(agent.pipeline._subscribers) < n:
        assert time.monotonic() < deadline, "subscriber did not register"
        time.sleep(0.01)


def test_events_stream_with_server_side_filters(server, agent):
    c, gen = subscribe(server, {"event_set": ["process_tracepoint"], "binary_regex": ["^/usr/bin/c"],
                                "policy_names": ["watch"]})
    got: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: got.extend(itertools.islice(gen, 2)), daemon=True)
    t.start()
    wait_subscribers(agent, 1)
    agent.pipeline.submit([
        make_event("process_exec", binary="/usr/bin/cat"),                                      # wrong type
        make_event("process_tracepoint", binary="/usr/bin/cat", policy_name="other"),          # wrong policy
        make_event("process_tracepoint", binary="/bin/cat", policy_name="watch"),              # wrong binary
        make_event("process_tracepoint", binary="/usr/bin/cat", pid=11, policy_name="watch"),  # yes
        make_event("process_tracepoint", binary="/usr/bin/curl", pid=12, policy_name="watch"),  # yes
    ])
    t.join(10)
    c.close()
    assert [e["process_tracepoint"]["process"]["pid"] for e in got] == [11, 12]
    assert got[0]["node_name"] == "test-node" and "time" in got[0]


def test_namespace_and_pod_filters(server, agent):
    c, gen = subscribe(server, {"namespace": ["prod"], "pod_regex": ["^web-"]})
    got: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: got.extend(itertools.islice(gen, 1)), daemon=True)
    t.start()
    wait_subscribers(agent, 1)
    agent.pipeline.submit([make_event(pid=1), make_event(pid=2, namespace="dev", pod="web-1"),
                           make_event(pid=3, namespace="prod", pod="db-1"),
                           make_event(pid=4, namespace="prod", pod="web-2")])
    t.join(10)
    c.close()
    assert [e["process_exec"]["process"]["pid"] for e in got] == [4]


def test_a_slow_subscriber_gets_drops_counted_and_never_stalls_the_pipeline(server, agent):
    c, gen = subscribe(server, queue_size=16)
    first = threading.Event()
    holder: list[Any] = []

    def start() -> None:
        holder.append(next(gen))  # consume nothing until told: the server's queue fills
        first.set()

    # Subscribe (the generator sends the request on first next()), then stop reading.
    t = threading.Thread(target=start, daemon=True)
    t.start()
    wait_subscribers(agent, 1)
    agent.pipeline.submit([make_event(pid=1)])
    assert first.wait(10)
    batch = [make_event(pid=i) for i in range(1000)]
    t0 = time.monotonic()
    for _ in range(200):  # 200k events while the client reads nothing
        agent.pipeline.submit(batch)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"the pipeline waited for the subscriber ({elapsed:.1f}s)"
    dropped = None
    for item in gen:
        if "stream" in item:
            dropped = item["stream"]["dropped"]
            break
    c.close()
    assert dropped is not None and dropped > 0


def test_unsubscribes_when_the_client_goes_away(server, agent):
    c, gen = subscribe(server)
    t = threading.Thread(target=lambda: next(gen, None), daemon=True)
    t.start()
    wait_subscribers(agent, 1)
    c.close()
    deadline = time.monotonic() + 5
    while agent.pipeline._subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not agent.pipeline._subscribers


# ---- the CLI against the running server ---------------------------------------------------------


def test_cli_policy_commands(server, agent, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(POLICY.format(name="cli-policy"))
    sock = ["--socket", str(server.path)]
    r = CliRunner()
    res = r.invoke(cli, ["policy", "add", str(f), *sock])
    assert res.exit_code == 0, res.output
    assert res.output == "policy cli-policy added\n"
    res = r.invoke(cli, ["policy", "list", *sock])
    assert res.exit_code == 0 and "cli-policy" in res.output and "enforcement" in res.output
    assert "syscalls/sys_enter_openat: table" in res.output
    res = r.invoke(cli, ["policy", "list", "--json", *sock])
    assert json.loads(res.output)[0]["name"] == "cli-policy"
    assert r.invoke(cli, ["policy", "set-mode", "cli-policy", "monitoring", *sock]).exit_code == 0
    assert agent.policies.get("cli-policy")["mode"] == "monitoring"
    assert r.invoke(cli, ["policy", "disable", "cli-policy", *sock]).exit_code == 0
    assert agent.policies.get("cli-policy")["state"] == "disabled"
    assert r.invoke(cli, ["policy", "enable", "cli-policy", *sock]).exit_code == 0
    res = r.invoke(cli, ["policy", "add", str(f), *sock])
    assert res.exit_code == 1 and "already loaded" in res.output
    res = r.invoke(cli, ["policy", "delete", "cli-policy", *sock])
    assert res.exit_code == 0 and agent.policies.list() == []
    res = r.invoke(cli, ["policy", "delete", "cli-policy", *sock])
    assert res.exit_code == 1 and "no policy named 'cli-policy' is loaded" in res.output


def test_cli_says_when_no_agent_is_running(tmp_path):
    res = CliRunner().invoke(cli, ["policy", "list", "--socket", str(tmp_path / "none.sock")])
    assert res.exit_code == 1 and "no agent is listening at" in res.output


def test_cli_events_streams_compact_lines_from_the_agent(server, agent):
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sensorium.cli import main; main()", "events", "--socket", str(server.path),
         "-o", "compact", "--event-type", "process_exec", "--binary-regex", "cat$"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_subscribers(agent, 1)
        agent.pipeline.submit([make_event(binary="/usr/bin/ls", arguments="-l"),
                               make_event(binary="/usr/bin/cat", arguments="/etc/hostname")])
        line = proc.stdout.readline()  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(10)
    assert "/usr/bin/cat /etc/hostname" in line and "process" in line and "/usr/bin/ls" not in line


def test_cli_policy_check_validates_offline(tmp_path):
    good = REPO_DATA / "raw_syscalls.yaml"
    res = CliRunner().invoke(cli, ["policy", "check", str(good)])
    assert res.exit_code == 0 and res.output.startswith("raw-syscalls: valid (tracepoints: 1; enforcement)"), res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO_DATA / "raw_syscalls.yaml").read_text().replace("subsystem:", "subsytem:"))
    res = CliRunner().invoke(cli, ["policy", "check", str(bad)])
    assert res.exit_code == 1 and "did you mean 'subsystem'?" in res.output


def test_status_shows_policy_files_refused_at_start(server, agent, tmp_path):
    (tmp_path / "bad.yaml").write_text(POLICY.format(name="Bad_Name"))
    agent.policies.load_directory(tmp_path)
    with client(server) as c:
        [err] = c.call("status")["policy_directory_errors"]
    assert err["ok"] is False and "bad.yaml:4: metadata.name: 'Bad_Name' is not a valid name" in err["error"]
    res = CliRunner().invoke(cli, ["status", "--socket", str(server.path)])
    assert res.exit_code == 0 and "policy file refused:" in res.output


def test_subscribers_together_never_hold_more_than_the_total_cap_and_each_is_told_its_drops(agent, tmp_path):
    from reliability_figures import record

    from sensorium.api import MAX_CONNECTIONS, MAX_QUEUE_EVENTS, MAX_TOTAL_QUEUED_EVENTS

    srv = ApiServer(tmp_path / "run" / "api.sock", agent)
    srv.start()
    clients, gens, readers = [], [], []
    try:
        for k in range(MAX_CONNECTIONS):  # every connection asks for the largest queue and reads nothing
            c, gen = subscribe(srv, queue_size=MAX_QUEUE_EVENTS)
            clients.append(c)
            gens.append(gen)
            # The generator sends the request on its first next(), then waits for events.
            readers.append(threading.Thread(target=lambda g=gen: next(g, None), daemon=True))
            readers[-1].start()
            wait_subscribers(agent, k + 1)
        batch = [make_event(pid=i) for i in range(1000)]
        for _ in range(40):  # 40k events offered to each of the 32 subscribers
            agent.pipeline.submit(batch)
        st = srv.status()["stream"]
        # Each may hold its share of the budget (queued or being sent); together never more than the cap.
        assert st["peak_held_events"] <= MAX_TOTAL_QUEUED_EVENTS
        per_connection = 40_000 - MAX_TOTAL_QUEUED_EVENTS // MAX_CONNECTIONS
        assert st["dropped_by_reason"]["total_cap"] >= MAX_CONNECTIONS * per_connection
        # A subscriber that reads learns how many it missed, and why.
        readers[0].join(10)  # its first next() returned the first event
        notice = None
        for item in gens[0]:
            if "stream" in item:
                notice = item["stream"]
                break
        assert notice is not None
        assert notice["dropped"] > 0 and set(notice["dropped_by_reason"]) == {"total_cap"}
        record("api_stream.subscribers", MAX_CONNECTIONS, section="export")
        record("api_stream.requested_queue_per_subscriber", MAX_QUEUE_EVENTS)
        record("api_stream.total_cap_events", MAX_TOTAL_QUEUED_EVENTS)
        record("api_stream.peak_held_events", st["peak_held_events"],
               note="all 32 subscribers together, each offered 40,000 events while reading none")
        record("api_stream.dropped_total_cap", st["dropped_by_reason"]["total_cap"])
    finally:
        for c in clients:
            c.close()
        srv.stop()

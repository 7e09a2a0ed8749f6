"""`sensorium run` start and stop as an operator sees them: a target that can never be written is one line
and a non-zero exit (never a "ready" agent); a SIGTERM with a failing exporter exits within the grace and
says what was left undelivered; a failing exporter's losses show, by reason, in status and in metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from reliability_figures import record
from sensorium_testlib import REPO, SENSORIUM_BIN, tmpfs

NO_SENSORS = {"allow": ["stdout", "file", "syslog"]}  # startup errors come before any program is loaded


def run_agent(tmp_path: Path, config: dict[str, Any], timeout: float = 60) -> subprocess.CompletedProcess:
    cfg = tmp_path / "agent.yaml"
    config = {"plugins": NO_SENSORS, "api": {"socket": str(tmp_path / "api.sock")}, **config}
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    exe = [str(SENSORIUM_BIN)] if SENSORIUM_BIN.exists() else [sys.executable, "-m", "sensorium.cli"]
    return subprocess.run(exe + ["run", "--config", str(cfg)], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, stdin=subprocess.DEVNULL)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    """The agent refused to start the way an operator wants it to: exit 1, one line, nothing else."""
    lines = res.stderr.splitlines()
    assert res.returncode == 1, f"exit {res.returncode}; stderr:\n{res.stderr}"
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"stderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr and "sensorium.agent: ready" not in res.stderr
    return lines[0]


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mnt:
        yield mnt


@pytest.mark.parametrize("target, says", [
    ("DIR", "is a directory"),
    ("/proc/sensorium-events.log", "/proc (proc), a kernel interface, not storage"),
    ("/sys/kernel/sensorium-events.log", "/sys (sysfs), a kernel interface, not storage"),
    ("READ_ONLY", "is on a read-only mount"),
], ids=["directory", "proc", "sys", "read-only-mount"])
def test_a_file_exporter_that_can_never_write_stops_the_agent_with_one_line(
        tmp_path: Path, request: pytest.FixtureRequest, target: str, says: str) -> None:
    if target == "DIR":
        target = str(tmp_path)
    elif target == "READ_ONLY":
        target = str(request.getfixturevalue("read_only_mount") / "events.log")
    t0 = time.monotonic()
    res = run_agent(tmp_path, {"exporters": [{"type": "file", "path": target}]})
    line = one_line_error(res)
    assert "agent.yaml:" in line and "exporters[0].path: exporter 'file' cannot write: " in line and says in line
    record(f"startup_refused.file_{request.node.callspec.id}.exit_code", res.returncode,
           note=f"one line, {time.monotonic() - t0:.1f}s after start: ...cannot write: "
                f"{line.split('cannot write: ', 1)[1].replace(str(tmp_path), '<tmp>')}")


def test_a_syslog_socket_path_that_is_a_directory_stops_the_agent_with_one_line(tmp_path: Path) -> None:
    res = run_agent(tmp_path, {"exporters": [{"type": "syslog", "address": f"unix://{tmp_path}"}]})
    assert f"exporters[0].address: exporter 'syslog' cannot write: {tmp_path} is a directory, not a socket" in one_line_error(res)


def test_a_metrics_port_in_use_stops_the_agent_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_agent(tmp_path, {"metrics": {"enabled": True, "port": port},
                                   "exporters": [{"type": "file", "path": str(tmp_path / "ev.log")}]})
    line = one_line_error(res)
    assert f"metrics.port: metrics: cannot listen on 127.0.0.1:{port}: Address already in use" in line
    record("startup_refused.metrics_port_in_use.exit_code", res.returncode)


def test_an_api_socket_path_that_is_a_directory_stops_the_agent_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "api-dir").mkdir()
    res = run_agent(tmp_path, {"api": {"socket": str(tmp_path / "api-dir")},
                               "exporters": [{"type": "file", "path": str(tmp_path / "ev.log")}]})
    line = one_line_error(res)
    # refused when the config loads (a path that names a directory can never be the socket)
    assert "api.socket: the socket path is an existing directory; name the socket file inside it" in line
    assert not (tmp_path / "ev.log").exists()  # refused before any exporter started
    record("startup_refused.api_socket_directory.exit_code", res.returncode)


# ---- a running agent with a failing exporter -------------------------------------------------------

def closed_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed: connects are refused


def failing_exporter_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "plugins": {"allow": ["exec", "file", "syslog"]},
        "exporters": [
            {"type": "file", "path": str(tmp_path / "events.log")},
            {"type": "syslog", "name": "collector", "address": f"tcp://127.0.0.1:{closed_tcp_port()}",
             "connect_timeout_s": 1},
        ],
        **extra,
    }


def produce_execs(tmp_path: Path, agent_handle: Any, n: int = 100) -> None:
    """Run ``n`` programs and wait until the working exporter has written them: the failing one holds them."""
    mark = f"loss-{os.getpid()}-{time.monotonic_ns()}"
    for _ in range(n):
        subprocess.run(["/bin/true", mark], check=True)
    def arguments(x: dict[str, Any]) -> str:
        return x.get("process_exec", {}).get("process", {}).get("arguments", "")

    agent_handle.wait_for(lambda e: sum(1 for x in agent_handle.events(tmp_path / "events.log")
                                        if mark in arguments(x)) >= n,
                          path=tmp_path / "events.log", timeout=30)


def test_sigterm_with_a_failing_exporter_exits_within_the_grace_and_says_what_was_left(agent, tmp_path: Path) -> None:
    h = agent(failing_exporter_config(tmp_path))
    produce_execs(tmp_path, h)
    t0 = time.monotonic()
    h.proc.send_signal(signal.SIGTERM)
    code = h.proc.wait(30)
    took = time.monotonic() - t0
    h._reader.join(5)  # type: ignore[union-attr]
    assert took <= 5.0 + 0.5, f"stopped {took:.1f}s after SIGTERM (grace 5 s)"
    assert code == 0
    left = [line for line in h.stderr_lines if "exporter collector:" in line and "left undelivered at shutdown" in line]
    assert left and "WARNING" in left[0], h.stderr_tail()
    n_left = int(left[0].split("exporter collector: ")[1].split()[0])
    assert n_left >= 100
    final = next(line for line in h.stderr_lines if "stopped in" in line)
    assert f"collector {n_left}" in final and "file 0" in final
    record("shutdown_failing_exporter.seconds_after_sigterm", round(took, 2),
           note="grace 5 s (the default); before: 12 s")
    record("shutdown_failing_exporter.events_left_undelivered_reported", n_left)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failing_exporters_books_show_in_status_and_metrics(agent, tmp_path: Path) -> None:
    port = free_tcp_port()
    h = agent(failing_exporter_config(tmp_path, metrics={"enabled": True, "port": port}))
    produce_execs(tmp_path, h)
    out = subprocess.run([str(SENSORIUM_BIN), "status", "--json", "--socket", str(h.config_path.parent / "api.sock")],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    books = json.loads(out.stdout)["pipeline"]["exporters"]
    collector, file_ = books["collector"], books["file"]
    assert collector["delivered"] == 0 and collector["queued"] >= 100
    assert collector["failures_by_reason"].get("peer_refused", 0) >= 1
    assert file_["delivered"] >= 100 and file_["dropped"] == 0
    for b in (collector, file_):  # every event accounted for
        assert (b["received"] + b["generated"]
                == b["delivered"] + b["unconfirmed"] + b["dropped"] + b["filtered"] + b["queued"])
    text = subprocess.run([str(SENSORIUM_BIN), "status", "--socket", str(h.config_path.parent / "api.sock")],
                          capture_output=True, text=True, timeout=30, cwd=REPO).stdout
    assert "exporter collector" in text and "last error: open: ConnectionRefusedError" in text
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'sensorium_exporter_failures_total{exporter="collector",reason="peer_refused"}' in scrape
    assert 'sensorium_exporter_events_dropped_total{exporter="collector",reason="shutdown"} 0.0' in scrape
    assert 'sensorium_exporter_events_delivered_total{exporter="collector"} 0.0' in scrape

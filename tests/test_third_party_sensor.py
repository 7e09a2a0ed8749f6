"""A third-party sensor package, pip-installed for real, is discovered and run by the agent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SENSORIUM = str(Path(sys.executable).parent / "sensorium")

pytestmark = pytest.mark.kernel


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, timeout=600)


@pytest.fixture(scope="module")
def kill_sensor_installed():
    _pip("install", "--no-deps", str(ROOT / "examples" / "sensorium-kill-sensor"))
    yield
    _pip("uninstall", "-y", "sensorium-kill-sensor")


def test_installed_sensor_is_listed_with_its_distribution(kill_sensor_installed) -> None:
    import json

    out = subprocess.run([SENSORIUM, "plugins", "--json"], capture_output=True, text=True, timeout=120, check=True)
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
    kill = rows[("sensor", "kill")]
    assert kill["state"] == "loaded" and kill["distribution"] == "sensorium-kill-sensor"
    assert any(p.endswith("probe.bpf.c") for p in kill["probes"])


def test_agent_runs_installed_sensor_and_exports_its_events(kill_sensor_installed, agent, tmp_path, needs) -> None:
    needs("tracepoint", "ringbuf")
    out = tmp_path / "events.json"
    h = agent({
        "plugins": {"allow": ["exec", "kill", "file"]},
        "sensors": {"kill": {"only_signal": int(signal.SIGUSR1)}},
        "exporters": [{"type": "file", "path": str(out)}],
    })
    target = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)
        subprocess.run(["kill", "-USR2", str(target.pid)], check=True)  # filtered out in the kernel
        subprocess.run(["kill", "-USR1", str(target.pid)], check=True)
        ev = h.wait_for(
            lambda e: "process_tracepoint" in e
            and e["process_tracepoint"]["args"][0] == {"int_arg": target.pid},
            path=out, timeout=20,
        )
    finally:
        target.kill()
        target.wait()
    body = ev["process_tracepoint"]
    assert body["event"] == "sys_enter_kill"
    assert body["args"][1] == {"int_arg": int(signal.SIGUSR1)}
    # The sender is the `kill` binary, joined with the exec sensor's process cache.
    assert body["process"].get("binary", "").endswith("/kill"), body
    assert body["process"]["exec_id"] and body["parent"].get("exec_id")
    sigs = [e["process_tracepoint"]["args"][1]["int_arg"] for e in h.events(out) if "process_tracepoint" in e
            and e["process_tracepoint"]["args"][0] == {"int_arg": target.pid}]
    assert int(signal.SIGUSR2) not in sigs  # the rodata knob filtered it in the kernel


def test_sensor_failing_at_start_does_not_stop_the_agent(agent, tmp_path) -> None:
    _pip("install", "--no-deps", str(ROOT / "examples" / "sensorium-broken-plugin"))
    try:
        out = tmp_path / "events.json"
        h = agent({"exporters": [{"type": "file", "path": str(out)}]})
        ready = next(line for line in h.stderr_lines if "ready" in line)
        assert "exec" in ready.split("sensors running:")[1].split(";")[0]
        assert "broken-start (RuntimeError: deliberately fails to start)" in ready
        marker = f"/tmp/sensorium-still-works-{time.time_ns()}"
        subprocess.run(["/bin/true", marker], check=True)
        h.wait_for(lambda e: "process_exec" in e and marker in e["process_exec"]["process"]["arguments"],
                   path=out, timeout=20)
    finally:
        _pip("uninstall", "-y", "sensorium-broken-plugin")

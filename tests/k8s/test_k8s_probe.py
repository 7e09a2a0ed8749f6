"""The container probes built into the agent image (scripts/k8s/probe.py = /usr/local/bin/sensorium-probe)
against the real agent's API socket."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from k8s_env import REPO

PROBE = REPO / "scripts" / "k8s" / "probe.py"


def probe(kind: str, socket: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROBE), kind], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SENSORIUM_API_SOCKET": str(socket)})


def test_probes_pass_on_a_running_agent_and_fail_without_one(agent: Callable[..., Any], tmp_path: Path) -> None:
    h = agent({"sensors": {"exec": {"enabled": True}}, "exporters": [{"type": "stdout"}]})
    sock = h.config_path.parent / "api.sock"
    assert probe("live", sock).returncode == 0
    r = probe("ready", sock)
    assert r.returncode == 0, r.stderr
    h.stop()
    r = probe("live", sock)
    assert r.returncode == 1 and "does not answer" in r.stderr
    assert probe("ready", tmp_path / "nothing.sock").returncode == 1


def test_not_ready_reasons() -> None:
    sys.path.insert(0, str(PROBE.parent))
    import probe as p  # the module itself: the decision on a status document

    running_and_failed = {"sensors": [{"name": "exec", "state": "running"}, {"name": "lsm", "state": "failed"}]}
    assert p.not_ready_reason(running_and_failed) is None
    why = p.not_ready_reason({"sensors": [{"name": "exec", "state": "failed"}]})
    assert why and "exec failed" in why
    why = p.not_ready_reason({"sensors": [{"name": "exec", "state": "running"}],
                              "kubernetes": {"watcher": {"synced": False, "last_error": "connection refused"}}})
    assert why and "connection refused" in why

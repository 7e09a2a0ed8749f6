"""lsm sensor inside the real agent: a file_open policy added with the CLI, served by this kernel's
mechanism, in monitoring mode (host-wide scope through the agent: a blocking rule would hit everyone, so
this test only watches; blocking is tested with cgroup-scoped rules in test_lsm_fanotify/connect)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = [str(REPO / ".venv" / "bin" / "sensorium")] if (REPO / ".venv" / "bin" / "sensorium").exists() else \
    [sys.executable, "-c", "from sensorium.cli import main; main()"]
EXAMPLES = REPO / "sensors" / "lsm" / "examples"

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def cli(sock: Path, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args, "--socket", str(sock)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"sensorium {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def test_monitoring_policy_through_the_agent_reports_would_have_blocked(agent, tmp_path):
    sock = tmp_path / "run" / "api.sock"
    # extended: the enforcement block (outcome, mechanism) is ours; the default format has Tetragon's fields
    h = agent({"api": {"socket": str(sock)}, "sensors": {"lsm": {"enabled": True}}, "events": {"format": "extended"}})
    secret = tmp_path / "secret.txt"
    secret.write_text("s\n")
    text = (EXAMPLES / "file-open-deny.yaml").read_text().replace("${PROTECTED}", str(secret))
    text += "  options:\n  - name: policy-mode\n    value: monitor\n"
    pfile = tmp_path / "p.yaml"
    pfile.write_text(text)
    cli(sock, "policy", "add", str(pfile))
    [row] = json.loads(cli(sock, "policy", "list", "--json").stdout)
    assert row["mode"] == "monitoring"
    mech = row["hooks"][0]["mechanism"]
    assert mech in ("fanotify", "bpf_lsm")
    r = subprocess.run(["cat", str(secret)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "s\n"
    ev = h.wait_for(lambda e: "process_lsm" in e)["process_lsm"]
    assert ev["policy_name"] == "file-open-deny" and ev["function_name"] == "file_open"
    assert ev["enforcement"]["outcome"] == "would have blocked" and ev["enforcement"]["mechanism"] == mech
    assert ev["args"][0]["file_arg"]["path"] == str(secret)
    cli(sock, "policy", "delete", "file-open-deny")
    assert json.loads(cli(sock, "policy", "list", "--json").stdout) == []

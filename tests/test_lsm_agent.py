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


FORK_EXEC_CAT = """\
import os, sys
secret, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.execv("/bin/cat", ["cat", secret])  # opens the file microseconds after its exec
    os.waitpid(pid, 0)
    print(pid, flush=True)
"""


def test_a_decision_right_after_exec_names_the_new_image(agent, tmp_path):
    """fanotify asks the agent while the opener's exec record may still be in the exec sensor's ring: the
    event must name the image that opened the file (cat), not the cache's entry from before the exec
    (the forking interpreter), and be joined once the exec record is read."""
    sock = tmp_path / "run" / "api.sock"
    h = agent({"api": {"socket": str(sock)}, "sensors": {"lsm": {"enabled": True}}})
    secret = tmp_path / "secret.txt"
    secret.write_text("s\n")
    text = (EXAMPLES / "file-open-deny.yaml").read_text().replace("${PROTECTED}", str(secret))
    text += "  options:\n  - name: policy-mode\n    value: monitor\n"
    pfile = tmp_path / "p.yaml"
    pfile.write_text(text)
    cli(sock, "policy", "add", str(pfile))
    forker = tmp_path / "forker.py"
    forker.write_text(FORK_EXEC_CAT)
    n = 10
    out = subprocess.run([sys.executable, str(forker), str(secret), str(n)], capture_output=True, text=True,
                         check=True, timeout=60)
    pids = [int(x) for x in out.stdout.split()]

    def ours() -> list[dict]:
        return [e["process_lsm"] for e in h.events() if "process_lsm" in e
                and e["process_lsm"]["process"].get("pid") in pids]

    h.wait_for(lambda _e: len(ours()) >= n, timeout=30)
    cat = os.path.realpath("/bin/cat")
    got = sorted((ev["process"]["pid"], ev["process"].get("binary"), ev["process"].get("flags"),
                  bool(ev["process"].get("exec_id")), ev["process"].get("cache_miss", False)) for ev in ours())
    assert got == sorted((pid, cat, "execve clone", True, False) for pid in pids)
    cli(sock, "policy", "delete", "file-open-deny")

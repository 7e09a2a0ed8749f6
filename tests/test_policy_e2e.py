"""End to end on this kernel: the real agent, its API, the CLI, the tracepoint sensor and real opens.

A policy added with ``sensorium policy add`` posts only for its own file; ``sensorium events`` streams
it; adding and deleting another policy never disturbs it; a bad policy leaves nothing loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hook_helpers import openat_tracepoint_policy

REPO = Path(__file__).resolve().parents[1]
CLI = [str(REPO / ".venv" / "bin" / "sensorium")] if (REPO / ".venv" / "bin" / "sensorium").exists() else \
    [sys.executable, "-c", "from sensorium.cli import main; main()"]

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")]


policy = openat_tracepoint_policy


def cli(sock: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args, "--socket", str(sock)], capture_output=True, text=True, timeout=60)
    if check:
        assert res.returncode == 0, f"sensorium {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def opens_of(events: list[dict[str, Any]], policy_name: str) -> list[str]:
    out = []
    for e in events:
        body = e.get("process_tracepoint")
        if body and body.get("policy_name") == policy_name:
            out.append(json.dumps(body.get("args")))
    return out


@pytest.fixture
def running(agent, tmp_path):
    sock = tmp_path / "run" / "api.sock"
    h = agent({"api": {"socket": str(sock)}, "sensors": {"tracepoint": {"enabled": True}}})
    return h, sock


def test_policy_add_events_list_delete_through_the_cli(running, tmp_path):
    h, sock = running
    watched, other = tmp_path / "watched.txt", tmp_path / "other.txt"
    watched.write_text("x")
    other.write_text("y")
    pfile = tmp_path / "watch.yaml"
    pfile.write_text(policy("watch-one-file", watched))
    assert cli(sock, "policy", "add", str(pfile)).stdout == "policy watch-one-file added\n"

    stream = subprocess.Popen([*CLI, "events", "--socket", str(sock), "--policy-name", "watch-one-file"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stream.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        # The client subscribes once its interpreter is up: open until the stream delivers.
        deadline = time.monotonic() + 30
        while not lines:
            assert stream.poll() is None, stream.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "sensorium events delivered nothing"
            subprocess.run(["cat", str(other)], check=True, capture_output=True)
            subprocess.run(["cat", str(watched)], check=True, capture_output=True)
            time.sleep(0.3)
    finally:
        stream.terminate()
        stream.wait(10)
    ev = json.loads(lines[0])
    body = ev["process_tracepoint"]
    assert body["policy_name"] == "watch-one-file" and str(watched) in json.dumps(body["args"])
    assert body["process"]["pid"] > 0

    # Posted only for its file: the agent's own export has the watched open and not the other one.
    h.wait_for(lambda e: str(watched) in json.dumps(e.get("process_tracepoint", {}).get("args")))
    assert not any(str(other) in a for a in opens_of(h.events(), "watch-one-file"))

    [row] = json.loads(cli(sock, "policy", "list", "--json").stdout)
    assert (row["name"], row["state"], row["mode"]) == ("watch-one-file", "enabled", "enforcement")
    assert [hk["mechanism"] for hk in row["hooks"]] == ["tracepoint"] and row["events"] >= 1

    # Another policy comes and goes; the first keeps posting throughout.
    p2 = tmp_path / "p2.yaml"
    p2.write_text(policy("watch-other", other))
    cli(sock, "policy", "add", str(p2))
    subprocess.run(["cat", str(other)], check=True, capture_output=True)
    h.wait_for(lambda e: e.get("process_tracepoint", {}).get("policy_name") == "watch-other")
    cli(sock, "policy", "delete", "watch-other")
    n_before = len(opens_of(h.events(), "watch-one-file"))
    subprocess.run(["cat", str(watched)], check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while len(opens_of(h.events(), "watch-one-file")) <= n_before:
        assert time.monotonic() < deadline, "the first policy stopped posting after another was deleted"
        time.sleep(0.05)

    # Deleted: no more events for it.
    cli(sock, "policy", "delete", "watch-one-file")
    assert json.loads(cli(sock, "policy", "list", "--json").stdout) == []
    n = len(opens_of(h.events(), "watch-one-file"))
    subprocess.run(["cat", str(watched)], check=True, capture_output=True)
    time.sleep(1.0)
    assert len(opens_of(h.events(), "watch-one-file")) == n


def test_bad_policies_are_refused_through_the_cli_and_leave_nothing_loaded(running, tmp_path):
    _h, sock = running
    good = tmp_path / "good.yaml"
    good.write_text(policy("good", tmp_path / "f"))
    cli(sock, "policy", "add", str(good))

    cases = {
        "no-such-tracepoint.yaml": (policy("bad1", tmp_path / "f").replace("sys_enter_openat", "sys_enter_nope"),
                                    "bad-tp", ":8: spec.tracepoints[0].event:"),
        "unknown-hook.yaml": ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: bad2\n"
                              "spec:\n  fentries:\n  - call: x\n", "", ":6: spec.fentries: unknown policy section"),
        "operator.yaml": (policy("bad3", tmp_path / "f").replace("operator: Equal", "operator: SubString"), "",
                          "matchArgs operator 'SubString' is not supported by Sensorium"),
        "values.yaml": (policy("bad4", tmp_path / "f").replace(f'        - "{tmp_path / "f"}"',
                                                               "\n".join(f"        - /f{i}" for i in range(65))), "",
                        "65 values; the limit is 64"),
        "yaml.yaml": (policy("bad5", tmp_path / "f").replace("    event: sys_enter_openat", "    event: [oops"), "",
                      "malformed YAML"),
        "same-name.yaml": (policy("good", tmp_path / "g"), "", ":4: metadata.name: a policy named 'good' is already loaded"),
    }
    for fname, (text, _, expect) in cases.items():
        f = tmp_path / fname
        f.write_text(text)
        res = cli(sock, "policy", "add", str(f), check=False)
        assert res.returncode == 1, res.stdout
        assert expect in res.stderr and str(f) in res.stderr, f"{fname}: {res.stderr}"
    rows = json.loads(cli(sock, "policy", "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["good"]

    # Two sections, two sensors: the kprobe section is refused, so the tracepoint one is not loaded either.
    def tp_policies() -> int:
        st = json.loads(cli(sock, "status", "--json").stdout)
        return next(s for s in st["sensors"] if s["name"] == "tracepoint")["policies"]

    before = tp_policies()
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(policy("mixed", tmp_path / "f") + "  kprobes:\n  - call: sensorium_no_such_kernel_function\n"
                     "    syscall: false\n")
    res = cli(sock, "policy", "add", str(mixed), check=False)
    assert res.returncode == 1 and f"{mixed}:19: spec.kprobes[0].call" in res.stderr, res.stderr
    assert "sensorium_no_such_kernel_function" in res.stderr
    assert tp_policies() == before == 1
    assert [r["name"] for r in json.loads(cli(sock, "policy", "list", "--json").stdout)] == ["good"]


def test_set_mode_disable_enable_live(running, tmp_path):
    _h, sock = running
    f = tmp_path / "p.yaml"
    f.write_text(policy("modes", tmp_path / "f"))
    cli(sock, "policy", "add", str(f), "--mode", "monitoring")
    assert json.loads(cli(sock, "policy", "list", "--json").stdout)[0]["mode"] == "monitoring"
    cli(sock, "policy", "set-mode", "modes", "enforcement")
    assert json.loads(cli(sock, "policy", "list", "--json").stdout)[0]["mode"] == "enforcement"
    cli(sock, "policy", "disable", "modes")
    row = json.loads(cli(sock, "policy", "list", "--json").stdout)[0]
    assert row["state"] == "disabled" and row["kernel_memory_bytes"] == 0
    cli(sock, "policy", "enable", "modes")
    assert json.loads(cli(sock, "policy", "list", "--json").stdout)[0]["state"] == "enabled"


def test_policies_directory_is_loaded_at_start(agent, tmp_path):
    d = tmp_path / "policies"
    d.mkdir()
    (d / "10-good.yaml").write_text(policy("from-directory", tmp_path / "f"))
    (d / "20-bad.yaml").write_text(policy("bad", tmp_path / "f").replace("operator: Equal", "operator: Equals"))
    sock = tmp_path / "run" / "api.sock"
    agent({"api": {"socket": str(sock)}, "policies": {"directory": str(d)}})
    rows = json.loads(cli(sock, "policy", "list", "--json").stdout)
    assert [(r["name"], r["state"], r["file"]) for r in rows] == [
        ("from-directory", "enabled", str(d / "10-good.yaml"))]
    [err] = json.loads(cli(sock, "status", "--json").stdout)["policy_directory_errors"]
    assert f"{d / '20-bad.yaml'}:15: spec.tracepoints[0].selectors[0].matchArgs[0].operator: unknown matchArgs operator 'Equals'" in err["error"]

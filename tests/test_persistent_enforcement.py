"""Enforcement that outlives the agent, by choice (agent config ``enforcement: {persist: true, ...}``), with
the real agent, the CLI, real processes and cgroups on this host: socket_connect is served here by cgroup
sock_addr programs (no BPF LSM), pinned in bpffs through their links; file_open by fanotify, which cannot
outlive the agent. The 6.12 guest runs the BPF LSM twin (tests/test_enforcement_bpf_lsm.py).

The block names the pid of an exerciser process the test started in its own cgroup, and a port of the test's
server: nothing else is refused. Every test uses a pin root of its own, in a bpffs instance mounted for it on a
temporary directory, and removes both at the end, whatever happened (removing the pins lifts the block).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from enforcement_helpers import (
    Exerciser,
    Loop,
    Server,
    cli,
    connect_policy,
    figure,
    file_open_policy,
    new_pin_root,
    pins_under,
    policy_list,
    remove_pins,
    wait_until,
)

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, cgroups)")]


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = new_pin_root()
    yield root
    remove_pins(root)
    assert not root.exists(), f"pins left under {root}"


@pytest.fixture
def server() -> Iterator[int]:
    srv = Server()
    yield srv.port
    srv.close()


@pytest.fixture
def exerciser(cgroup2_dir) -> Iterator[Exerciser]:
    ex = Exerciser(cgroup2_dir)
    yield ex
    ex.close()


def config(tmp_path: Path, pin_root: Path | None, **enforcement: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"plugins": {"allow": ["lsm", "stdout"]}, "sensors": {"lsm": {"enabled": True}},
                           "api": {"socket": str(tmp_path / "api.sock")}}
    if pin_root is not None:
        cfg["enforcement"] = {"persist": True, "state_dir": str(tmp_path / "state"), "pin_dir": str(pin_root),
                              **enforcement}
    return cfg


def add(tmp_path: Path, text: str, name: str = "p.yaml") -> None:
    f = tmp_path / name
    f.write_text(text)
    cli(tmp_path / "api.sock", "policy", "add", str(f))


def kill9(h: Any) -> None:
    os.killpg(h.proc.pid, signal.SIGKILL)
    h.proc.wait(10)


def generations(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_kill_9_leaves_the_connect_block_in_place(agent, tmp_path, pin_root, server, exerciser):
    h = agent(config(tmp_path, pin_root))
    add(tmp_path, connect_policy("persist-connect", server, exerciser.pid))
    assert exerciser.connect(server) == "EPERM"
    [row] = policy_list(tmp_path / "api.sock")
    assert row["persistent"] is True, json.dumps(row, indent=1)
    assert row["pin_dir"].startswith(str(pin_root))
    kill9(h)
    # The agent and every fd it held are gone; the pinned links hold the programs at the cgroup2 root.
    results = [exerciser.connect(server) for _ in range(20)]
    assert results == ["EPERM"] * 20
    assert any(p.name.startswith("link") for p in pins_under(pin_root))
    figure("persist.kill9", refused=results.count("EPERM"), tried=len(results),
           result=f"agent killed with SIGKILL: {results.count('EPERM')} of {len(results)} connects refused after it "
                  "died (cgroup sock_addr programs held by their pins)")


def test_sigterm_with_persist_leaves_the_block_in_place(agent, tmp_path, pin_root, server, exerciser):
    # A graceful stop (an upgrade, a rollout) keeps enforcing as well: only `policy delete` lifts a block.
    h = agent(config(tmp_path, pin_root))
    add(tmp_path, connect_policy("persist-term", server, exerciser.pid))
    assert h.stop() == 0
    assert exerciser.connect(server) == "EPERM"
    assert any("keep enforcing in the kernel after exit" in ln and "persist-term" in ln for ln in h.stderr_lines)
    figure("persist.sigterm", result="agent stopped with SIGTERM: the connect block stays (1 of 1 refused)")


def test_restart_restores_the_kept_policy_and_replaces_the_old_pins_without_a_gap(agent, tmp_path, pin_root, server,
                                                                                  exerciser):
    cfg = config(tmp_path, pin_root)
    h = agent(cfg)
    add(tmp_path, connect_policy("persist-restart", server, exerciser.pid))
    cli(tmp_path / "api.sock", "policy", "set-mode", "persist-restart", "enforcement")
    [first] = generations(pin_root)
    kill9(h)
    with Loop(lambda: exerciser.connect(server)) as loop:  # connects the whole time the agent restarts
        h2 = agent(cfg)
        rows = policy_list(tmp_path / "api.sock")
        time.sleep(0.5)
    assert loop.total > 0 and loop.counts == {"EPERM": loop.total}, loop.counts
    [row] = rows
    assert row["key"] == "persist-restart" and row["state"] == "enabled" and row["origin"] == "api"
    assert row["persistent"] is True
    [replaced] = row["replaced"]
    assert replaced["pin_dir"] == str(pin_root / first) and replaced["pinned_by_pid"] == h.pid
    [second] = generations(pin_root)
    assert second != first and row["pin_dir"] == str(pin_root / second)
    st = json.loads(cli(tmp_path / "api.sock", "status", "--json").stdout)["enforcement"]
    assert st["persist"] is True and st["start"]["restored"][0]["policy"] == "persist-restart"
    assert st["policies_persistent"] == ["persist-restart"]
    assert any("restored" in ln and "persist-restart" in ln for ln in h2.stderr_lines)
    figure("persist.restart", restored=len(st["start"]["restored"]), kept=1, exercised=loop.total,
           let_through=loop.total - loop.counts.get("EPERM", 0),
           result=f"kill -9, then a new agent: {len(st['start']['restored'])} of 1 kept API policies restored "
                  f"before ready, the old pins replaced by the new generation; {loop.total} of {loop.total} "
                  "connects refused while the agent was down and starting")
    cli(tmp_path / "api.sock", "policy", "delete", "persist-restart")


def test_delete_lifts_the_block_and_removes_the_pins_and_the_kept_copy(agent, tmp_path, pin_root, server, exerciser):
    cfg = config(tmp_path, pin_root)
    h = agent(cfg)
    add(tmp_path, connect_policy("persist-delete", server, exerciser.pid))
    kill9(h)
    agent(cfg)
    assert exerciser.connect(server) == "EPERM"
    cli(tmp_path / "api.sock", "policy", "delete", "persist-delete")
    assert exerciser.connect(server) == "ok"
    assert generations(pin_root) == [] and pins_under(pin_root) == []
    assert list((tmp_path / "state" / "policies").iterdir()) == []


def test_without_persist_kill_9_lifts_the_block(agent, tmp_path, server, exerciser):
    # The documented default: the agent holds its links; when it dies, the kernel detaches them.
    h = agent(config(tmp_path, None))
    add(tmp_path, connect_policy("plain-connect", server, exerciser.pid))
    assert exerciser.connect(server) == "EPERM"
    kill9(h)
    wait_until(lambda: exerciser.connect(server) == "ok", 5, "the connect going through")


def test_fanotify_is_served_but_reported_as_not_outliving_the_agent(agent, tmp_path, pin_root, exerciser):
    secret = tmp_path / "secret"
    secret.write_text("s")
    h = agent(config(tmp_path, pin_root))
    add(tmp_path, file_open_policy("persist-fanotify", secret, exerciser.pid))
    assert exerciser.open(secret) == "EPERM"
    [row] = policy_list(tmp_path / "api.sock")
    [hook] = row["hooks"]
    assert row["persistent"] is False and hook["mechanism"] == "fanotify" and hook["persistent"] is False
    assert "fanotify" in hook["persistence"] and "fail-open" in hook["persistence"]
    text = cli(tmp_path / "api.sock", "policy", "list").stdout
    assert "not persistent: fanotify" in text
    status = cli(tmp_path / "api.sock", "status").stdout
    assert "persist-fanotify" in status and "NOT persistent" in status
    kill9(h)
    wait_until(lambda: exerciser.open(secret) == "ok", 5, "the open going through (fanotify fails open)")
    figure("persist.fanotify_stated", result="file_open served by fanotify with persist: true: `policy list` and "
                                             "`status` say NOT persistent; after kill -9 the open goes through, as stated")


def test_refuse_non_persistent_refuses_a_fanotify_hook_with_the_reason(agent, tmp_path, pin_root, exerciser):
    secret = tmp_path / "secret"
    secret.write_text("s")
    agent(config(tmp_path, pin_root, non_persistent="refuse"))
    f = tmp_path / "p.yaml"
    f.write_text(file_open_policy("refused-fanotify", secret, exerciser.pid))
    res = cli(tmp_path / "api.sock", "policy", "add", str(f), check=False)
    assert res.returncode != 0
    assert "cannot enforce beyond the agent's life" in res.stderr and "non_persistent: refuse" in res.stderr
    assert "Traceback" not in res.stderr
    assert policy_list(tmp_path / "api.sock") == []
    assert exerciser.open(secret) == "ok" and generations(pin_root) == []


def test_a_pin_dir_outside_bpffs_is_a_one_line_start_error(tmp_path):
    import subprocess
    import sys

    import yaml
    from sensorium_testlib import SENSORIUM_BIN

    cfg = config(tmp_path, tmp_path / "not-bpffs")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    exe = [str(SENSORIUM_BIN)] if SENSORIUM_BIN.exists() else [sys.executable, "-m", "sensorium.cli"]
    r = subprocess.run([*exe, "run", "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert "enforcement.pin_dir" in r.stderr and "not in a bpffs mount" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_kept_policy_that_no_longer_loads_keeps_its_old_pins_until_deleted(agent, tmp_path, pin_root, server,
                                                                             exerciser):
    # Failing closed: the agent comes back with the lsm sensor turned off (so the kept policy cannot load);
    # the previous agent's pinned programs are adopted as they are and keep refusing, until `policy delete`.
    cfg = config(tmp_path, pin_root)
    h = agent(cfg)
    add(tmp_path, connect_policy("persist-adopt", server, exerciser.pid))
    kill9(h)
    crippled = {**cfg, "sensors": {"lsm": {"enabled": False}}}
    agent(crippled)
    [row] = policy_list(tmp_path / "api.sock")
    assert row["state"] == "error" and "lsm" in row["error"]
    [adopted] = row["adopted"]
    assert adopted["policy"] == "persist-adopt" and adopted["pinned_by_pid"] == h.pid
    assert exerciser.connect(server) == "EPERM"
    listing = cli(tmp_path / "api.sock", "policy", "list").stdout
    assert "the pins of a previous agent keep enforcing" in listing
    cli(tmp_path / "api.sock", "policy", "delete", "persist-adopt")
    assert exerciser.connect(server) == "ok"
    figure("persist.adopted", result="kept policy whose sensor is off after the restart: listed in error, the "
                                     "previous agent's pins adopted and still refusing until `policy delete`")
    assert generations(pin_root) == [] and list((tmp_path / "state" / "policies").iterdir()) == []


def run_expecting_start_error(tmp_path: Path, cfg: dict[str, Any]) -> str:
    import subprocess
    import sys

    import yaml
    from sensorium_testlib import SENSORIUM_BIN

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    exe = [str(SENSORIUM_BIN)] if SENSORIUM_BIN.exists() else [sys.executable, "-m", "sensorium.cli"]
    r = subprocess.run([*exe, "run", "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


NOBODY = 65534


@pytest.mark.parametrize("spoil, expect", [
    (lambda d: (d.rename(d.with_name("moved")), d.symlink_to(d.with_name("moved"))), "is a symbolic link (to "),
    (lambda d: os.chmod(d / "policies", 0o777), "policies is writable by group or others (mode 0777)"),
    (lambda d: os.chown(d, NOBODY, NOBODY), f"is owned by uid {NOBODY}, not by the agent's user (uid 0)"),
], ids=["symlink", "world-writable", "other-owner"])
def test_a_state_directory_not_the_agents_own_stops_the_start_and_the_block_stays(agent, tmp_path, pin_root, server,
                                                                                 exerciser, spoil, expect, request):
    cfg = config(tmp_path, pin_root)
    h = agent(cfg)
    add(tmp_path, connect_policy("persist-hostile-dir", server, exerciser.pid))
    kill9(h)
    spoil(tmp_path / "state")
    err = run_expecting_start_error(tmp_path, cfg)
    [line] = [ln for ln in err.splitlines() if "enforcement.state_dir" in ln]
    assert expect in line and "nothing was changed: what a previous agent pinned keeps enforcing" in line, err
    assert exerciser.connect(server) == "EPERM"  # never silently lifted
    assert len(generations(pin_root)) == 1
    figure(f"persist.hostile_state_dir.{request.node.callspec.id}",
           result=f"state directory spoiled ({request.node.callspec.id}) after kill -9: one-line start error, exit 1, "
                  "no traceback; the block stays")


@pytest.mark.parametrize("spoil, expect", [
    (lambda f: f.write_bytes(f.read_bytes()[:-20]), "not valid JSON"),
    (lambda f: (f.rename(f.parent.parent / "x.json"), f.symlink_to(f.parent.parent / "x.json")),
     "is a symbolic link (to "),
    (lambda f: os.chmod(f, 0o646), "is writable by group or others (mode 0646)"),
], ids=["truncated", "symlink", "world-writable"])
def test_a_kept_record_not_the_agents_own_is_not_loaded_and_its_block_stays_until_deleted(agent, tmp_path, pin_root,
                                                                                         server, exerciser, spoil,
                                                                                         expect, request):
    cfg = config(tmp_path, pin_root)
    h = agent(cfg)
    add(tmp_path, connect_policy("persist-hostile-file", server, exerciser.pid))
    kill9(h)
    [kept] = [f for f in (tmp_path / "state" / "policies").iterdir()]
    spoil(kept)
    h2 = agent(cfg)
    assert policy_list(tmp_path / "api.sock") == []
    assert exerciser.connect(server) == "EPERM"  # the previous agent's pins are adopted, not swept
    [gen] = generations(pin_root)
    st = json.loads(cli(tmp_path / "api.sock", "status", "--json").stdout)["enforcement"]
    [failed] = st["start"]["failed"]
    assert failed["error"].startswith(f"kept policy not loaded: {kept}") and expect in failed["error"]
    [adopted] = st["adopted_only"]
    assert adopted["policy"] == "persist-hostile-file" and adopted["pin_dir"] == str(pin_root / gen)
    assert adopted["pinned_by_pid"] == h.pid
    listing = cli(tmp_path / "api.sock", "policy", "list").stdout
    assert f"pinned by a previous agent (pid {h.pid}) and still enforcing, not loaded by this agent: " \
           f"persist-hostile-file at {pin_root / gen}" in listing
    assert any(f"kept policy not loaded: {kept}" in ln for ln in h2.stderr_lines)
    assert not any("Traceback" in ln for ln in h2.stderr_lines)
    cli(tmp_path / "api.sock", "policy", "delete", "persist-hostile-file")
    assert exerciser.connect(server) == "ok"
    assert generations(pin_root) == [] and not os.path.lexists(kept)
    figure(f"persist.hostile_record.{request.node.callspec.id}",
           result=f"kept policy record spoiled ({request.node.callspec.id}) after kill -9: not loaded, named in "
                  "`status` and `policy list` with the reason; the old pins keep the block until `policy delete`")

"""Syscall hooks of kprobes sections on a kernel without kprobes/fentry: raw_tp sys_enter/sys_exit,
selectors and actions in the kernel, against real processes. Blocking rules are scoped to a cgroup the
test creates (checked in the kernel first), so they can never touch the test runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hook_helpers import gone, open_exit_available, open_mechanism, our_program_ids, rig_fixture, scope_of, string_args
from openat_harness import SIGKILL, openat_policy

from sensorium.hookspecs import PolicyLoadError
from sensorium_sensors.kprobe.sensor import KprobeSensor

pytestmark = [pytest.mark.kernel]

rig = rig_fixture(KprobeSensor)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret.txt"
    p.write_text("top secret\n")
    return p


@pytest.mark.vm  # also in the VM lane: 6.1 serves these hooks with the sys_enter + sys_exit pair
def test_openat_posts_only_for_the_watched_file_with_return_value(rig, tmp_path: Path) -> None:
    watched, other = tmp_path / "watched", tmp_path / "other"
    watched.write_text("x")
    other.write_text("y")
    text = openat_policy(str(watched)).replace("    syscall: true\n", "    syscall: true\n    return: true\n")
    h = rig.load(text, "kprobes")
    subprocess.run(["cat", str(other), str(watched)], check=True, capture_output=True)  # the negative first
    evs = rig.events(lambda b: str(watched) in string_args(b))
    assert evs, "no event for the watched file"
    e = evs[0]
    assert e["function_name"] == "__x64_sys_openat"
    assert e["policy_name"] == "openat-test" and e["action"] == "KPROBE_ACTION_POST"
    assert e["return"]["long_arg"] >= 0  # the fd cat got
    assert not rig.events(lambda b: str(other) in string_args(b), wait=0.1)
    st = h.status()
    assert st["hooks"][0]["mechanism"] == open_mechanism()
    assert "no kprobes/fentry" in st["hooks"][0]["note"]
    assert st["events"] >= 1


def test_sigkill_in_test_cgroup_while_same_read_elsewhere_succeeds(rig, secret: Path, cgroup2_dir) -> None:
    h = rig.load(openat_policy(str(secret), actions=SIGKILL), "kprobes", scope=scope_of(cgroup2_dir))
    inside = cgroup2_dir.run(["cat", str(secret)], capture_output=True)
    assert inside.returncode == -9, inside
    assert inside.stdout == b""  # killed before it could read
    outside = subprocess.run(["cat", str(secret)], capture_output=True)
    assert outside.returncode == 0 and outside.stdout == b"top secret\n"
    assert secret.read_text() == "top secret\n"  # and the test runner itself still reads it
    evs = rig.events(lambda b: str(secret) in string_args(b))
    assert evs and evs[0]["action"] == "KPROBE_ACTION_SIGKILL" and evs[0]["action_taken"] is True
    assert evs[0]["cgroup_id"] == cgroup2_dir.id
    assert "the syscall completes, the process dies before it returns" in h.status()["hooks"][0]["note"]


def test_monitoring_mode_reports_would_have_killed_then_enforces_live(rig, secret: Path, cgroup2_dir) -> None:
    h = rig.load(openat_policy(str(secret), actions=SIGKILL), "kprobes", mode="monitoring", scope=scope_of(cgroup2_dir))
    r = cgroup2_dir.run(["cat", str(secret)], capture_output=True)
    assert r.returncode == 0 and r.stdout == b"top secret\n"
    evs = rig.events(lambda b: str(secret) in string_args(b))
    assert evs, "monitoring mode must still report"
    e = evs[0]
    assert e["action"] == "KPROBE_ACTION_SIGKILL" and e["policy_mode"] == "monitoring" and e["action_taken"] is False
    h.set_mode("enforcement")  # a map update, no reload
    r = cgroup2_dir.run(["cat", str(secret)], capture_output=True)
    assert r.returncode == -9
    assert h.status()["mode"] == "enforcement"


def test_relative_paths_and_dotdot_are_resolved_before_matching(rig, tmp_path: Path, cgroup2_dir) -> None:
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    target = d / "t.txt"
    target.write_text("t")
    rig.load(openat_policy(str(target), actions=SIGKILL), "kprobes", scope=scope_of(cgroup2_dir))
    cases = [(["cat", "t.txt"], d), (["cat", "../t.txt"], d / "sub"), (["cat", "./sub/../t.txt"], d),
             (["cat", "..//dir/./t.txt"], d), (["cat", f"{d}/sub/../t.txt"], tmp_path),
             (["cat", f"{d}//t.txt"], tmp_path), (["cat", f"{d}/./t.txt"], tmp_path)]
    for argv, cwd in cases:
        r = cgroup2_dir.run(argv, cwd=cwd, capture_output=True)
        assert r.returncode == -9, (argv, cwd, r)
    # dirfd-relative: openat(dirfd, "t.txt") from a helper that opens the directory first
    code = f"import os; fd = os.open({str(d)!r}, os.O_RDONLY); os.read(os.open('t.txt', os.O_RDONLY, dir_fd=fd), 1)"
    r = cgroup2_dir.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9, r
    seen = rig.events(lambda b: str(target) in string_args(b), wait=0.5)
    assert len(seen) >= 8  # every spelling was reported as the absolute path
    # a different file with a similar relative spelling is not caught
    (d / "u.txt").write_text("u")
    assert cgroup2_dir.run(["cat", "u.txt"], cwd=d, capture_output=True).returncode == 0


def test_match_binaries_follow_children(rig, tmp_path: Path) -> None:
    target = tmp_path / "followed.txt"
    target.write_text("f")
    shell = tmp_path / "mysh"  # a binary of our own, so no ancestor of the test runner matches
    shutil.copy("/bin/sh", shell)
    text = openat_policy(str(target)) + f"""      matchBinaries:
      - operator: In
        values: ["{shell}"]
        followChildren: true
"""
    rig.load(text, "kprobes")
    direct = subprocess.Popen(["cat", str(target)], stdout=subprocess.DEVNULL)  # its parent is not mysh
    direct.wait()
    subprocess.run([str(shell), "-c", f"cat {target}; true"], check=True, capture_output=True)
    evs = rig.events(lambda b: str(target) in string_args(b), wait=2.0)
    assert evs, "a child of the matched binary was not followed"
    # the direct cat ran first: had it posted, its event would be here already (one ring, in order)
    assert direct.pid not in {e["process"]["pid"] for e in evs}


def test_kernel_function_is_refused_with_the_reason(rig, kernel_caps) -> None:
    if kernel_caps.has("fentry") or kernel_caps.has("kprobe"):
        pytest.skip("this kernel has kprobes/fentry: the refusal is for kernels without them")
    text = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: kfunc}
spec:
  kprobes:
  - call: security_file_permission
    syscall: false
"""
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.check_policy(rig.view(text, "kprobes"))
    assert "no kprobes and fentry refused on this kernel" in str(ei.value)
    assert ei.value.field == "spec.kprobes[0].call"


def test_unknown_syscall_refused_or_skipped_with_callNotFound(rig) -> None:
    text = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: nosys}
spec:
  kprobes:
  - call: sys_does_not_exist
    syscall: true
"""
    with pytest.raises(PolicyLoadError, match="syscall does_not_exist does not exist"):
        rig.sensor.check_policy(rig.view(text, "kprobes"))
    h = rig.load(text.replace("    syscall: true\n", "    syscall: true\n    ignore: {callNotFound: true}\n"),
                 "kprobes")
    assert h.status()["hooks"][0]["state"] == "skipped"


def test_section_loads_whole_or_not_at_all(rig) -> None:
    text = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: half}
spec:
  kprobes:
  - call: sys_getpid
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs:
      - {index: 1, operator: Equal, values: [a, b, c, d, e, f, g, h, i]}
"""
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.load_policy(rig.view(text, "kprobes"))
    assert "at most 8 per operator" in str(ei.value)
    assert ei.value.field == "spec.kprobes[1].selectors[0].matchArgs[0].values"
    assert gone(rig.ctx.loaded_prog_ids)  # (nothing was even loaded: limits are checked first)


@pytest.mark.parametrize("open_exit", [True, False], ids=["tp_btf-sys_exit", "sys_enter+sys_exit"])
def test_unload_detaches_everything(rig, monkeypatch, open_exit: bool) -> None:
    from sensorium.hooks import hookset as engine

    if open_exit and not open_exit_available():
        pytest.skip("this kernel has no bpf_rdonly_cast kfunc (6.2+): the exit-only program does not load here")
    monkeypatch.setattr(engine, "OPEN_EXIT_ENABLED", open_exit)
    h = rig.load(openat_policy("/nonexistent/x"), "kprobes")
    ids = set(rig.ctx.loaded_prog_ids)
    # openat on the opened file: sys_exit alone (tp_btf), or the sys_enter + sys_exit pair
    assert len(ids) == (1 if open_exit else 2) and ids <= our_program_ids()
    h.unload()
    h.unload()  # idempotent
    assert gone(ids)


def test_sigkill_through_the_agent_scoped_by_match_pids_follow_forks(agent, tmp_path: Path, secret: Path,
                                                                      cgroup2_dir) -> None:
    """The whole path: `sensorium policy add` -> policy manager -> kprobe sensor -> raw_tp sys_enter.
    The rule is scoped to one shell (matchPIDs In + followForks) started in the test's cgroup first, so
    only that shell's children can be hit; the test runner reads the same file fine."""
    repo = Path(__file__).resolve().parents[1]
    cli = [str(repo / ".venv" / "bin" / "sensorium")]
    sock = tmp_path / "run" / "api.sock"
    # extended: action_taken is ours (the default format has Tetragon's action only)
    h = agent({"api": {"socket": str(sock)}, "sensors": {"kprobe": {"enabled": True}},
               "events": {"format": "extended"}})
    shell = cgroup2_dir.popen(["/bin/sh", "-c", f"read go; cat {secret}; echo survived"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.2)  # let the wrapper exec the shell (same pid)
        pfile = tmp_path / "kill.yaml"
        pfile.write_text(openat_policy(str(secret), actions=SIGKILL, name="kill-secret-readers") + f"""      matchPIDs:
      - operator: In
        followForks: true
        values: [{shell.pid}]
""")
        res = subprocess.run([*cli, "policy", "add", str(pfile), "--socket", str(sock)], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        out, _ = shell.communicate(b"go\n", timeout=30)
        assert b"top secret" not in out and b"survived" in out  # cat was killed, its shell went on
        assert subprocess.run(["cat", str(secret)], capture_output=True).stdout == b"top secret\n"
        ev = h.wait_for(lambda e: e.get("process_kprobe", {}).get("policy_name") == "kill-secret-readers")
        body = ev["process_kprobe"]
        assert body["action"] == "KPROBE_ACTION_SIGKILL" and body["action_taken"] is True
        assert body["function_name"] == "__x64_sys_openat"
        lst = subprocess.run([*cli, "policy", "list", "--json", "--socket", str(sock)], capture_output=True,
                             text=True, timeout=60)
        import json as _json
        [row] = _json.loads(lst.stdout)
        assert [hk["mechanism"] for hk in row["hooks"]] == [open_mechanism()]
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()


@pytest.mark.vm  # also in the VM lane: 6.1 serves these hooks with the sys_enter + sys_exit pair
def test_symlink_to_the_protected_file_is_caught_from_the_opened_file(rig, tmp_path: Path, secret: Path,
                                                                      cgroup2_dir) -> None:
    """openat's path is taken from the file actually opened (at sys_exit): a symlink cannot hide it."""
    link = tmp_path / "innocent-looking"
    link.symlink_to(secret)
    h = rig.load(openat_policy(str(secret), actions=SIGKILL), "kprobes", scope=scope_of(cgroup2_dir))
    r = cgroup2_dir.run(["cat", str(link)], capture_output=True)
    assert r.returncode == -9 and r.stdout == b""
    evs = rig.events(lambda b: str(secret) in string_args(b))
    assert evs and evs[0]["action_taken"] is True
    assert h.status()["hooks"][0]["mechanism"] == open_mechanism()
    assert "file actually opened" in h.status()["hooks"][0]["note"]
    # a failed open of a missing file under the protected name is still reported with the absolute path
    assert subprocess.run(["cat", str(link)], capture_output=True).returncode == 0  # outside the cgroup


def test_opened_file_path_crosses_mount_points(rig, tmp_path: Path) -> None:
    """/dev/shm is its own tmpfs mount: the path walk of the opened file must cross into / to report
    /dev/shm/<name>, and a symlink from /tmp (another filesystem) must resolve to it."""
    if not os.path.ismount("/dev/shm"):
        pytest.skip("/dev/shm is not a mount point here")
    target = Path("/dev/shm") / f"sensorium-test-{os.getpid()}"
    target.write_text("shm")
    try:
        link = tmp_path / "to-shm"
        link.symlink_to(target)
        rig.load(openat_policy(str(target)), "kprobes")
        subprocess.run(["cat", str(link)], check=True, capture_output=True)
        evs = rig.events(lambda b: str(target) in string_args(b))
        assert evs and evs[0]["args"][1]["string_arg"] == str(target)
    finally:
        target.unlink()

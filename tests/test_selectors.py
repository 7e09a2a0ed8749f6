"""Selector semantics evaluated in the kernel (OR across selectors, AND within, each operator, actions,
rate limits), driven by real syscalls of this process and its children, plus the compiler's limits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hook_helpers import getpgid_policy, rig_fixture, scope_of, string_args

from sensorium.hooks import selectors as S
from sensorium.hookspecs import PolicyLoadError
from sensorium_sensors.kprobe.sensor import KprobeSensor

pytestmark = [pytest.mark.kernel]

rig = rig_fixture(KprobeSensor)
ME = os.getpid()



def pgid_values(rig) -> list[int]:
    return sorted(a["int_arg"] for b in rig.events(wait=0.3) for a in b["args"])


def call_getpgid(*values: int) -> None:
    for v in values:
        try:
            os.getpgid(v)
        except OSError:
            pass


@pytest.mark.parametrize("op,values,expect", [
    ("Equal", ["4000001", "4000003"], [4000001, 4000003]),
    ("NotEqual", ["4000001"], [4000002, 4000003, 4000004]),
    ("GT", ["4000002"], [4000003, 4000004]),
    ("LT", ["4000002"], [4000001]),
    ("Mask", ["0x4"], [4000004]),  # 4000004 = 0x3d0904: bit 2 set; 4000001..3 have it clear
])
def test_integer_operators(rig, op: str, values: list[str], expect: list[int]) -> None:
    vals = ", ".join(f'"{v}"' for v in values)
    rig.load(getpgid_policy(f"""    - matchPIDs:
      - {{operator: In, values: [{ME}]}}
      matchArgs:
      - {{index: 0, operator: {op}, values: [{vals}]}}
"""), "kprobes")
    call_getpgid(4000001, 4000002, 4000003, 4000004)
    got = [v for v in pgid_values(rig) if 4000000 < v < 4000010]
    assert got == expect


@pytest.mark.parametrize("op,values,expect", [
    ("Prefix", ["/nonexistent-sens/a"], ["/nonexistent-sens/a/x.log", "/nonexistent-sens/ab.txt"]),
    ("NotPrefix", ["/nonexistent-sens/a"], ["/nonexistent-sens/b/y.txt"]),
    ("Postfix", [".txt"], ["/nonexistent-sens/ab.txt", "/nonexistent-sens/b/y.txt"]),
    ("NotPostfix", [".txt"], ["/nonexistent-sens/a/x.log"]),
    ("NotEqual", ["/nonexistent-sens/ab.txt"], ["/nonexistent-sens/a/x.log", "/nonexistent-sens/b/y.txt"]),
])
def test_string_operators(rig, op: str, values: list[str], expect: list[str]) -> None:
    vals = ", ".join(f'"{v}"' for v in values)
    rig.load(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: strings}}
spec:
  kprobes:
  - call: sys_openat
    args: [{{index: 1, type: string}}]
    selectors:
    - matchPIDs:
      - {{operator: In, values: [{ME}]}}
      matchArgs:
      - {{index: 1, operator: {op}, values: [{vals}]}}
""", "kprobes")
    for p in ("/nonexistent-sens/a/x.log", "/nonexistent-sens/ab.txt", "/nonexistent-sens/b/y.txt"):
        try:
            open(p)
        except OSError:
            pass
    got = sorted({s for b in rig.events(wait=0.3) for s in string_args(b) if s.startswith("/nonexistent-sens")})
    assert got == sorted(expect)


def test_selectors_are_ored_and_filters_anded(rig) -> None:
    rig.load(getpgid_policy(f"""    - matchPIDs:
      - {{operator: In, values: [{ME}]}}
      matchArgs:
      - {{index: 0, operator: Equal, values: ["4000011"]}}
    - matchPIDs:
      - {{operator: In, values: [{ME}]}}
      matchArgs:
      - {{index: 0, operator: GT, values: ["4000013"]}}
      - {{index: 0, operator: LT, values: ["4000015"]}}
"""), "kprobes")
    call_getpgid(4000011, 4000012, 4000013, 4000014, 4000015)
    assert [v for v in pgid_values(rig) if 4000010 < v < 4000020] == [4000011, 4000014]


def test_match_pids_not_in_excludes_this_process(rig) -> None:
    rig.load(getpgid_policy(f"""    - matchPIDs:
      - {{operator: NotIn, values: [{ME}]}}
      matchArgs:
      - {{index: 0, operator: Equal, values: ["4000021"]}}
"""), "kprobes")
    call_getpgid(4000021)
    subprocess.run([sys.executable, "-c", "import os\ntry: os.getpgid(4000021)\nexcept OSError: pass"], check=True)
    evs = rig.events(lambda b: b["args"][0]["int_arg"] == 4000021, wait=0.5)
    assert evs and all(e["process"]["pid"] != ME for e in evs)


@pytest.mark.parametrize("op,expect_event", [("In", True), ("NotIn", False)])
def test_match_namespaces_host_ns(rig, op: str, expect_event: bool) -> None:
    rig.load(getpgid_policy(f"""    - matchPIDs:
      - {{operator: In, values: [{ME}]}}
      matchNamespaces:
      - {{namespace: Pid, operator: {op}, values: [host_ns]}}
      - {{namespace: Mnt, operator: {op}, values: [host_ns]}}
"""), "kprobes")
    call_getpgid(4000031)
    assert bool(rig.events(lambda b: b["args"][0]["int_arg"] == 4000031)) is expect_event


def test_match_capabilities_tells_root_from_nobody(rig, tmp_path: Path) -> None:
    target = tmp_path / "caps.txt"
    target.write_text("c")
    os.chmod(tmp_path, 0o755)
    os.chmod(target, 0o644)
    rig.load(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: caps}}
spec:
  kprobes:
  - call: sys_openat
    args: [{{index: 1, type: string}}]
    selectors:
    - matchArgs:
      - {{index: 1, operator: Equal, values: ["{target}"]}}
      matchCapabilities:
      - {{type: Effective, operator: In, values: [CAP_SYS_ADMIN]}}
""", "kprobes")
    nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(target)],
                            capture_output=True)
    assert b"Permission denied" in nobody.stderr or nobody.returncode == 0, nobody  # it did call openat
    subprocess.run(["cat", str(target)], capture_output=True, check=True)
    evs = rig.events(lambda b: str(target) in string_args(b), wait=0.5)
    assert len(evs) == 1  # root's cat only


def test_rate_limit_posts_once_per_period(rig) -> None:
    h = rig.load(getpgid_policy(f"""    - matchPIDs:
      - {{operator: In, values: [{ME}]}}
      matchArgs:
      - {{index: 0, operator: Equal, values: ["4000041"]}}
      matchActions:
      - {{action: Post, rateLimit: 1m, rateLimitScope: process}}
"""), "kprobes")
    call_getpgid(*([4000041] * 5))
    assert len(rig.events(lambda b: b["args"][0]["int_arg"] == 4000041, wait=0.3)) == 1
    assert h.status()["counters"]["rate_limited"] == 4


def test_signal_action_and_nopost(rig, cgroup2_dir) -> None:
    h = rig.load(getpgid_policy("""    - matchArgs:
      - {index: 0, operator: Equal, values: ["4000051"]}
      matchActions:
      - {action: Signal, argSig: 10}
      - {action: NoPost}
"""), "kprobes", scope=scope_of(cgroup2_dir))
    code = "import os\ntry: os.getpgid(4000051)\nexcept OSError: pass\nprint('survived')"
    r = cgroup2_dir.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -10 and b"survived" not in r.stdout  # SIGUSR1 kills python by default
    call_getpgid(4000051)  # outside the cgroup: nothing happens to us
    c = h.counters()  # kernel counters: synchronous, so "nothing posted" is not a matter of polling long enough
    assert c["signals"] == 1 and c["posted"] == 0, c
    assert not rig.events(wait=0.2)  # NoPost


# ---- compiler limits (no kernel needed, but the messages are what users see) -----------------------

def test_limits_are_checked_before_load_with_the_limit_in_the_message(rig) -> None:
    many = ", ".join(f'"/p{i}"' for i in range(9))
    text = f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: limits}}
spec:
  kprobes:
  - call: sys_openat
    args: [{{index: 1, type: string}}]
    selectors:
    - matchArgs:
      - {{index: 1, operator: Prefix, values: [{many}]}}
"""
    with pytest.raises(PolicyLoadError, match="at most 8 per operator"):
        rig.sensor.check_policy(rig.view(text, "kprobes"))
    with pytest.raises(PolicyLoadError, match="operator GT does not apply to the string argument"):
        rig.sensor.check_policy(rig.view(text.replace("Prefix", "GT").replace(many, '"1"'), "kprobes"))
    with pytest.raises(PolicyLoadError, match="index 3 names no declared argument"):
        rig.sensor.check_policy(rig.view(text.replace("{index: 1, operator", "{index: 3, operator")
                                         .replace(many, '"/p"'), "kprobes"))
    over = "\n".join("    - matchArgs:\n      - {index: 1, operator: Equal, values: ["
                     + ", ".join(repr(f"/s{j}_{i}") for i in range(8)) + "]}"
                     for j in range(5))
    with pytest.raises(PolicyLoadError, match=f"at most {S.MAX_STRINGS}"):
        rig.sensor.check_policy(rig.view(text.split("    selectors:")[0] + "    selectors:\n" + over + "\n", "kprobes"))


def test_override_refused_with_the_reason(rig) -> None:
    # here fmod_ret is refused; where it loads but the kernel has no error-injection list, the message says that
    with pytest.raises(PolicyLoadError, match=r"^spec\.kprobes\[0\]\.selectors\[0\]\.matchActions\[0\]\.action: "
                                              r"kprobes\[0\] sys_getpgid: Override on syscall getpgid needs fmod_ret on "
                                              r"__x64_sys_getpgid \(how Tetragon overrides a syscall\)"):
        rig.sensor.check_policy(rig.view(getpgid_policy("""    - matchActions:
      - {action: Override, argError: -1}
"""), "kprobes"))


@pytest.mark.parametrize("op,expect_copy,expect_system", [("In", True, False), ("NotIn", False, True),
                                                          ("Prefix", True, False), ("NotPrefix", False, True)])
def test_match_binaries_operators(rig, tmp_path: Path, op: str, expect_copy: bool, expect_system: bool) -> None:
    import shutil
    target = tmp_path / "bin-target.txt"
    target.write_text("b")
    mycat = tmp_path / "mycat"
    shutil.copy(shutil.which("cat"), mycat)
    value = str(mycat) if op in ("In", "NotIn") else str(tmp_path) + "/"
    rig.load(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: bins}}
spec:
  kprobes:
  - call: sys_openat
    args: [{{index: 1, type: string}}]
    selectors:
    - matchArgs:
      - {{index: 1, operator: Equal, values: ["{target}"]}}
      matchBinaries:
      - {{operator: {op}, values: ["{value}"]}}
""", "kprobes")
    # The run expected to post goes last: once its event is in, any event of the first run would be too
    # (one ring, records in commit order), so a wrong post cannot be missed by polling too early.
    runs = [[str(mycat), str(target)], ["cat", str(target)]]
    if expect_copy:
        runs.reverse()
    pids = []
    for argv in runs:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        p.wait()
        pids.append(p.pid)
    evs = rig.events(lambda b: str(target) in string_args(b), wait=2.0)
    assert [e["process"]["pid"] for e in evs] == [pids[1]], (evs, pids)


def test_match_pids_namespace_pid(rig, tmp_path: Path, cgroup2_dir) -> None:
    """isNamespacePID: pid 1 of a new pid namespace matches, the host's processes do not."""
    target = tmp_path / "nspid.txt"
    target.write_text("n")
    rig.load(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: nspid}}
spec:
  kprobes:
  - call: sys_openat
    args: [{{index: 1, type: string}}]
    selectors:
    - matchArgs:
      - {{index: 1, operator: Equal, values: ["{target}"]}}
      matchPIDs:
      - {{operator: In, isNamespacePID: true, values: [1]}}
""", "kprobes", scope=scope_of(cgroup2_dir))
    cgroup2_dir.run(["cat", str(target)], capture_output=True, check=True)  # host pid ns: not pid 1 (first)
    r = cgroup2_dir.run(["unshare", "--pid", "--fork", "cat", str(target)], capture_output=True)
    assert r.returncode == 0, r
    evs = rig.events(lambda b: str(target) in string_args(b), wait=2.0)
    assert len(evs) == 1


def test_match_return_args_posts_only_failed_calls(rig, tmp_path: Path) -> None:
    present = tmp_path / "present"
    present.write_text("p")
    missing = tmp_path / "missing"
    h = rig.load(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: failed-opens}}
spec:
  kprobes:
  - call: sys_openat
    return: true
    args: [{{index: 1, type: string}}]
    returnArg: {{index: 0, type: int}}
    selectors:
    - matchPIDs:
      - {{operator: In, values: [{ME}]}}
      matchArgs:
      - {{index: 1, operator: Prefix, values: ["{tmp_path}/"]}}
      matchReturnArgs:
      - {{index: 0, operator: LT, values: ["0"]}}
""", "kprobes")
    open(present).close()
    try:
        open(missing)
    except FileNotFoundError:
        pass
    evs = rig.events(lambda b: True, wait=2.0)
    assert [string_args(e) for e in evs] == [[str(missing)]]
    assert evs[0]["return"] == {"int_arg": -2}  # ENOENT
    assert h.counters()["posted"] == 1


def test_monitoring_reports_blocking_actions_even_with_nopost(rig, cgroup2_dir) -> None:
    h = rig.load(getpgid_policy("""    - matchArgs:
      - {index: 0, operator: Equal, values: ["4000061"]}
      matchActions:
      - {action: Sigkill}
      - {action: NoPost}
"""), "kprobes", mode="monitoring", scope=scope_of(cgroup2_dir))
    code = "import os\ntry: os.getpgid(4000061)\nexcept OSError: pass\nprint('survived')"
    r = cgroup2_dir.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == 0 and b"survived" in r.stdout
    evs = rig.events(lambda b: b["args"][0]["int_arg"] == 4000061, wait=2.0)
    assert evs and evs[0]["action"] == "KPROBE_ACTION_SIGKILL" and evs[0]["action_taken"] is False
    assert h.counters()["signals"] == 0

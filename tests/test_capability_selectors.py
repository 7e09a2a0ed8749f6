"""matchCapabilities' isNamespaceCapability and matchCapabilityChanges in the kernel (Tetragon's semantics),
driven by real processes: children that drop a capability after their exec, children in a user namespace
of their own. The selectors are the hook engine's, shared by every hook: the syscall hook (raw_tp, runs on
this host), and Tetragon's corpus policies on fd_install as written (fentry or kprobe: the VM lane)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hook_helpers import getpgid_policy, rig_fixture, scope_of

from sensorium.hooks import selectors as S
from sensorium_sensors.kprobe.sensor import KprobeSensor

pytestmark = [pytest.mark.kernel]

rig = rig_fixture(KprobeSensor)

CAP_CHOWN, CAP_SYS_ADMIN = 0, 21

# A child that drops capability `bit` from its effective set (capset(2), after its exec), then calls
# getpgid(marker) `calls` times; prints its pid.
DROP_AND_CALL = """
import ctypes, os, sys
bit, marker, calls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)()
assert libc.capget(hdr, data) == 0
if bit >= 0:
    data[0] &= ~(1 << bit)  # effective, low word
    assert libc.capset(hdr, data) == 0, ctypes.get_errno()
print(os.getpid(), flush=True)
for _ in range(calls):
    try:
        os.getpgid(marker)
    except OSError:
        pass
"""


def policy(selectors: str, name: str = "caps") -> str:
    return getpgid_policy(selectors, name)


def child(bit: int, marker: int, calls: int = 1, userns: bool = False) -> int:
    cmd = [sys.executable, "-c", DROP_AND_CALL, str(bit), str(marker), str(calls)]
    if userns:
        cmd = ["unshare", "--user", "--map-root-user"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[0])


def pids_of(rig, marker: int, wait: float = 0.5) -> list[int]:
    return sorted(b["process"]["pid"] for b in rig.events(lambda b: b["args"][0]["int_arg"] == marker, wait=wait))


def test_capability_change_in_reports_a_listed_capability_dropped_after_exec(rig) -> None:
    rig.load(policy("""    - matchArgs:
      - {index: 0, operator: Equal, values: ["4000101"]}
      matchCapabilityChanges:
      - {type: Effective, operator: In, values: [CAP_SYS_ADMIN, CAP_NET_RAW]}
"""), "kprobes")
    dropped = child(CAP_SYS_ADMIN, 4000101, calls=3)
    child(-1, 4000101)  # no change: nothing
    child(CAP_CHOWN, 4000101)  # another capability changed: not In
    # once: the change reported becomes the process's reference (Tetragon updates its execve_map)
    assert pids_of(rig, 4000101) == [dropped]


def test_capability_change_notin_reports_other_capabilities_only(rig) -> None:
    rig.load(policy("""    - matchArgs:
      - {index: 0, operator: Equal, values: ["4000102"]}
      matchCapabilityChanges:
      - {type: Effective, operator: NotIn, values: [CAP_SYS_ADMIN]}
"""), "kprobes")
    other = child(CAP_CHOWN, 4000102)
    child(CAP_SYS_ADMIN, 4000102)
    child(-1, 4000102)
    assert pids_of(rig, 4000102) == [other]


def test_capability_change_in_another_set_is_not_a_change_of_this_one(rig) -> None:
    rig.load(policy("""    - matchArgs:
      - {index: 0, operator: Equal, values: ["4000103"]}
      matchCapabilityChanges:
      - {type: Permitted, operator: In, values: [CAP_SYS_ADMIN]}
"""), "kprobes")
    child(CAP_SYS_ADMIN, 4000103)  # effective only: permitted unchanged
    assert pids_of(rig, 4000103) == []
    assert rig.handles[0].status()["counters"]["filtered"] >= 1


def test_namespace_capability_matches_only_outside_the_host_user_namespace(rig) -> None:
    rig.load(policy("""    - matchArgs:
      - {index: 0, operator: Equal, values: ["4000104"]}
      matchCapabilities:
      - {type: Effective, operator: In, isNamespaceCapability: true, values: [CAP_CHOWN, CAP_NET_RAW]}
"""), "kprobes")
    inside = child(-1, 4000104, userns=True)  # root of its own user namespace: every capability there
    child(-1, 4000104)  # the host's root has CAP_CHOWN too, but in the host's user namespace
    assert pids_of(rig, 4000104) == [inside]


def test_namespace_capability_change_of_the_corpus_policy(rig) -> None:
    # fd_install_cap_changes.yaml's selector: In, isNamespaceCapability, CAP_SYS_ADMIN/CAP_NET_RAW
    rig.load(policy("""    - matchArgs:
      - {index: 0, operator: Equal, values: ["4000105"]}
      matchCapabilityChanges:
      - {type: Effective, operator: In, isNamespaceCapability: true, values: [CAP_SYS_ADMIN, CAP_NET_RAW]}
"""), "kprobes")
    inside = child(CAP_SYS_ADMIN, 4000105, userns=True)
    child(CAP_SYS_ADMIN, 4000105)  # the same change in the host's user namespace
    assert pids_of(rig, 4000105) == [inside]


def test_capability_filters_compile_with_the_host_user_namespace() -> None:
    from sensorium.hooks.caps import compile_caps

    sel = {"matchCapabilities": [{"type": "Permitted", "operator": "NotIn", "isNamespaceCapability": True,
                                  "values": ["CAP_CHOWN", "sys_admin"]}],
           "matchCapabilityChanges": [{"type": "Effective", "operator": "In", "values": ["CAP_NET_RAW"]}]}
    out = S.SensSelector()
    assert compile_caps(sel, out, "selectors[0]", lambda: 4026531837) is True
    assert (out.ncaps, out.ncapch) == (1, 1)
    assert (out.caps[0].set, out.caps[0].op, out.caps[0].userns) == (3, S.OPS["NotIn"], 4026531837)
    assert out.caps[0].mask == 1 << CAP_CHOWN | 1 << CAP_SYS_ADMIN
    assert (out.capch[0].set, out.capch[0].userns, out.capch[0].mask) == (1, 0, 1 << 13)


def test_capability_filters_over_the_kernel_limit_are_refused_by_name() -> None:
    entry = {"type": "Effective", "operator": "In", "values": ["CAP_CHOWN"]}
    with pytest.raises(S.SelectorError) as ei:
        S.check_selectors([{"matchCapabilityChanges": [entry] * (S.MAX_CAPS + 1)}])
    assert ei.value.field == "selectors[0].matchCapabilityChanges"
    assert f"at most {S.MAX_CAPS} in the kernel" in str(ei.value)


# ---- Tetragon's corpus policies on fd_install, as written (a kernel function: fentry or kprobe) ----------
CORPUS = Path(__file__).parent / "data" / "tetragon-policies"

# A child that (maybe) drops CAP_SYS_ADMIN from its effective set, then opens `path` (fd_install).
DROP_AND_OPEN = DROP_AND_CALL.split("print(")[0] + """print(os.getpid(), flush=True)
open(sys.argv[4]).close()
"""


def opener(cgroup, bit: int, path: Path, userns: bool) -> int:
    cmd = [sys.executable, "-c", DROP_AND_OPEN, str(bit), "0", "0", str(path)]
    if userns:
        cmd = ["unshare", "--user", "--map-root-user"] + cmd
    r = cgroup.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[0])


def opened_by(rig, path: Path, wait: float) -> list[int]:
    return sorted({b["process"]["pid"] for b in rig.events(
        lambda b: b.get("function_name") == "fd_install"
        and any(a.get("file_arg", {}).get("path") == str(path) for a in b["args"]), wait=wait)})


@pytest.mark.needs("fentry")
def test_fd_install_caps_corpus_policy_reports_namespace_capabilities_only(rig, cgroup2_dir, tmp_path: Path) -> None:
    target = tmp_path / "caps-target"
    target.write_text("x")
    rig.load((CORPUS / "fd_install_caps.yaml").read_text(), "kprobes", scope=scope_of(cgroup2_dir))
    inside = opener(cgroup2_dir, -1, target, userns=True)
    opener(cgroup2_dir, -1, target, userns=False)  # the host's root: CAP_CHOWN, but in the host user namespace
    assert opened_by(rig, target, wait=5.0) == [inside]


@pytest.mark.needs("fentry")
def test_fd_install_cap_changes_corpus_policy_reports_a_dropped_capability(rig, cgroup2_dir, tmp_path: Path) -> None:
    target = tmp_path / "capch-target"
    target.write_text("x")
    rig.load((CORPUS / "fd_install_cap_changes.yaml").read_text(), "kprobes", scope=scope_of(cgroup2_dir))
    dropped = opener(cgroup2_dir, CAP_SYS_ADMIN, target, userns=True)
    opener(cgroup2_dir, -1, target, userns=True)  # no change
    opener(cgroup2_dir, CAP_SYS_ADMIN, target, userns=False)  # a change, in the host user namespace
    assert opened_by(rig, target, wait=5.0) == [dropped]

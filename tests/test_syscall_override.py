"""Override on a syscall hook (Tetragon's symlink-override example): fmod_ret on the syscall's __x64_sys_
wrapper returns the errno instead of running the syscall, where the kernel loads fmod_ret AND lets it change
that function: it must be on the kernel's error-injection list (CONFIG_FUNCTION_ERROR_INJECTION). The lane's
Debian kernels (5.10, 6.1, 6.12) are built without it, so there the policy is refused naming the action, as on
this host (no fmod_ret at all); the blocking test runs on a kernel with the list. Blocking is scoped to a
cgroup the test makes and a target path it owns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hook_helpers import rig_fixture, scope_of

from sensorium.hookspecs import PolicyLoadError
from sensorium_sensors.kprobe.sensor import KprobeSensor

rig = rig_fixture(KprobeSensor)

SYMLINK = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: sys-symlink-override}
spec:
  kprobes:
  - call: sys_symlinkat
    syscall: true
    args:
    - {index: 0, type: string}
    - {index: 1, type: int}
    - {index: 2, type: string}
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: ["%s"]}]
      matchActions: [{action: Override, argError: -1}]
"""

# symlinkat(target, dirfd, "link") for sure (os.symlink without dir_fd may be symlink(2))
LINK = "import os, sys; fd = os.open(sys.argv[2], os.O_RDONLY); os.symlink(sys.argv[1], sys.argv[3], dir_fd=fd)"


class _Caps:
    def __init__(self, *names: str) -> None:
        self.names = set(names)

    def has(self, name: str) -> bool:
        return name in self.names


def test_override_on_a_syscall_is_refused_naming_the_action_where_fmod_ret_does_not_load(rig) -> None:
    rig.ctx.kernel = _Caps("raw_tp", "tp_btf")
    view = rig.view(SYMLINK % "/etc/passwd", "kprobes")
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.check_policy(view)
    assert ei.value.field == "spec.kprobes[0].selectors[0].matchActions[0].action"
    assert ei.value.reason == ("Override on syscall symlinkat needs fmod_ret on __x64_sys_symlinkat (how Tetragon "
                               "overrides a syscall), which this kernel refuses; the raw tracepoints that serve "
                               "syscall hooks here cannot change a return value: use Sigkill, or an lsmhooks section")


def _injection_list() -> bool:
    return os.path.isdir("/sys/kernel/debug/error_injection")


@pytest.mark.needs("fmod_ret")
def test_override_on_a_syscall_is_refused_where_the_kernel_has_no_error_injection_list(rig) -> None:
    if _injection_list():
        pytest.skip("this kernel has an error-injection list: the syscall can be overridden (test below)")
    with pytest.raises(PolicyLoadError) as ei:
        rig.load(SYMLINK % "/etc/passwd", "kprobes")
    assert ei.value.field == "spec.kprobes[0].selectors[0].matchActions[0].action"
    assert ei.value.reason == (
        "Override on syscall symlinkat needs fmod_ret on __x64_sys_symlinkat, which the kernel allows only for a "
        "function on its error-injection list: this kernel has no error-injection list (built without "
        "CONFIG_FUNCTION_ERROR_INJECTION): fmod_ret may change only security_ hooks on this kernel, and "
        "__x64_sys_symlinkat is none; use Sigkill, or an lsmhooks section")
    assert rig.sensor.handles == []  # nothing loaded


def _link(cg, target: Path, d: Path, name: str) -> subprocess.CompletedProcess:
    return cg.run([sys.executable, "-c", LINK, str(target), str(d), name], capture_output=True, text=True)


@pytest.mark.needs("fmod_ret")
def test_override_fails_symlinkat_with_eperm_in_the_cgroup_only_and_reports_it(rig, cgroup2_dir,
                                                                             tmp_path: Path) -> None:
    if not _injection_list():
        pytest.skip("this kernel has no error-injection list (built without CONFIG_FUNCTION_ERROR_INJECTION): "
                    "fmod_ret cannot change a syscall here (the test above checks the refusal)")
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    h = rig.load(SYMLINK % target, "kprobes", scope=scope_of(cgroup2_dir))
    [st] = h.status()["hooks"]
    assert st["mechanism"] == "fmod_ret" and "__x64_sys_symlinkat" in st["note"]
    denied = _link(cgroup2_dir, target, tmp_path, "link")
    assert denied.returncode == 1 and "PermissionError" in denied.stderr, denied.stderr
    assert not (tmp_path / "link").is_symlink()
    other = _link(cgroup2_dir, tmp_path / "elsewhere", tmp_path, "other")  # another target: not matched
    assert other.returncode == 0 and (tmp_path / "other").is_symlink()
    outside = subprocess.run([sys.executable, "-c", LINK, str(target), str(tmp_path), "outside"])
    assert outside.returncode == 0 and (tmp_path / "outside").is_symlink()  # not in the policy's cgroup
    evs = rig.events(lambda b: b.get("function_name") == "__x64_sys_symlinkat"
                     and b["args"][0].get("string_arg") == str(target), wait=5.0)
    assert len(evs) == 1, evs  # the denied call only: the one outside is out of scope
    ev = evs[0]
    assert (ev["action"], ev["override_return"], ev["action_taken"], ev["policy_name"]) == (
        "KPROBE_ACTION_OVERRIDE", -1, True, "sys-symlink-override")
    assert ev["args"][2]["string_arg"] == str(tmp_path / "link")  # made absolute from the dirfd
    h.set_mode("monitoring")
    r = _link(cgroup2_dir, target, tmp_path, "link")
    assert r.returncode == 0 and (tmp_path / "link").is_symlink()

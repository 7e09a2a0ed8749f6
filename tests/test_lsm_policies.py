"""lsm sensor: bad lsmhooks policies are refused before anything is loaded, with the hook, the field and why."""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import pytest

from sensorium.bpf.btf import lsm_hooks
from sensorium.hookspecs import CgroupRef, PolicyLoadError, Scope
from sensorium_sensors.lsm.plugin import LsmSensor
from sensorium_sensors.lsm.rules import plan_section
from sensorium_sensors.lsm.testing import LsmTestContext, scoped, scratch_cgroup


def view(body: str, mode: str | None = None):
    from sensorium.hooks.testing import make_policy_view

    text = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: bad\nspec:\n  lsmhooks:\n" + body
    return make_policy_view(text, "lsmhooks", policy_id=9, mode=mode)


class _NoLsm:
    """Kernel capabilities of a kernel without BPF LSM but with cgroup sock_addr (like this host)."""

    bpf_lsm = False

    class _R:
        def __init__(self, ok: bool) -> None:
            self.ok, self.error = ok, None if ok else "EPERM"

    program_types: ClassVar[dict[str, _R]] = {"lsm": _R(False), "cgroup_sock_addr": _R(True)}


class _Lsm(_NoLsm):
    bpf_lsm = True
    program_types: ClassVar[dict[str, _NoLsm._R]] = {"lsm": _NoLsm._R(True), "cgroup_sock_addr": _NoLsm._R(True)}


_NO_LSM = _NoLsm()


def refused(body: str, kernel=_NO_LSM) -> PolicyLoadError:
    with pytest.raises(PolicyLoadError) as exc:
        plan_section(view(body), kernel)
    return exc.value


def test_btf_knows_the_hooks_and_their_signatures():
    hooks = lsm_hooks()
    assert hooks["file_open"].c_signature() == "file_open(struct file *file)"
    assert [p.ctype for p in hooks["socket_connect"].params] == ["struct socket *", "struct sockaddr *", "int"]


def test_unknown_hook_is_refused():
    e = refused('  - hook: "file_opne"\n')
    assert "no LSM hook 'file_opne'" in e.reason and "file_open" in e.reason
    assert e.hook == "lsmhooks[0] file_opne" and e.field == "spec.lsmhooks[0].hook"


def test_arg_index_out_of_range_is_refused():
    e = refused('  - hook: file_open\n    args: [{index: 2, type: file}]\n')
    assert "argument index 2 is out of range" in e.reason and "file_open(struct file *file)" in e.reason
    assert e.field == "spec.lsmhooks[0].args[0].index"


def test_type_that_does_not_match_the_signature_is_refused():
    e = refused('  - hook: socket_connect\n    args: [{index: 1, type: file}]\n')
    assert "type file does not match argument 1" in e.reason and "struct sockaddr *" in e.reason


def test_match_on_undeclared_arg_is_refused():
    e = refused('  - hook: file_open\n    args: [{index: 0, type: file}]\n    selectors:\n'
                '    - matchArgs: [{index: 1, operator: Equal, values: ["/x"]}]\n')
    assert "argument 1, which is not declared" in e.reason


def test_operator_that_does_not_fit_the_type_is_refused():
    e = refused('  - hook: file_open\n    args: [{index: 0, type: file}]\n    selectors:\n'
                '    - matchArgs: [{index: 0, operator: DPort, values: ["80"]}]\n')
    assert "operator DPort does not apply to argument 0" in e.reason


def test_hook_no_mechanism_can_serve_is_refused_with_the_reason():
    e = refused('  - hook: socket_bind\n    args: [{index: 2, type: int}]\n    selectors:\n'
                '    - matchArgs: [{index: 2, operator: Equal, values: ["16"]}]\n      matchActions: [{action: Override, argError: -1}]\n')
    assert "no mechanism can serve this hook here" in e.reason and "BPF LSM" in e.reason
    assert "file_open (fanotify)" in e.reason and "Sigkill from a tracepoint for" in e.reason


def test_hook_with_a_syscall_path_gets_the_sigkill_fallback():
    class _RawTp(_NoLsm):
        program_types: ClassVar[dict[str, _NoLsm._R]] = {**_NoLsm.program_types, "raw_tp": _NoLsm._R(True)}

    plans = plan_section(view('  - hook: task_kill\n    args: [{index: 2, type: int}]\n'), _RawTp())
    assert plans[0].mechanism == "sigkill from tracepoint" and "the call runs first" in plans[0].note


def test_sigkill_fallback_refuses_an_argument_the_syscall_does_not_carry():
    s = LsmSensor(LsmTestContext())
    if not s.ctx.kernel.has("raw_tp") or s.ctx.kernel.has("lsm"):
        pytest.skip("needs a kernel without BPF LSM but with raw tracepoints")
    with pytest.raises(PolicyLoadError) as exc:
        s.check_policy(view('  - hook: task_kill\n    args: [{index: 3, type: cred}]\n'))
    assert "not visible at the syscall kill" in exc.value.reason


def test_same_hook_is_accepted_where_bpf_lsm_loads():
    plans = plan_section(view('  - hook: task_kill\n    args: [{index: 2, type: int}]\n'), _Lsm())
    assert plans[0].mechanism == "bpf_lsm"


def test_fanotify_cannot_return_other_errnos():
    e = refused('  - hook: file_open\n    args: [{index: 0, type: file}]\n    selectors:\n'
                '    - matchArgs: [{index: 0, operator: Equal, values: ["/etc/hostname"]}]\n'
                '      matchActions: [{action: Override, argError: -13}]\n')
    assert "can only fail the call with EPERM" in e.reason
    assert e.field == "spec.lsmhooks[0].selectors[0].matchActions[0].argError"


def test_fanotify_needs_the_files_to_guard():
    e = refused('  - hook: file_open\n    selectors:\n    - matchBinaries: [{operator: In, values: ["/usr/bin/cat"]}]\n'
                '      matchActions: [{action: Override, argError: -1}]\n')
    assert "needs each selector to name the files it guards" in e.reason


def test_cgroup_programs_cannot_match_binaries():
    e = refused('  - hook: socket_connect\n    args: [{index: 1, type: sockaddr}]\n    selectors:\n'
                '    - matchBinaries: [{operator: In, values: ["/usr/bin/curl"]}]\n'
                '      matchActions: [{action: Override, argError: -1}]\n')
    assert "cannot evaluate matchBinaries" in e.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_refused_policy_leaves_nothing_loaded(tmp_path):
    """A section whose second hook cannot be served loads nothing at all, even its first hook."""
    ctx = LsmTestContext(config={"force_fallbacks": True})
    s = LsmSensor(ctx)
    s.start()
    f = tmp_path / "f"
    f.write_text("x")
    try:
        with scratch_cgroup() as cg:
            body = (f'  - hook: file_open\n    args: [{{index: 0, type: file}}]\n    selectors:\n'
                    f'    - matchArgs: [{{index: 0, operator: Equal, values: ["{f}"]}}]\n'
                    f'      matchActions: [{{action: Override, argError: -1}}]\n'
                    f'  - hook: socket_bind\n')
            with pytest.raises(PolicyLoadError) as exc:
                s.load_policy(scoped(view(body), cg))
            assert exc.value.hook == "lsmhooks[1] socket_bind"
            assert s.guard.status()["rules"] == 0 and s.guard.status()["marks"] == 0
            assert not s._handles
            assert open(f).read() == "x"
    finally:
        s.stop()


FILE_OPEN = ('  - hook: file_open\n    args: [{index: 0, type: file}]\n    selectors:\n'
             '    - matchArgs: [{index: 0, operator: Equal, values: ["/etc/hostname"]}]\n')


def test_scope_in_an_unknown_hierarchy_is_refused():
    s = LsmSensor(LsmTestContext(config={"force_fallbacks": True}))
    bad = Scope(cgroups=(CgroupRef(hierarchy="cpu", id=1, path="/sys/fs/cgroup/cpu/x"),))
    with pytest.raises(PolicyLoadError) as exc:
        s.check_policy(dataclasses.replace(view(FILE_OPEN), scope=bad))
    assert "unknown hierarchy 'cpu'" in exc.value.reason and exc.value.field == "scope"


def test_scope_that_is_not_a_scope_is_refused():
    s = LsmSensor(LsmTestContext(config={"force_fallbacks": True}))
    with pytest.raises(PolicyLoadError) as exc:
        s.check_policy(dataclasses.replace(view(FILE_OPEN), scope="/sys/fs/cgroup/x"))
    assert "expected a sensorium.hookspecs.Scope" in exc.value.reason and exc.value.field == "scope"


def test_the_sensor_declares_scope_support():
    assert LsmSensor.supports_scope is True

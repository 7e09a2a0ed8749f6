"""Tetragon's example policies (/work/shared/tetragon-policies) that use syscall kprobes or tracepoints
load for real on this kernel (raw_tp sys_enter, tracepoint, raw tracepoint); kernel-function kprobes are
refused with the reason. The table in docs/selectors.md lists the same files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hook_helpers import Rig, gone, our_program_ids, string_args

from sensorium.hooks.testing import _Sections
from sensorium.hookspecs import PolicyLoadError
from sensorium.policy import parse_policy
from sensorium_sensors.kprobe.sensor import KprobeSensor
from sensorium_sensors.tracepoint.sensor import TracepointSensor

pytestmark = [pytest.mark.kernel]

CORPUS = Path(os.environ.get("SENSORIUM_TETRAGON_POLICIES", "/work/shared/tetragon-policies"))

LOADS = {
    "write.yaml": "raw_tp sys_enter",
    "sys_clock_settime.yaml": "raw_tp sys_enter",
    "sys_pivot_root.yaml": "raw_tp sys_enter",
    "hardlink-observe.yaml": "raw_tp sys_enter",
    "symlink-observe.yaml": "raw_tp sys_enter",
    "process-credentials/process.credentials.changes.at.syscalls.yaml": "raw_tp sys_enter",
    "raw_syscalls.yaml": "tracepoint",
    "rawtp.yaml": "raw_tracepoint",
}
REFUSED = {
    "symlink-override.yaml": "Override on syscall symlinkat needs fmod_ret on __x64_sys_symlinkat",
    "tcp-connect.yaml": "no kprobes and fentry refused on this kernel",
    "filename_monitoring.yaml": "no kprobes and fexit refused on this kernel",  # its hooks have return: true
    "kprobe_commit_creds.yaml": "no kprobes and fentry refused on this kernel",
}


@pytest.fixture(scope="module")
def rigs():
    if not CORPUS.is_dir():
        pytest.skip(f"no Tetragon example corpus at {CORPUS}")
    r = {"kprobes": Rig(KprobeSensor), "tracepoints": Rig(TracepointSensor)}
    try:
        yield r
    finally:
        for x in r.values():
            x.close()


def _policy(rel: str):
    path = CORPUS / rel
    return parse_policy(path.read_text(), str(path), _Sections())


@pytest.mark.parametrize("rel", sorted(LOADS))
def test_example_loads_for_real(rigs, rel: str) -> None:
    policy = _policy(rel)
    for i, sec in enumerate(policy.sections):
        rig = rigs[sec.key]
        view = policy.view(sec, 50 + i)
        rig.sensor.check_policy(view)
        h = rig.sensor.load_policy(view)
        try:
            mechs = {hk["mechanism"] for hk in h.status()["hooks"]}
            assert mechs == {LOADS[rel]}
            assert rig.ctx.loaded_prog_ids & our_program_ids()
        finally:
            h.unload()
        assert gone(rig.ctx.loaded_prog_ids)


def test_hardlink_observe_reports_a_real_link_of_etc_passwd(rigs, tmp_path: Path) -> None:
    policy = _policy("hardlink-observe.yaml")
    rig = rigs["kprobes"]
    rig.ctx.events.clear()
    h = rig.sensor.load_policy(policy.view(policy.sections[0], 60))
    try:
        subprocess.run(["ln", "/etc/passwd", str(tmp_path / "hl")], capture_output=True)  # EXDEV or not: it was tried
        evs = rig.events(lambda b: "/etc/passwd" in string_args(b), wait=1.0)
        assert evs and evs[0]["function_name"] == "__x64_sys_linkat"
        assert evs[0]["args"][3]["string_arg"] == str(tmp_path / "hl")  # resolved against the dirfd/cwd
    finally:
        h.unload()


@pytest.mark.parametrize("rel", sorted(REFUSED))
def test_example_refused_with_the_reason(rigs, rel: str, kernel_caps) -> None:
    if "no kprobes" in REFUSED[rel] and (kernel_caps.has("kprobe") or kernel_caps.has("fentry")):
        pytest.skip("this kernel has kprobes/fentry")
    policy = _policy(rel)
    sec = policy.sections[0]
    with pytest.raises(PolicyLoadError) as ei:
        rigs[sec.key].sensor.check_policy(policy.view(sec, 70))
    assert REFUSED[rel] in str(ei.value)
    assert ei.value.field and ei.value.field.startswith(f"spec.{sec.key}[")

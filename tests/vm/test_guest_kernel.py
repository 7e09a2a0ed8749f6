"""The VM lane's guests really have what the lane exists for: the BPF LSM active and kprobes.

If these fail, every lane test that needs fentry/lsm/kprobes would be meaningless; they are the lane's
own smoke test and run first (on the host they are skipped with the reason)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vm


def test_guest_boots_with_bpf_lsm_and_kprobes(in_guest: str) -> None:
    assert os.uname().release == in_guest
    lsm = Path("/sys/kernel/security/lsm").read_text().strip().split(",")
    assert "bpf" in lsm, f"bpf not among the active LSMs {lsm} (kernel cmdline: {Path('/proc/cmdline').read_text()})"
    assert Path("/sys/kernel/tracing/kprobe_events").exists(), "no kprobe_events in tracefs"
    assert Path("/sys/kernel/btf/vmlinux").exists(), "guest kernel without BTF"
    # run.sh hands the guest its own BTF and a per-kernel probe cache
    assert os.environ.get("SENSORIUM_BTF") == "/dev/shm/vmlinux.btf"
    assert Path(os.environ["SENSORIUM_BTF"]).read_bytes() == Path("/sys/kernel/btf/vmlinux").read_bytes()
    assert os.environ.get("SENSORIUM_CACHE_DIR", "").endswith(f"/.vm/cache/{in_guest}")


# Every program type the sensors may use; the lane's kernels were measured to load and attach all of them.
LANE_PROGRAM_TYPES = ("tracepoint", "raw_tp", "tp_btf", "kprobe", "kprobe_multi", "fentry", "fexit",
                      "fmod_ret", "lsm", "uprobe", "cgroup_sock_addr", "ringbuf")


def test_probe_kernel_reports_every_hook_in_the_guest(in_guest: str) -> None:
    from sensorium.bpf.probe import probe_kernel

    caps = probe_kernel(refresh=True)
    assert caps.release == in_guest
    # kprobe_multi needs CONFIG_FPROBE: Debian's 6.1 is built without it, 6.12 with it. The guest's
    # kernel config comes with the extracted package (.vm/kernels/<release>/boot/config-<release>).
    config = (REPO / ".vm" / "kernels" / in_guest / "boot" / f"config-{in_guest}").read_text()
    expected = [n for n in LANE_PROGRAM_TYPES if n != "kprobe_multi" or "\nCONFIG_FPROBE=y\n" in config]
    failed = {n: caps.program_types[n].error for n in expected if not caps.program_types[n].ok}
    assert not failed, f"probe_kernel in guest {in_guest}: program types refused: {failed}"
    if "kprobe_multi" not in expected:
        assert not caps.program_types["kprobe_multi"].ok, "kprobe_multi reported ok without CONFIG_FPROBE"
    assert caps.bpf_lsm and caps.kprobes and caps.btf
    for name in ("fentry", "lsm", "kprobe", "bpf_lsm", "kprobes"):
        assert caps.has(name), name
    assert caps.cgroup2 == "/sys/fs/cgroup"  # the guests are pure cgroup2 nodes


# What each lane kernel series offers of the helpers and kfuncs the programs depend on (measured; a change is
# a change of which fallbacks a user of that kernel gets, so it fails here).
LANE_FEATURES = {
    "5.10": {"bpf_rdonly_cast": False, "bpf_set_retval": False, "bpf_loop": False, "bpf_get_func_arg": False,
             "bpf_d_path": False, "bpf_send_signal": True, "bpf_probe_write_user": True},
    "6.1": {"bpf_rdonly_cast": False, "bpf_set_retval": True, "bpf_loop": True, "bpf_get_func_arg": True,
            "bpf_d_path": True, "bpf_send_signal": True, "bpf_probe_write_user": True},
    "6.12": {"bpf_rdonly_cast": True, "bpf_set_retval": True, "bpf_loop": True, "bpf_get_func_arg": True,
             "bpf_d_path": True, "bpf_send_signal": True, "bpf_probe_write_user": True},
}


def test_probe_kernel_reports_the_helpers_and_kfuncs_of_each_lane_kernel(in_guest: str) -> None:
    from sensorium.bpf.probe import FEATURES, probe_kernel

    series = ".".join(in_guest.split(".")[:2])
    caps = probe_kernel(refresh=True)
    assert set(caps.features) == set(FEATURES)
    got = {k: v.ok for k, v in caps.features.items()}
    assert got == LANE_FEATURES[series], {k: caps.features[k] for k in FEATURES if got[k] != LANE_FEATURES[series][k]}
    for name, res in caps.features.items():
        assert res.ok or res.error, f"{name} absent without a reason"

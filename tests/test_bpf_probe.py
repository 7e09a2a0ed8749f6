"""The kernel capability probe: its answers agree with what real objects do on this kernel."""

from __future__ import annotations

import errno
import json
import os
import platform
from pathlib import Path

import pytest

from sensorium.bpf.build import build_object
from sensorium.bpf.libbpf import BpfObject, LibbpfError
from sensorium.bpf.probe import PROGRAM_TYPES, KernelCapabilities, ProbeResult, ensure_mounts, probe_kernel
from sensorium.hookspecs import ProbeSource

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="probing program loads needs root"),
]

# The host kernel these facts were measured on (INFRA.md). Elsewhere the fact test skips, the others run.
MEASURED_RELEASE_PREFIX = "6.18."
MEASURED_RELEASE_TAG = "-fc-"


@pytest.fixture(scope="module")
def caps() -> KernelCapabilities:
    ensure_mounts()
    return probe_kernel(refresh=True)


def test_every_program_type_has_a_verdict_and_a_reason_when_refused(caps: KernelCapabilities) -> None:
    assert list(caps.program_types) == list(PROGRAM_TYPES)
    for name, res in caps.program_types.items():
        assert isinstance(res, ProbeResult)
        assert res.ok == (res.error is None), name
        assert caps.has(name) == res.ok
    assert caps.has("no-such-capability") is False
    assert json.loads(json.dumps(caps.as_dict()))["program_types"].keys() == set(PROGRAM_TYPES)


def test_filesystems_after_ensure_mounts(caps: KernelCapabilities) -> None:
    assert ensure_mounts() == []  # idempotent: everything is mounted now
    assert caps.tracefs and Path(caps.tracefs, "events").is_dir()
    assert caps.btf == Path("/sys/kernel/btf/vmlinux").exists()
    assert caps.has("tracefs")
    # bpffs is only mounted for pinning (ensure_bpffs, enforcement.persist): the probe reports what is there.
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    mounted = any(ln.split()[1:3] == ["/sys/fs/bpf", "bpf"] for ln in mounts)
    assert caps.bpffs == ("/sys/fs/bpf" if mounted else None)


@pytest.mark.skipif(not (platform.release().startswith(MEASURED_RELEASE_PREFIX)
                         and MEASURED_RELEASE_TAG in platform.release()),
                    reason=f"facts measured on the {MEASURED_RELEASE_PREFIX}x{MEASURED_RELEASE_TAG} host kernel only")
def test_measured_facts_of_this_host(caps: KernelCapabilities) -> None:
    for name in ("tracepoint", "raw_tp", "tp_btf", "uprobe", "cgroup_sock_addr", "ringbuf"):
        assert caps.has(name), (name, caps.program_types[name])
    for name in ("fentry", "lsm"):
        assert not caps.has(name)
        assert caps.program_types[name].error.startswith("EPERM"), caps.program_types[name]
    assert not caps.has("kprobe") and not caps.kprobes


TP_BTF_SRC = '#include "vmlinux.h"\n#include <sensorium/common.h>\nSENSORIUM_LICENSE("GPL");\n' \
             'SEC("tp_btf/sched_process_exec") int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid,' \
             ' struct linux_binprm *bprm) { return 0; }\n'
FENTRY_SRC = '#include "vmlinux.h"\n#include <sensorium/common.h>\nSENSORIUM_LICENSE("GPL");\n' \
             'SEC("fentry/security_file_open") int BPF_PROG(on_open, struct file *file) { return 0; }\n'


@pytest.mark.parametrize("kind,src", [("tp_btf", TP_BTF_SRC), ("fentry", FENTRY_SRC)])
def test_probe_agrees_with_a_real_object(caps: KernelCapabilities, tmp_path: Path, kind: str, src: str) -> None:
    """What the probe says about a BTF-attached type is what loading a real object of that type does."""
    source = tmp_path / f"{kind}.bpf.c"
    source.write_text(src)
    with BpfObject.open(build_object(ProbeSource(name=f"probe_{kind}", source=source))) as obj:
        if caps.has(kind):
            obj.load()
            assert len(obj.attach_all()) == 1
        else:
            with pytest.raises(LibbpfError) as ei:
                obj.load()
            reported = caps.program_types[kind].error or ""
            assert reported.startswith(errno.errorcode[ei.value.errno]) or \
                os.strerror(ei.value.errno) in reported, (reported, ei.value)


def test_a_helper_the_program_type_is_not_offered_is_reported_absent_with_the_verifiers_words() -> None:
    from sensorium.bpf import probe as P

    # bpf_set_retval exists only for cgroup programs (5.18+): never for a tracepoint program
    res = P._probe_call(P._PROG_TRACEPOINT, P._FN_SET_RETVAL)
    assert not res.ok
    assert "bpf_set_retval" in res.error or "unknown#187" in res.error, res.error
    # an id past the kernel's last helper
    res = P._probe_call(P._PROG_TRACEPOINT, 100000)
    assert not res.ok and "invalid func" in res.error, res.error


def test_features_are_probed_and_listed_with_reasons() -> None:
    from sensorium.bpf.probe import FEATURES

    caps = probe_kernel(refresh=True)
    assert list(caps.features) == list(FEATURES)
    for name, res in caps.features.items():
        assert caps.has(name) is res.ok
        assert res.ok or res.error, name
    # bpf_send_signal (5.3+) is what Sigkill needs on every kernel we support
    assert caps.has("bpf_send_signal")

"""Tetragon's 55 example policies: each is valid (every field taken, none ignored) or refused by name, and
on each kernel we test (this host and every VM-lane kernel) each gets exactly the outcome recorded for
that kernel in tests/data/tetragon-compat.yaml."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import compat_table as C  # noqa: E402

from sensorium.yamlsrc import SourceError  # noqa: E402

# file -> None (valid for the models) or (field path, words of the reason). Changing an entry is a
# deliberate change of what Sensorium supports: update docs/tetragon-compat.md with it.
EXPECTED: dict[str, tuple[str, str] | None] = {
    "bpf.yaml": None,
    "cves/cve-2023-2640-overlayfs-ubuntu.yaml": None,
    "datagram-with-sock-tracking.yaml": None,
    "datagram.yaml": None,
    "datagram_518.yaml": None,
    "dev_hard_start_xmit.yaml": None,
    "dev_queue_xmit.yaml": None,
    "dns-only-specified-servers.yaml": None,
    "fd_install_cap_changes.yaml": None,
    "fd_install_caps.yaml": None,
    "fd_install_ns_host.yaml": None,
    "filename_monitoring.yaml": None,
    "filename_monitoring_filtered.yaml": None,
    "hardlink-observe.yaml": None,
    "host-changes/monitor-signed-kernel-modules.yaml": None,
    "killer.yaml": ("spec.enforcers", "enforcers (NotifyEnforcer) are not supported"),
    "kprobe_commit_creds.yaml": None,
    "list-generated-ftrace.yaml": None,
    "list-syscalls-generated.yaml": None,
    "list-syscalls-tracepoint.yaml": None,
    "list-syscalls.yaml": None,
    "loader.yaml": ("spec.loader", "loader events are not supported"),
    "lsm_bprm_check.yaml": ("spec.lsmhooks[0].selectors[0].matchActions[1].imaHash", "IMA hashes are not implemented"),
    "lsm_file_open.yaml": None,
    "modules-nohost.yaml": None,  # valid; an agent without Kubernetes refuses it at load (the record says so)
    "open_dnsrequest.yaml": None,
    "open_geturl.yaml": None,
    "override-security.yaml": None,
    "process-credentials/creds-capability-usage.yaml": None,
    "process-credentials/process-creds-installed.yaml": None,
    "process-credentials/process.credentials.changes.at.syscalls.yaml": None,
    "process-exec/process-exec-elf-begin.yaml": None,
    "raw_syscalls.yaml": None,
    "rawtp.yaml": None,
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace_in_pid_namespace.yaml": None,
    "security-socket-connect.yaml": None,
    "security_bprm_check.yaml": None,
    "security_inode_follow_link.yaml": None,
    "stack_traces.yaml": None,
    "symlink-observe.yaml": None,
    "symlink-override.yaml": None,
    "sys_clock_settime.yaml": None,
    "sys_pivot_root.yaml": None,
    "tcp-accept.yaml": None,
    "tcp-connect-only-local-addrs.yaml": None,
    "tcp-connect-only-private-addrs.yaml": None,
    "tcp-connect.yaml": None,
    "tcp-listen.yaml": None,
    "tty_54.yaml": None,
    "uprobe-host.yaml": None,
    "uprobe-pid.yaml": None,
    "uprobe.yaml": None,
    "usdt-set.yaml": None,
    "usdt.yaml": None,
    "write.yaml": None,
}

FILES = C.corpus_files()


def test_the_corpus_is_complete():
    assert len(FILES) == 55
    assert sorted(C.rel(f) for f in FILES) == sorted(EXPECTED)


def _norm(x: Any) -> Any:
    """Compare YAML input with a model dump: scalars as text (YAML `- 443` is the string "443" to us), a
    string's terminating NUL as the end it names (the model takes "security.capability\\0" as
    "security.capability")."""
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    return str(x).removesuffix("\0")


@pytest.mark.parametrize("path", FILES, ids=C.rel)
def test_each_policy_is_valid_or_refused_by_name(path: Path):
    from sensorium.policy import parse_policies

    name = C.rel(path)
    expected = EXPECTED[name]
    try:
        policies = parse_policies(path.read_bytes(), name, C.ModelSections(), scoping_supported=True)
    except SourceError as exc:  # anything else (a crash) fails the test
        assert expected is not None, f"{name} should be valid, was refused: {exc}"
        path_, words = expected
        assert exc.file == name and exc.line is not None, str(exc)
        assert exc.path == path_, str(exc)
        assert words in exc.reason, str(exc)
        return
    assert expected is None, f"{name} should be refused ({expected}), was accepted"
    # Nothing silently ignored: every key of every hook item landed in a model field, with its value.
    raw_docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for policy, raw in zip(policies, raw_docs, strict=True):
        spec = raw["spec"]
        if "lists" in spec:  # "list:NAME" references stand for the list's items, as the model takes them
            from sensorium.policy_lists import expand_lists as _expand_lists
            from sensorium.policy_lists import parse_lists as _parse_lists
            from sensorium.yamlsrc import Located

            doc = Located(raw, {}, name)
            spec, _origins = _expand_lists(spec, _parse_lists(spec["lists"], doc), doc)
        for section in policy.sections:
            for i, item in enumerate(section.items):
                given = spec[section.key][i]
                taken = item.model_dump(by_alias=True, exclude_unset=True)
                assert _norm(taken) == _norm(given), \
                    f"{name} {section.key}[{i}]: the model did not take the input as given"


def test_the_doc_is_generated_from_the_record():
    assert C.DOC.read_text() == C.render(C.read_record()), \
        "docs/tetragon-compat.md differs from the record: run scripts/compat_table.py"


def test_parse_refusals_are_recorded_for_every_kernel():
    """A refusal at parse time holds on every kernel: the record says so in every column."""
    rec = C.read_record()
    assert sorted(rec["policies"]) == sorted(EXPECTED)
    for name, exp in EXPECTED.items():
        for label, out in rec["policies"][name].items():
            if exp is not None:
                assert out.startswith("refused (") and exp[0] in out, (name, label, out)


@pytest.mark.kernel
@pytest.mark.vm
@pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")
def test_each_policy_gets_its_recorded_outcome_on_this_kernel(kernel_caps):
    """Through the real policy manager and sensors, in monitoring mode, each deleted right after: the
    outcome of every policy (loads, and by which mechanisms; or refused, why and of which class) is the one
    the record holds for this kernel. Any difference fails, an improvement as much as a regression: the
    record is updated on purpose (see scripts/compat_table.py)."""
    label = C.kernel_label()
    profile = C.host_profile(kernel_caps)
    rows = C.observe(load=True)
    if os.environ.get("SENSORIUM_COMPAT_OBSERVED"):
        print(f"observed outcomes written to {C.save_observed(label, rows, profile)}")
    got = {r.file: C.outcome(r) for r in rows}
    unclassified = sorted(f for f, o in got.items() if "(unclassified)" in o)
    assert not unclassified, f"refusals of no known class (teach compat_table.reason_class): " \
                             f"{[got[f] for f in unclassified]}"
    rec = C.read_record()
    if label not in rec["kernels"]:
        pytest.fail(f"the record has no column {label!r} ({platform.release()}): observe it and merge "
                    f"(scripts/compat_table.py)")
    if label == "host" and rec["kernels"]["host"]["profile"] != profile:
        pytest.skip(f"the record's host column is for a host with {rec['kernels']['host']['profile']}; this one "
                    f"has {profile}")
    want = {name: per[label] for name, per in rec["policies"].items() if label in per}
    diffs = [f"{f}:\n    recorded: {want.get(f)}\n    now:      {got.get(f)}" for f in sorted(set(want) | set(got))
             if want.get(f) != got.get(f)]
    assert not diffs, (f"{len(diffs)} policies changed outcome on {label} ({platform.release()}):\n" +
                       "\n".join(diffs))
    # The syscall and tracepoint examples are served on every kernel we test.
    for f in ("raw_syscalls.yaml", "rawtp.yaml", "write.yaml"):
        assert got[f].startswith("loads: "), got[f]

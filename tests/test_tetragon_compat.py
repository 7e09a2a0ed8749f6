"""Tetragon's 55 example policies: each is valid (every field taken, none ignored) or refused by name;
on this host, each valid one either loads through the real sensors or is refused with the reason."""

from __future__ import annotations

import os
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
    "bpf.yaml": ("spec.kprobes[0].args[0].type", "argument type 'bpf_attr' is not supported by Sensorium"),
    "cves/cve-2023-2640-overlayfs-ubuntu.yaml": None,
    "datagram-with-sock-tracking.yaml": ("spec.kprobes[0].returnArgAction", "returnArgAction 'TrackSock' is not supported"),
    "datagram.yaml": None,
    "datagram_518.yaml": ("spec.kprobes[0].returnArgAction", "returnArgAction 'TrackSock' is not supported"),
    "dev_hard_start_xmit.yaml": ("spec.kprobes[0].args[0].type", "argument type 'net_device' is not supported"),
    "dev_queue_xmit.yaml": None,
    "dns-only-specified-servers.yaml": None,
    "fd_install_cap_changes.yaml": ("spec.kprobes[0].selectors[0].matchCapabilityChanges", "matchCapabilityChanges is not implemented"),
    "fd_install_caps.yaml": None,
    "fd_install_ns_host.yaml": None,
    "filename_monitoring.yaml": None,
    "filename_monitoring_filtered.yaml": None,
    "hardlink-observe.yaml": None,
    "host-changes/monitor-signed-kernel-modules.yaml": ("spec.kprobes[2].args[1].type", "argument type 'load_info' is not supported"),
    "killer.yaml": ("spec.lists", "named lists ('list:...' references) are not supported"),
    "kprobe_commit_creds.yaml": None,
    "list-generated-ftrace.yaml": ("spec.lists", "named lists"),
    "list-syscalls-generated.yaml": ("spec.lists", "named lists"),
    "list-syscalls-tracepoint.yaml": ("spec.lists", "named lists"),
    "list-syscalls.yaml": ("spec.lists", "named lists"),
    "loader.yaml": ("spec.loader", "loader events are not supported"),
    "lsm_bprm_check.yaml": ("spec.lsmhooks[0].selectors[0].matchActions[1].imaHash", "IMA hashes are not implemented"),
    "lsm_file_open.yaml": None,
    "modules-nohost.yaml": ("spec.podSelector", "podSelector is not supported yet"),
    "open_dnsrequest.yaml": ("spec.kprobes[0].selectors[0].matchActions[0].action", "action 'DnsLookup' is not supported"),
    "open_geturl.yaml": ("spec.kprobes[0].selectors[0].matchActions[0].action", "action 'GetUrl' is not supported"),
    "override-security.yaml": None,
    "process-credentials/creds-capability-usage.yaml": ("spec.kprobes[0].args[0].type", "argument type 'user_namespace' is not supported"),
    "process-credentials/process-creds-installed.yaml": None,
    "process-credentials/process.credentials.changes.at.syscalls.yaml": None,
    "process-exec/process-exec-elf-begin.yaml": None,
    "raw_syscalls.yaml": None,
    "rawtp.yaml": None,
    "sandbox/linux-namespaces/kill_unprivileged_user_namespace_in_pid_namespace.yaml": (
        "spec.kprobes[0].selectors[0].matchActions[0]", "argError applies only to the Override action"),
    "security-socket-connect.yaml": None,
    "security_bprm_check.yaml": None,
    "security_inode_follow_link.yaml": None,
    "stack_traces.yaml": ("spec.kprobes[0].selectors[0].matchActions[0].kernelStackTrace", "stack traces are not implemented"),
    "symlink-observe.yaml": None,
    "symlink-override.yaml": None,
    "sys_clock_settime.yaml": None,
    "sys_pivot_root.yaml": None,
    "tcp-accept.yaml": ("spec.kprobes[0].returnArgAction", "returnArgAction 'TrackSock' is not supported"),
    "tcp-connect-only-local-addrs.yaml": None,
    "tcp-connect-only-private-addrs.yaml": None,
    "tcp-connect.yaml": None,
    "tcp-listen.yaml": ("spec.kprobes[0].returnArgAction", "returnArgAction 'TrackSock' is not supported"),
    "tty_54.yaml": None,
    "uprobe-host.yaml": None,
    "uprobe-pid.yaml": None,
    "uprobe.yaml": None,
    "usdt-set.yaml": ("spec.usdts", "no Sensorium sensor implements 'usdts'"),
    "usdt.yaml": ("spec.usdts", "no Sensorium sensor implements 'usdts'"),
    "write.yaml": None,
}

FILES = C.corpus_files()


def test_the_corpus_is_complete():
    assert len(FILES) == 55
    assert sorted(C.rel(f) for f in FILES) == sorted(EXPECTED)


def _norm(x: Any) -> Any:
    """Compare YAML input with a model dump: scalars as text (YAML `- 443` is the string "443" to us)."""
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    return str(x)


@pytest.mark.parametrize("path", FILES, ids=C.rel)
def test_each_policy_is_valid_or_refused_by_name(path: Path):
    from sensorium.policy import parse_policies

    name = C.rel(path)
    expected = EXPECTED[name]
    try:
        policies = parse_policies(path.read_bytes(), name, C.ModelSections())
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
    for policy, raw in zip(policies, raw_docs):
        for section in policy.sections:
            for i, item in enumerate(section.items):
                given = raw["spec"][section.key][i]
                taken = item.model_dump(by_alias=True, exclude_unset=True)
                assert _norm(taken) == _norm(given), f"{name} {section.key}[{i}]: the model did not take the input as given"


def test_the_doc_table_matches_the_parser():
    doc = C.read_doc_rows(C.DOC.read_text())
    assert sorted(doc) == sorted(EXPECTED), "docs/tetragon-compat.md lists other files: regenerate it"
    for name, exp in EXPECTED.items():
        row = doc[name]
        if exp is not None:
            assert (row["result"], row["stage"]) == ("refused", "parse"), name
            assert exp[0] in row["reason"], name
        else:
            assert row["stage"] != "parse", f"{name}: the doc says refused at parse; regenerate it"


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")
def test_valid_policies_load_on_this_host_or_are_refused_with_the_reason():
    """Through the real policy manager and sensors, in monitoring mode, each deleted right after."""
    rows = [C.parse_row(f)[0] for f in FILES]
    reg, sensors, contexts = C.start_sensors()
    if not sensors:
        for ctx in contexts:
            ctx.close()
        pytest.skip("no sensor that serves policy sections started on this host")
    from sensorium.policy_manager import PolicyManager

    pm = PolicyManager(reg, sensors)
    loaded = []
    try:
        for f, row in zip(FILES, rows):
            if row.result != "valid":
                continue
            try:
                names = pm.add(f.read_bytes(), row.file, mode="monitoring")
            except SourceError as exc:
                # Refused whole: with where and why, and nothing of it left loaded.
                assert exc.file == row.file and exc.line is not None and exc.reason, str(exc)
                # ... naming the hook (or the section) that cannot be served.
                assert exc.path and exc.path.startswith("spec."), str(exc)
                assert any(f"{k}[" in exc.reason or f"'{k}'" in exc.reason for k in C.SECTION_OWNERS), str(exc)
                assert pm.list() == [], f"{row.file}: refused but something stayed loaded"
                continue
            for n in names:
                st = pm.get(n)
                assert st["state"] == "enabled" and st["hooks"], st
                assert all(h.get("mechanism") for h in st["hooks"]), st["hooks"]
                pm.delete(n)
            loaded.append(row.file)
            assert pm.list() == []
        for s in sensors.values():
            st = s.status()
            assert not st.get("policies"), f"a sensor still holds policies after every delete: {st}"
    finally:
        pm.unload_all()
        for s in sensors.values():
            s.stop()
        for ctx in contexts:
            ctx.close()
    # The syscall and tracepoint examples are served on this kernel (raw tracepoints at least).
    assert {"raw_syscalls.yaml", "rawtp.yaml", "write.yaml"} <= set(loaded), loaded

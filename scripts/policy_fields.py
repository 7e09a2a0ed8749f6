#!/usr/bin/env python3
"""Every field of Tetragon's TracingPolicy, and what `sensorium policy check` does with it.

The catalogue below names each field a Tetragon policy may carry (spec sections, hook fields, argument types,
selector filters, operators, actions and their parameters; written from Tetragon's documentation and CRD
reference, as of Tetragon 1.4) with a small policy that uses it. Each policy is run through the same
validation as `policy check` (the installed sensors' schemas and every rule that holds on any kernel), and
the outcome is one of:

- ``supported``: accepted with no warning (whether a given kernel can load it is a separate question, answered
  per kernel for Tetragon's example policies in docs/tetragon-compat.md);
- ``ignored``: accepted with a warning that names the field as having no effect (as Tetragon does);
- ``refused``: refused with the reason, which is the first line of `policy check`'s error.

The outcomes are recorded in tests/data/tetragon-policy-fields.yaml; tests/test_policy_fields.py observes
them again and fails on any difference, either way, and checks that docs/policy-fields.md is the rendering
of the record. A change of outcome is recorded deliberately:

    .venv/bin/python scripts/policy_fields.py --record    # observe -> the record and the doc
    .venv/bin/python scripts/policy_fields.py             # the record -> docs/policy-fields.md
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "tests" / "data" / "tetragon-policy-fields.yaml"
DOC = REPO / "docs" / "policy-fields.md"

# One item per section, valid on its own: each catalogue entry changes one field of it.
_KPROBE: dict[str, Any] = {"call": "security_file_open", "syscall": False,
                           "args": [{"index": 0, "type": "file"}]}
_SYSCALL: dict[str, Any] = {"call": "sys_openat", "args": [{"index": 1, "type": "string"}]}
_TRACEPOINT: dict[str, Any] = {"subsystem": "syscalls", "event": "sys_enter_openat",
                               "args": [{"index": 5, "type": "string"}]}
_UPROBE: dict[str, Any] = {"path": "/bin/bash", "symbols": ["readline"]}
_LSM: dict[str, Any] = {"hook": "file_open", "args": [{"index": 0, "type": "file"}]}
_USDT: dict[str, Any] = {"path": "/usr/bin/python3", "provider": "python", "name": "function__entry"}

# sys_write's buffer, with the size parameter it names declared too.
_WRITE_ARGS: list[dict[str, Any]] = [{"index": 1, "type": "char_buf", "sizeArgIndex": 3},
                                     {"index": 2, "type": "size_t"}]

_BASES = {"kprobes": _KPROBE, "syscall": _SYSCALL, "tracepoints": _TRACEPOINT, "uprobes": _UPROBE,
          "lsmhooks": _LSM, "usdts": _USDT}


def _item(base: str, **fields: Any) -> dict[str, Any]:
    """A spec with one item of ``base`` (a key of _BASES) with ``fields`` set (None removes a field)."""
    item = copy.deepcopy(_BASES[base])
    for k, v in fields.items():
        if v is None:
            item.pop(k, None)
        else:
            item[k] = v
    section = "kprobes" if base == "syscall" else base
    return {section: [item]}


def _sel(base: str, selector: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return _item(base, selectors=[selector], **fields)


def _arg_type(t: str, base: str = "kprobes", index: int = 0, **extra: Any) -> dict[str, Any]:
    return _item(base, args=[{"index": index, "type": t, **extra}])


def _op(op: str, values: list[str] | None, base: str = "kprobes", index: int = 0,
        arg_type: str = "file", **fields: Any) -> dict[str, Any]:
    flt: dict[str, Any] = {"index": index, "operator": op}
    if values is not None:
        flt["values"] = values
    return _sel(base, {"matchArgs": [flt]}, args=[{"index": index, "type": arg_type}], **fields)


def _action(action: str, **params: Any) -> dict[str, Any]:
    return _sel("syscall", {"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/tmp/x"]}],
                            "matchActions": [{"action": action, **params}]})


def _sock_action(action: str, **params: Any) -> dict[str, Any]:
    """An action that keys a struct sock argument (TrackSock/UntrackSock): on a kernel function taking one."""
    return _sel("kprobes", {"matchActions": [{"action": action, **params}]}, call="tcp_close",
                args=[{"index": 0, "type": "sock"}])


def catalogue() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(group, field, spec) for every field of the TracingPolicy format."""
    g = "spec"
    yield g, "kprobes", _item("kprobes")
    yield g, "tracepoints", _item("tracepoints")
    yield g, "uprobes", _item("uprobes")
    yield g, "lsmhooks", _item("lsmhooks")
    yield g, "usdts", _item("usdts")
    yield g, "fentries", {"fentries": [copy.deepcopy(_KPROBE)]}
    yield g, "loader", {"loader": True, **_item("syscall")}
    yield g, "podSelector", {"podSelector": {"matchLabels": {"app": "web"}}, **_item("syscall")}
    yield g, "containerSelector", {"containerSelector": {"matchExpressions": [
        {"key": "name", "operator": "In", "values": ["main"]}]}, **_item("syscall")}
    yield g, "hostSelector", {"hostSelector": {}, **_item("syscall")}
    yield g, "options (policy-mode)", {"options": [{"name": "policy-mode", "value": "monitor"}], **_item("syscall")}
    yield g, "options (disable-kprobe-multi)", {"options": [{"name": "disable-kprobe-multi", "value": "1"}],
                                                 **_item("syscall")}
    yield g, "lists (type: syscalls)", {"lists": [{"name": "opens", "type": "syscalls",
                                                   "values": ["sys_openat", "sys_open"]}],
                                        "kprobes": [{"call": "list:opens"}]}
    yield g, "lists (type: generated_syscalls)", {"lists": [{"name": "all", "type": "generated_syscalls"}],
                                                  "kprobes": [{"call": "list:all"}]}
    yield g, "lists (type: generated_ftrace)", {"lists": [{"name": "vfs", "type": "generated_ftrace",
                                                          "pattern": "^vfs_read.*"}],
                                                "kprobes": [{"call": "list:vfs", "syscall": False}]}
    yield g, "enforcers", {"enforcers": [{"calls": ["sys_openat"]}], **_action("NotifyEnforcer", argError=-1)}
    yield g, "selectorsMacros", {"selectorsMacros": {"tmp": {"matchArgs": [
        {"index": 1, "operator": "Prefix", "values": ["/tmp/"]}]}}, **_item("syscall")}

    g = "kprobes[]"
    yield g, "call", _item("kprobes")
    yield g, "syscall", _item("syscall", syscall=True)
    yield g, "return", _item("kprobes", **{"return": True, "returnArg": {"index": 0, "type": "int"}})
    yield g, "returnArg", _item("kprobes", **{"return": True, "returnArg": {"index": 0, "type": "int"}})
    yield g, "returnArgAction: Post", _item("kprobes", **{"return": True, "returnArg": {"index": 0, "type": "int"},
                                                           "returnArgAction": "Post"})
    yield g, "returnArgAction: TrackSock", _item(
        "kprobes", call="inet_csk_accept", args=None,
        **{"return": True, "returnArg": {"index": 0, "type": "sock"}, "returnArgAction": "TrackSock"})
    yield g, "returnArgAction: UntrackSock", _item(
        "kprobes", call="inet_csk_accept", args=None,
        **{"return": True, "returnArg": {"index": 0, "type": "sock"}, "returnArgAction": "UntrackSock"})
    yield g, "message", _item("kprobes", message="a file was opened")
    yield g, "tags", _item("kprobes", tags=["observability.filesystem"])
    yield g, "ignore.callNotFound", _item("kprobes", ignore={"callNotFound": True})
    yield g, "data", _item("kprobes", data=[{"index": 0, "type": "file"}])

    g = "tracepoints[]"
    yield g, "subsystem, event", _item("tracepoints")
    yield g, "raw", _item("tracepoints", subsystem="raw_syscalls", event="sys_enter", raw=True,
                          args=[{"index": 1, "type": "uint64"}])
    yield g, "message", _item("tracepoints", message="openat")
    yield g, "tags", _item("tracepoints", tags=["fs"])

    g = "uprobes[]"
    yield g, "path, symbols", _item("uprobes")
    yield g, "offsets", _item("uprobes", symbols=None, offsets=[4096])
    yield g, "refCtrOffsets", _item("uprobes", refCtrOffsets=[8192])
    yield g, "args", _item("uprobes", args=[{"index": 0, "type": "string"}])
    yield g, "return, returnArg", _item("uprobes", **{"return": True, "returnArg": {"index": 0, "type": "int"}})
    yield g, "btfPath", _item("uprobes", btfPath="/sys/kernel/btf/vmlinux")
    yield g, "resolvePathInContainer", {"podSelector": {"matchLabels": {"app": "web"}},
                                        **_item("uprobes", resolvePathInContainer=True)}
    yield g, "message", _item("uprobes", message="readline")
    yield g, "tags", _item("uprobes", tags=["shell"])

    g = "lsmhooks[]"
    yield g, "hook", _item("lsmhooks")
    yield g, "message", _item("lsmhooks", message="open")
    yield g, "tags", _item("lsmhooks", tags=["fs"])

    g = "args[]"
    yield g, "index, type", _arg_type("file")
    yield g, "label", _arg_type("file", label="file")
    yield g, "sizeArgIndex", _item("syscall", call="sys_write", args=_WRITE_ARGS)
    yield g, "returnCopy", _item("syscall", call="sys_read", **{"return": True},
                                 args=[{"index": 1, "type": "char_buf", "returnCopy": True, "sizeArgIndex": 3}],
                                 returnArg={"index": 0, "type": "size_t"})
    yield g, "maxData", _item("syscall", call="sys_write",
                              args=[{**_WRITE_ARGS[0], "maxData": True}, _WRITE_ARGS[1]])
    yield g, "resolve", _item("kprobes", call="security_bprm_check",
                              args=[{"index": 0, "type": "file", "resolve": "file"}])
    yield g, "btfType", _item("kprobes", args=[{"index": 0, "type": "file", "btfType": "file"}])
    yield g, "source", _item("kprobes", data=[{"index": 0, "type": "int", "source": "current_task",
                                               "resolve": "pid"}])

    g = "args[].type"
    for t in ("auto", "int", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
              "size_t"):
        yield g, t, _item("syscall", call="sys_close", args=[{"index": 0, "type": t}])
    yield g, "syscall64", _item("tracepoints", subsystem="raw_syscalls", event="sys_enter",
                                args=[{"index": 4, "type": "syscall64"}])
    yield g, "string", _arg_type("string", base="syscall", index=1)
    yield g, "char_buf", _item("syscall", call="sys_write", args=_WRITE_ARGS)
    yield g, "char_iovec", _item("syscall", call="sys_writev",
                                 args=[{"index": 1, "type": "char_iovec", "sizeArgIndex": 3}])
    yield g, "fd", _item("syscall", call="sys_close", args=[{"index": 0, "type": "fd"}])
    yield g, "filename", _item("kprobes", call="do_sys_openat2", args=[{"index": 1, "type": "filename"}])
    for t, call in (("file", "security_file_open"), ("path", "security_path_truncate"),
                    ("dentry", "security_inode_unlink"), ("sock", "tcp_close"), ("skb", "ip_rcv"),
                    ("sockaddr", "security_socket_connect"), ("socket", "security_socket_connect"),
                    ("cred", "commit_creds"), ("linux_binprm", "security_bprm_check"),
                    ("bpf_attr", "security_bpf"), ("perf_event", "security_perf_event_alloc"),
                    ("bpf_map", "security_bpf_map"), ("bpf_prog", "security_bpf_prog"),
                    ("user_namespace", "create_user_ns"), ("capability", "cap_capable"),
                    ("kiocb", "generic_file_write_iter"), ("iov_iter", "generic_file_write_iter"),
                    ("load_info", "load_module"), ("module", "do_init_module"),
                    ("kernel_cap_t", "cap_capset"), ("cap_inheritable", "commit_creds"),
                    ("cap_permitted", "commit_creds"), ("cap_effective", "commit_creds"),
                    ("net_device", "dev_change_flags"), ("sockaddr_un", "unix_stream_connect"),
                    ("kernel_module", "do_init_module"), ("nop", "security_file_open")):
        yield g, t, _item("kprobes", call=call, args=[{"index": 0, "type": t}])
    yield g, "data_loc", _item("tracepoints", subsystem="sched", event="sched_process_exec",
                               args=[{"index": 0, "type": "data_loc"}])

    g = "selectors[]"
    file_arg = [{"index": 0, "type": "file"}]
    yield g, "matchArgs", _op("Prefix", ["/etc/"])
    yield g, "matchArgs[].args", _sel("kprobes", {"matchArgs": [{"args": [0], "operator": "Prefix",
                                                                "values": ["/etc/"]}]}, args=file_arg)
    yield g, "matchData", _sel("kprobes", {"matchData": [{"index": 0, "operator": "Equal", "values": ["1"]}]},
                               data=[{"index": 0, "type": "int", "source": "current_task", "resolve": "pid"}])
    yield g, "matchReturnArgs", _sel("kprobes", {"matchReturnArgs": [{"index": 0, "operator": "Equal",
                                                                      "values": ["0"]}]},
                                     **{"return": True, "returnArg": {"index": 0, "type": "int"}})
    yield g, "matchPIDs", _sel("syscall", {"matchPIDs": [{"operator": "In", "values": [1],
                                                          "followForks": True, "isNamespacePID": False}]})
    for op in ("In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix"):
        yield g, f"matchBinaries: {op}", _sel("syscall", {"matchBinaries": [
            {"operator": op, "values": ["/usr/bin/cat"]}]})
    yield g, "matchBinaries[].followChildren", _sel("syscall", {"matchBinaries": [
        {"operator": "In", "values": ["/usr/bin/bash"], "followChildren": True}]})
    yield g, "matchParentBinaries", _sel("syscall", {"matchParentBinaries": [
        {"operator": "In", "values": ["/usr/bin/bash"]}]})
    yield g, "matchNamespaces", _sel("syscall", {"matchNamespaces": [
        {"namespace": "Mnt", "operator": "NotIn", "values": ["host_ns"]}]})
    yield g, "matchNamespaceChanges", _sel("syscall", {"matchNamespaceChanges": [
        {"operator": "In", "values": ["Mnt"]}]})
    yield g, "matchCapabilities", _sel("syscall", {"matchCapabilities": [
        {"type": "Effective", "operator": "In", "values": ["CAP_SYS_ADMIN"]}]})
    yield g, "matchCapabilityChanges", _sel("syscall", {"matchCapabilityChanges": [
        {"type": "Effective", "operator": "In", "values": ["CAP_SYS_ADMIN"]}]})
    yield g, "matchActions", _action("Post")
    yield g, "matchReturnActions", _sel("syscall", {"matchReturnArgs": [
        {"index": 0, "operator": "Equal", "values": ["0"]}], "matchReturnActions": [{"action": "Post"}]},
        **{"return": True, "returnArg": {"index": 0, "type": "int"}})
    yield g, "selector macro reference", {"selectorsMacros": {"tmp": {"matchArgs": [
        {"index": 1, "operator": "Prefix", "values": ["/tmp/"]}]}}, **_sel("syscall", {"macros": ["tmp"]})}

    g = "matchArgs[].operator"
    for op, vals in (("Equal", ["/etc/passwd"]), ("NotEqual", ["/etc/passwd"]), ("Prefix", ["/etc/"]),
                     ("NotPrefix", ["/etc/"]), ("Postfix", [".conf"]), ("NotPostfix", [".conf"]),
                     ("SubString", ["shadow"]), ("SubStringIgnCase", ["Shadow"])):
        yield g, op, _op(op, vals)
    for op in ("GT", "LT", "GreaterThan", "LessThan", "Mask", "InRange", "NotInRange", "InMap", "NotInMap"):
        vals = ["10:20"] if "Range" in op else ["3"]
        yield g, op, _op(op, vals, base="syscall", index=0, arg_type="int", call="sys_close")
    sock_ops: tuple[tuple[str, list[str] | None], ...] = (
        ("SAddr", ["127.0.0.1/8"]), ("NotSAddr", ["127.0.0.1/8"]), ("DAddr", ["10.0.0.0/8"]),
        ("NotDAddr", ["10.0.0.0/8"]), ("SPort", ["80"]), ("NotSPort", ["80"]),
        ("DPort", ["443"]), ("NotDPort", ["443"]), ("SPortPriv", None), ("NotSPortPriv", None),
        ("DPortPriv", None), ("NotDPortPriv", None), ("Protocol", ["IPPROTO_TCP"]),
        ("Family", ["AF_INET"]), ("State", ["TCP_SYN_SENT"]))
    for op, sock_vals in sock_ops:
        yield g, op, _op(op, sock_vals, call="tcp_connect", arg_type="sock")
    yield g, "FileType", _op("FileType", ["reg"])
    yield g, "NotFileType", _op("NotFileType", ["reg"])
    yield g, "CapabilitiesGained", _op("CapabilitiesGained", ["CAP_SYS_ADMIN"], call="commit_creds",
                                       arg_type="cred")

    g = "matchActions[].action"
    yield g, "Post", _action("Post")
    yield g, "NoPost", _action("NoPost")
    yield g, "Sigkill", _action("Sigkill")
    yield g, "Signal", _action("Signal", argSig=9)
    yield g, "Override", _action("Override", argError=-1)
    yield g, "FollowFD", _action("FollowFD", argFd=0, argName=1)
    yield g, "UnfollowFD", _action("UnfollowFD", argFd=0)
    yield g, "CopyFD", _action("CopyFD", argFd=0, argName=1)
    yield g, "GetUrl", _action("GetUrl", argUrl="http://example.invalid/alert")
    yield g, "DnsLookup", _action("DnsLookup", argFqdn="alert.example.invalid")
    yield g, "TrackSock", _sock_action("TrackSock", argSock=0)
    yield g, "UntrackSock", _sock_action("UntrackSock", argSock=0)
    yield g, "NotifyEnforcer", {"enforcers": [{"calls": ["sys_openat"]}], **_action("NotifyEnforcer", argError=-1)}
    yield g, "Set", _action("Set", argIndex=0, argValue=1)

    g = "matchActions[] parameters"
    yield g, "rateLimit", _action("Post", rateLimit="1m")
    yield g, "rateLimitScope", _action("Post", rateLimit="1m", rateLimitScope="process")
    yield g, "argError (with Override)", _action("Override", argError=-1)
    yield g, "argError (with Sigkill)", _action("Sigkill", argError=-1)
    yield g, "argSig", _action("Signal", argSig=10)
    yield g, "argSock", _sock_action("UntrackSock", argSock=0)
    yield g, "kernelStackTrace", _action("Post", kernelStackTrace=True)
    yield g, "userStackTrace", _action("Post", userStackTrace=True)
    yield g, "imaHash", _action("Post", imaHash=True)


def _policy_text(spec: dict[str, Any]) -> str:
    doc = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "field"},
           "spec": spec}
    return yaml.safe_dump(doc, sort_keys=False)


_PREFIX = re.compile(r"^[^:]*:\d+: ")


def observe() -> list[dict[str, str]]:
    """Run every catalogue entry through `policy check`'s validation; one row each."""
    from sensorium.plugins import PluginRegistry
    from sensorium.policy_rules import validate_policies
    from sensorium.yamlsrc import SourceError

    reg = PluginRegistry().discover_quietly()
    rows = []
    seen: set[tuple[str, str]] = set()
    for group, field, spec in catalogue():
        assert (group, field) not in seen, f"catalogue: {group} {field} twice"
        seen.add((group, field))
        try:
            policies = validate_policies(_policy_text(spec), "field.yaml", reg, scoping_supported=True)
        except SourceError as exc:
            first = str(exc).splitlines()[0]
            rows.append({"group": group, "field": field, "status": "refused", "reason": _PREFIX.sub("", first)})
            continue
        warnings = [w for p in policies for w in p.warnings]
        if warnings:
            rows.append({"group": group, "field": field, "status": "ignored",
                         "reason": _PREFIX.sub("", warnings[0].splitlines()[0])})
        else:
            rows.append({"group": group, "field": field, "status": "supported", "reason": ""})
    return rows


def load_record() -> list[dict[str, str]]:
    return yaml.safe_load(RECORD.read_text())["fields"]


def write_record(rows: list[dict[str, str]]) -> None:
    head = ("# What `sensorium policy check` does with each field of Tetragon's TracingPolicy format.\n"
            "# Observed by scripts/policy_fields.py --record; tests/test_policy_fields.py fails on any change.\n")
    RECORD.write_text(head + yaml.safe_dump({"fields": rows}, sort_keys=False, width=200, allow_unicode=True))


def render(rows: list[dict[str, str]]) -> str:
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("supported", "ignored", "refused")}
    out = [
        "# Tetragon policy fields: what Sensorium does with each",
        "",
        "<!-- Generated by scripts/policy_fields.py from tests/data/tetragon-policy-fields.yaml; do not edit. -->",
        "",
        "Every field of Tetragon's TracingPolicy format (its sections, hook fields, argument types, selector",
        "filters, operators, actions and their parameters), each tried in a small policy through the same",
        "validation as `sensorium policy check`. **supported**: accepted and served as Tetragon serves it;",
        "**ignored**: accepted with a warning, because Tetragon accepts it and it has no effect there either;",
        "**refused**: the policy is refused, with the reason shown (first line of `policy check`'s error).",
        "Nothing is accepted and silently dropped. Whether a supported field *loads* on a given kernel depends on",
        "the hooks that kernel offers: [tetragon-compat.md](tetragon-compat.md) shows it per kernel for Tetragon's",
        "example policies, and [policies.md](policies.md) explains the semantics.",
        "",
        f"{len(rows)} fields: {counts['supported']} supported, {counts['ignored']} ignored with a warning, "
        f"{counts['refused']} refused.",
    ]
    group = None
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            out += ["", f"## `{group}`", "", "| field | status | reason |", "|---|---|---|"]
        reason = r["reason"].replace("|", "\\|")
        if len(reason) > 240:
            reason = reason[:237] + "..."
        out.append(f"| `{r['field']}` | {r['status']} | {reason} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="observe the outcomes and write the record and the doc")
    args = ap.parse_args()
    if args.record:
        write_record(observe())
    DOC.write_text(render(load_record()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Policy inputs: the valid bases (Tetragon's examples and our own) and their faults."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hostile import TETRAGON
from hostile.checks import check_policy
from hostile.inputs import Collector, dump_docs, pattern
from hostile.mutations import mutate_fields, yaml_attacks
from hostile.schema import Node, fmt, get, put, walk

# Bases for the sections and selectors Tetragon's examples do not cover.
EXTRA_POLICY_BASES = {
    "lsm-file-open": """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: lsm-file-open
spec:
  lsmhooks:
  - hook: file_open
    args:
    - index: 0
      type: file
    selectors:
    - matchArgs:
      - index: 0
        operator: Prefix
        values: [/etc/shadow]
      matchBinaries:
      - operator: NotIn
        values: [/usr/bin/passwd]
      matchActions:
      - action: Override
        argError: -1
""",
    "uprobe-readline": """\
apiVersion: sensorium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: uprobe-readline
spec:
  uprobes:
  - path: /bin/bash
    symbols: [readline]
    return: true
    args:
    - index: 0
      type: string
    returnArg:
      index: 0
      type: int
    selectors:
    - matchPIDs:
      - operator: NotIn
        isNamespacePID: false
        followForks: true
        values: [1, 2]
""",
    "tracepoint-openat": """\
apiVersion: sensorium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: tracepoint-openat
  labels: {team: sec}
spec:
  options:
  - name: policy-mode
    value: monitor
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
    raw: false
    message: openat of a secret
    tags: [files]
    args:
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values: [/etc/shadow]
      matchNamespaces:
      - namespace: Mnt
        operator: NotIn
        values: [host_ns]
      matchCapabilities:
      - type: Effective
        operator: In
        values: [CAP_SYS_ADMIN]
      matchActions:
      - action: Post
        rateLimit: 1m
        rateLimitScope: process
""",
    "kprobe-signal": """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: kprobe-signal
spec:
  kprobes:
  - call: sys_connect
    syscall: true
    args:
    - index: 0
      type: int
    - index: 1
      type: sockaddr
    selectors:
    - matchArgs:
      - index: 1
        operator: DPort
        values: ["22", "1000:2000"]
      matchActions:
      - action: Signal
        argSig: 10
""",
}

SOCKET_OPERATORS = {"SAddr", "NotSAddr", "DAddr", "NotDAddr", "SPort", "NotSPort", "DPort", "NotDPort", "Protocol",
                    "Family"}
CHOICE_FIELDS = {"operator", "action", "type", "namespace", "rateLimitScope", "returnArgAction"}


def policy_bases(reg: Any) -> dict[str, list[Any]]:
    """Valid policies (as data): Tetragon's examples `policy check` accepts, and the extra bases."""
    from sensorium.policy import POLICY_LIMITS
    from sensorium.yamlsrc import SourceError, load_documents

    out: dict[str, list[Any]] = {}
    texts = {str(p.relative_to(TETRAGON)): p.read_bytes() for p in sorted(TETRAGON.rglob("*.yaml"))}
    texts.update({k: v.encode() for k, v in EXTRA_POLICY_BASES.items()})
    for name, data in texts.items():
        try:
            check_policy(data, name, reg)
        except SourceError:
            if name in EXTRA_POLICY_BASES:
                raise
            continue
        out[name.removesuffix(".yaml")] = [d.data for d in load_documents(data, name, POLICY_LIMITS)]
    return out


def _section_model(key: str) -> Any:
    from sensorium.policy import SECTION_MODELS

    return SECTION_MODELS.get(key)


def policy_nodes(doc: dict[str, Any]) -> Iterator[Node | tuple[str, tuple, Any]]:
    from sensorium.policy import OptionSpec

    for key in ("apiVersion", "kind"):
        if key in doc:
            yield Node((key,), "str", None, key, True)
    if isinstance(doc.get("metadata"), dict) and "name" in doc["metadata"]:
        yield Node(("metadata", "name"), "str", None, "name", True)
    spec = doc.get("spec") or {}
    yield ("mapping", ("spec",), None)
    for key, items in spec.items():
        model = OptionSpec if key == "options" else _section_model(key)
        if model is None or not isinstance(items, list):
            continue
        yield Node(("spec", key), "list", None, key, False)
        for i, item in enumerate(items):
            yield from walk(item, model, ("spec", key, i))


BOUNDED_STRINGS = {"call": 128, "subsystem": 64, "event": 128, "path": 4095, "hook": 128, "label": 64,
                   "message": 256, "rateLimit": None}
NON_EMPTY = {"call", "subsystem", "event", "path", "hook"}


def mutate_policy(col: Collector, base: str, docs: list[Any]) -> None:
    doc = docs[0]
    nodes = list(policy_nodes(doc))
    sections = [k for k, v in (doc.get("spec") or {}).items() if _section_model(k) is not None and v]

    def emit(kind: str, what: str, new: dict[str, Any], expect: list[str], cap: int | None = None) -> None:
        if not col.full(kind, cap):  # writing YAML is most of the generator's time
            col.add(base, kind, what, dump_docs([new, *docs[1:]]), expect, cap=cap)

    mutate_fields(col, base, nodes, doc, emit, CHOICE_FIELDS | {"apiVersion", "kind"}, False, BOUNDED_STRINGS,
                  NON_EMPTY)

    # Document-level faults.
    new = copy.deepcopy(doc)
    new["spec"] = {k: v for k, v in new["spec"].items() if k not in sections}
    emit("no-hooks", "every hook section removed", new, ["no hooks"])
    new = copy.deepcopy(doc)
    new["spec"]["kprobez"] = []
    emit("unknown-section", "an unknown policy section", new, ["unknown policy section 'kprobez'"])
    for label, bad in (("upper-case", "Bad_Name"), ("too-long", "x" * 300), ("leading-dash", "-lead"),
                       ("dots-only", "..")):
        new = copy.deepcopy(doc)
        new["metadata"]["name"] = bad
        emit(f"bad-name {label}", f"metadata.name {bad[:20]!r} is not a DNS name", new,
             ["metadata.name", "is not a valid name"])
    col.add(base, "same-name-twice", "the same policy twice in one file", dump_docs([doc, doc]), ["appears twice"])
    new = copy.deepcopy(doc)
    new["kind"] = "TracingPolicy"
    new["metadata"]["namespace"] = "default"
    emit("cluster-policy-with-namespace", "a cluster-wide policy with a namespace", new, ["has no namespace"])
    new = copy.deepcopy(doc)
    new["kind"] = "TracingPolicyNamespaced"
    new["metadata"].pop("namespace", None)
    emit("namespaced-policy-without-namespace", "a namespaced policy without its namespace", new,
         ["needs metadata.namespace"])
    new = copy.deepcopy(doc)
    new["spec"]["options"] = [{"name": "policy-mode", "value": "sometimes"}]
    emit("option-value", "policy-mode 'sometimes'", new, ["policy-mode 'sometimes' is not one of"])
    new = copy.deepcopy(doc)
    new["spec"]["options"] = [{"name": "no-such-option", "value": "x"}]
    emit("option-name", "an unknown option", new, ["option 'no-such-option' is not supported"])
    new = copy.deepcopy(doc)
    new["spec"]["lists"] = [{"name": "l", "values": ["a"]}]
    emit("list-without-type", "a named list without its type", new, ["spec.lists[0].type", "list type None"])
    new = copy.deepcopy(doc)
    new["spec"]["hostSelector"] = {"matchLabels": {"a": "b"}}
    emit("host-selector-labels", "a hostSelector with labels", new, ["hostSelector must be {}"])

    for key in sections:
        first = doc["spec"][key][0]
        # Limits of the document model.
        new = copy.deepcopy(doc)
        new["spec"][key][0]["tags"] = [f"t{i}" for i in range(17)]
        emit(f"limit-tags {key}", "17 tags (limit 16)", new, ["the limit is 16"])
        new = copy.deepcopy(doc)
        new["spec"][key][0]["selectors"] = [{"matchActions": [{"action": "Post"}]} for _ in range(6)]
        emit(f"limit-selectors {key}", "6 selectors (limit 5)", new, ["6 selectors"])
        new = copy.deepcopy(doc)
        new["spec"][key][0]["args"] = [{"index": i, "type": "int"} for i in range(7)]
        emit(f"limit-args {key}", "7 arguments (limit 6)", new, ["7 args"])
        new = copy.deepcopy(doc)
        new["spec"][key] = [copy.deepcopy(first) for _ in range(257)]
        emit(f"limit-hooks {key}", "257 hooks (limit 256)", new, ["the limit is 256"], cap=1)
        new = copy.deepcopy(doc)
        new["spec"][key][0]["selectors"] = [{"matchActions": [{"action": "Post"}] * 5}]
        emit(f"limit-actions {key}", "5 actions in a selector (limit 4)", new, ["the limit is 4"])
        for si, sel in enumerate(first.get("selectors") or []):
            for mk in ("matchArgs", "matchBinaries", "matchNamespaces", "matchCapabilities", "matchPIDs"):
                for mi, m in enumerate(sel.get(mk) or []):
                    if not m.get("values"):
                        continue
                    vpath = ("spec", key, 0, "selectors", si, mk, mi, "values")
                    vpat = pattern(vpath)
                    new = copy.deepcopy(doc)
                    put(new, vpath, [f"/v{j}" for j in range(65)])
                    emit(f"limit-values {vpat}", f"65 values in {fmt(vpath)} (limit 64)", new, ["65 values"])
                    new = copy.deepcopy(doc)
                    put(new, vpath, [])
                    if m.get("operator") not in ("SPortPriv", "NotSPortPriv", "NotSportPriv", "DPortPriv",
                                                 "NotDPortPriv"):
                        emit(f"empty-values {vpat}", f"an empty {fmt(vpath)}", new, ["values must not be empty"])
                    if mk not in ("matchArgs", "matchBinaries"):
                        continue
                    new = copy.deepcopy(doc)
                    put(new, vpath, ["/" + "v" * 300])
                    emit(f"limit-value-length {vpat}", f"a 301-byte value in {fmt(vpath)} (limit 255)", new,
                         ["the limit is 255 bytes"])
                    if key == "lsmhooks" or m.get("operator") in SOCKET_OPERATORS:
                        continue  # lsm: its sensor's own rules; socket values: refused as addresses first
                    # The rules no kernel lifts (sensorium.policy_rules), on the shared hook engine's sections.
                    new = copy.deepcopy(doc)
                    put(new, vpath, [str(v) + "\0x" for v in get(doc, vpath)])
                    emit(f"rule-nul {vpat}", f"a NUL byte in a compared string ({fmt(vpath)})", new,
                         ["string values cannot contain NUL bytes"])
                    new = copy.deepcopy(doc)
                    put(new, vpath, [f"/v{j}" for j in range(9)])
                    emit(f"rule-kernel-values {vpat}", f"9 values in {fmt(vpath)} (the kernel's limit is 8)", new,
                         ["9 values: at most 8 per operator in the kernel"])
        if key == "lsmhooks":
            continue
        rules = [
            ("rule-post-nopost", "Post and NoPost in one selector",
             [{"matchActions": [{"action": "Post"}, {"action": "NoPost"}]}], "Post and NoPost together"),
            ("rule-follow-children", "followChildren on NotIn",
             [{"matchBinaries": [{"operator": "NotIn", "followChildren": True, "values": ["/bin/sh"]}]}],
             "followChildren applies to In/Prefix/Postfix"),
            ("rule-two-follow-children", "two followChildren entries in one selector",
             [{"matchBinaries": [{"operator": "In", "followChildren": True, "values": ["/bin/sh"]},
                                 {"operator": "Prefix", "followChildren": True, "values": ["/usr"]}]}],
             "one matchBinaries entry with followChildren per selector"),
            ("rule-two-signals", "Sigkill and Signal 10 in one selector",
             [{"matchActions": [{"action": "Sigkill"}, {"action": "Signal", "argSig": 10}]}],
             "Sigkill and Signal together"),
            ("rule-kernel-binaries", "5 matchBinaries entries (the kernel's limit is 4)",
             [{"matchBinaries": [{"operator": "In", "values": [f"/b{i}"]} for i in range(5)]}],
             "5 entries: at most 4 in the kernel"),
            ("rule-kernel-pids", "3 matchPIDs entries (the kernel's limit is 2)",
             [{"matchPIDs": [{"operator": "In", "values": [i + 1]} for i in range(3)]}],
             "3 entries: at most 2 in the kernel"),
            ("rule-kernel-capabilities", "3 matchCapabilities entries (the kernel's limit is 2)",
             [{"matchCapabilities": [{"operator": "In", "values": ["CAP_BPF"]} for _ in range(3)]}],
             "3 entries: at most 2 in the kernel"),
            ("rule-kernel-capability-changes", "3 matchCapabilityChanges entries (the kernel's limit is 2)",
             [{"matchCapabilityChanges": [{"operator": "In", "values": ["CAP_BPF"]} for _ in range(3)]}],
             "3 entries: at most 2 in the kernel"),
            ("rule-return-actions", "matchReturnActions (not served by the hook engine)",
             [{"matchReturnActions": [{"action": "Post"}]}], "matchReturnActions"),
        ]
        for kind, what, selectors, words in rules:
            new = copy.deepcopy(doc)
            new["spec"][key][0]["selectors"] = selectors
            emit(f"{kind} {key}", what, new, [words])
        new = copy.deepcopy(doc)
        new["spec"][key][0]["args"] = [{"index": 0, "type": "int"}]
        new["spec"][key][0]["selectors"] = [{"matchArgs": [{"index": 2, "operator": "Equal", "values": ["1"]}]}]
        emit(f"rule-undeclared-argument {key}", "a matchArgs index that names no declared argument", new,
             ["index 2 names no declared argument"])
        new = copy.deepcopy(doc)
        new["spec"][key][0]["args"] = [{"index": 0, "type": "char_buf", "sizeArgIndex": 3}]
        new["spec"][key][0]["selectors"] = []
        if key == "kprobes":  # the rule holds for syscalls (a kernel function's parameters are the BTF's)
            new["spec"][key][0].update(call="sys_write", syscall=True)
        if key not in ("tracepoints", "usdts"):  # a USDT argument is a register or memory word: no char_buf
            emit(f"rule-size-argument {key}", "sizeArgIndex names a parameter not declared", new,
                 ["sizeArgIndex 3 (parameter 2) must also be declared in args"])
        if key in ("kprobes", "uprobes"):
            new = copy.deepcopy(doc)
            new["spec"][key][0]["args"] = [{"index": 6, "type": "int"}]
            new["spec"][key][0]["selectors"] = []
            emit(f"rule-index-6 {key}", "parameter 6 (only 0..5 can be read)", new, ["index 6"])
        if key == "uprobes":
            for typ in ("fd", "file", "sockaddr"):
                new = copy.deepcopy(doc)
                new["spec"][key][0]["args"] = [{"index": 0, "type": typ}]
                new["spec"][key][0]["selectors"] = []
                emit(f"rule-uprobe-type {typ}", f"type {typ} on a uprobe", new, ["is not supported for uprobes"])
        if key == "kprobes":
            for typ in ("dentry", "file", "cred"):
                new = copy.deepcopy(doc)
                new["spec"][key][0].update(call="sys_openat", syscall=True, args=[{"index": 1, "type": typ}],
                                           selectors=[])
                new["spec"][key][0].pop("returnArg", None)
                new["spec"][key][0].pop("return", None)
                emit(f"rule-syscall-struct {typ}", f"type {typ} on a syscall parameter", new,
                     ["is a kernel structure; a syscall parameter is a user value"])
            new = copy.deepcopy(doc)
            new["spec"][key][0].update(call="sys_read", syscall=True, selectors=[],
                                       args=[{"index": 1, "type": "char_buf", "returnCopy": True}])
            new["spec"][key][0]["return"] = True
            new["spec"][key][0].pop("returnArg", None)
            emit("rule-syscall-return-copy", "returnCopy on a syscall", new,
                 ["returnCopy is not supported for syscall hooks"])
        if key == "kprobes":
            for label, call in (("shell", "sys_openat; rm -rf /"), ("subshell", "$(reboot)"), ("space", "foo bar"),
                                ("compat", "__ia32_sys_openat"), ("list", "list:syscalls"), ("slash", "../etc"),
                                ("newline", "sys_openat\nx")):
                new = copy.deepcopy(doc)
                new["spec"][key][0]["call"] = call
                emit(f"rule-call {label}", f"call {call!r} names no function", new,
                     ["names no list of spec.lists"] if label == "list" else ["refused kprobes[0]"])


def policy_corpus(reg: Any) -> Collector:
    col = Collector("policies")
    bases = policy_bases(reg)
    for base, docs in bases.items():
        mutate_policy(col, base, docs)
    for base in list(bases)[:4]:  # the YAML-level faults do not depend on the policy: a few bases do
        text = dump_docs(bases[base][:1])
        yaml_attacks(col, base, text, "policy", "policies")
    col.add("empty", "empty", "an empty file", b"", ["no policy document found"], line=False)
    col.add("empty", "empty comment", "only a comment", b"# nothing here\n", ["no policy document found"], line=False)
    col.add("empty", "empty separators", "only document separators", b"---\n---\n...\n",
            ["no policy document found"], line=False)
    many = dump_docs([{**bases["write"][0], "metadata": {"name": f"p{i}"}} for i in range(65)])
    col.add("write", "limit-documents", "65 documents (limit 64)", many, ["more than 64 YAML documents"])
    return col

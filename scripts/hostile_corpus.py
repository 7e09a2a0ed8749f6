#!/usr/bin/env python3
"""The hostile-input corpus: bad policies and bad agent configs kept under tests/data/hostile/.

Every input is bad by construction: a mutation of a valid policy (Tetragon's examples that Sensorium
accepts, and a few written here for the other sections) or of a valid agent config, or a YAML-level
attack (alias bomb, deep nesting, custom tags, bad bytes...). Each file starts with comment lines saying
what is wrong with it and which words its refusal must contain:

    # hostile input: <what is wrong>
    # expect: <words the error must contain>      (one line per expectation)
    # where: file                                 (the error need not name a line: the input has none)

tests/test_hostile_corpus.py reads every file through what `sensorium policy check` and `sensorium run
--config` run, and counts refusals, tracebacks, hangs and wrong accepts (docs/reliability.md).

    .venv/bin/python scripts/hostile_corpus.py           # rewrite the corpus
    .venv/bin/python scripts/hostile_corpus.py --check   # exit 1 if the stored corpus differs

Generating checks each input against the real parser and loader: an input it believes bad that is
accepted stops the generator (a wrong accept is a bug to fix, or a mutation to correct; never an input
to drop quietly).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Union

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "hostile"
TETRAGON = REPO / "tests" / "data" / "tetragon-policies"
PER_KIND = 2  # inputs of one kind of fault (from different base documents): variety, not repetition

# --------------------------------------------------------------------------------------------------
# What `sensorium policy check` and `sensorium run --config` run on an input (shared with the tests)
# --------------------------------------------------------------------------------------------------


def registry() -> Any:
    from sensorium.plugins import PluginRegistry

    logging.disable(logging.CRITICAL)
    try:
        return PluginRegistry().discover()
    finally:
        logging.disable(logging.NOTSET)


def check_policy(data: bytes, name: str, reg: Any) -> list[Any]:
    """`sensorium policy check`: the loader's byte checks, parsing, then the kernel-independent rules."""
    from sensorium.policy import POLICY_LIMITS
    from sensorium.policy_rules import validate_policies
    from sensorium.yamlsrc import decode

    return validate_policies(decode(data, name, POLICY_LIMITS), name, reg, scoping_supported=True)


def check_config(path: Path, reg: Any) -> Any:
    """What `sensorium run --config` validates before it starts anything: the config, then each exporter
    item and sensor section against its plugin's options model (unknown plugin names are the agent's)."""
    from sensorium.config import load_config, validate_exporter_options, validate_sensor_options

    cfg = load_config(path)
    for i, item in enumerate(cfg.exporters):
        spec = reg.exporters.get(item.type)
        if spec is not None and spec.options is not None:
            validate_exporter_options(item, i, spec.options, cfg.source)
    for name, section in cfg.sensors.items():
        spec = reg.sensors.get(name)
        if spec is not None:
            validate_sensor_options(name, dict(section), spec.options, cfg.source)
    return cfg


# --------------------------------------------------------------------------------------------------
# Schema walking: the type pydantic expects at each key of a document
# --------------------------------------------------------------------------------------------------


def _strip(ann: Any) -> Any:
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    return ann


def kind_of(ann: Any) -> str:
    """bool | int | float | str | list | map | model | any (unions of several kinds are "any")."""
    ann = _strip(ann)
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType):
        kinds = {kind_of(a) for a in typing.get_args(ann) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else "any"
    if origin is Literal:
        return "str" if all(isinstance(v, str) for v in typing.get_args(ann)) else "any"
    if ann is bool:
        return "bool"
    if ann is int:
        return "int"
    if ann is float:
        return "float"
    if ann is str or (isinstance(ann, type) and issubclass(ann, Path)):
        return "str"
    if origin in (list, tuple, set) or ann in (list, tuple, set):
        return "list"
    if origin is dict or ann is dict or typing.is_typeddict(ann):
        return "map"
    from pydantic import BaseModel

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "model"
    return "any"


def model_in(ann: Any) -> Any:
    from pydantic import BaseModel

    ann = _strip(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in typing.get_args(ann):
        m = model_in(a)
        if m is not None:
            return m
    return None


def item_type(ann: Any) -> Any:
    ann = _strip(ann)
    if typing.get_origin(ann) in (Union, types.UnionType):
        for a in typing.get_args(ann):
            if a is not type(None):
                return item_type(a)
    args = typing.get_args(ann)
    return args[0] if args else Any


def bounds(field: Any) -> tuple[Any, Any]:
    """(lowest allowed, highest allowed) from a field's ge/gt/le/lt metadata (None where unbounded)."""
    lo = hi = None
    for m in getattr(field, "metadata", []) or []:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo = m.gt + (1 if isinstance(m.gt, int) else 0.5)
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi = m.lt - 1
    return lo, hi


@dataclasses.dataclass
class Node:
    path: tuple            # where the value is in the document
    kind: str              # what the schema expects there
    field: Any             # pydantic FieldInfo (None for list items)
    name: str              # the key (or the list's key for an item)
    required: bool


def field_of(model: Any, key: str) -> Any:
    f = model.model_fields.get(key)
    if f is None:
        f = next((f for f in model.model_fields.values() if f.alias == key), None)
    return f


def walk(data: Any, model: Any, path: tuple = ()) -> Iterator[Node | tuple[str, tuple, Any]]:
    """Nodes under ``data`` validated by ``model``; also ("mapping", path, model) for every mapping a
    forbid-extra model validates (where an unknown key is refused)."""
    if not isinstance(data, dict):
        return
    if model.model_config.get("extra") == "forbid":
        yield ("mapping", path, model)
    for key, value in data.items():
        f = field_of(model, key)
        if f is None or f.exclude:
            continue
        ann = f.annotation
        k = kind_of(ann)
        yield Node(path + (key,), k, f, key, f.is_required())
        sub = model_in(ann)
        if k == "model" and sub is not None:
            yield from walk(value, sub, path + (key,))
        elif k == "list" and isinstance(value, list) and value:
            it = item_type(ann)
            ik = kind_of(it)
            sub = model_in(it)
            for i, v in enumerate(value):
                if ik == "model" and sub is not None:
                    yield from walk(v, sub, path + (key, i))
                elif i == 0 and ik in ("bool", "int", "float", "str", "list", "map"):
                    yield Node(path + (key, 0), ik, _item_field(it), key, False)


def _item_field(it: Any) -> Any:
    """A stand-in FieldInfo carrying a list item's constraints (``Annotated[int, Field(ge=0)]``)."""
    from pydantic.fields import FieldInfo

    meta: list[Any] = []
    while typing.get_origin(it) is typing.Annotated:
        args = typing.get_args(it)
        for a in args[1:]:
            meta.extend(getattr(a, "metadata", []) or [a])
        it = args[0]
    fi = FieldInfo(annotation=it)
    fi.metadata = meta
    return fi


def get(data: Any, path: tuple) -> Any:
    for p in path:
        data = data[p]
    return data


def put(data: Any, path: tuple, value: Any) -> None:
    get(data, path[:-1])[path[-1]] = value


def delete(data: Any, path: tuple) -> None:
    del get(data, path[:-1])[path[-1]]


def fmt(path: tuple) -> str:
    from sensorium.yamlsrc import format_path

    return format_path(path)


SWAPS: dict[str, list[tuple[Any, str]]] = {
    # kind -> (value of the wrong type, the words pydantic's strict check says)
    "bool": [("true", "must be a boolean"), (1, "must be a boolean")],
    "int": [("1", "must be an integer"), (True, "must be an integer"), (1.5, "must be an integer")],
    "float": [("1.5", "must be a number"), (True, "must be a number")],
    "str": [(["x"], "must be a string"), ({"k": "v"}, "must be a string")],
    "list": [("x", "list"), ({"k": "v"}, "list")],
    "model": [("x", ""), (["x"], "")],
    "map": [("x", ""), (["x"], "")],
}


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Input:
    name: str                 # file name (without directory)
    kind: str                 # the fault, independent of the base document ("type-bool spec.kprobes[].syscall")
    what: str                 # what is wrong with this input
    data: bytes               # the input itself
    expect: list[str]         # words its refusal must contain
    line: bool = True         # its refusal must name a line

    def file_bytes(self) -> bytes:
        head = f"# hostile input: {self.what}\n# kind: {self.kind}\n" + "".join(f"# expect: {e}\n" for e in self.expect)
        if not self.line:
            head += "# where: file\n"
        return head.encode() + self.data


def to_yaml(data: Any) -> str:
    """YAML text without anchors: a value repeated in a mutation is written out each time."""
    import yaml

    global _NoAliases
    if _NoAliases is None:
        class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
            def ignore_aliases(self, data: Any) -> bool:
                return True

        _NoAliases = _Dumper
    return yaml.dump(data, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=4096)


_NoAliases: Any = None


def dump_docs(docs: list[Any]) -> bytes:
    return "---\n".join(to_yaml(d) for d in docs).encode()


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")[:60]


def pattern(path: tuple) -> str:
    """A path with its list indexes dropped: the field, whichever item holds it."""
    out = ""
    for p in path:
        out += "[]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


class Collector:
    """Inputs by kind: at most `PER_KIND` inputs of one kind (from different bases), identical inputs once."""

    def __init__(self, directory: str, per_kind: int = PER_KIND) -> None:
        self.directory = directory
        self.cap = per_kind
        self.inputs: dict[str, Input] = {}
        self.seen: set[bytes] = set()
        self.per_kind: dict[str, int] = {}

    def full(self, kind: str, cap: int | None = None) -> bool:
        return self.per_kind.get(kind, 0) >= (self.cap if cap is None else cap)

    def add(self, base: str, kind: str, what: str, data: bytes, expect: list[str], line: bool = True,
            cap: int | None = None) -> None:
        if self.full(kind, cap):
            return
        digest = hashlib.sha256(data).digest()
        if digest in self.seen:
            return
        self.seen.add(digest)
        self.per_kind[kind] = self.per_kind.get(kind, 0) + 1
        name = f"{_slug(base)}--{_slug(kind)}--{hashlib.sha256(data).hexdigest()[:8]}.yaml"
        self.inputs[name] = Input(name, kind, what, data, [e for e in expect if e], line)


# ---- policies -------------------------------------------------------------------------------------

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


def allows_none(field: Any) -> bool:
    ann = field.annotation if field is not None else None
    return ann is None or type(None) in typing.get_args(_strip(ann)) or not field.is_required() and \
        field.default is None


def mutate_fields(col: Collector, base: str, nodes: list[Any], doc: Any, emit: Any, choices: set[str],
                  literal_is_choice: bool, bounded: dict[str, int | None], non_empty: set[str]) -> None:
    """The field-level faults of one document: unknown keys, wrong types, null, out of range, unknown
    choices, missing required keys, strings too long or empty."""
    for n in nodes:
        if isinstance(n, tuple):
            _, path, _model = n
            new = copy.deepcopy(doc)
            target = get(new, path)
            if isinstance(target, dict):
                target["bogusField"] = "x"
                emit(f"unknown-key {pattern(path) or '(top)'}", f"an unknown key under {fmt(path) or 'the top level'}",
                     new, [fmt(path + ("bogusField",)), "unknown"])
            continue
        path, pat = n.path, pattern(n.path)
        literal = n.field is not None and typing.get_origin(_strip(n.field.annotation)) is Literal
        if n.kind in SWAPS and n.name not in ("labels", "annotations", "fields"):
            for value, words in SWAPS[n.kind]:
                if literal or (n.kind == "str" and n.name in ("apiVersion", "kind") and len(path) == 1):
                    words = ""  # refused with the choice's own words
                new = copy.deepcopy(doc)
                put(new, path, value)
                emit(f"type-{n.kind}-given-{type(value).__name__} {pat}",
                     f"{fmt(path)} given {type(value).__name__} {value!r} where the schema wants a {n.kind}", new,
                     [fmt(path), words])
        if n.field is not None and n.kind in ("bool", "int", "float", "list", "model") and not allows_none(n.field):
            new = copy.deepcopy(doc)
            put(new, path, None)
            emit(f"null {pat}", f"{fmt(path)} given null", new, [fmt(path)])
        if n.kind in ("int", "float") and n.field is not None:
            lo, hi = bounds(n.field)
            for side, bad in (("below", None if lo is None else lo - 1), ("above", None if hi is None else hi + 1)):
                if bad is None:
                    continue
                new = copy.deepcopy(doc)
                put(new, path, bad)
                emit(f"range-{side} {pat}", f"{fmt(path)} = {bad}, outside {lo}..{hi}", new, [fmt(path)])
        if n.name in choices or (literal_is_choice and literal):
            new = copy.deepcopy(doc)
            put(new, path, "BogusChoice")
            emit(f"choice {pat}", f"{fmt(path)} names an unknown choice", new, [fmt(path)])
        if bounded.get(n.name) and n.kind == "str":
            limit = bounded[n.name]
            new = copy.deepcopy(doc)
            put(new, path, ("/" if n.name == "path" else "") + "a" * (limit + 1 - (n.name == "path")))
            emit(f"too-long {pat}", f"{fmt(path)} one byte over its limit of {limit}", new,
                 [fmt(path), f"the limit is {limit} bytes"])
        if n.name in non_empty and n.kind == "str":
            new = copy.deepcopy(doc)
            put(new, path, "")
            emit(f"empty {pat}", f"{fmt(path)} empty", new, [fmt(path)])
        if n.required or path in (("apiVersion",), ("kind",), ("metadata", "name")):
            if n.name == "type" and len(path) == 3:
                continue  # an exporter's type: naming the plugin is the agent's (unknown plugin names are not ours)
            new = copy.deepcopy(doc)
            delete(new, path)
            emit(f"missing {pat}", f"required {fmt(path)} left out", new, [])


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
            ("rule-ns-capability", "isNamespaceCapability in a kernel selector",
             [{"matchCapabilities": [{"operator": "In", "isNamespaceCapability": True, "values": ["CAP_SYS_ADMIN"]}]}],
             "is not supported in the kernel selectors"),
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
        if key != "tracepoints":
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


def yaml_attacks(col: Collector, base: str, text: bytes, what: str, limits_whats: str) -> None:  # noqa: C901
    """Faults of the YAML itself, on one valid text. ``what`` names the input ("policy", "config")."""
    lines = text.decode().splitlines(keepends=True)
    body = "".join(lines)
    first_key = next(ln for ln in lines if ln[:1].isalpha()).split(":")[0]
    attacks: list[tuple[str, str, bytes, list[str], bool]] = [
        ("tag", "a custom YAML tag", body.replace(f"{first_key}:", f"{first_key}: !foo", 1).encode()
         if f"{first_key}: " not in body else body.replace(f"{first_key}: ", f"{first_key}: !foo ", 1).encode(),
         ["YAML tag '!foo' is not allowed"], True),
        ("python-tag", "a python object tag", (body + "x: !!python/object/apply:os.system [id]\n").encode(),
         ["is not allowed: only plain values"], True),
        ("duplicate-key", "a key given twice", (body + lines[0]).encode(), ["duplicate key"], True),
        ("non-string-key", "a key YAML reads as a number", (body + "1: x\n").encode(),
         ["mapping keys must be strings"], True),
        ("bool-key", "a key YAML reads as a boolean", (body + "on: x\n").encode(), ["mapping keys must be strings"],
         True),
        ("merge-key", "a merge key", (body + "<<: {a: 1}\n").encode(), ["merge keys"], True),
        ("tab", "a tab in the indentation", (body + "extra:\n\tkey: 1\n").encode(), ["malformed YAML"], True),
        ("unclosed", "an unclosed flow list", (body + "extra: [1, 2\n").encode(), ["malformed YAML"], True),
        ("unterminated", "an unterminated quoted string", (body + 'extra: "abc\n').encode(), ["malformed YAML"],
         True),
        ("non-utf8", "a byte that is not UTF-8", body.encode().replace(b"\n", b" \xff\n", 1),
         [f"{what} is not UTF-8 text"], True),
        ("latin1", "Latin-1 text", (body + "# caf\xe9\n").encode("latin-1"), [f"{what} is not UTF-8 text"], True),
        ("nul-byte", "a NUL byte in the text", (body + "x: a\x00b\n").encode(), [f"{what} contains a NUL byte"],
         True),
        ("control-char", "a control character", (body + "x: a\x01b\n").encode(), ["malformed YAML"], True),
        ("deep-flow", "lists nested 5,000 deep", (body + "deep: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
         ["YAML nested deeper than"], True),
        ("deep-block", "mappings nested 100 deep",
         (body + "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v\n").encode(),
         ["YAML nested deeper than"], True),
        ("alias-bomb", "an alias bomb (a billion laughs)", (body + "lol: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"lol{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi"))).encode(),
         ["YAML anchors and aliases" if limits_whats == "policies" else "YAML aliases expand to more than"], True),
        ("recursive-alias", "an alias to itself", (body + "loop: &l [*l]\n").encode(),
         ["YAML anchors and aliases" if limits_whats == "policies" else "alias *l names no complete anchor"], True),
        ("nan", "a NaN", (body + "n: .nan\n").encode(), ["is not a finite number"], True),
        ("list-document", "a list instead of a mapping", b"- " + body.replace("\n", "\n  ").encode(),
         ["must be a mapping"], True),
        ("scalar-document", "a bare string", b"just a string\n", ["must be a mapping"], True),
    ]
    for op, desc, data, expect, line in attacks:
        col.add(base, f"yaml {op}", f"{desc} ({what})", data, expect, line)


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


# ---- configs ----------------------------------------------------------------------------------------

CONFIG_BASES = {
    "full": """\
node_name: node-1
log_level: info
plugins:
  allow: [exec, tracepoint, kprobe, lsm, network, stdout, file, kafka, syslog]
  deny: [uprobe]
sensors:
  exec: {enabled: true, max_args_bytes: 4096, ring_buffer_kb: 4096}
  tracepoint: {enabled: true, ring_buffer_kb: 4096, opened_file_paths: true}
  network: {enabled: false, tcp: true, udp: false, udp_dedup_seconds: 10.0, max_sockets: 65536}
  lsm: {enabled: false, force_fallbacks: false}
exporters:
- type: stdout
  format: compact
  timestamps: true
- type: file
  name: events
  path: /var/log/sensorium/events.json
  max_size_mb: 10.0
  max_backups: 5
  compress: true
  fsync: false
  queue_size: 65536
  batch_size: 1024
  flush_interval_ms: 200
  filters:
    allow:
    - event_set: [PROCESS_EXEC]
      binary_regex: ["^/usr/bin/"]
      pid: [1]
    deny:
    - namespace: [kube-system]
    rate_limit: {events: 1000, interval_s: 60.0}
- type: kafka
  brokers: [10.0.0.1:9092]
  topic: sensorium-events
  compression: zstd
  idempotence: true
  linger_ms: 20
  connect_timeout_s: 10.0
  tls: {ca_file: /etc/ca.pem, verify_hostname: true}
  sasl: {mechanism: SCRAM-SHA-512, username: agent, password_file: /etc/pw}
- type: syslog
  address: udp://127.0.0.1:514
  facility: local0
  max_message_bytes: 65000
  connect_timeout_s: 5.0
process_cache: {max_size: 65536, exited_grace_s: 10.0}
pipeline: {poll_interval_ms: 20, ring_buffer_kb: 4096}
api: {socket: /run/sensorium/api.sock, enabled: true}
metrics: {enabled: true, address: 127.0.0.1, port: 2112, bpf_stats: false}
policies: {directory: /etc/sensorium/policies}
network: false
kubernetes:
  enabled: false
  hold_s: 5.0
  hold_max_events: 10000
  deleted_pod_grace_s: 60.0
  watch_timeout_s: 300
  resolve_workloads: true
  policy_crds: true
""",
    "chart": """\
log_level: info
plugins:
  allow: [exec, tracepoint, kprobe, lsm, network, uprobe, stdout, file]
exporters:
- type: file
  path: /var/log/sensorium/events.log
  max_size_mb: 100
  max_backups: 3
  filters:
    fields:
    - fields: [process.binary, process.pid]
      action: include
      invert_event_set: false
    redact:
    - redact: ["--password[= ](\\\\S+)"]
api: {socket: /var/run/sensorium/api.sock}
kubernetes: {enabled: true}
metrics: {enabled: true, address: 0.0.0.0, port: 2112}
""",
}


def config_nodes(data: dict[str, Any], reg: Any) -> Iterator[Node | tuple[str, tuple, Any]]:
    from sensorium.config import AgentConfig, ExporterItem

    for n in walk({k: v for k, v in data.items() if k not in ("exporters", "sensors")}, AgentConfig):
        yield n
    yield ("mapping", (), AgentConfig)
    for i, item in enumerate(data.get("exporters") or []):
        spec = reg.exporters.get(item.get("type"))
        host = {k: v for k, v in item.items() if k in ExporterItem.model_fields and k != "type"}
        yield from walk(host, ExporterItem, ("exporters", i))
        if spec is not None and spec.options is not None:
            yield from walk({k: v for k, v in item.items() if k not in ExporterItem.model_fields}, spec.options,
                            ("exporters", i))
    for name, section in (data.get("sensors") or {}).items():
        if "enabled" in section:
            yield Node(("sensors", name, "enabled"), "bool", None, "enabled", False)
        spec = reg.sensors.get(name)
        if spec is not None and spec.options is not None:
            yield from walk({k: v for k, v in section.items() if k != "enabled"}, spec.options, ("sensors", name))


def mutate_config(col: Collector, base: str, data: dict[str, Any], reg: Any) -> None:
    def emit(kind: str, what: str, new: Any, expect: list[str], cap: int | None = None) -> None:
        if not col.full(kind, cap):
            col.add(base, kind, what, to_yaml(new).encode(), expect, cap=cap)

    mutate_fields(col, base, list(config_nodes(data, reg)), data, emit, set(), True, {}, set())
    # Static checks and values a user could mean another way.
    for label, sock, words in (("too-long", "/run/" + "s" * 100 + "/api.sock", "at most 107 bytes"),
                               ("directory", "/tmp", "is an existing directory")):
        new = copy.deepcopy(data)
        new.setdefault("api", {})["socket"] = sock
        emit(f"socket {label}", f"api.socket {sock[:30]!r}", new, ["api.socket", words])
    new = copy.deepcopy(data)
    new["node_name"] = "a\0b"
    emit("nul-in-string", "a NUL character in a string", new, ["strings cannot contain NUL characters"])
    new = copy.deepcopy(data)
    new["sensors"] = {"exec": {"enabled": "false"}}
    emit("enabled-string", "enabled: \"false\" (a string, which used to start the sensor)", new,
         ["sensors.exec.enabled", "must be a boolean"])
    for name in ("exec", "tracepoint", "network", "lsm", "kprobe", "uprobe"):
        new = copy.deepcopy(data)
        new["sensors"] = {name: {"enabled": True, "bogus_option": 1}}
        emit(f"sensor-option {name}", f"an option the {name} sensor does not have", new, [f"sensors.{name}.bogus_option"])
    for label, brokers in (("trailing-comma", "10.0.0.1:9092,"), ("no-port", "kafka-1"), ("port-range", "h:99999"),
                           ("empty", ""), ("list-item", ["10.0.0.1"])):
        new = copy.deepcopy(data)
        new["exporters"] = [{"type": "kafka", "brokers": brokers, "topic": "t"}]
        emit(f"kafka-brokers {label}", f"kafka brokers {brokers!r}", new, ["exporters[0].brokers"])
    for label, regex in (("unclosed-group", "(a"), ("bad-escape", "\\")):
        new = copy.deepcopy(data)
        new["exporters"] = [{"type": "stdout", "filters": {"allow": [{"binary_regex": [regex]}]}}]
        emit(f"filter-regex {label}", f"binary_regex {regex!r} does not compile", new, ["invalid regular expression"])
    new = copy.deepcopy(data)
    new["exporters"] = [{"type": "stdout", "filters": {"allow": [{"event_set": ["PROCESS_TELEPATHY"]}]}}]
    emit("filter-event-kind", "an unknown event type in a filter", new, ["unknown event type"])
    new = copy.deepcopy(data)
    new["exporters"] = [{"type": "stdout", "filters": {"redact": [{"redact": ["password"]}]}}]
    emit("filter-redact-group", "a redaction regex without a group", new, ["has no capture group"])
    new = copy.deepcopy(data)
    new["exporters"] = [{"type": "kafka", "brokers": ["h:1"], "topic": "t",
                         "sasl": {"username": "u", "password": "p", "password_file": "/p"}}]
    emit("kafka-two-passwords", "both password and password_file", new, ["set exactly one of password"])
    col.add(base, "two-documents", "two YAML documents", (to_yaml(data) + "---\n" + to_yaml(data)).encode(),
            ["expected one YAML document"], line=False)


def config_corpus(reg: Any) -> Collector:
    from sensorium.config import CONFIG_LIMITS
    from sensorium.yamlsrc import load_one

    col = Collector("configs", per_kind=1)  # two bases share their kinds: one input of each is enough
    for base, text in CONFIG_BASES.items():
        data = load_one(text, base, CONFIG_LIMITS).data
        mutate_config(col, base, data, reg)
        yaml_attacks(col, base, text.encode(), "config", "configs")
    return col


# --------------------------------------------------------------------------------------------------
# Writing and checking
# --------------------------------------------------------------------------------------------------


def header(data: bytes) -> dict[str, Any]:
    """An input's comment lines: its kind, the words its refusal must contain, whether it must name a line."""
    out: dict[str, Any] = {"expect": [], "line": True, "kind": None}
    for raw in data.split(b"\n"):
        if not raw.startswith(b"# "):
            break
        key, _, value = raw[2:].decode("utf-8", "replace").partition(": ")
        if key == "expect":
            out["expect"].append(value)
        elif key == "kind":
            out["kind"] = value
        elif key == "where" and value == "file":
            out["line"] = False
    return out


def verify(col: Collector, reg: Any, tmp: Path) -> list[str]:
    """Each input through the real checks: refused with a SourceError containing its words, else a
    problem to fix (returned)."""
    from sensorium.yamlsrc import SourceError

    problems = []
    for name, inp in sorted(col.inputs.items()):
        data = inp.file_bytes()
        try:
            if col.directory == "policies":
                check_policy(data, name, reg)
            else:
                f = tmp / name
                f.write_bytes(data)
                check_config(f, reg)
        except SourceError as exc:
            missing = [w for w in inp.expect if w not in str(exc)]
            if missing:
                problems.append(f"{col.directory}/{name}: refused without {missing}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - the point: report it, it is a bug
            problems.append(f"{col.directory}/{name}: {type(exc).__name__}: {exc}")
            continue
        problems.append(f"{col.directory}/{name}: ACCEPTED ({inp.what})")
    return problems


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the stored corpus instead of writing it")
    args = ap.parse_args(argv)
    reg = registry()
    cols = [policy_corpus(reg), config_corpus(reg)]
    if not args.check:  # checking what is stored is tests/test_hostile_corpus.py's job; writing is ours
        with tempfile.TemporaryDirectory() as tmp:
            problems = [p for col in cols for p in verify(col, reg, Path(tmp))]
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print(f"{len(problems)} inputs are not refused as expected: fix the code or the mutation", file=sys.stderr)
            return 1
    differ = 0
    for col in cols:
        d = CORPUS / col.directory
        want = {name: inp.file_bytes() for name, inp in col.inputs.items()}
        have = {p.name: p.read_bytes() for p in d.glob("*.yaml")} if d.is_dir() else {}
        if args.check:
            differ += sum(1 for n in set(want) | set(have) if want.get(n) != have.get(n))
            continue
        d.mkdir(parents=True, exist_ok=True)
        for n in set(have) - set(want):
            (d / n).unlink()
        for n, data in want.items():
            if have.get(n) != data:
                (d / n).write_bytes(data)
        print(f"{col.directory}: {len(want)} inputs in {d.relative_to(REPO)}")
    if args.check and differ:
        print(f"{differ} files differ from what the generator writes: run scripts/hostile_corpus.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

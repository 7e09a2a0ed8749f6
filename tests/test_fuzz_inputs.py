"""Property-based fuzzing (hypothesis) of the YAML loader, the agent config loader and the policy parser.

Properties, for any input: only the project's error type (SourceError) escapes, each input is answered
within `reliability.HANG_S`, and an input made bad on purpose (a valid config or policy with one field
given the wrong type, an unknown key, a value out of range) is refused, naming the field.

The normal suite runs a bounded, reproducible number of examples (derandomized). The long run:

    SENSORIUM_FUZZ=long .venv/bin/python -m pytest -p no:cacheprovider tests/test_fuzz_inputs.py

(20,000 examples per property, random seeds; ``SENSORIUM_FUZZ_EXAMPLES=N`` sets the number either way).
Figures go to build/reliability/fuzz-*.json (docs/reliability.md).
"""

from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import Tally

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import hostile_corpus as H  # noqa: E402

LONG = os.environ.get("SENSORIUM_FUZZ") == "long"
EXAMPLES = int(os.environ.get("SENSORIUM_FUZZ_EXAMPLES") or (20_000 if LONG else 500))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

pytestmark = pytest.mark.fuzz

# Pieces YAML is made of, hostile ones included: random text built from them reaches the parser's
# corners far more often than random bytes (which mostly stop at the UTF-8 check).
YAML_PIECES = ["a", "b:", "key: ", "- ", "\n", "  ", "\t", "[", "]", "{", "}", ", ", "&x ", "*x", "&y ", "*y",
               "!foo ", "!!str ", "!!int ", "!!binary ", "!!python/object:os.system ", "! ", "'", '"', "#", "? ",
               ": ", "|\n", ">-\n", "---\n", "...\n", "<<: ", "1:20", ".nan", ".inf", "~", "yes", "on", "0x1F",
               "0o17", "1e400", "12345678901234567890123", "\\0", '"\\0"', '"\\x01"', "%YAML 1.1\n",
               "%TAG ! tag:x,2000:\n", "\u2028", "\ufeff", "\x85", "@", "`", "é", "\U0001f600", "2024-01-01", "null",
               "-1", "[[[[", "]]]]", "{a: {b: {c: ", "}}}"]


def _yaml_text() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(YAML_PIECES), max_size=80).map("".join)


def _plain(value: Any, depth: int = 0) -> bool:
    """What a document the loader accepted may hold: JSON-shaped data, string keys, finite numbers."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


@pytest.fixture(scope="module")
def reg() -> Any:
    return H.registry()


# ---- the YAML loader ------------------------------------------------------------------------------


def test_the_yaml_loader_answers_any_input_with_plain_data_or_a_source_error() -> None:
    from sensorium.yamlsrc import DEFAULT_LIMITS, dump, load_documents

    t = Tally("fuzz-yaml-loader",
              "tests/test_fuzz_inputs.py::test_the_yaml_loader_answers_any_input_with_plain_data_or_a_source_error",
              "random bytes and random YAML-ish text through sensorium.yamlsrc.load_documents")

    @FUZZ
    @given(st.one_of(st.binary(max_size=2048), _yaml_text().map(lambda s: s.encode("utf-8", "surrogatepass"))))
    def prop(data: bytes) -> None:
        outcome, docs = t.run(repr(data[:80]), lambda: load_documents(data, "fuzz.yaml", DEFAULT_LIMITS))
        assert outcome in ("ok", "error"), (outcome, data)
        if outcome == "error":
            assert str(docs).startswith("fuzz.yaml") and "\n" not in str(docs), str(docs)
            t.refused("", True, "")
            return
        t.accepted += 1
        for d in docs:
            assert _plain(d.data), d.data
            # What was read can be written and read back the same (the CRD path does exactly this).
            assert [x.data for x in load_documents(dump(d.data), "again.yaml", DEFAULT_LIMITS)] == [d.data]

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


# ---- the agent config -----------------------------------------------------------------------------

CONFIG = H.CONFIG_BASES["full"]


def _wrong_value(kind: str) -> st.SearchStrategy[Any]:
    """Values of a type the field does not take (strict: a string is never a number or a boolean)."""
    text = st.text(max_size=20)
    ints = st.integers(min_value=-(10**20), max_value=10**20)
    floats = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    scalars = st.lists(st.integers(), max_size=2)
    return {
        "bool": st.one_of(text, ints, floats, scalars),
        "int": st.one_of(text, st.booleans(), floats, scalars),
        "float": st.one_of(text, st.booleans(), scalars),
        "str": st.one_of(ints, st.booleans(), floats, scalars),
        "list": st.one_of(ints, st.booleans(), st.dictionaries(st.text(max_size=5), ints, max_size=2)),
        "model": st.one_of(text, ints, st.booleans(), scalars),
        "map": st.one_of(text, ints, st.booleans(), scalars),
    }[kind]


def _mutations(nodes: list[Any]) -> st.SearchStrategy[tuple[str, tuple, Any]]:
    """(what, path, value): a field given a wrong type, or a value outside its range, or an unknown key."""
    typed = [n for n in nodes if not isinstance(n, tuple) and n.kind in ("bool", "int", "float", "str", "list",
                                                                         "model", "map")
             and n.name not in ("labels", "annotations", "brokers", "fields", "values")]
    ranged = [(n, H.bounds(n.field)) for n in nodes if not isinstance(n, tuple) and n.kind == "int" and n.field]
    ranged = [(n, b) for n, b in ranged if b != (None, None)]
    mappings = [n for n in nodes if isinstance(n, tuple)]
    out = [st.sampled_from(typed).flatmap(lambda n: _wrong_value(n.kind).map(lambda v, n=n: ("type", n.path, v)))]
    if ranged:
        out.append(st.sampled_from(ranged).flatmap(lambda nb: st.one_of(
            *([st.integers(max_value=nb[1][0] - 1, min_value=nb[1][0] - 10**6)] if nb[1][0] is not None else []),
            *([st.integers(min_value=nb[1][1] + 1, max_value=nb[1][1] + 10**6)] if nb[1][1] is not None else []),
        ).map(lambda v, n=nb[0]: ("range", n.path, v))))
    if mappings:
        key = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
        out.append(st.tuples(st.sampled_from(mappings), key)
                   .filter(lambda mk: mk[1] not in _known_keys(mk[0]))
                   .map(lambda mk: ("unknown", mk[0][1] + (mk[1],), 1)))
    return st.one_of(*out)


SPEC_KEYS = {"kprobes", "tracepoints", "uprobes", "lsmhooks", "usdts", "fentries", "options", "podSelector",
             "containerSelector", "hostSelector", "lists", "enforcers", "loader", "selectorsMacros"}


def _known_keys(mapping: tuple[str, tuple, Any]) -> set[str]:
    """Keys a mapping may hold (so a generated "unknown" key is really unknown)."""
    from sensorium.config import ExporterItem

    _, path, model = mapping
    if model is None:
        return SPEC_KEYS
    names = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    if path[:1] == ("exporters",):
        names |= set(ExporterItem.model_fields)
    return names


def test_a_config_with_one_field_made_wrong_is_refused_naming_it(reg: Any, tmp_path: Path) -> None:
    from sensorium.config import CONFIG_LIMITS
    from sensorium.yamlsrc import load_one

    t = Tally("fuzz-config-mutations",
              "tests/test_fuzz_inputs.py::test_a_config_with_one_field_made_wrong_is_refused_naming_it",
              "valid agent configs with one field given a wrong type, an out-of-range value or an unknown key")
    base = load_one(CONFIG, "base", CONFIG_LIMITS).data
    nodes = list(H.config_nodes(base, reg))
    f = tmp_path / "agent.yaml"

    @FUZZ
    @given(_mutations(nodes))
    def prop(mutation: tuple[str, tuple, Any]) -> None:
        what, path, value = mutation
        new = copy.deepcopy(base)
        parent = H.get(new, path[:-1])
        if what == "unknown" and path[-1] in parent:
            return  # the "unknown" key exists after all
        parent[path[-1]] = value
        f.write_text(H.to_yaml(new))
        label = f"{what} {H.fmt(path)} = {value!r}"
        t.kinds.add(f"{what} {H.pattern(path[:-1] if what == 'unknown' else path)}")
        outcome, exc = t.run(label, lambda: H.check_config(f, reg))
        assert outcome != "traceback" and outcome != "hang", label
        if outcome == "ok":
            t.accepted_bad(label)
            raise AssertionError(f"accepted: {label}")
        where = H.fmt(path[:-1]) if what == "unknown" else H.fmt(path)
        clear = str(exc).startswith(str(f)) and (where in str(exc) or not where) and "\n" not in str(exc)
        t.refused(label, clear, str(exc))
        assert clear, (label, str(exc))

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


def _text_edits(text: str) -> st.SearchStrategy[bytes]:
    """A valid text with a few random edits: bytes inserted, replaced or cut anywhere."""
    data = text.encode()

    def edit(d: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
        for kind, at, piece in ops:
            pos = at % (len(d) + 1)
            if kind == 0:
                d = d[:pos] + piece + d[pos:]
            elif kind == 1:
                d = d[:pos] + piece + d[pos + len(piece):]
            else:
                d = d[:pos] + d[pos + len(piece) + 1:]
        return d

    op = st.tuples(st.integers(0, 2), st.integers(0, len(data)),
                   st.one_of(st.binary(min_size=1, max_size=4), st.sampled_from(YAML_PIECES).map(str.encode)))
    return st.lists(op, min_size=1, max_size=4).map(lambda ops: edit(data, ops))


def test_a_config_with_random_edits_is_answered_without_a_traceback(reg: Any, tmp_path: Path) -> None:
    t = Tally("fuzz-config-text",
              "tests/test_fuzz_inputs.py::test_a_config_with_random_edits_is_answered_without_a_traceback",
              "valid agent configs with random bytes inserted, replaced or cut (good or bad: never a traceback)")
    f = tmp_path / "agent.yaml"

    @FUZZ
    @given(_text_edits(CONFIG))
    def prop(data: bytes) -> None:
        f.write_bytes(data)
        outcome, exc = t.run(repr(data[:60]), lambda: H.check_config(f, reg))
        assert outcome in ("ok", "error"), (outcome, data)
        if outcome == "ok":
            t.accepted += 1
        else:
            clear = str(exc).startswith(str(f)) and "\n" not in str(exc)
            t.refused(repr(data[:60]), clear, str(exc))
            assert clear, str(exc)

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


# ---- policies -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_bases(reg: Any) -> dict[str, list[Any]]:
    return H.policy_bases(reg)


def test_a_policy_with_one_field_made_wrong_is_refused_naming_it(reg: Any, policy_bases: dict[str, list[Any]]) -> None:
    t = Tally("fuzz-policy-mutations",
              "tests/test_fuzz_inputs.py::test_a_policy_with_one_field_made_wrong_is_refused_naming_it",
              "valid policies (Tetragon's examples and others) with one field given a wrong type, an "
              "out-of-range value or an unknown key, through `sensorium policy check`")
    names = sorted(policy_bases)
    per_base = {n: list(H.policy_nodes(policy_bases[n][0])) for n in names}

    @FUZZ
    @given(st.sampled_from(names).flatmap(lambda n: _mutations(per_base[n]).map(lambda m, n=n: (n, m))))
    def prop(choice: tuple[str, tuple[str, tuple, Any]]) -> None:
        name, (what, path, value) = choice
        docs = copy.deepcopy(policy_bases[name])
        parent = H.get(docs[0], path[:-1])
        if what == "unknown" and path[-1] in parent:
            return
        parent[path[-1]] = value
        data = H.dump_docs(docs)
        label = f"{name}: {what} {H.fmt(path)} = {value!r}"
        t.kinds.add(f"{what} {H.pattern(path[:-1] if what == 'unknown' else path)}")
        outcome, exc = t.run(label, lambda: H.check_policy(data, "p.yaml", reg))
        assert outcome != "traceback" and outcome != "hang", label
        if outcome == "ok":
            t.accepted_bad(label)
            raise AssertionError(f"accepted: {label}")
        where = H.fmt(path[:-1]) if what == "unknown" else H.fmt(path)
        clear = str(exc).startswith("p.yaml:") and where in str(exc) and "\n" not in str(exc)
        t.refused(label, clear, str(exc))
        assert clear, (label, str(exc))

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()


def test_a_policy_with_random_edits_is_answered_without_a_traceback(reg: Any,
                                                                    policy_bases: dict[str, list[Any]]) -> None:
    t = Tally("fuzz-policy-text",
              "tests/test_fuzz_inputs.py::test_a_policy_with_random_edits_is_answered_without_a_traceback",
              "valid policy texts with random bytes inserted, replaced or cut, through `sensorium policy check` "
              "(good or bad: never a traceback)")
    texts = {n: H.dump_docs(d).decode() for n, d in sorted(policy_bases.items())}

    @FUZZ
    @given(st.sampled_from(sorted(texts)).flatmap(lambda n: _text_edits(texts[n])))
    def prop(data: bytes) -> None:
        outcome, exc = t.run(repr(data[:60]), lambda: H.check_policy(data, "p.yaml", reg))
        assert outcome in ("ok", "error"), (outcome, data)
        if outcome == "ok":
            t.accepted += 1
        else:
            clear = str(exc).startswith("p.yaml") and "\n" not in str(exc)
            t.refused(repr(data[:60]), clear, str(exc))
            assert clear, str(exc)

    try:
        prop()
    finally:
        t.write()
    t.assert_clean()

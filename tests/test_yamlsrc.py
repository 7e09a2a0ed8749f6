"""The one YAML loader (sensorium.yamlsrc): hostile input is refused quickly, in one line naming file, line
and field, and nothing but SourceError comes out of it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sensorium.yamlsrc import DEFAULT_LIMITS, SourceError, YamlLimits, dump, load_documents, load_one, read_file

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True))


def refused(text: str | bytes, limits: YamlLimits = DEFAULT_LIMITS) -> SourceError:
    with pytest.raises(SourceError) as err:
        load_documents(text, "in.yaml", limits)
    return err.value


def test_an_alias_bomb_is_refused_before_it_is_expanded() -> None:
    t0 = time.monotonic()
    e = refused(BOMB, YamlLimits(max_aliases=1000))
    assert time.monotonic() - t0 < 1.0
    assert str(e) == "in.yaml:6: f[2]: YAML aliases expand to more than 250000 values (an alias bomb?)"


def test_aliases_beyond_the_count_limit_are_refused() -> None:
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 65) + "]\n"
    assert str(refused(text)) == "in.yaml:2: b[64]: more than 64 YAML aliases; the limit is 64"


def test_anchors_are_refused_where_the_limits_allow_none() -> None:
    e = refused("a: &x [1]\nb: *x\n", YamlLimits(max_aliases=0, whats="policies"))
    assert str(e) == "in.yaml:1: a: YAML anchors and aliases (&x / *x) are not allowed in policies"


def test_a_few_aliases_are_read_as_shared_values() -> None:
    [doc] = load_documents("base: &b {level: info}\ncopy: *b\n")
    assert doc.data == {"base": {"level": "info"}, "copy": {"level": "info"}}


def test_a_recursive_alias_is_refused() -> None:
    e = refused("a: &a [1, *a]\n")
    assert str(e) == "in.yaml:1: a[1]: alias *a names no complete anchor before it (an undefined or recursive alias)"


@pytest.mark.parametrize("text", ["a: " + "[" * 2000 + "]" * 2000 + "\n",
                                  "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n",
                                  "- " * 2000 + "x\n"], ids=["flow", "block-mappings", "block-lists"])
def test_nesting_deeper_than_the_limit_is_refused(text: str) -> None:
    e = refused(text)
    assert e.reason == "YAML nested deeper than 64 levels" and e.line is not None


def test_non_utf8_bytes_are_refused_with_the_byte_and_line() -> None:
    assert str(refused(b"a: 1\nb: \xff\n")) == "in.yaml:2: document is not UTF-8 text (byte 8)"


def test_a_nul_byte_in_the_text_is_refused_with_its_line() -> None:
    assert str(refused("a: 1\nb: 2\x00\n")) == "in.yaml:2: document contains a NUL byte"


def test_a_nul_escape_in_a_string_is_refused_unless_the_input_allows_it() -> None:
    assert str(refused('a: "x\\0y"\n')) == "in.yaml:1: a: strings cannot contain NUL characters"
    [doc] = load_documents('a: "x\\0y"\n', limits=YamlLimits(nul_in_strings=True))
    assert doc.data == {"a": "x\x00y"}


def test_a_custom_tag_is_refused_by_name() -> None:
    e = refused("apiVersion: v1\nkind: !foo TracingPolicy\n")
    assert str(e) == ("in.yaml:2: kind: YAML tag '!foo' is not allowed: only plain values (strings, numbers, "
                      "booleans, null, lists and mappings)")


@pytest.mark.parametrize("text", ["a: !!binary aGk=\n", "a: !!python/object:os.system x\n", "a: !!set {x}\n",
                                  "a: !local [1]\n"])
def test_tags_that_make_other_than_plain_values_are_refused(text: str) -> None:
    assert "is not allowed: only plain values" in refused(text).reason


def test_standard_tags_give_plain_values() -> None:
    [doc] = load_documents("a: !!str 5\nb: !!int '7'\nc: ! 8\n")
    assert doc.data == {"a": "5", "b": 7, "c": "8"}


def test_merge_keys_are_refused() -> None:
    assert refused("base: {a: 1}\nother:\n  <<: {b: 2}\n").reason == \
        "YAML merge keys (<<) are not supported: write the keys out"


def test_a_duplicate_key_is_refused_at_its_second_line() -> None:
    assert str(refused("a:\n  b: 1\n  b: 2\n")) == "in.yaml:3: a.b: duplicate key 'b'"


@pytest.mark.parametrize("key,kind", [("1", "int"), ("on", "bool"), ("~", "null"), ("1.5", "float")])
def test_a_key_yaml_reads_as_other_than_a_string_is_refused(key: str, kind: str) -> None:
    assert refused(f"{key}: x\n").reason == \
        f"key {key!r} is read as {kind} by YAML; mapping keys must be strings (quote it)"


def test_a_list_as_a_key_is_refused() -> None:
    assert refused("? [a]\n: 1\n").reason == "mapping keys must be plain strings, not lists or mappings"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.Inf"])
def test_nan_and_infinity_are_refused(value: str) -> None:
    assert str(refused(f"x: {value}\n")) == f"in.yaml:1: x: {value!r} is not a finite number"


def test_base_60_numbers_and_dates_stay_as_written() -> None:
    [doc] = load_documents("ports: [20:21, 1000:2000]\nday: 2024-01-01\nmode: 0700\n")
    assert doc.data == {"ports": ["20:21", "1000:2000"], "day": "2024-01-01", "mode": 448}


def test_the_size_cap_is_checked_before_parsing() -> None:
    assert str(refused("#" * 101, YamlLimits(max_bytes=100))) == "in.yaml: document is 101 bytes; the limit is 100"


def test_reading_a_file_stops_at_the_cap() -> None:
    with pytest.raises(SourceError) as err:
        read_file("/dev/zero", YamlLimits(what="config", max_bytes=1000))
    assert str(err.value) == "/dev/zero: config is larger than 1000 bytes"


def test_a_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as err:
        read_file(tmp_path / "none.yaml", YamlLimits(what="config"))
    assert str(err.value) == f"{tmp_path / 'none.yaml'}: cannot read config: No such file or directory"


def test_malformed_yaml_names_the_line() -> None:
    e = refused("a: 1\nb: [unclosed\n")
    assert e.line == 3 and e.reason.startswith("malformed YAML: ")


def test_empty_documents_are_skipped() -> None:
    docs = load_documents("a: 1\n---\n# nothing\n---\nb: 2\n---\n")
    assert [d.data for d in docs] == [{"a": 1}, {"b": 2}]
    assert load_one("# only a comment\n").data == {}


def test_documents_beyond_the_limit_are_refused() -> None:
    e = refused("---\na: 1\n" * 5, YamlLimits(max_documents=4))
    assert e.reason == "more than 4 YAML documents; the limit is 4" and e.line == 9


def test_every_value_has_its_line() -> None:
    [doc] = load_documents("a:\n  b:\n  - x\n  - y: 1\n")
    assert [doc.line_of(loc) for loc in [("a",), ("a", "b"), ("a", "b", 0), ("a", "b", 1, "y")]] == [1, 2, 3, 4]


def test_an_error_message_stays_one_line() -> None:
    e = refused('"a\\nb": 1\n"a\\nb": 2\n')
    assert "\n" not in str(e) and str(e) == "in.yaml:2: a\\nb: duplicate key 'a\\nb'"


def test_dump_writes_what_the_loader_reads_back_without_anchors() -> None:
    shared = {"x": [1, 2]}
    text = dump({"a": shared, "b": shared, "c": None})
    assert "&" not in text and load_one(text).data == {"a": {"x": [1, 2]}, "b": {"x": [1, 2]}, "c": None}


def test_dump_refuses_an_object_nested_past_the_limit() -> None:
    deep: dict = {}
    cur = deep
    for _ in range(5000):  # deeper than PyYAML's recursive writer survives
        cur["k"] = {}
        cur = cur["k"]
    with pytest.raises(SourceError) as err:
        dump(deep, "TracingPolicy/x")
    assert err.value.reason == "nested deeper than 64 levels" and err.value.file == "TracingPolicy/x"


@pytest.mark.parametrize("text", ["!!int", "a: !!int\n", "a: !!float ''\n", "a: !!bool maybe\n"])
def test_a_standard_tag_on_text_it_cannot_read_is_refused(text: str) -> None:
    assert "is not a valid" in refused(text).reason

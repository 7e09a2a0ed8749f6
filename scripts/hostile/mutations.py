"""The faults of any document: field-level (unknown keys, wrong types, ranges...) and YAML-level."""

from __future__ import annotations

import copy
import typing
from typing import Any, Literal

from hostile.inputs import Collector, pattern
from hostile.schema import bounds, delete, fmt, get, put, strip_annotated

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


def allows_none(field: Any) -> bool:
    ann = field.annotation if field is not None else None
    return ann is None or type(None) in typing.get_args(strip_annotated(ann)) or (not field.is_required() and \
        field.default is None)


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
        literal = n.field is not None and typing.get_origin(strip_annotated(n.field.annotation)) is Literal
        if n.kind in SWAPS and n.name not in ("labels", "annotations", "fields"):
            for value, type_words in SWAPS[n.kind]:
                # a choice (a Literal, apiVersion, kind) is refused with the choice's own words
                choice = literal or (n.kind == "str" and n.name in ("apiVersion", "kind") and len(path) == 1)
                words = "" if choice else type_words
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
        limit = bounded.get(n.name)
        if limit and n.kind == "str":
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


def yaml_attacks(col: Collector, base: str, text: bytes, what: str, limits_whats: str) -> None:
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
            for p, c in zip("abcdefgh", "bcdefghi", strict=True))).encode(),
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

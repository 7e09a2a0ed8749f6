"""The one YAML loader of Sensorium: every input (agent config, policy files, API and CRD policies, the Helm
chart's rendered config) is read here, and every error names file, line and field.

Hostile input is bounded before it costs anything: a size cap, strict UTF-8, a nesting limit, an alias
limit counted on the *expanded* document (an alias bomb is refused after reading it, never expanded),
plain values only (custom tags such as ``!foo`` and merge keys are refused), string keys only, no
duplicate keys, no NaN or infinity. The document is built from the parser's events without recursion,
so no input can raise RecursionError. `SourceError` is the only exception that leaves this module for
bad input.

Two YAML 1.1 readings that surprise users are taken as written instead: ``1:20`` (a port range) and
``2024-01-01`` stay strings, as in Kubernetes, instead of becoming 80 and a date.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

# libyaml's parser when PyYAML was built with it (10-50x faster on large input); the pure-Python one else.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SourceError(ValueError):
    """Bad input, with where it is: ``file:line: field.path: reason``, always one line (names taken from the
    input cannot break it)."""

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None, path: str | None = None):
        self.reason, self.file, self.line, self.path = reason, file, line, path
        where = ":".join(str(x) for x in (file, line) if x is not None)
        parts = [p for p in (where, path) if p]
        super().__init__(": ".join(parts + [reason]).replace("\r", "\\r").replace("\n", "\\n"))


@dataclasses.dataclass(frozen=True)
class YamlLimits:
    """What one input may cost. ``what``/``whats`` name the input in messages ("policy", "policies")."""

    what: str = "document"
    whats: str = "documents"
    max_bytes: int = 4 << 20
    max_depth: int = 64
    max_aliases: int = 64        # 0: anchors and aliases are refused outright
    max_nodes: int = 250_000     # values in the document once aliases are expanded
    max_documents: int = 64
    nul_in_strings: bool = False  # "\0" escapes in strings (Tetragon policies use them in values)


DEFAULT_LIMITS = YamlLimits()

_CORE = "tag:yaml.org,2002:"
# Tags a plain value may carry, written (``!!str``) or resolved from the text.
_ALLOWED_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp", "value")}


def format_path(loc: Sequence[Any]) -> str:
    """``("exporters", 1, "max_size_mb")`` -> ``exporters[1].max_size_mb``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class Located:
    """A parsed YAML document plus a map from field path to 1-based line number.

    Values reached through an alias are shared with the anchored value: treat ``data`` as read-only."""

    def __init__(self, data: Any, lines: dict[tuple, int], file: str | None):
        self.data, self.lines, self.file = data, lines, file

    def line_of(self, loc: Sequence[Any]) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)

    def error(self, loc: Sequence[Any], reason: str) -> SourceError:
        return SourceError(reason, file=self.file, line=self.line_of(loc), path=format_path(loc) or None)


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def read_file(path: str | os.PathLike[str], limits: YamlLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of ``path``, read no further than the size cap (``/dev/zero`` is refused, not read)."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    except IsADirectoryError:
        raise SourceError(f"cannot read {limits.what}: it is a directory", file=name) from None
    except OSError as exc:
        raise SourceError(f"cannot read {limits.what}: {exc.strerror or exc}", file=name) from None
    if len(data) > limits.max_bytes:
        raise SourceError(f"{limits.what} is larger than {limits.max_bytes} bytes", file=name)
    return data


def decode(data: str | bytes, file: str | None = None, limits: YamlLimits = DEFAULT_LIMITS) -> str:
    """``data`` as text: within the size cap, valid UTF-8, without NUL bytes."""
    if isinstance(data, str):
        size = len(data.encode("utf-8", "surrogatepass"))
        if size > limits.max_bytes:
            raise SourceError(f"{limits.what} is {size} bytes; the limit is {limits.max_bytes}", file=file)
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates from a lenient decoder upstream
            raise SourceError(f"{limits.what} is not UTF-8 text (character {exc.start})", file=file,
                              line=data.count("\n", 0, exc.start) + 1) from None
        text = data
    else:
        if len(data) > limits.max_bytes:
            raise SourceError(f"{limits.what} is {len(data)} bytes; the limit is {limits.max_bytes}", file=file)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{limits.what} is not UTF-8 text (byte {exc.start})", file=file,
                              line=data.count(b"\n", 0, exc.start) + 1) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise SourceError(f"{limits.what} contains a NUL byte", file=file, line=text.count("\n", 0, nul) + 1)
    return text


# --------------------------------------------------------------------------------------------------
# Documents, built from parser events (no recursion, bounded)
# --------------------------------------------------------------------------------------------------


class _Scalars:
    """Plain scalar -> Python value, with YAML 1.1 resolution as PyYAML's safe loader does it."""

    def __init__(self) -> None:
        self.resolver = yaml.resolver.Resolver()
        self.constructor = yaml.constructor.SafeConstructor()

    def value(self, ev: yaml.ScalarEvent, where: tuple[int, str | None]) -> Any:
        tag = ev.tag
        if tag in (None, "!"):
            tag = self.resolver.resolve(yaml.ScalarNode, ev.value, ev.implicit) if tag is None else _CORE + "str"
        if tag not in _ALLOWED_TAGS:
            if tag == _CORE + "merge":
                raise _Bad(where, "YAML merge keys (<<) are not supported: write the keys out")
            raise _Bad(where, f"YAML tag {_short_tag(ev.tag or tag)!r} is not allowed: only plain values (strings, "
                              f"numbers, booleans, null, lists and mappings)")
        text = ev.value
        if tag in (_CORE + "str", _CORE + "timestamp", _CORE + "value"):
            return text
        if tag in (_CORE + "int", _CORE + "float") and ":" in text:
            return text  # YAML 1.1 base 60 ("20:21" -> 1221): a user who writes this means a range or a time
        # libyaml's marks (yaml._yaml.Mark) have the fields of yaml.error.Mark, the only kind the stubs let a node hold
        node = yaml.ScalarNode(tag, text, ev.start_mark, ev.end_mark)  # type: ignore[arg-type]
        try:
            if tag == _CORE + "int":
                return self.constructor.construct_yaml_int(node)
            if tag == _CORE + "float":
                v = self.constructor.construct_yaml_float(node)
                if not math.isfinite(v):
                    raise _Bad(where, f"{text!r} is not a finite number")
                return v
            if tag == _CORE + "bool":
                return self.constructor.construct_yaml_bool(node)
            if tag == _CORE + "null":
                return None
        except _Bad:
            raise
        except Exception:  # noqa: BLE001 - PyYAML's constructors index and convert freely ("!!int ''" is an
            # IndexError): whatever they raise on a scalar, the text is not a value of that tag
            raise _Bad(where, f"{text!r} is not a valid {tag[len(_CORE):]}") from None
        raise _Bad(where, f"{text!r} cannot be a {tag[len(_CORE):]}")  # seq/map tag on a scalar


def _line_of(ev: yaml.Event) -> int:
    """The 1-based line an event starts on (0: the parser gave no position)."""
    return ev.start_mark.line + 1 if ev.start_mark is not None else 0


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class _Bad(Exception):
    """Internal: a refusal at (line, field path), turned into a SourceError with the file."""

    def __init__(self, where: tuple[int, str | None], reason: str) -> None:
        self.line, self.path = where
        self.reason = reason


@dataclasses.dataclass
class _Frame:
    value: Any                 # the dict or list being filled
    loc: tuple
    anchor: str | None
    size: int = 1              # values in the expanded subtree, this container included
    key: Any = None            # mappings: the key waiting for its value
    has_key: bool = False


class _Builder:
    def __init__(self, text: str, file: str | None, limits: YamlLimits) -> None:
        self.text, self.file, self.limits = text, file, limits
        self.scalars = _Scalars()

    def documents(self) -> Iterator[Located]:
        limits = self.limits
        loader = _LOADER(self.text)
        try:
            count = 0
            while not loader.check_event(yaml.StreamEndEvent):
                ev = loader.get_event()
                if isinstance(ev, yaml.DocumentStartEvent):
                    doc = self._document(loader)
                    if doc is None:
                        continue
                    count += 1
                    if count > limits.max_documents:
                        raise SourceError(f"more than {limits.max_documents} YAML documents; the limit is "
                                          f"{limits.max_documents}", file=self.file, line=_line_of(ev))
                    yield doc
        except yaml.YAMLError as exc:
            raise self._yaml_error(exc) from None
        finally:
            loader.dispose()

    def _yaml_error(self, exc: yaml.YAMLError) -> SourceError:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        if line is None and isinstance(getattr(exc, "position", None), int):  # ReaderError: a character index
            line = self.text.count("\n", 0, exc.position) + 1  # type: ignore[attr-defined]
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        if "nesting depth" in str(problem):  # libyaml's own bound, met while it scans ahead of our count
            return SourceError(f"YAML nested deeper than {self.limits.max_depth} levels", file=self.file, line=line)
        context = getattr(exc, "context", None)
        why = f"{context}, {problem}" if context and problem and context not in problem else problem
        return SourceError(f"malformed YAML: {why}", file=self.file, line=line)

    def _document(self, loader: Any) -> Located | None:
        limits = self.limits
        lines: dict[tuple, int] = {}
        anchors: dict[str, tuple[Any, int]] = {}   # name -> (value, expanded size)
        stack: list[_Frame] = []
        total = 0        # values in the expanded document
        aliases = 0
        root: Any = None
        root_set = False
        empty = False
        try:
            while True:
                ev = loader.get_event()
                if isinstance(ev, yaml.DocumentEndEvent):
                    break
                line = _line_of(ev)
                parent = stack[-1] if stack else None
                # Where this event lands: a mapping key, a mapping value, a list item or the root.
                is_key = parent is not None and isinstance(parent.value, dict) and not parent.has_key
                if parent is None:
                    loc: tuple = ()
                elif isinstance(parent.value, dict):
                    loc = parent.loc + ((parent.key,) if parent.has_key else ())
                else:
                    loc = parent.loc + (len(parent.value),)
                where = (line, format_path(loc) or None)
                if isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                    done = stack.pop()
                    if done.anchor is not None:
                        anchors[done.anchor] = (done.value, done.size)
                    value, size = done.value, done.size
                    if not stack:
                        root, root_set = value, True
                        continue
                    self._place(stack[-1], value, size)
                    continue
                if isinstance(ev, yaml.AliasEvent):
                    if limits.max_aliases == 0:
                        raise _Bad(where, f"YAML anchors and aliases (&x / *x) are not allowed in {limits.whats}")
                    aliases += 1
                    if aliases > limits.max_aliases:
                        raise _Bad(where, f"more than {limits.max_aliases} YAML aliases; the limit is "
                                          f"{limits.max_aliases}")
                    if ev.anchor not in anchors:
                        raise _Bad(where, f"alias *{ev.anchor} names no complete anchor before it (an undefined "
                                          "or recursive alias)")
                    if is_key:
                        raise _Bad(where, "mapping keys must be plain strings, not aliases")
                    value, size = anchors[ev.anchor]
                    total += size
                    if total > limits.max_nodes:
                        raise _Bad(where, f"YAML aliases expand to more than {limits.max_nodes} values (an alias "
                                          "bomb?)")
                    if parent is None:
                        root, root_set = value, True
                    else:
                        lines.setdefault(loc, line)
                        self._place(parent, value, size)
                    continue
                anchor = getattr(ev, "anchor", None)
                if anchor is not None and limits.max_aliases == 0:
                    raise _Bad(where, f"YAML anchors and aliases (&x / *x) are not allowed in {limits.whats}")
                total += 1
                if total > limits.max_nodes:
                    raise _Bad(where, f"the document has more than {limits.max_nodes} values")
                if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                    if is_key:
                        raise _Bad(where, "mapping keys must be plain strings, not lists or mappings")
                    tag = ev.tag
                    if tag not in (None, "!") and tag not in _ALLOWED_TAGS:
                        raise _Bad(where, f"YAML tag {_short_tag(tag)!r} is not allowed: only plain values (strings, "
                                          f"numbers, booleans, null, lists and mappings)")
                    if len(stack) >= limits.max_depth:
                        raise _Bad((line, None), f"YAML nested deeper than {limits.max_depth} levels")
                    if parent is not None:
                        lines.setdefault(loc, line)
                    else:
                        lines.setdefault((), line)
                    stack.append(_Frame({} if isinstance(ev, yaml.MappingStartEvent) else [], loc, anchor))
                    continue
                if isinstance(ev, yaml.ScalarEvent):
                    value = self.scalars.value(ev, where)
                    if isinstance(value, str) and not limits.nul_in_strings and "\x00" in value:
                        raise _Bad(where, "strings cannot contain NUL characters")
                    if is_key:
                        assert parent is not None
                        if not isinstance(value, str):
                            kind = "null" if value is None else type(value).__name__
                            raise _Bad(where, f"key {ev.value!r} is read as {kind} by YAML; mapping keys must be "
                                              f"strings (quote it)")
                        if value in parent.value:
                            raise _Bad((line, format_path(parent.loc + (value,))), f"duplicate key {value!r}")
                        parent.key, parent.has_key = value, True
                        lines[parent.loc + (value,)] = line
                        total -= 1  # keys are not values
                        continue
                    if anchor is not None:
                        anchors[anchor] = (value, 1)
                    if parent is None:
                        lines.setdefault((), line)
                        root, root_set = value, True
                        empty = ev.value == "" and ev.implicit[0] and value is None
                        continue
                    lines.setdefault(loc, line)
                    self._place(parent, value, 1)
                    continue
                raise _Bad(where, f"unexpected YAML event {type(ev).__name__}")  # pragma: no cover - parser invariant
        except _Bad as bad:
            raise SourceError(bad.reason, file=self.file, line=bad.line, path=bad.path) from None
        if not root_set or empty:
            return None  # "---" with nothing after it, or a comment-only document
        return Located(root, lines, self.file)

    @staticmethod
    def _place(frame: _Frame, value: Any, size: int) -> None:
        frame.size += size
        if isinstance(frame.value, dict):
            frame.value[frame.key] = value
            frame.has_key = False
        else:
            frame.value.append(value)


def load_documents(data: str | bytes, file: str | None = None, limits: YamlLimits = DEFAULT_LIMITS) -> list[Located]:
    """Every YAML document of ``data`` (empty documents skipped), each with its line map.

    Raises `SourceError` naming file, line and field path for anything outside ``limits``."""
    text = decode(data, file, limits)
    return list(_Builder(text, file, limits).documents())


def load_one(data: str | bytes, file: str | None = None, limits: YamlLimits = DEFAULT_LIMITS) -> Located:
    """Exactly one document; an input with none gives an empty mapping."""
    docs = load_documents(data, file, limits)
    if not docs:
        return Located({}, {}, file)
    if len(docs) != 1:
        raise SourceError(f"expected one YAML document, found {len(docs)}", file=file)
    return docs[0]


# --------------------------------------------------------------------------------------------------
# Writing (CRD objects become policy text), validation at the boundary
# --------------------------------------------------------------------------------------------------


def dump(data: Any, file: str | None = None, limits: YamlLimits = DEFAULT_LIMITS) -> str:
    """``data`` (JSON-shaped: dicts, lists, scalars) as YAML text that `load_documents` will accept back:
    depth and size are checked first (PyYAML's writer recurses), and no anchors are ever written."""
    todo: list[tuple[Any, int, tuple]] = [(data, 1, ())]
    count = 0
    while todo:
        value, depth, loc = todo.pop()
        count += 1
        if count > limits.max_nodes:
            raise SourceError(f"the object has more than {limits.max_nodes} values", file=file)
        if isinstance(value, (dict, list)):
            if depth > limits.max_depth:
                raise SourceError(f"nested deeper than {limits.max_depth} levels", file=file,
                                  path=format_path(loc) or None)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            todo.extend((v, depth + 1, loc + (k,)) for k, v in items)
    text = yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)
    if len(text.encode()) > limits.max_bytes:
        raise SourceError(f"{limits.what} is {len(text.encode())} bytes as YAML; the limit is {limits.max_bytes}",
                          file=file)
    return text


class _NoAliasDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    def ignore_aliases(self, data: Any) -> bool:
        return True


def validate_strict(model: type[BaseModel], data: Any, doc: Located | None, prefix: Sequence[Any] = ()) -> Any:
    """``model`` validated from YAML data with JSON's strictness: a string is never a boolean or a number,
    a boolean never a number, a float never an integer; a string may still name a path or a choice.

    Pydantic's own strict mode would refuse a string for a `Path`; the data goes through JSON text so the
    plugin's models (which the host does not own) need no change to be strict."""
    try:
        raw = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:  # not JSON-shaped: only possible for data not from this loader
        raise SourceError(f"not plain data: {exc}", file=doc.file if doc else None) from None
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise pydantic_errors(exc, doc, prefix) from None


_TYPE_NAMES = {
    "bool_type": "a boolean (true or false)", "bool_parsing": "a boolean (true or false)",
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string", "list_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}


def _described(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value[:60]!r}" + ("..." if len(value) > 60 else "")
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def type_error_message(err: Mapping[str, Any]) -> str:
    """Pydantic's message for one error, said as a YAML author reads it when it is a type mismatch
    ("must be a boolean (true or false), not the string 'false'"): strictness must explain itself."""
    want = _TYPE_NAMES.get(err.get("type", ""))
    if want is None or "input" not in err:
        msg = str(err["msg"])
        # a validator's own ValueError reads as its text, without pydantic's "Value error, " in front
        if err.get("type") == "value_error" and msg.startswith("Value error, "):
            return msg[len("Value error, "):]
        return msg
    return f"must be {want}, not {_described(err['input'])}"


def pydantic_errors(exc: Any, doc: Located | None, prefix: Sequence[Any] = ()) -> SourceError:
    """Turn a pydantic ValidationError into one `SourceError` naming every failing field."""
    msgs = []
    for err in exc.errors():
        loc = tuple(prefix) + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        line = doc.line_of(loc) if doc else None
        where = f"line {line}: " if line and doc else ""
        msg = type_error_message(err)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msgs.append(f"{where}{format_path(loc)}: {msg}")
    file = doc.file if doc else None
    return SourceError("; ".join(msgs), file=file)


__all__ = ["SourceError", "YamlLimits", "DEFAULT_LIMITS", "Located", "format_path", "read_file", "decode",
           "load_documents", "load_one", "dump", "validate_strict", "pydantic_errors", "type_error_message"]

"""YAML loading that remembers where each value came from, so errors can name file, line and field."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import yaml


class SourceError(ValueError):
    """Bad input, with where it is: ``file:line: field.path: reason``."""

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None, path: str | None = None):
        self.reason, self.file, self.line, self.path = reason, file, line, path
        where = ":".join(str(x) for x in (file, line) if x is not None)
        parts = [p for p in (where, path) if p]
        super().__init__(": ".join(parts + [reason]))


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
    """A parsed YAML document plus a map from field path to 1-based line number."""

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


def _walk(node: yaml.Node, loc: tuple, lines: dict[tuple, int]) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k, v in node.value:
            key = _scalar(k)
            if key in out:
                raise SourceError(f"duplicate key {key!r}", line=k.start_mark.line + 1, path=format_path(loc + (key,)))
            lines[loc + (key,)] = k.start_mark.line + 1
            out[key] = _walk(v, loc + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, loc + (i,), lines) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise SourceError("mapping keys must be scalars", line=node.start_mark.line + 1)
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_documents(text: str, file: str | None = None) -> Iterator[Located]:
    """Parse every YAML document in ``text`` (safe loader only), keeping line numbers."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SourceError(f"malformed YAML: {problem}", file=file, line=(mark.line + 1) if mark else None) from None
    for node in nodes:
        if node is None:
            continue
        lines: dict[tuple, int] = {}
        try:
            data = _walk(node, (), lines)
        except SourceError as exc:
            raise SourceError(exc.reason, file=file, line=exc.line, path=exc.path) from None
        yield Located(data, lines, file)


def load_one(text: str, file: str | None = None) -> Located:
    docs = list(load_documents(text, file))
    if len(docs) != 1:
        raise SourceError(f"expected one YAML document, found {len(docs)}", file=file)
    return docs[0]


def pydantic_errors(exc: Any, doc: Located | None, prefix: Sequence[Any] = ()) -> SourceError:
    """Turn a pydantic ValidationError into one `SourceError` naming every failing field."""
    msgs = []
    first_line = None
    for err in exc.errors():
        loc = tuple(prefix) + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        line = doc.line_of(loc) if doc else None
        first_line = first_line or line
        where = f"line {line}: " if line and doc else ""
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msgs.append(f"{where}{format_path(loc)}: {msg}")
    file = doc.file if doc else None
    return SourceError("; ".join(msgs), file=file)

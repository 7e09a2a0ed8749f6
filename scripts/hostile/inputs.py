"""One hostile input (its file: comment header, then the data), YAML writing, and a corpus's collector."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

PER_KIND = 2  # inputs of one kind of fault (from different base documents): variety, not repetition


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

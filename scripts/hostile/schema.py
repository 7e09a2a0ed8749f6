"""Schema walking: the type pydantic expects at each key of a document, and edits at a path."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union


def strip_annotated(ann: Any) -> Any:
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    return ann


def kind_of(ann: Any) -> str:
    """bool | int | float | str | list | map | model | any (unions of several kinds are "any")."""
    ann = strip_annotated(ann)
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

    ann = strip_annotated(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in typing.get_args(ann):
        m = model_in(a)
        if m is not None:
            return m
    return None


def item_type(ann: Any) -> Any:
    ann = strip_annotated(ann)
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

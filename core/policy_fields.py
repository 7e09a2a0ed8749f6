"""The field types of policy models: choices and fields refused by name, bounded strings and lists.

Every section schema (core's shared selector models and each sensor's own ``schema.py``) builds its fields
from these, so a value Tetragon knows but Sensorium does not implement is refused with the same words in
every section, and every string or list a kernel map holds carries its limit in its message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = ["one_of", "refuse", "max_bytes", "max_items", "absent", "str_value", "PolicyModel",
           "choice", "refused", "bounded_str", "bounded_list"]


def one_of(what: str, supported: Sequence[str], unsupported: Sequence[str] = ()) -> BeforeValidator:
    """The check of a string from ``supported``, for ``Annotated[str, one_of(...)]``; Tetragon's other values
    are refused as unsupported, the rest as unknown."""
    listing = ", ".join(supported)

    def check(v: Any) -> Any:
        if not isinstance(v, str):
            raise PydanticCustomError("policy_type", "{what} must be a string (one of: {listing})",
                                      {"what": what, "listing": listing})
        if v in supported:
            return v
        if v in unsupported:
            raise PydanticCustomError(
                "policy_unsupported", "{what} '{value}' is not supported by Sensorium (supported: {listing})",
                {"what": what, "value": v, "listing": listing})
        raise PydanticCustomError("policy_unknown", "unknown {what} '{value}' (supported: {listing})",
                                  {"what": what, "value": v, "listing": listing})

    return BeforeValidator(check)


def refuse(why: str) -> BeforeValidator:
    """The check of a Tetragon field we do not implement, for ``Annotated[Any, refuse(why)] = absent()``:
    present at all -> refused with ``why`` (never ignored)."""

    def check(v: Any) -> Any:
        raise PydanticCustomError("policy_unsupported_field", "not supported by Sensorium: {why}", {"why": why})

    return BeforeValidator(check)


def choice(what: str, supported: Sequence[str], unsupported: Sequence[str] = ()) -> Any:
    """``Annotated[str, one_of(what, supported, unsupported)]``, built at run time (a type checker cannot see it)."""
    return Annotated[str, one_of(what, supported, unsupported)]


def refused(why: str) -> Any:
    """``Annotated[Any, refuse(why)]``, built at run time (a type checker cannot see it)."""
    return Annotated[Any, refuse(why)]


def absent() -> Any:
    # Refused fields are never set on a valid model: keep them out of repr and dumps.
    return Field(default=None, exclude=True, repr=False)


def str_value(v: Any) -> Any:
    # YAML turns `- 0` or `- 443` into ints; Tetragon's CRD would refuse them, we take them as written.
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return str(v)
    return v


def max_bytes(limit: int, what: str, numbers: bool = False) -> BeforeValidator:
    """The check of a string of at most ``limit`` bytes, for ``Annotated[str, max_bytes(...)]`` (a type a
    checker reads; `bounded_str` builds the same at run time). ``numbers``: a YAML number is taken as written
    (values to compare, where ``- 443`` means "443"). A name (call, subsystem, path...) given as a number is
    a type error."""

    def check(v: Any) -> Any:
        if numbers:
            v = str_value(v)
        if isinstance(v, str) and len(v.encode()) > limit:
            raise PydanticCustomError("policy_limit", "{what} is {n} bytes long; the limit is {limit} bytes",
                                      {"what": what, "n": len(v.encode()), "limit": limit})
        return v

    return BeforeValidator(check)


def max_items(limit: int, what: str) -> BeforeValidator:
    """The check of a list of at most ``limit`` items, for ``Annotated[list[T], max_items(...)]``."""

    def check(v: Any) -> Any:
        if isinstance(v, list) and len(v) > limit:
            raise PydanticCustomError("policy_limit", "{n} {what}; the limit is {limit}",
                                      {"n": len(v), "what": what, "limit": limit})
        return v

    return BeforeValidator(check)


def bounded_str(limit: int, what: str, numbers: bool = False) -> Any:
    """``Annotated[str, max_bytes(limit, what, numbers)]``, built at run time (a type checker cannot see it)."""
    return Annotated[str, max_bytes(limit, what, numbers)]


def bounded_list(item: Any, limit: int, what: str) -> Any:
    """``Annotated[list[item], max_items(limit, what)]``, built at run time (a type checker cannot see it)."""
    return Annotated[list[item], max_items(limit, what)]


class PolicyModel(BaseModel):
    """Base of every policy model: YAML (camelCase) names, unknown keys refused, immutable once parsed.

    Strict: a value must already have its field's type (``index: true``, ``syscall: "yes"``, a PID written
    as a string are refused, not converted). The few conversions a policy author relies on are explicit
    validators (numbers in string value lists, `str_value`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, str_strip_whitespace=False,
                              strict=True)


"""How a policy is refused: `PolicyError` (file:line: field.path: reason) and pydantic's errors turned into it.

A model error names the field path inside the document and the line it is on; an unknown key names the
fields that would fit (or the closest one); several problems become one error listing them in reading
order, the first naming file, line and field.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from sensorium.yamlsrc import Located, SourceError, format_path, type_error_message

__all__ = ["PolicyError", "errors_from_pydantic", "combine_problems", "field_loc_of", "PROBLEMS_SHOWN"]


class PolicyError(SourceError):
    """A policy was refused (``file:line: field.path: reason``). ``problems`` lists every problem found."""

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None, path: str | None = None,
                 problems: Sequence[SourceError] = ()):
        super().__init__(reason, file=file, line=line, path=path)
        self.problems = list(problems)



def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``list[X]``, ``X | None``, ``Annotated[list[X], ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model that validates the object at ``loc`` (relative to ``model``), if one does."""
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        model = _model_in(field.annotation) or _model_in(field.metadata)
    return model


def _field_names(model: type[BaseModel]) -> list[str]:
    refused = {n for n, f in model.model_fields.items() if f.exclude}
    return [f.alias or n for n, f in model.model_fields.items() if n not in refused]


def _unknown_field(model: type[BaseModel] | None, key: Any) -> str:
    if model is None:
        return "unknown field"
    names = _field_names(model)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    if close:
        return f"unknown field (did you mean {close[0]!r}?)"
    return f"unknown field (fields here: {', '.join(names)})"


def errors_from_pydantic(exc: ValidationError, doc: Located, prefix: tuple,
                          model: type[BaseModel] | None = None) -> PolicyError:
    problems: list[SourceError] = []
    for err in exc.errors():
        rel = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = prefix + rel
        msg = type_error_message(err)
        if err["type"] == "extra_forbidden":
            msg = _unknown_field(_model_at(model, rel[:-1]), rel[-1] if rel else "")
        elif err["type"] == "missing":
            msg = "required field is missing"
        problems.append(SourceError(msg, file=doc.file, line=doc.line_of(loc), path=format_path(loc)))
    return combine_problems(problems, doc.file)


PROBLEMS_SHOWN = 10  # in one message; PolicyError.problems keeps them all


def combine_problems(problems: Sequence[SourceError], file: str | None) -> PolicyError:
    """One `PolicyError` for several problems: the first (in reading order) names file, line and field; the
    message lists the others (up to `PROBLEMS_SHOWN`); ``problems`` keeps them all."""
    problems = sorted(problems, key=lambda p: p.line or 0)  # in reading order
    first = problems[0]
    reason = first.reason
    if len(problems) > 1:
        shown = problems[1:PROBLEMS_SHOWN]
        reason += "; " + "; ".join(f"line {p.line}: {p.path}: {p.reason}" if p.line else f"{p.path}: {p.reason}"
                                   for p in shown)
        if len(problems) > PROBLEMS_SHOWN:
            reason += f"; and {len(problems) - PROBLEMS_SHOWN} more problems"
    return PolicyError(reason, file=file, line=first.line, path=first.path, problems=problems)



def field_loc_of(path: str) -> tuple[str | int, ...]:
    """``spec.podSelector.matchExpressions[0].values``
    -> ``("spec", "podSelector", "matchExpressions", 0, "values")``."""
    return tuple(int(i) if i else n for n, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path))

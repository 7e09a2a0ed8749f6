"""The ``usdts`` section of a TracingPolicy (Tetragon's UsdtSpec): a USDT probe of a user binary by provider
and name, the probe's arguments to read, selectors, and the Set action (overwrite an argument).

The plugin declares it in `SensorSpec.policy_sections`; `sensorium.policy` composes it into the document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from sensorium.policy import INT_ARG_TYPES, MAX_PATH_LEN, HookSpec
from sensorium.policy_fields import absent, max_bytes, refuse
from sensorium.policy_rules import MAX_PARAMS, engine_selector_rules

__all__ = ["UsdtSpec", "without_set"]


def without_set(selectors: Sequence[Any]) -> list[Any]:
    """The selectors without their Set actions (the engine's selectors know no Set: the usdt program does it
    itself, see usdt.bpf.c); a selector left with no action posts, as Tetragon's Set does."""
    out = []
    for sel in selectors:
        acts = [a for a in sel.matchActions if a.action != "Set"]
        out.append(sel.model_copy(update={"matchActions": acts}) if len(acts) != len(sel.matchActions) else sel)
    return out


class UsdtSpec(HookSpec):
    """A ``usdts`` item: the USDT probe ``provider``:``name`` of the binary at ``path``."""

    SECTION: ClassVar[str] = "usdts"
    path: Annotated[str, max_bytes(MAX_PATH_LEN, "path")] = Field(min_length=1)
    provider: Annotated[str, max_bytes(256, "provider")] = Field(min_length=1)
    name: Annotated[str, max_bytes(256, "name")] = Field(min_length=1)
    btfPath: Annotated[Any, refuse("'btfPath' is not implemented")] = absent()

    @model_validator(mode="after")
    def _absolute(self) -> UsdtSpec:
        if not self.path.startswith("/"):
            raise PydanticCustomError("policy_value", "path '{p}' must be absolute", {"p": self.path})
        return self

    def describe(self) -> str:
        return f"{self.path} {self.provider}:{self.name}"

    def rules(self) -> Sequence[tuple[str, str]]:
        if "\0" in self.path:
            return [("path", "a path cannot contain a NUL byte")]
        if len(self.args) > MAX_PARAMS:
            return [("args", f"{len(self.args)} arguments: at most {MAX_PARAMS} per USDT probe")]
        for i, a in enumerate(self.args):
            typ = a.type or "auto"
            if typ not in INT_ARG_TYPES and typ not in ("auto", "string", "nop"):
                return [(f"args[{i}].type", f"type {typ} is not supported for usdts (integers: int32, int64, "
                                            f"uint64...; string)")]
        for si, sel in enumerate(self.selectors):
            for ai, act in enumerate(sel.matchActions):
                if act.action == "Set" and (act.argIndex or 0) >= len(self.args):
                    return [(f"selectors[{si}].matchActions[{ai}].argIndex",
                             f"argIndex {act.argIndex or 0} names no entry of args ({len(self.args)} declared)")]
        sets = [sum(a.action == "Set" for a in sel.matchActions) for sel in self.selectors]
        if any(n > 1 for n in sets):
            si = next(i for i, n in enumerate(sets) if n > 1)
            return [(f"selectors[{si}].matchActions", "one Set action per selector")]
        view = self.model_copy(update={"selectors": without_set(self.selectors)})
        return engine_selector_rules(view, sorted({a.index for a in self.args if (a.type or "auto") != "nop"}))

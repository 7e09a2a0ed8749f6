"""The ``uprobes`` section of a TracingPolicy: its model, and what no kernel lets this sensor serve.

The plugin declares it in `SensorSpec.policy_sections`; `sensorium.policy` composes it into the document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from sensorium.policy import INT_ARG_TYPES, MAX_PATH_LEN, MAX_SYMBOLS_PER_UPROBE, ArgSpec, HookSpec
from sensorium.policy_fields import absent, max_bytes, max_items, refuse
from sensorium.policy_rules import MAX_PARAMS, char_buf_size_problem, engine_selector_rules

__all__ = ["UProbeSpec"]


class UProbeSpec(HookSpec):
    """An ``uprobes`` item: functions of a user-space binary by symbol (and/or file offsets)."""

    SECTION: ClassVar[str] = "uprobes"
    path: Annotated[str, max_bytes(MAX_PATH_LEN, "path")] = Field(min_length=1)
    symbols: Annotated[list[Annotated[str, max_bytes(256, "symbol")]], max_items(MAX_SYMBOLS_PER_UPROBE, "symbols")] = (
        Field(default_factory=list))
    offsets: Annotated[list[Annotated[int, Field(ge=0)]], max_items(MAX_SYMBOLS_PER_UPROBE, "offsets")] = (
        Field(default_factory=list))
    return_: bool = Field(default=False, alias="return")
    returnArg: ArgSpec | None = None
    refCtrOffsets: Annotated[Any, refuse("USDT semaphores (refCtrOffsets) are not implemented")] = absent()
    addrs: Annotated[Any, refuse("'addrs' (absolute addresses) is not implemented; use symbols or offsets")] = absent()
    btfPath: Annotated[Any, refuse("'btfPath' is not implemented")] = absent()
    preload: Annotated[Any, refuse("'preload' is not implemented")] = absent()
    resolvePathInContainer: Annotated[Any, refuse("'resolvePathInContainer' is not implemented")] = absent()

    @model_validator(mode="after")
    def _targets(self) -> UProbeSpec:
        if not self.path.startswith("/"):
            raise PydanticCustomError("policy_value", "path '{p}' must be absolute", {"p": self.path})
        if not self.symbols and not self.offsets:
            raise PydanticCustomError("policy_value", "give at least one of 'symbols' and 'offsets'")
        return self

    def describe(self) -> str:
        return f"{self.path}:{','.join(self.symbols) or ','.join(hex(o) for o in self.offsets)}"

    def target(self) -> str:
        return self.path

    def rules(self) -> Sequence[tuple[str, str]]:
        return self._arg_rules() or engine_selector_rules(self, sorted(
            {a.index for a in self.args if (a.type or "auto") != "nop"}))

    def _arg_rules(self) -> list[tuple[str, str]]:
        if "\0" in self.path:
            return [("path", "a path cannot contain a NUL byte")]
        declared = {a.index for a in self.args}
        for i, a in enumerate(self.args):
            if a.index >= MAX_PARAMS:
                return [(f"args[{i}].index", f"index {a.index}: only the first {MAX_PARAMS} parameters (0..5, passed "
                                             f"in registers) can be read")]
            typ = a.type or "auto"
            if typ == "nop":
                continue
            if a.returnCopy:
                return [(f"args[{i}].returnCopy", "returnCopy is not supported for uprobes")]
            if typ not in INT_ARG_TYPES and typ not in ("auto", "string", "char_buf"):
                return [(f"args[{i}].type", f"type {typ} is not supported for uprobes (integers: int, uint, s64, "
                                            f"u64, size_t...; string; char_buf)")]
            if found := char_buf_size_problem(i, a, declared):
                return found
        if self.return_:
            rtyp = (self.returnArg.type if self.returnArg is not None else "int") or "int"
            if rtyp != "auto" and rtyp not in INT_ARG_TYPES:
                return [("returnArg.type", f"returnArg type {rtyp}: only integer return values are read")]
        return []

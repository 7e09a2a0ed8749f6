"""The ``tracepoints`` section of a TracingPolicy: its model (tracefs events and raw tracepoints).

The plugin declares it in `SensorSpec.policy_sections`; `sensorium.policy` composes it into the document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, ClassVar

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from sensorium.policy import HookSpec
from sensorium.policy_fields import max_bytes
from sensorium.policy_rules import engine_selector_rules

__all__ = ["TracepointSpec"]


class TracepointSpec(HookSpec):
    """A ``tracepoints`` item: ``subsystem``/``event`` under tracefs events, or a raw tracepoint (``raw: true``)."""

    SECTION: ClassVar[str] = "tracepoints"
    subsystem: Annotated[str, max_bytes(64, "subsystem")] = Field(min_length=1)
    event: Annotated[str, max_bytes(128, "event")] = Field(min_length=1)
    raw: bool = False

    @model_validator(mode="after")
    def _names(self) -> TracepointSpec:
        for what, v in (("subsystem", self.subsystem), ("event", self.event)):
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
                raise PydanticCustomError("policy_value", "{what} '{v}' is not a tracepoint name",
                                          {"what": what, "v": v})
        return self

    def describe(self) -> str:
        return f"{self.subsystem}/{self.event}"

    def rules(self) -> Sequence[tuple[str, str]]:
        # A tracepoint's matchArgs index names an argument by its position in ``args`` (as Tetragon).
        return engine_selector_rules(self, list(range(len(self.args))))

"""The ``tracepoints`` section of a TracingPolicy: its model (tracefs events and raw tracepoints).

The plugin declares it in `SensorSpec.policy_sections`; `sensorium.policy` composes it into the document.
"""

from __future__ import annotations

import re
from typing import ClassVar, Sequence

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from sensorium.policy import HookSpec
from sensorium.policy_fields import bounded_str
from sensorium.policy_rules import engine_selector_rules

__all__ = ["TracepointSpec"]


class TracepointSpec(HookSpec):
    """A ``tracepoints`` item: ``subsystem``/``event`` under tracefs events, or a raw tracepoint (``raw: true``)."""

    SECTION: ClassVar[str] = "tracepoints"
    subsystem: bounded_str(64, "subsystem") = Field(min_length=1)  # type: ignore[valid-type]
    event: bounded_str(128, "event") = Field(min_length=1)  # type: ignore[valid-type]
    raw: bool = False

    @model_validator(mode="after")
    def _names(self) -> "TracepointSpec":
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

"""The ``lsmhooks`` section of a TracingPolicy: its model (a BPF LSM hook by name).

The plugin declares it in `SensorSpec.policy_sections`; `sensorium.policy` composes it into the document.
The sensor's own rules (which hooks, arguments and actions each mechanism serves) are checked while
planning (`sensorium_sensors.lsm.rules`), since they depend on the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar

from pydantic import Field

from sensorium.policy import HookSpec
from sensorium.policy_fields import max_bytes

__all__ = ["LsmHookSpec"]


class LsmHookSpec(HookSpec):
    """An ``lsmhooks`` item: a BPF LSM hook by name (``file_open``, ``bprm_check_security``...)."""

    SECTION: ClassVar[str] = "lsmhooks"
    hook: Annotated[str, max_bytes(128, "hook")] = Field(min_length=1)

    def describe(self) -> str:
        return self.hook

    def rules(self) -> Sequence[tuple[str, str]]:
        # Tetragon's process_lsm event has no stack trace fields, and this sensor's decoder does not read them
        for si, sel in enumerate(self.selectors or ()):
            for ai, act in enumerate(sel.matchActions or ()):
                for field in ("kernelStackTrace", "userStackTrace"):
                    if getattr(act, field, None):
                        return [(f"selectors[{si}].matchActions[{ai}].{field}",
                                 "stack traces are not implemented on lsmhooks (Tetragon's process_lsm event has no "
                                 "stack trace fields); use a kprobes hook on the same function")]
        return ()

"""BPF LSM programs for lsmhooks items (lsm.bpf.c), where BPF LSM is active and its programs load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sensorium.hookspecs import ProbeSource

HERE = Path(__file__).resolve().parent
PROBE = ProbeSource(name="lsm-hook", source=HERE / "lsm.bpf.c", include_dirs=(HERE,))
RECORD_LAYOUTS: dict[str, type] = {}


def compile_hook(plan: Any) -> Any:
    raise ValueError("BPF LSM programs are not built yet")


class LsmProgram:  # pragma: no cover - placeholder
    def __init__(self, *a: Any, **k: Any) -> None:
        raise ValueError("BPF LSM programs are not built yet")


def decode_event(raw: bytes, plan: Any) -> Any:
    return None

"""Paths and names shared by the Kubernetes tests and their fixtures (kept out of conftest.py so test
modules can import them without clashing with the suite's top-level conftest)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPTS = REPO / "scripts" / "k8s"
CACHE = Path(os.environ.get("SENSORIUM_K8S_CACHE", "/var/cache/sensorium-k8s"))
RUN = Path(os.environ.get("SENSORIUM_K8S_RUN", "/run/sensorium-k8s"))
NODE = "sensorium-test-node"


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition", every: float = 0.05) -> Any:
    """``cond()``'s first true value, asked every ``every`` s; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

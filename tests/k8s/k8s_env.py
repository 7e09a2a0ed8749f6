"""Paths and names shared by the Kubernetes tests and their fixtures (kept out of conftest.py so test
modules can import them without clashing with the suite's top-level conftest)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPTS = REPO / "scripts" / "k8s"
CACHE = Path(os.environ.get("SENSORIUM_K8S_CACHE", "/var/cache/sensorium-k8s"))
RUN = Path(os.environ.get("SENSORIUM_K8S_RUN", "/run/sensorium-k8s"))
NODE = "sensorium-test-node"

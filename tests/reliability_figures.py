"""Reliability figures measured by the tests, collected in build/reliability/<section>.json.

``record("udp_collector_down.lost_uncounted", 0)`` from inside a test stores the value with the test's node
id (so docs/reliability.md can say which test produces each figure) and the time it was measured. Tests of
one section may run in any order or alone: each call merges its figure into the file under a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "reliability"


def record(name: str, value: Any, *, section: str = "export", note: str | None = None) -> None:
    """Store figure ``name`` = ``value`` in build/reliability/<section>.json, naming the running test."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{section}.json"
    with open(OUT / f".{section}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            data = {}
        entry: dict[str, Any] = {"value": value, "test": test, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if note:
            entry["note"] = note
        data.setdefault("figures", {})[name] = entry
        data["kernel"] = os.uname().release
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

"""Figures of the hostile-input tests, written where scripts/reliability_doc.py reads them.

Each test that measures something calls `Tally.write()`; it lands in ``build/reliability/<name>.json``
with the test that made it, and docs/reliability.md is regenerated from those files, so the doc's numbers
are the last run's, never typed in.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("SENSORIUM_RELIABILITY_DIR", REPO / "build" / "reliability"))
HANG_S = 5.0  # an input that takes longer than this is a hang, whatever it would have ended with


class Hang(Exception):
    pass


class Tally:
    """Outcomes of one test's inputs: refused clearly, refused unclearly, accepted, traceback, hang."""

    def __init__(self, name: str, test: str, what: str) -> None:
        self.name, self.test, self.what = name, test, what
        self.tried = self.clear = self.unclear = self.accepted = self.wrong_accepts = 0
        self.tracebacks: list[str] = []
        self.hangs: list[str] = []
        self.unclear_examples: list[str] = []
        self.wrong_accept_examples: list[str] = []
        self.kinds: set[str] = set()
        self.max_s = 0.0
        self.extra: dict[str, Any] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def run(self, label: str, fn: Callable[[], Any],
            passthrough: tuple[type[BaseException], ...] = ()) -> tuple[str, Any]:
        """Run ``fn`` bounded in time: ("ok", result) | ("error", exc) | ("traceback", exc) | ("hang", None).

        The project's errors (SourceError and subclasses) are "error"; anything else escaping is a traceback
        a user would have seen, except ``passthrough`` exceptions (a test's own assertions inside ``fn``),
        which are raised again, uncounted."""
        from sensorium.yamlsrc import SourceError

        self.tried += 1
        t0 = time.monotonic()
        fut = self._pool.submit(fn)
        try:
            result = fut.result(timeout=HANG_S)
            outcome: tuple[str, Any] = ("ok", result)
        except concurrent.futures.TimeoutError:
            self.hangs.append(label)
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # the stuck one is abandoned
            return "hang", None
        except SourceError as exc:
            outcome = ("error", exc)
        except passthrough:
            raise
        except Exception as exc:  # noqa: BLE001 - counted: the figure the suite exists to keep at zero
            self.tracebacks.append(f"{label}: {''.join(traceback.format_exception_only(exc)).strip()}")
            outcome = ("traceback", exc)
        self.max_s = max(self.max_s, time.monotonic() - t0)
        return outcome

    def refused(self, label: str, clear: bool, message: str) -> None:
        if clear:
            self.clear += 1
        else:
            self.unclear += 1
            self.unclear_examples.append(f"{label}: {message}")

    def accepted_bad(self, label: str) -> None:
        self.wrong_accepts += 1
        self.wrong_accept_examples.append(label)

    @property
    def refused_total(self) -> int:
        return self.clear + self.unclear

    def figures(self) -> dict[str, Any]:
        bad = self.tried - self.accepted
        return {
            "tried": self.tried, "kinds": len(self.kinds) or None, "refused": self.refused_total,
            "clear_errors": self.clear,
            "clear_errors_pct": round(100.0 * self.clear / bad, 2) if bad else None,
            "tracebacks": len(self.tracebacks), "hangs": len(self.hangs), "wrong_accepts": self.wrong_accepts,
            "accepted": self.accepted, "max_seconds_per_input": round(self.max_s, 3), **self.extra,
        }

    def write(self) -> Path:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{self.name}.json"
        body = {"name": self.name, "test": self.test, "what": self.what, "kernel": os.uname().release,
                "figures": self.figures(),
                "examples": {"tracebacks": self.tracebacks[:10], "hangs": self.hangs[:10],
                             "unclear": self.unclear_examples[:10], "wrong_accepts": self.wrong_accept_examples[:10]}}
        path.write_text(json.dumps(body, indent=2) + "\n")
        return path

    def assert_clean(self) -> None:
        """Zero tracebacks, zero hangs, zero wrong accepts, every refusal clear."""
        assert not self.tracebacks, f"{len(self.tracebacks)} tracebacks: {self.tracebacks[:5]}"
        assert not self.hangs, f"{len(self.hangs)} hangs: {self.hangs[:5]}"
        assert not self.wrong_accepts, f"{self.wrong_accepts} wrong accepts: {self.wrong_accept_examples[:5]}"
        assert not self.unclear, f"{self.unclear} unclear refusals: {self.unclear_examples[:5]}"

"""The hostile-input corpus (tests/data/hostile/, written by scripts/hostile_corpus.py): every bad policy
and every bad agent config is refused with one clear line naming the file, the line and what is wrong;
no traceback, no hang, no bad input accepted. Figures: build/reliability/ -> docs/reliability.md."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from reliability import Tally

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import hostile_corpus as H  # noqa: E402

POLICIES = sorted((H.CORPUS / "policies").glob("*.yaml"))
CONFIGS = sorted((H.CORPUS / "configs").glob("*.yaml"))


header = H.header


def is_clear(exc: Exception, name: str, head: dict[str, Any]) -> bool:
    """One line, naming the file, a line (when the input has one) and the expected words."""
    msg = str(exc)
    names_line = getattr(exc, "line", None) is not None or re.search(r"\bline \d+\b", msg) is not None
    return ("\n" not in msg and msg.startswith(name + ":") and (names_line or not head["line"])
            and all(w in msg for w in head["expect"]))


@pytest.fixture(scope="module")
def reg() -> Any:
    return H.registry()


def test_the_corpus_holds_the_kinds_it_promises() -> None:
    kinds = {header(p.read_bytes())["kind"] for p in POLICIES}
    assert len(POLICIES) >= 500 and len(kinds) >= 500, (len(POLICIES), len(kinds))
    assert len(CONFIGS) >= 100


def test_every_hostile_policy_is_refused_with_a_clear_error(reg: Any) -> None:
    t = Tally("hostile-policies", "tests/test_hostile_corpus.py::test_every_hostile_policy_is_refused_with_a_clear_error",
              "bad policies through `sensorium policy check` (loader, parser, kernel-independent rules)")
    for path in POLICIES:
        data = path.read_bytes()
        head = header(data)
        t.kinds.add(head["kind"])
        outcome, value = t.run(path.name, lambda data=data, path=path: H.check_policy(data, path.name, reg))
        if outcome == "ok":
            t.accepted_bad(path.name)
        elif outcome == "error":
            t.refused(path.name, is_clear(value, path.name, head), str(value))
    t.write()
    t.assert_clean()


def test_every_hostile_config_is_refused_with_a_clear_error(reg: Any) -> None:
    t = Tally("hostile-configs", "tests/test_hostile_corpus.py::test_every_hostile_config_is_refused_with_a_clear_error",
              "bad agent configs through what `sensorium run --config` checks before starting (loader, config "
              "model, each plugin's options model)")
    for path in CONFIGS:
        head = header(path.read_bytes())
        t.kinds.add(head["kind"])
        outcome, value = t.run(path.name, lambda path=path: H.check_config(path, reg))
        if outcome == "ok":
            t.accepted_bad(path.name)
        elif outcome == "error":
            t.refused(path.name, is_clear(value, str(path), head), str(value))
    t.write()
    t.assert_clean()


def test_the_stored_corpus_is_what_the_generator_writes() -> None:
    assert H.main(["--check"]) == 0

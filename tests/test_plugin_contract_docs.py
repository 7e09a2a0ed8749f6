"""The plugin contract is documented whole: every hook and every Protocol member of `sensorium.hookspecs` has
an entry in docs/writing-a-sensor.md (as Datasette's test does for its hooks), so a member added to the
contract without a word for plugin authors fails here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from sensorium import hookspecs

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-a-sensor.md"


def _protocol_members() -> list[tuple[str, str]]:
    """(Protocol, member) for every member declared in a Protocol's own body: methods and annotated attributes."""
    out = []
    for name, cls in vars(hookspecs).items():
        if not (inspect.isclass(cls) and cls.__module__ == hookspecs.__name__ and getattr(cls, "_is_protocol", False)):
            continue
        for member, value in cls.__dict__.items():
            if inspect.isfunction(value) and value.__qualname__.startswith(cls.__qualname__ + "."):
                out.append((name, member))
        out.extend((name, member) for member in inspect.get_annotations(cls))
    return out


def _doc() -> str:
    return DOC.read_text()


def test_the_contract_has_hooks_and_protocols_to_check() -> None:
    # A guard for the test itself: it must see the contract, or it would pass on nothing.
    assert set(hookspecs.HOOKS) >= {"sensorium_sensor", "sensorium_exporter", "sensorium_stage"}
    assert ("ScopedPolicyHandle", "set_scope") in _protocol_members()
    assert ("Stage", "__call__") in _protocol_members()


@pytest.mark.parametrize("hook", hookspecs.HOOKS)
def test_every_hook_has_a_heading(hook: str) -> None:
    assert callable(getattr(hookspecs, hook)), f"HOOKS names {hook}, which hookspecs.py does not define"
    assert re.search(rf"^### `{hook}\(\)`$", _doc(), re.M), f"docs/writing-a-sensor.md has no '### `{hook}()`'"


@pytest.mark.parametrize("protocol,member", _protocol_members(), ids=lambda v: v)
def test_every_protocol_member_has_an_entry(protocol: str, member: str) -> None:
    doc = _doc()
    assert re.search(rf"^### {protocol}$", doc, re.M), f"docs/writing-a-sensor.md has no '### {protocol}' section"
    entry = rf"^- `{protocol}\.{re.escape(member)}(\([^`]*\))?`: \S"
    assert re.search(entry, doc, re.M), (f"docs/writing-a-sensor.md documents no `{protocol}.{member}`: add "
                                         f"'- `{protocol}.{member}...`: what it is' under '### {protocol}'")


def test_every_hook_function_is_listed_in_hooks() -> None:
    # A hookspec function not in HOOKS would escape the heading check above.
    specs = {n for n, f in vars(hookspecs).items() if inspect.isfunction(f) and n.startswith("sensorium_")}
    assert specs == set(hookspecs.HOOKS)

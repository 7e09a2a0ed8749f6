"""A third-party sensor adds a TracingPolicy section the way the built-ins do: its own model (here a tiny
``widgets`` schema), declared in its `SensorSpec`, composed into the document by the registry; refusals name
file, line and field like a built-in section's, and its kernel-independent rules run in ``policy check``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pytest
from pydantic import Field

from sensorium import hookimpl
from sensorium.hookspecs import SensorSpec
from sensorium.policy import HookSpec, PolicyError, parse_policy
from sensorium.policy_fields import bounded_str, choice
from sensorium.policy_rules import validate_policies
from sensorium.testing import plugin_registry


class WidgetSpec(HookSpec):
    """A ``widgets`` item of the third-party sensor."""

    SECTION: ClassVar[str] = "widgets"
    widget: bounded_str(16, "widget") = Field(min_length=1)  # type: ignore[valid-type]
    color: choice("color", ("red", "blue"), ("green",)) = "red"  # type: ignore[valid-type]

    def describe(self) -> str:
        return self.widget

    def rules(self) -> Sequence[tuple[str, str]]:
        return [("widget", "widget 'x' cannot be served anywhere")] if self.widget == "x" else []


class WidgetPlugin:
    @staticmethod
    @hookimpl
    def sensorium_sensor() -> SensorSpec:
        return SensorSpec(name="widget", description="third-party widgets", factory=lambda ctx: None,
                          policy_sections={"widgets": WidgetSpec})


def policy(items: str) -> str:
    return ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: w\nspec:\n  widgets:\n"
            + items)


@pytest.fixture
def reg():  # type: ignore[no-untyped-def]
    return plugin_registry(sensors={"widget": WidgetPlugin()})


def test_a_third_party_section_parses_into_its_own_model(reg) -> None:  # type: ignore[no-untyped-def]
    p = parse_policy(policy("  - widget: gear\n    color: blue\n"), "w.yaml", reg)
    (section,) = p.sections
    assert (section.key, section.sensor) == ("widgets", "widget")
    assert isinstance(section.items[0], WidgetSpec) and section.items[0].color == "blue"


def test_its_refusals_name_file_line_and_field(reg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyError) as e:
        parse_policy(policy("  - widget: gear\n    colour: blue\n"), "w.yaml", reg)
    assert str(e.value) == "w.yaml:8: spec.widgets[0].colour: unknown field (did you mean 'color'?)"
    with pytest.raises(PolicyError) as e:
        parse_policy(policy("  - widget: gear\n    color: green\n"), "w.yaml", reg)
    assert str(e.value) == ("w.yaml:8: spec.widgets[0].color: color 'green' is not supported by Sensorium "
                            "(supported: red, blue)")


def test_its_rules_run_in_policy_check(reg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyError) as e:
        validate_policies(policy("  - widget: x\n"), "w.yaml", reg)
    assert str(e.value) == ("w.yaml:7: spec.widgets[0].widget: refused widgets[0] x: widget 'x' cannot be served "
                            "anywhere")


def test_without_the_sensor_the_section_is_unknown() -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(policy("  - widget: gear\n"), "w.yaml", plugin_registry())
    assert "unknown policy section 'widgets'" in str(e.value)

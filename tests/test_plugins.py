"""Plugin discovery through real entry-point metadata: allowlist, containment, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensorium import hookimpl
from sensorium.hookspecs import EXPORTER_GROUP, SENSOR_GROUP, SensorSpec
from sensorium.plugins import PluginRegistry

ROOT = Path(__file__).resolve().parents[1]
SENSORIUM = str(Path(sys.executable).parent / "sensorium")
BUILTIN_SENSORS = {"exec", "tracepoint", "kprobe", "uprobe", "lsm"}
BUILTIN_EXPORTERS = {"stdout", "file", "kafka", "syslog"}


def plugins_json(*args: str) -> list[dict]:
    out = subprocess.run([SENSORIUM, "plugins", "--json", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_builtins_are_discovered_through_entry_points() -> None:
    rows = plugins_json()
    sensors = {r["name"]: r for r in rows if r["kind"] == "sensor"}
    exporters = {r["name"]: r for r in rows if r["kind"] == "exporter"}
    assert BUILTIN_SENSORS <= set(sensors) and BUILTIN_EXPORTERS <= set(exporters)
    assert all(sensors[n]["distribution"] == "sensorium" for n in BUILTIN_SENSORS)
    assert sensors["exec"]["state"] == "loaded", sensors["exec"]
    assert any(p.endswith("probe.bpf.c") for p in sensors["exec"]["probes"])
    assert sensors["uprobe"]["state"] == "loaded", sensors["uprobe"]


def test_allowlist_keeps_other_plugins_unimported(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins:\n  allow: [exec, stdout]\n")
    rows = {(r["kind"], r["name"]): r for r in plugins_json("--config", str(cfg))}
    assert rows[("sensor", "exec")]["state"] == "loaded"
    assert rows[("exporter", "kafka")]["state"] == "not allowed"
    assert rows[("exporter", "kafka")]["reason"] == "not in plugins.allow"


def test_deny_wins_over_allow() -> None:
    reg = PluginRegistry(allow=["*"], deny=["kafka"]).discover()
    rec = reg.record("exporter", "kafka")
    assert rec is not None and rec.state == "not allowed" and "deny" in (rec.reason or "")
    assert "kafka" not in reg.exporters


def test_two_sensors_claiming_one_policy_section_fail_at_registration() -> None:
    class A:
        @hookimpl
        def sensorium_sensor(self):
            return SensorSpec(name="a", description="", factory=object, policy_sections={"widgets": object})

    class B:
        @hookimpl
        def sensorium_sensor(self):
            return SensorSpec(name="b", description="", factory=object, policy_sections={"widgets": object})

    reg = PluginRegistry()
    reg.add(SENSOR_GROUP, "a", A())
    rec = reg.add(SENSOR_GROUP, "b", B())
    assert rec.state == "failed" and "already owned by sensor 'a'" in (rec.reason or "")
    assert set(reg.sensors) == {"a"}


def test_spec_name_must_match_entry_point_name() -> None:
    class P:
        @hookimpl
        def sensorium_sensor(self):
            return SensorSpec(name="other", description="", factory=object)

    rec = PluginRegistry().add(SENSOR_GROUP, "mine", P())
    assert rec.state == "failed" and "differs from entry-point name" in (rec.reason or "")


def test_a_spec_provided_in_one_statement_registers_for_its_own_hook() -> None:
    import types

    from sensorium.provide import provide

    spec = SensorSpec(name="one-line", description="", factory=object)
    # Bound to any name: the hook it implements follows from the spec's type.
    plugin = types.SimpleNamespace(whatever=provide(spec))
    reg = PluginRegistry()
    rec = reg.add(SENSOR_GROUP, "one-line", plugin)
    assert rec.state == "loaded" and reg.sensors["one-line"] is spec
    wrong = PluginRegistry().add(EXPORTER_GROUP, "one-line", types.SimpleNamespace(sensorium_exporter=provide(spec)))
    assert wrong.state == "failed" and "does not implement sensorium_exporter()" in (wrong.reason or "")


def test_hook_with_wrong_signature_is_contained() -> None:
    class P:
        @hookimpl
        def sensorium_exporter(self, unexpected_arg):
            return None

    rec = PluginRegistry().add(EXPORTER_GROUP, "x", P())
    assert rec.state == "failed" and "invalid hook implementation" in (rec.reason or "")


# ---- third-party packages installed for real --------------------------------------------------------


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, timeout=600)


@pytest.fixture(scope="module")
def broken_plugin_installed():
    _pip("install", "--no-deps", str(ROOT / "examples" / "sensorium-broken-plugin"))
    yield
    _pip("uninstall", "-y", "sensorium-broken-plugin")


def test_broken_third_party_plugins_are_contained_and_shown(broken_plugin_installed) -> None:
    rows = {(r["kind"], r["name"]): r for r in plugins_json()}
    imp = rows[("sensor", "broken-import")]
    assert imp["state"] == "failed" and imp["distribution"] == "sensorium-broken-plugin"
    assert "ImportError" in imp["reason"] and "deliberately broken" in imp["reason"]
    assert rows[("exporter", "broken-exporter")]["state"] == "failed"
    spec = rows[("sensor", "broken-spec")]
    assert spec["state"] == "failed" and "expected SensorSpec" in spec["reason"]
    # The rest of the host is unaffected.
    assert rows[("sensor", "exec")]["state"] == "loaded"
    assert rows[("exporter", "file")]["state"] == "loaded"

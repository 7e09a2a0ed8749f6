"""The layers of the tree, read from the imports themselves (ast, every import statement anywhere in a module,
function-level ones included): no sensor package imports another sensor package (what two sensors share lives
in the host, e.g. the hook library `sensorium.hooks`), and the host imports no plugin at all (built-in sensors
and exporters are plugins like a third party's)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SENSORS = ROOT / "sensors"
CORE = ROOT / "core"
PLUGIN_PACKAGES = ("sensorium_sensors", "sensorium_exporters")


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, whose own package is ``package`` (relative
    imports resolved against it)."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                keep = len(parts) - (node.level - 1)
                base = ".".join(parts[:keep]) if keep > 0 else ""
                out.append((node.lineno, f"{base}.{node.module}" if node.module else base))
                if not node.module:  # `from . import x`: x is a module of that package
                    out.extend((node.lineno, f"{base}.{a.name}") for a in node.names)
            else:
                out.append((node.lineno, node.module or ""))
    return out


def _package_of(path: Path, top: Path, name: str) -> str:
    """The package a module belongs to (its own for an ``__init__.py``): what its relative imports start from."""
    return ".".join([name, *path.relative_to(top).parts[:-1]])


def _sensor_modules() -> list[Path]:
    return sorted(p for p in SENSORS.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_tree_has_sensor_packages_and_host_modules() -> None:
    folders = {p.relative_to(SENSORS).parts[0] for p in _sensor_modules() if len(p.relative_to(SENSORS).parts) > 1}
    assert len(folders) >= 6
    assert len(list(CORE.rglob("*.py"))) > 30


@pytest.mark.parametrize("path", _sensor_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sensor_imports_another_sensor(path: Path) -> None:
    rel = path.relative_to(SENSORS)
    own = rel.parts[0] if len(rel.parts) > 1 else None  # sensors/__init__.py belongs to no sensor
    bad = []
    for line, mod in _imports(path, _package_of(path, SENSORS, "sensorium_sensors")):
        parts = mod.split(".")
        if parts[0] != "sensorium_sensors" or len(parts) < 2:
            continue
        if parts[1] != own:
            bad.append(f"{rel}:{line}: imports {mod}")
    assert not bad, "a sensor imports another sensor (move what they share into the host):\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_host_imports_no_plugin(path: Path) -> None:
    bad = [f"{path.relative_to(ROOT)}:{line}: imports {mod}"
           for line, mod in _imports(path, _package_of(path, CORE, "sensorium"))
           if mod.split(".")[0] in PLUGIN_PACKAGES]
    assert not bad, "the host imports a plugin (it must know none by name):\n" + "\n".join(bad)


def test_the_check_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    """The reader itself: a relative import out of the sensor and an import inside a function are seen."""
    pkg = tmp_path / "sensors" / "alpha"
    pkg.mkdir(parents=True)
    mod = pkg / "thing.py"
    mod.write_text("from ..beta import x\n\ndef f():\n    import sensorium_sensors.gamma.y\n")
    got = [m for _l, m in _imports(mod, "sensorium_sensors.alpha")]
    assert "sensorium_sensors.beta" in got and "sensorium_sensors.gamma.y" in got


def _entry_point_names() -> set[str]:
    import tomllib

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    return set(eps["sensorium.sensors"]) | set(eps["sensorium.exporters"])


def test_the_agent_names_no_builtin_plugin() -> None:
    """The daemon treats its own sensors like a third party's: no built-in plugin's name in its code."""
    names = _entry_point_names()
    tree = ast.parse((CORE / "agent.py").read_text())
    found = sorted({(n.lineno, n.value) for n in ast.walk(tree)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names})
    assert not found, f"core/agent.py names built-in plugins: {found}"


def test_network_true_is_the_network_sensors_section_enabled() -> None:
    """The config's ``network: true`` shortcut is folded into the sensor's own section, which the agent
    applies like any other (an explicit ``enabled`` in the section wins)."""
    from sensorium.config import AgentConfig

    assert AgentConfig(network=True).sensor_sections()["network"] == {"enabled": True}
    assert "network" not in AgentConfig().sensor_sections()
    cfg = AgentConfig(network=True, sensors={"network": {"enabled": False, "udp_dedup_seconds": 1}})
    assert cfg.sensor_sections()["network"] == {"enabled": False, "udp_dedup_seconds": 1}

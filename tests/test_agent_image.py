"""The agent image's two recipes stay one: scripts/k8s/agent_image.py (no container engine) takes the image
config from the Dockerfile and both read the same package list and dependency pins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _agent_image():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("agent_image", REPO / "scripts" / "k8s" / "agent_image.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_image_config_is_the_dockerfiles() -> None:
    cfg = _agent_image().dockerfile_config()
    assert cfg["Entrypoint"] == ["sensorium"]
    assert "SENSORIUM_API_SOCKET=/var/run/sensorium/api.sock" in cfg["Env"] and "SENSORIUM_CC=clang" in cfg["Env"]
    assert cfg["WorkingDir"] == "/"


def test_both_recipes_read_the_same_package_list_and_pins() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "scripts/k8s/agent-image/packages.txt" in text and "scripts/k8s/agent-image/constraints.txt" in text
    mod = _agent_image()
    pins = mod.lines_of(mod.CONSTRAINTS)
    assert pins and all("==" in p for p in pins)
    assert "clang-14" in mod.lines_of(mod.PACKAGES)


def test_the_image_name_is_the_charts_default() -> None:
    import yaml

    chart = yaml.safe_load((REPO / "charts" / "sensorium" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "sensorium" / "values.yaml").read_text())
    assert _agent_image().image_name() == f"docker.io/{values['image']['repository']}:{chart['appVersion']}"

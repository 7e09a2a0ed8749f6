"""The distribution as a user gets it: build the wheel, install it into a brand-new venv (dependencies
from the package index, nothing borrowed from the dev venv), and run the installed `sensorium`.

Also checks that the C sources the agent compiles at run time (sensors/*/*.bpf.c, their headers and
core/bpf/include/sensorium/*.h) are inside the wheel and found there by the installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Not part of the source tree a wheel is built from (copying them would be slow or wrong).
_IGNORE = shutil.ignore_patterns(".git", ".venv", ".vm", ".k8s", "build", "dist", "*.egg-info",
                                 "__pycache__", ".pytest_cache", ".cache", "var", "*.o")


def _run(argv: list[str], *, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    assert p.returncode == 0, (f"{' '.join(argv)} exited {p.returncode}\n"
                               f"stdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy so the build writes no build/ or *.egg-info into the shared work tree.
    src = tmp_path_factory.mktemp("src") / "sensorium"
    shutil.copytree(REPO, src, ignore=_IGNORE, symlinks=True)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)], cwd=src)
    wheels = list(out.glob("sensorium-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    # The interpreter behind the dev venv, not the dev venv itself: a really fresh environment.
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)], cwd=venv.parent)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
         cwd=venv.parent, timeout=900)
    return venv


def _expected_sources() -> list[str]:
    """Paths inside the wheel of every probe source and header of the work tree."""
    names = []
    for f in sorted(REPO.glob("sensors/*/*.bpf.c")) + sorted(REPO.glob("sensors/*/*.h")):
        names.append(f"sensorium_sensors/{f.parent.name}/{f.name}")
    for f in sorted((REPO / "core/bpf/include/sensorium").glob("*.h")):
        names.append(f"sensorium/bpf/include/sensorium/{f.name}")
    return names


def test_wheel_carries_probe_sources(wheel: Path) -> None:
    expected = _expected_sources()
    assert any(n.endswith("exec/probe.bpf.c") for n in expected), "the exec sensor's probe source is gone from the repo"
    assert "sensorium/bpf/include/sensorium/common.h" in expected
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = [n for n in expected if n not in names]
        assert not missing, f"C sources missing from {wheel.name}: {missing}"
        # And nothing of the dev tree leaked in.
        leaked = [n for n in names if n.startswith(("tests/", ".venv/", ".vm/")) or n.endswith(".o")]
        assert not leaked, f"unexpected files in the wheel: {leaked[:10]}"
        eps = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = z.read(eps).decode()
    assert "[sensorium.sensors]" in entry_points and "exec = sensorium_sensors.exec.plugin" in entry_points
    assert "[console_scripts]" in entry_points and "sensorium = sensorium.cli:main" in entry_points


def test_installed_command_runs(installed: Path, tmp_path: Path) -> None:
    exe = str(installed / "bin" / "sensorium")
    # Run from an unrelated directory so nothing resolves through the work tree.
    out = _run([exe, "version"], cwd=tmp_path)
    from importlib.metadata import version
    assert version("sensorium") in out, out

    plugins = json.loads(_run([exe, "plugins", "--json"], cwd=tmp_path))
    by_name = {(p["kind"], p["name"]): p for p in plugins}
    for key in (("sensor", "exec"), ("exporter", "stdout"), ("exporter", "file")):
        assert key in by_name, f"{key} not discovered from the installed wheel: {sorted(by_name)}"
        assert by_name[key]["state"] == "loaded", by_name[key]
        assert by_name[key]["distribution"] == "sensorium"


def test_installed_package_finds_its_sources(installed: Path, tmp_path: Path) -> None:
    py = str(installed / "bin" / "python")
    code = (
        "import json, sensorium, sensorium_sensors.exec as ex\n"
        "from pathlib import Path\n"
        "from sensorium.bpf.build import INCLUDE_DIR\n"
        "print(json.dumps({'pkg': sensorium.__file__, 'inc': str(INCLUDE_DIR),\n"
        "  'common': (Path(INCLUDE_DIR) / 'sensorium' / 'common.h').is_file(),\n"
        "  'probe': (Path(ex.__file__).parent / 'probe.bpf.c').is_file()}))\n"
    )
    info = json.loads(_run([py, "-c", code], cwd=tmp_path))
    site = str(installed)
    assert info["pkg"].startswith(site), f"sensorium imported from {info['pkg']}, not from the fresh venv"
    assert info["inc"].startswith(site), f"INCLUDE_DIR {info['inc']} is outside the installed package"
    assert info["common"], "sensorium/common.h not found under the installed INCLUDE_DIR"
    assert info["probe"], "exec probe.bpf.c not found next to the installed sensor"

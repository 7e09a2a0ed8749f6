"""The agent config: bad input fails before anything starts, naming the file, line and key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensorium.config import load_config
from sensorium.yamlsrc import SourceError

SENSORIUM = str(Path(sys.executable).parent / "sensorium")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(text)
    return p


def test_defaults_are_exec_to_stdout() -> None:
    cfg = load_config(None)
    assert [e.type for e in cfg.exporters] == ["stdout"]
    assert cfg.node_name


def test_unknown_top_level_key_names_key_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "node_name: n1\nexporterz:\n  - type: stdout\n")
    with pytest.raises(SourceError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "line 2" in msg and "exporterz" in msg and "unknown key" in msg


def test_bad_value_names_path(tmp_path: Path) -> None:
    p = write(tmp_path, "process_cache:\n  max_size: lots\n")
    with pytest.raises(SourceError) as err:
        load_config(p)
    assert "process_cache.max_size" in str(err.value) and "line 2" in str(err.value)


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    p = write(tmp_path, "exporters:\n  - type: file\n    path: [unclosed\n")
    with pytest.raises(SourceError) as err:
        load_config(p)
    assert "malformed YAML" in str(err.value) and str(p) in str(err.value)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "node_name: a\nnode_name: b\n")
    with pytest.raises(SourceError, match="duplicate key 'node_name'"):
        load_config(p)


def test_exporter_option_error_names_item_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, "exporters:\n  - type: stdout\n  - type: file\n    path: /tmp/x.json\n    max_size_mb: huge\n")
    out = subprocess.run([SENSORIUM, "run", "--config", str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "exporters[1].max_size_mb" in out.stderr, out.stderr
    assert "line 5" in out.stderr, out.stderr


def test_unknown_exporter_type_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "exporters:\n  - type: carrier-pigeon\n")
    out = subprocess.run([SENSORIUM, "run", "--config", str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "carrier-pigeon" in out.stderr and "exporters[0]" in out.stderr, out.stderr


def test_cli_reports_invalid_config_without_traceback(tmp_path: Path) -> None:
    p = write(tmp_path, "log_level: loud\n")
    out = subprocess.run([SENSORIUM, "run", "--config", str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "log_level" in out.stderr and "Traceback" not in out.stderr

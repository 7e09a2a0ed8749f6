"""The agent config: bad input fails before anything starts, naming the file, line and key path."""

from __future__ import annotations

import os
import socket
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


# ---- strict types at the boundary ---------------------------------------------------------------


def test_the_string_false_is_not_a_boolean(tmp_path: Path) -> None:
    p = write(tmp_path, "sensors:\n  exec:\n    enabled: \"false\"\n")
    with pytest.raises(SourceError) as err:
        load_config(p)
    assert str(err.value) == (f"{p}: line 3: sensors.exec.enabled: must be a boolean (true or false), "
                              "not the string 'false'")


def test_a_boolean_is_not_a_number(tmp_path: Path) -> None:
    p = write(tmp_path, "process_cache:\n  max_size: true\n")
    with pytest.raises(SourceError, match=r"line 2: process_cache.max_size: must be an integer, not the boolean true"):
        load_config(p)


def test_a_number_written_as_a_string_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "metrics:\n  port: \"2112\"\n")
    with pytest.raises(SourceError, match=r"metrics.port: must be an integer, not the string '2112'"):
        load_config(p)


def test_a_sensor_option_is_as_strict_as_the_config(tmp_path: Path) -> None:
    from sensorium.config import validate_sensor_options
    from sensorium.hooks.sensor import HookSensorOptions

    p = write(tmp_path, "sensors:\n  tracepoint:\n    ring_buffer_kb: \"4096\"\n")
    cfg = load_config(p)
    with pytest.raises(SourceError, match=r"line 3: sensors.tracepoint.ring_buffer_kb: must be an integer"):
        validate_sensor_options("tracepoint", cfg.sensors["tracepoint"], HookSensorOptions, cfg.source)


def test_a_path_is_still_written_as_a_string(tmp_path: Path) -> None:
    p = write(tmp_path, "api:\n  socket: /run/x/api.sock\npolicies:\n  directory: /etc/p\n")
    cfg = load_config(p)
    assert cfg.api.socket == Path("/run/x/api.sock") and cfg.policies.directory == Path("/etc/p")


# ---- static checks --------------------------------------------------------------------------------


def test_a_socket_path_over_107_bytes_is_refused(tmp_path: Path) -> None:
    sock = "/run/" + "s" * 100 + "/api.sock"
    p = write(tmp_path, f"api:\n  socket: {sock}\n")
    with pytest.raises(SourceError) as err:
        load_config(p)
    assert str(err.value) == (f"{p}: line 2: api.socket: the socket path is {len(sock)} bytes; a unix "
                              "socket path is at most 107 bytes (sun_path)")


def test_a_socket_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, f"api:\n  socket: {tmp_path}\n")
    with pytest.raises(SourceError, match=r"api.socket: the socket path is an existing directory"):
        load_config(p)


# ---- values written the other natural way ---------------------------------------------------------


def _kafka_options(tmp_path: Path, brokers: str):
    from sensorium.config import validate_exporter_options
    from sensorium_exporters.kafka import KafkaOptions

    cfg = load_config(write(tmp_path, f"exporters:\n  - type: kafka\n    brokers: {brokers}\n    topic: t\n"))
    return validate_exporter_options(cfg.exporters[0], 0, KafkaOptions, cfg.source)


def test_kafka_brokers_may_be_one_comma_separated_string(tmp_path: Path) -> None:
    assert _kafka_options(tmp_path, '"10.0.0.1:9092, kafka-2:9093"').brokers == ["10.0.0.1:9092", "kafka-2:9093"]


def test_kafka_brokers_as_a_list_still_work(tmp_path: Path) -> None:
    assert _kafka_options(tmp_path, "[10.0.0.1:9092]").brokers == ["10.0.0.1:9092"]


def test_a_bad_item_of_a_kafka_broker_string_is_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"line 3: exporters\[0\].brokers\[1\]: expected host:port, "
                                          r"got 'kafka-2'"):
        _kafka_options(tmp_path, '"10.0.0.1:9092,kafka-2"')


# ---- the command line: one line, non-zero, never a traceback --------------------------------------


HOSTILE_CONFIGS = {
    "non-utf8": (b"node_name: \xff\n", "config is not UTF-8 text (byte 11)"),
    "deep-nesting": (("a: " + "[" * 2000 + "]" * 2000 + "\n").encode(), "YAML nested deeper than 32 levels"),
    "alias-bomb": (("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True))).encode(),
        "YAML aliases expand to more than 250000 values"),
    "custom-tag": (b"log_level: !foo info\n", "YAML tag '!foo' is not allowed"),
    "string-false": (b"sensors: {exec: {enabled: 'false'}}\n", "must be a boolean (true or false)"),
}


@pytest.mark.parametrize("name", HOSTILE_CONFIGS)
def test_run_refuses_a_hostile_config_in_one_line(tmp_path: Path, name: str) -> None:
    data, words = HOSTILE_CONFIGS[name]
    p = tmp_path / "agent.yaml"
    p.write_bytes(data)
    out = subprocess.run([SENSORIUM, "run", "--config", str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith(f"Error: invalid config: {p}:") and words in line, out.stderr


def test_plugins_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, "plugins:\n  allow: yes\n")
    out = subprocess.run([SENSORIUM, "plugins", "--config", str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == (f"Error: invalid config: {p}: line 2: plugins.allow: must be a list, "
                          "not the boolean true\n")


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="starts the agent (exec sensor): needs root")
def test_run_reports_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = write(tmp_path, f"metrics: {{enabled: true, address: 127.0.0.1, port: {port}}}\n"
                            f"api: {{socket: {tmp_path}/run/api.sock}}\n")
        out = subprocess.run([SENSORIUM, "run", "--config", str(p)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    # checked at start, before anything loads, and named where the config sets it
    assert out.stderr.splitlines()[-1] == (f"Error: {p}:1: metrics.port: metrics: cannot listen on 127.0.0.1:{port}: "
                                           "Address already in use")

"""The stdout exporter: JSON lines, and the compact one-line view of `tetra getevents -o compact`."""

from __future__ import annotations

import pytest

from sensorium.exporting import ExporterContextImpl
from sensorium.testing import make_event, run_exporter
from sensorium_exporters.stdout import StdoutExporter, StdoutOptions, compact


def stdout_exporter(**opts) -> StdoutExporter:
    return StdoutExporter(StdoutOptions(**opts), ExporterContextImpl("stdout", "n"))


def test_json_lines_on_stdout(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    events = [make_event(pid=i) for i in range(3)]
    run_exporter(stdout_exporter(), events)
    assert capfdbinary.readouterr().out == b"".join(e.json() + b"\n" for e in events)


def test_compact_lines_on_stdout(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    events = [
        make_event("process_exec", binary="/usr/bin/curl", arguments="-s https://example.com",
                   namespace="prod", pod="web-1"),
        make_event("process_exit", binary="/usr/bin/curl", arguments="-s https://example.com",
                   namespace="prod", pod="web-1", status=6),
        make_event("process_exit", binary="/bin/sleep", arguments="100", signal="SIGKILL"),
    ]
    run_exporter(stdout_exporter(format="compact"), events)
    assert capfdbinary.readouterr().out.decode().splitlines() == [
        "🚀 process prod/web-1 /usr/bin/curl -s https://example.com",
        "💥 exit    prod/web-1 /usr/bin/curl -s https://example.com 6",
        "💥 exit    test-node /bin/sleep 100 SIGKILL",
    ]


def test_compact_other_event_types() -> None:
    kill = make_event("process_kprobe", function_name="security_file_open", action="KPROBE_ACTION_SIGKILL")
    assert compact(kill) == \
        "❓ syscall test-node /usr/bin/true security_file_open KPROBE_ACTION_SIGKILL"
    assert compact(make_event("process_tracepoint", subsys="syscalls", event="sys_enter_openat")) == \
        "⁉️ tracepoint test-node /usr/bin/true syscalls sys_enter_openat"
    assert compact(make_event("process_uprobe", path="/bin/bash", symbol="readline")) == \
        "🕵️ uprobe  test-node /usr/bin/true /bin/bash readline"
    assert compact(make_event("process_lsm", function_name="file_open")) == "🔒 LSM     test-node /usr/bin/true file_open"


def test_compact_escapes_terminal_control_characters() -> None:
    line = compact(make_event(arguments="\x1b[2J\x1b]0;owned\x07 ok"))
    assert "\x1b" not in line and "\x07" not in line
    assert line.endswith("\\x1b[2J\\x1b]0;owned\\x07 ok")

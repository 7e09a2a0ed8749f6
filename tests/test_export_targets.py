"""Exporter targets that can never be written are told apart from ones that are just not ready yet."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sensorium_testlib import tmpfs

from sensorium.hookspecs import TargetError
from sensorium.targets import check_file_target, check_socket_target


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs mounted read-only for this test (removed after it)."""
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mnt:
        yield mnt


def refusal(target: Path | str, check=check_file_target) -> str:
    with pytest.raises(TargetError) as err:
        check(target)
    return str(err.value)


def test_a_new_file_in_a_new_directory_is_fine(tmp_path: Path) -> None:
    check_file_target(tmp_path / "not" / "yet" / "events.log")  # created by open()


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path) == f"{tmp_path} is a directory (the path names the file to write)"


@pytest.mark.parametrize("target", ["/proc/sensorium-events.log", "/proc/sys/kernel/sensorium.log",
                                    "/proc/sysrq-trigger", "/sys/kernel/sensorium-events.log"])
def test_kernel_pseudo_filesystems_are_refused(target: str) -> None:
    assert "a kernel interface, not storage" in refusal(target)


def test_a_read_only_mount_is_refused(read_only_mount: Path) -> None:
    assert refusal(read_only_mount / "events.log") == f"{read_only_mount}/events.log is on a read-only mount ({read_only_mount})"


def test_a_path_below_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    assert "is not a directory" in refusal(tmp_path / "plain" / "events.log")


def test_a_syslog_socket_path_that_is_a_directory_is_refused_but_a_missing_one_waits(tmp_path: Path) -> None:
    assert refusal(tmp_path, check_socket_target) == f"{tmp_path} is a directory, not a socket"
    check_socket_target(tmp_path / "log.sock")  # the collector may create it later
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(tmp_path / "live.sock"))
        check_socket_target(tmp_path / "live.sock")

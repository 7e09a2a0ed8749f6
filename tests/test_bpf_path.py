"""sensorium_d_path() (core/bpf/include/sensorium/path.h): absolute paths of executed files, seen from
tp_btf and raw_tp programs on sched_process_exec, across mounts the tests create and remove."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensorium.bpf.build import build_object
from sensorium.bpf.libbpf import BpfObject
from sensorium.bpf.probe import ensure_mounts
from sensorium.bpf.ringbuf import RingBufferReader
from sensorium.hookspecs import ProbeSource

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs and mounting need root"),
]

HERE = Path(__file__).resolve().parent
HEAD = struct.Struct("<HHIQIIiI")  # sensorium_hdr + len + flags
PATH_MAX = 4096
TRUNC_DEPTH, TRUNC_BYTES, DETACHED, DELETED = 0x1, 0x2, 0x4, 0x8
TRUE = os.path.realpath(shutil.which("true") or "/usr/bin/true")


class ExecPaths:
    """The test probe loaded with one program variant; `run` execs and returns (path, flags) seen."""

    def __init__(self, prog: str) -> None:
        ensure_mounts()
        self.obj = BpfObject.open(build_object(ProbeSource(name="path_test", source=HERE / "bpf" / "path_test.bpf.c")))
        self.obj.program(prog).set_autoload(True)
        self.obj.set_rodata("parent_tgid", os.getpid())
        self.obj.load()
        self.obj.attach_all()
        self.records: list[bytes] = []
        self.reader = RingBufferReader()
        self.reader.add(self.obj.map("events"), self.records.extend)

    def run(self, argv: list[str], **kw) -> list[tuple[str, int]]:
        self.reader.poll(0)
        self.records.clear()
        subprocess.run(argv, check=True, **kw)
        self.reader.poll(0)
        out = []
        for rec in self.records:
            _, _, size, _, _, _, length, flags = HEAD.unpack_from(rec)
            assert length >= 0, f"sensorium_d_path returned {length}"
            assert size == HEAD.size + length + 1 and rec[HEAD.size + length] == 0
            out.append((rec[HEAD.size:HEAD.size + length].decode(), flags))
        return out

    def close(self) -> None:
        self.reader.close()
        self.obj.close()


@pytest.fixture(params=["exec_tp_btf", "exec_raw_tp"])
def paths(request) -> Iterator[ExecPaths]:
    p = ExecPaths(request.param)
    yield p
    p.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted for the test (unmounted, with everything in it, afterwards)."""
    mnt = Path(os.path.realpath(tmp_path)) / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "sensorium-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def copy_true(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / "true"
    shutil.copyfile(TRUE, dest)
    dest.chmod(0o755)
    return dest


def test_exec_by_absolute_path_on_the_root_filesystem(paths: ExecPaths) -> None:
    assert paths.run([TRUE]) == [(TRUE, 0)]


def test_relative_exec_inside_a_tmpfs_mount_gives_the_absolute_path(paths: ExecPaths, tmpfs: Path) -> None:
    binary = copy_true(tmpfs / "sub" / "dir")
    assert paths.run(["./true"], cwd=binary.parent) == [(str(binary), 0)]


def test_exec_through_a_bind_mount_names_the_bind_mount(paths: ExecPaths, tmpfs: Path, tmp_path: Path) -> None:
    copy_true(tmpfs / "inner")
    target = Path(os.path.realpath(tmp_path)) / "bound"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(tmpfs / "inner"), str(target)], check=True)
    try:
        assert paths.run(["./true"], cwd=target) == [(str(target / "true"), 0)]
        # A mount on top of a mount: crosses two mount points on the way up.
        (target / "nested").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "sensorium-test", str(target / "nested")], check=True)
        try:
            binary = copy_true(target / "nested" / "x")
            assert paths.run(["./true"], cwd=binary.parent) == [(str(binary), 0)]
        finally:
            subprocess.run(["umount", "-l", str(target / "nested")], check=False)
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def _deep_tree(top: Path, names: list[str]) -> int:
    """mkdir top/names[0]/names[1]/... with dir fds (the whole path may exceed PATH_MAX); copy `true`
    into the deepest directory; return an fd of that directory."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    out = os.open("true", os.O_WRONLY | os.O_CREAT, 0o755, dir_fd=fd)
    with open(TRUE, "rb") as src:
        os.write(out, src.read())
    os.close(out)
    return fd


def test_a_path_deeper_than_the_walk_bound_is_flagged(paths: ExecPaths, tmpfs: Path) -> None:
    names = [f"d{i}" for i in range(40)]
    fd = _deep_tree(tmpfs, names)
    try:
        [(path, flags)] = paths.run([f"/proc/self/fd/{fd}/true"], pass_fds=(fd,))
    finally:
        os.close(fd)
    assert flags == TRUNC_DEPTH
    # The innermost 32 components are kept (the leaf counts as one).
    assert path == "/" + "/".join(names[-31:] + ["true"])


def test_a_path_longer_than_4096_bytes_is_cut_and_flagged(paths: ExecPaths, tmpfs: Path) -> None:
    names = [f"{i:02d}" + "x" * 248 for i in range(20)]  # 20 x 251 bytes > 4096
    fd = _deep_tree(tmpfs, names)
    try:
        [(path, flags)] = paths.run([f"/proc/self/fd/{fd}/true"], pass_fds=(fd,))
    finally:
        os.close(fd)
    assert flags == TRUNC_BYTES
    full = str(tmpfs) + "/" + "/".join(names) + "/true"
    assert len(path) == PATH_MAX - 1 and full.startswith(path)


def test_an_unlinked_binary_is_flagged_deleted(paths: ExecPaths, tmpfs: Path) -> None:
    binary = copy_true(tmpfs / "gone")
    fd = os.open(binary, os.O_RDONLY)
    try:
        binary.unlink()
        [(path, flags)] = paths.run([f"/proc/self/fd/{fd}"], pass_fds=(fd,))
    finally:
        os.close(fd)
    assert (path, flags) == (str(binary), DELETED)


def test_a_lazily_unmounted_tree_is_flagged_detached(paths: ExecPaths, tmp_path: Path) -> None:
    mnt = Path(os.path.realpath(tmp_path)) / "detach"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "sensorium-test", str(mnt)], check=True)
    try:
        copy_true(mnt / "d")
        fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)  # the tree lives on through fd only
    try:
        [(path, flags)] = paths.run([f"/proc/self/fd/{fd}/true"], pass_fds=(fd,))
    finally:
        os.close(fd)
    # Like the kernel's d_path: the path from the root of the detached mount.
    assert (path, flags) == ("/d/true", DETACHED)

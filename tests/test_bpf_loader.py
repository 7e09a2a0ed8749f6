"""The libbpf binding against the running kernel: load, attach, ring buffer, verifier errors, detach."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensorium.bpf.build import build_object
from sensorium.bpf.libbpf import BpfObject, LibbpfError, MapType, num_possible_cpus
from sensorium.bpf.probe import ensure_mounts, probe_kernel
from sensorium.bpf.ringbuf import RingBufferReader
from sensorium.hookspecs import ProbeSource

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
]

HERE = Path(__file__).resolve().parent
PROBE = ProbeSource(name="loader_test", source=HERE / "bpf" / "loader_test.bpf.c")
REC = struct.Struct("<HHIQIIQq")  # struct test_rec: sensorium_hdr + magic + arg
ARG_BASE = 0x70000000  # getpgid() of a pid that cannot exist: the syscall runs and fails with ESRCH


def getpgid_calls(args) -> None:
    for a in args:
        try:
            os.getpgid(a)
        except ProcessLookupError:
            pass


def link_id(link) -> int:
    with open(f"/proc/self/fdinfo/{link.fd}") as f:
        for line in f:
            if line.startswith("link_id:"):
                return int(line.split()[1])
    raise AssertionError("no link_id in fdinfo")


def bpftool_link_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "link", "list"], check=True, capture_output=True).stdout
    return {entry["id"] for entry in json.loads(out or b"[]")}


@pytest.fixture(scope="module")
def obj_path() -> Path:
    ensure_mounts()
    return build_object(PROBE)


@pytest.fixture
def loaded(obj_path: Path):
    obj = BpfObject.open(obj_path)
    obj.set_rodata("target_tgid", os.getpid())
    obj.set_rodata("magic", 0x5E4503105)
    obj.load()
    yield obj
    obj.close()


def test_tracepoint_program_sends_records_of_real_syscalls(loaded: BpfObject) -> None:
    links = loaded.attach_all()
    assert [lk.description for lk in links] == ["loader_test:on_getpgid"]
    got: list[bytes] = []
    with RingBufferReader() as reader:
        reader.add(loaded.map("events"), got.extend)
        getpgid_calls(range(ARG_BASE, ARG_BASE + 100))
        n = reader.poll(0)
    assert n == 100 == len(got)
    recs = [REC.unpack(r) for r in got]
    assert [r[7] for r in recs] == list(range(ARG_BASE, ARG_BASE + 100))  # ring order = syscall order
    typ, flags, size, ktime, pid, tid, magic, _ = recs[0]
    assert (typ, flags, size, pid, tid, magic) == (7, 0, REC.size, os.getpid(), os.getpid(), 0x5E4503105)
    assert ktime <= recs[-1][3]
    assert loaded.map("counts").lookup(b"\0\0\0\0") == struct.pack("<Q", 100)


def test_map_operations(loaded: BpfObject) -> None:
    m = loaded.map("counts")
    assert (m.type, m.key_size, m.value_size, m.max_entries) == (MapType.HASH, 4, 8, 16)
    m.update(struct.pack("<I", 3), struct.pack("<Q", 33))
    m.update(struct.pack("<I", 4), struct.pack("<Q", 44))
    assert dict(m.items()) == {struct.pack("<I", 3): struct.pack("<Q", 33), struct.pack("<I", 4): struct.pack("<Q", 44)}
    assert m.delete(struct.pack("<I", 3)) is True
    assert m.delete(struct.pack("<I", 3)) is False
    assert m.lookup(struct.pack("<I", 3)) is None
    with pytest.raises(ValueError, match="key is 2 bytes"):
        m.lookup(b"\0\0")
    with pytest.raises(LibbpfError, match="'counts'") as ei:
        m.update(struct.pack("<I", 4), struct.pack("<Q", 1), flags=1)  # BPF_NOEXIST on an existing key
    assert ei.value.errno == 17


def test_map_pin_and_unpin(loaded: BpfObject) -> None:
    from enforcement_helpers import new_pin_root, remove_pins

    root = new_pin_root()  # a bpffs instance of the test's own, unmounted by remove_pins
    root.mkdir()
    path = root / "counts"
    m = loaded.map("counts")
    try:
        m.pin(path)
        assert path.exists()
        m.unpin(path)
        assert not path.exists()
    finally:
        remove_pins(root)


def test_verifier_rejection_carries_the_verifier_message(obj_path: Path) -> None:
    with BpfObject.open(obj_path, name="rejected") as obj:
        obj.program("bad_deref").set_autoload(True)
        with pytest.raises(LibbpfError) as ei:
            obj.load()
    msg = str(ei.value)
    assert ei.value.errno == 13
    assert "'rejected'" in msg and "bad_deref" in msg
    assert "invalid mem access 'map_value_or_null'" in msg


def test_close_detaches_the_link(obj_path: Path) -> None:
    obj = BpfObject.open(obj_path)
    try:
        obj.set_rodata("target_tgid", os.getpid())
        obj.load()
        link = obj.program("on_getpgid").attach_tracepoint("syscalls", "sys_enter_getpgid")
        lid = link_id(link)
        assert lid in bpftool_link_ids()
    finally:
        obj.close()
    assert lid not in bpftool_link_ids()
    obj.close()  # idempotent
    link.destroy()  # idempotent after the object destroyed it


def test_errors_name_what_failed(obj_path: Path, tmp_path: Path) -> None:
    with pytest.raises(LibbpfError, match=r"nonexistent.o"):
        BpfObject.open(tmp_path / "nonexistent.o")
    with BpfObject.open(obj_path) as obj:
        with pytest.raises(KeyError, match=r"no program 'nope'.*on_getpgid"):
            obj.program("nope")
        with pytest.raises(KeyError, match=r"no map 'nope'.*events"):
            obj.map("nope")
        with pytest.raises(KeyError, match=r"no global variable 'nope'.*target_tgid"):
            obj.set_rodata("nope", 1)
        with pytest.raises(ValueError, match="does not fit 'force_wakeup'"):
            obj.set_rodata("force_wakeup", 256)
        obj.load()
        with pytest.raises(LibbpfError, match=r"on_getpgid.*no_such_category/nothing"):
            obj.program("on_getpgid").attach_tracepoint("no_such_category", "nothing")
        assert obj.links == []


def test_uprobe_attaches_by_function_name(tmp_path: Path) -> None:
    src = tmp_path / "uprobe_test.bpf.c"
    src.write_text(
        '#include "vmlinux.h"\n#include <sensorium/common.h>\nSENSORIUM_LICENSE("GPL");\n'
        "struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32);"
        " __type(value, __u64); } hits SEC(\".maps\");\n"
        'SEC("uprobe") int on_call(void *ctx) { __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&hits, &k);'
        " if (v) __sync_fetch_and_add(v, 1); return 0; }\n")
    with BpfObject.open(build_object(ProbeSource(name="uprobe_test", source=src))) as obj:
        obj.load()
        assert obj.attach_all() == []  # SEC("uprobe") without a target is not auto-attachable
        # Python's os.getpgid() calls libc's getpgid(): a uprobe on it, limited to this process.
        obj.program("on_call").attach_uprobe("libc.so.6", func_name="getpgid", pid=os.getpid())
        getpgid_calls(range(ARG_BASE, ARG_BASE + 5))
        assert struct.unpack("<Q", obj.map("hits").lookup(b"\0\0\0\0"))[0] == 5


def test_percpu_map_values_have_one_slot_per_cpu(loaded: BpfObject) -> None:
    m = loaded.map("pcpu")
    assert m.percpu and m.value_size == 4
    ncpu = num_possible_cpus()
    value = b"".join(struct.pack("<Ixxxx", 10 + cpu) for cpu in range(ncpu))  # slots are 8-byte aligned
    m.update(struct.pack("<I", 1), value)
    assert m.lookup(struct.pack("<I", 1)) == value
    with pytest.raises(ValueError, match=f"expected {8 * ncpu}"):
        m.update(struct.pack("<I", 1), b"\0" * 4)


def test_a_long_verifier_log_keeps_its_end(obj_path: Path) -> None:
    with BpfObject.open(obj_path, name="complex") as obj:
        obj.program("too_complex").set_autoload(True)
        with pytest.raises(LibbpfError) as ei:
            obj.load()
    tail = ei.value.log_tail
    assert "too_complex" in str(ei.value)
    # The verifier gives up (how depends on the kernel) and sums up at the very end of a log of megabytes.
    assert "too complex" in tail or "too large" in tail
    assert "insns (limit 1000000)" in tail and len(tail) > 32 * 1024


def test_cgroup_program_blocks_connect_only_inside_its_cgroup(obj_path: Path) -> None:
    caps = probe_kernel()
    if not caps.has("cgroup_sock_addr"):
        pytest.skip(f"cgroup_sock_addr: {caps.program_types['cgroup_sock_addr'].error}")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    cg = Path(caps.cgroup2 or "") / f"sensorium-test-{os.getpid()}-{time.monotonic_ns()}"
    cg.mkdir()
    try:
        cg_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with BpfObject.open(obj_path) as obj:
                obj.set_rodata("blocked_port", socket.htons(port))
                obj.load()
                obj.program("deny_port").attach_cgroup(cg_fd)
                child = ("import os, socket, sys\n"
                         "open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
                         "try:\n    socket.create_connection(('127.0.0.1', int(sys.argv[2])), 5); print('connected')\n"
                         "except PermissionError: print('EPERM')\n")
                inside = subprocess.run([sys.executable, "-c", child, str(cg), str(port)],
                                        capture_output=True, text=True, check=True)
                assert inside.stdout.strip() == "EPERM"
                socket.create_connection(("127.0.0.1", port), 5).close()  # outside the cgroup: allowed
        finally:
            os.close(cg_fd)
    finally:
        server.close()
        cg.rmdir()

"""Run counts and run time of the agent's own BPF programs, read the way the metrics read them."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from sensorium.bpf import progstats
from sensorium.bpf.build import build_object
from sensorium.bpf.libbpf import BpfObject, lib
from sensorium.hookspecs import ProbeSource

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="loads BPF programs: root needed")]

HERE = Path(__file__).parent
PROBE = ProbeSource(name="loader_test", source=HERE / "bpf" / "loader_test.bpf.c")
BTF_KIND_STRUCT = 4


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


def struct_offsets(name: str) -> dict[str, int]:
    """Byte offset of each member of ``struct name`` in the running kernel's BTF."""
    btf = lib().btf__load_vmlinux_btf()
    assert btf, "no vmlinux BTF"
    try:
        tid = lib().btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
        assert tid > 0, f"struct {name} not in BTF"
        t = _BtfType.from_address(lib().btf__type_by_id(btf, tid))
        vlen, kflag = t.info & 0xFFFF, t.info >> 31
        members = (_BtfMember * vlen).from_address(ctypes.addressof(t) + ctypes.sizeof(_BtfType))
        out = {}
        for m in members:
            bits = m.offset & 0xFFFFFF if kflag else m.offset
            out[lib().btf__name_by_offset(btf, m.name_off).decode()] = bits // 8
        return out
    finally:
        lib().btf__free(btf)


def test_bpf_prog_info_offsets_match_the_kernel() -> None:
    off = struct_offsets("bpf_prog_info")
    assert off["name"] == progstats.INFO_NAME_OFF
    assert off["run_time_ns"] == progstats.INFO_RUN_TIME_NS_OFF
    assert off["run_cnt"] == progstats.INFO_RUN_CNT_OFF


def test_runs_of_a_real_program_are_counted_while_stats_are_on() -> None:
    obj = BpfObject.open(build_object(PROBE))
    try:
        obj.set_rodata("target_tgid", os.getpid())
        obj.load()
        obj.attach_all()
        fd = progstats.enable_stats()
        try:
            for a in range(200):
                try:
                    os.getpgid(0x70000000 + a)  # a pid that cannot exist: the syscall runs, fails
                except ProcessLookupError:
                    pass
            mine = progstats.by_name(progstats.program_stats()).get("on_getpgid")
        finally:
            os.close(fd)
        assert mine is not None, progstats.program_stats()
        programs, runs, run_ns = mine
        assert programs == 1 and runs >= 200 and run_ns > 0
        if Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "0":  # nobody else has them on
            os.getpgid(0)  # stats are off again: this run is not counted
            assert progstats.by_name(progstats.program_stats())["on_getpgid"][1] == runs
    finally:
        obj.close()
    assert "on_getpgid" not in progstats.by_name(progstats.program_stats())


def test_agent_exports_its_programs_runs_as_metrics(agent, tmp_path) -> None:
    import re
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent({
        "plugins": {"allow": ["exec", "file"]},
        "exporters": [{"type": "file", "path": str(tmp_path / "ev.json")}],
        "metrics": {"enabled": True, "port": port, "bpf_stats": True},
    })
    pattern = re.compile(r'^sensorium_bpf_program_runs\{program="sensorium_exec"\} ([0-9.e+]+)$', re.M)
    deadline = time.monotonic() + 30
    runs = 0.0
    while time.monotonic() < deadline and runs < 3:
        subprocess.run(["/bin/true"], check=True)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        m = pattern.search(body)
        runs = float(m.group(1)) if m else 0.0
        time.sleep(0.5)
    assert runs >= 3, body[-2000:]
    assert re.search(r'^sensorium_bpf_program_run_seconds\{program="sensorium_exec"\} [0-9.e+-]+$', body, re.M)

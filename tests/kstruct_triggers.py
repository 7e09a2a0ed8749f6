"""Calls that reach the kernel functions of tests/test_kprobe_kstructs.py, run as a process of its own (in a
test cgroup): ``python kstruct_triggers.py ACTION [ARGS]``. Each prints one JSON line of what it did, for the
test to compare with the event (ids, names, sizes).

  bpf NAME MAPNAME    load a 2-instruction socket filter named NAME, create a 3-entry array map MAPNAME,
                      then open the program again by its id (BPF_PROG_GET_FD_BY_ID)
  perf FUNC           open a kprobe perf event on FUNC through the kprobe PMU (perf_event_open)
  capset EFF PRM INH [EFF PRM INH ...]   set the capability sets (numbers) with capset(2), once per triple
  module PATH         load the module PATH (a .ko, .ko.xz or .ko.zst) with finit_module, then unload it
  udp PORT            send one UDP datagram to 127.0.0.1:PORT
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import sys
import tempfile

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_BPF, SYS_PERF_EVENT_OPEN, SYS_CAPSET, SYS_FINIT_MODULE, SYS_DELETE_MODULE = 321, 298, 126, 313, 176


def _call(nr: int, *args: object) -> int:
    r = libc.syscall(nr, *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"syscall {nr}: {os.strerror(e)}")
    return int(r)


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)
    return _call(SYS_BPF, ctypes.c_int(cmd), buf, ctypes.c_uint(128))


def bpf(name: str, map_name: str) -> dict[str, object]:
    insns = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
    # kern_version, prog_flags, prog_name[16]
    attr = struct.pack("<IIQQIIQII16s", 1, 2, ctypes.addressof(code), ctypes.addressof(lic), 0, 0, 0, 0, 0,
                       name.encode())
    prog = _bpf(5, attr)  # BPF_PROG_LOAD, BPF_PROG_TYPE_SOCKET_FILTER
    # BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, map_name
    mfd = _bpf(0, struct.pack("<IIIIIII16s", 2, 4, 8, 3, 0, 0, 0, map_name.encode()))  # BPF_MAP_TYPE_ARRAY
    info = ctypes.create_string_buffer(8)  # struct bpf_prog_info: type, id
    _bpf(15, struct.pack("<IIQ", prog, 8, ctypes.addressof(info)))  # BPF_OBJ_GET_INFO_BY_FD
    prog_id = struct.unpack_from("<I", info.raw, 4)[0]
    again = _bpf(13, struct.pack("<I", prog_id))  # BPF_PROG_GET_FD_BY_ID
    for fd in (again, mfd, prog):
        os.close(fd)
    return {"prog_id": prog_id}


def perf(func: str) -> dict[str, object]:
    with open("/sys/bus/event_source/devices/kprobe/type") as f:
        pmu = int(f.read())
    name = ctypes.create_string_buffer(func.encode())
    # struct perf_event_attr (PERF_ATTR_SIZE_VER1, 72 bytes): type, size, config, sample_period, sample_type,
    # read_format, flags, wakeup_events, bp_type, config1 (kprobe_func), config2 (probe_offset)
    attr = ctypes.create_string_buffer(struct.pack("<IIQQQQQIIQQ", pmu, 72, 0, 0, 0, 0, 1, 0, 0,
                                                   ctypes.addressof(name), 0), 72)
    fd = _call(SYS_PERF_EVENT_OPEN, attr, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_ulong(0))
    os.close(fd)
    return {"pmu_type": pmu}


def capset(eff: int, prm: int, inh: int) -> dict[str, object]:
    hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0))  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(struct.pack("<6I", eff & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh & 0xFFFFFFFF,
                                                   eff >> 32, prm >> 32, inh >> 32))
    _call(SYS_CAPSET, hdr, data)
    return {}


def module(path: str) -> dict[str, object]:
    with open(path, "rb") as f:
        image = f.read()
    if path.endswith(".xz"):
        import lzma

        image = lzma.decompress(image)
    elif path.endswith(".zst"):
        import zstandard  # type: ignore[import-not-found]

        image = zstandard.ZstdDecompressor().decompress(image)
    name = os.path.basename(path).split(".ko")[0].replace("-", "_")
    wfd, tmp = tempfile.mkstemp(suffix=".ko")
    try:
        with os.fdopen(wfd, "wb") as f:  # closed before the load: the kernel reads no file open for writing
            f.write(image)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            _call(SYS_FINIT_MODULE, ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_int(0))
        finally:
            os.close(fd)
    finally:
        os.unlink(tmp)
    with open(f"/sys/module/{name}/taint") as f:
        taint = f.read().strip()
    _call(SYS_DELETE_MODULE, ctypes.c_char_p(name.encode()), ctypes.c_uint(os.O_NONBLOCK))
    return {"name": name, "taint": taint}


def udp(port: int) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"sensorium", ("127.0.0.1", port))
    s.close()
    return {}


if __name__ == "__main__":
    action, args = sys.argv[1], sys.argv[2:]
    if action == "bpf":
        out = bpf(args[0], args[1])
    elif action == "perf":
        out = perf(args[0])
    elif action == "capset":
        nums = [int(a, 0) for a in args]
        for k in range(0, len(nums), 3):
            out = capset(*nums[k:k + 3])
    elif action == "module":
        out = module(args[0])
    elif action == "udp":
        out = udp(int(args[0]))
    else:
        raise SystemExit(f"unknown action {action}")
    print(json.dumps(out))

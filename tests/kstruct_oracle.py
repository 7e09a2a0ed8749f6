"""What a kernel structure argument (sensorium.hooks.kstructs) must render as, written from the C structs of
hook/defs.h (sens_k_*) and Tetragon's messages, not from the decoder's ctypes: the oracle of record_fuzz.py."""

from __future__ import annotations

import struct
from typing import Any

from sensorium.hooks import kstructs as K
from sensorium.hooks import selectors as S
from sensorium.policy import CAPABILITIES

__all__ = ["expected_kstruct", "CAPS"]

# Kernel structure payloads, written from the C structs of hook/defs.h (sens_k_*), not from the decoder's ctypes
# (program and map type names: the tables tests/test_kprobe_kstructs.py compares with the kernel's BTF)
CAPS = tuple(sorted((n for n in CAPABILITIES if n.startswith("CAP_")), key=CAPABILITIES.__getitem__))
_PERF_TYPES = {0: "HARDWARE", 1: "SOFTWARE", 2: "TRACEPOINT", 3: "HW_CACHE", 4: "RAW", 5: "BREAKPOINT", 6: "MAX"}
_TAINTS = ((1, "PROPRIETARY_MODULE"), (2, "FORCED_MODULE"), (4, "FORCED_UNLOAD_MODULE"), (1024, "STAGED_MODULE"),
           (4096, "OUT_OF_TREE_MODULE"), (8192, "UNSIGNED_MODULE"), (32768, "KERNEL_LIVE_PATCH_MODULE"),
           (262144, "TEST_MODULE"))


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def expected_kstruct(ap: S.ArgPlan, payload: bytes) -> Any:
    """Tetragon's message of a kernel structure argument from its payload (zero-padded when short)."""
    if ap.json_key == "net_dev_arg":
        return {"name": payload.decode("utf-8", "backslashreplace")}
    p = payload[:152].ljust(152, b"\0")
    if ap.deref in (S.DEREF_BPF_ATTR, S.DEREF_BPF_PROG):  # prog_type, insn_cnt: u32; name[16]
        t, n = struct.unpack_from("<II", p)
        return {"ProgType": K.PROG_TYPES[t] if t < len(K.PROG_TYPES) else str(t), "InsnCnt": n,
                "ProgName": _cstr(p[8:24])}
    if ap.deref == S.DEREF_BPF_MAP:  # map_type, key_size, value_size, max_entries: u32; name[16]
        t, k, v, m = struct.unpack_from("<4I", p)
        return {"MapType": K.MAP_TYPES[t] if t < len(K.MAP_TYPES) else str(t), "KeySize": k, "ValueSize": v,
                "MaxEntries": m, "MapName": _cstr(p[16:32])}
    if ap.deref == S.DEREF_PERF_EVENT:  # config, probe_offset: u64; type, pad: u32; kprobe_func[128]
        config, off, t = struct.unpack_from("<QQI", p)
        out: dict[str, Any] = {"KprobeFunc": _cstr(p[24:152]),
                               "Type": "PERF_TYPE_" + _PERF_TYPES[t] if t in _PERF_TYPES else str(t)}
        if config:
            out["Config"] = str(config)
        if off:
            out["ProbeOffset"] = str(off)
        return out
    if ap.deref == S.DEREF_USER_NS:  # level: s32; owner, group, inum: u32
        level, uid, gid, inum = struct.unpack_from("<iIII", p)
        return {"level": level, "uid": uid, "gid": gid, "ns": {"inum": inum, "is_host": level == 0}}
    # load_info / module: taints u64; sig_ok, pad: u32; name[64]
    taints, sig = struct.unpack_from("<QI", p)
    out = {"name": _cstr(p[16:80])}
    if ap.deref == S.DEREF_LOAD_INFO and sig != 2:
        out["signature_ok"] = sig == 1
    tainted = ["TAINT_" + n for bit, n in _TAINTS if taints & bit]
    if tainted:
        out["tainted"] = tainted
    return out

"""Decode the exec sensor's ring records (event.h) into process_exec / process_exit events.

Records are input from the kernel and treated as such: every length is checked against the record's
size before a slice is taken; a short or inconsistent record is counted and skipped, never raised.
Fork records only update the process cache.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from sensorium.bpf.decoding import BadRecord, RecordDecoder
from sensorium.bpf.records import SensoriumHdr
from sensorium.events import ktime_to_wall_ns, rfc3339
from sensorium.process import SIGNAL_NAMES

if TYPE_CHECKING:
    from sensorium.events import Event
    from sensorium.hookspecs import SensorContext

EXEC_REC_EXEC = 1
EXEC_REC_FORK = 2
EXEC_REC_EXIT = 3

EXEC_F_ARGS_TRUNC = 0x0001
EXEC_F_BINARY_TRUNC = 0x0002
EXEC_F_CWD_TRUNC = 0x0004
EXEC_F_ARGS_ERR = 0x0008
EXEC_F_NO_MEMCG = 0x0010
EXEC_F_BINARY_DELETED = 0x0020

SIGNAL_GROUP_EXIT = 0x00000004  # include/linux/sched/signal.h


_u16, _u32, _u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class ExecRecord(ctypes.Structure):
    _fields_ = [
        ("hdr", SensoriumHdr), ("ppid", _u32),
        ("uid", _u32), ("euid", _u32), ("suid", _u32), ("fsuid", _u32),
        ("gid", _u32), ("egid", _u32), ("sgid", _u32), ("fsgid", _u32), ("auid", _u32),
        ("ns_mnt", _u32), ("ns_pid", _u32), ("ns_pid_for_children", _u32), ("ns_net", _u32), ("ns_uts", _u32),
        ("ns_ipc", _u32), ("ns_cgroup", _u32), ("ns_user", _u32), ("ns_time", _u32), ("ns_time_for_children", _u32),
        ("args_total", _u32), ("_pad0", _u32),
        ("start_time", _u64), ("cgroup_id", _u64), ("memcg_id", _u64), ("cgroup_parent_id", _u64),
        ("memcg_parent_id", _u64),
        ("cap_permitted", _u64), ("cap_effective", _u64), ("cap_inheritable", _u64),
        ("securebits", _u32), ("user_ns_level", _u32), ("user_ns_uid", _u32), ("user_ns_gid", _u32),
        ("args_len", _u16), ("binary_len", _u16), ("cwd_len", _u16), ("cgroup_name_len", _u16),
        ("memcg_name_len", _u16), ("_pad", _u16 * 3),
    ]


class ForkRecord(ctypes.Structure):
    _fields_ = [("hdr", SensoriumHdr), ("child_pid", _u32), ("parent_pid", _u32), ("child_start_time", _u64)]


class ExitRecord(ctypes.Structure):
    _fields_ = [("hdr", SensoriumHdr), ("exit_code", _u32), ("group_exit_code", _u32), ("signal_flags", _u32),
                ("_pad", _u32)]


RECORD_LAYOUTS: dict[str, type[ctypes.Structure]] = {
    "sensorium_hdr": SensoriumHdr, "exec_record": ExecRecord, "fork_record": ForkRecord, "exit_record": ExitRecord,
}

_EXEC_SIZE = ctypes.sizeof(ExecRecord)

_NS_FIELDS = (("mnt", "ns_mnt"), ("pid", "ns_pid"), ("pid_for_children", "ns_pid_for_children"),
              ("net", "ns_net"), ("uts", "ns_uts"), ("ipc", "ns_ipc"), ("cgroup", "ns_cgroup"),
              ("user", "ns_user"), ("time", "ns_time"), ("time_for_children", "ns_time_for_children"))


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


def split_args(raw: bytes, truncated: bool) -> list[str]:
    """argv[1:] from the NUL-separated argument area (argv[0] is not part of Tetragon's arguments)."""
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    parts = raw.split(b"\0") if raw else []
    return [_text(p) for p in parts[1:]]


def exit_status(exit_code: int, group_exit_code: int, signal_flags: int) -> tuple[int, str]:
    """(status, signal name or "") from the kernel's wait-status encoding."""
    code = group_exit_code if signal_flags & SIGNAL_GROUP_EXIT else exit_code
    sig = code & 0x7F
    if sig:
        return 0, SIGNAL_NAMES.get(sig, f"SIG{sig}")
    return (code >> 8) & 0xFF, ""


class ExecDecoder(RecordDecoder):
    """Turns batches of raw records into events, feeding the process cache on the way."""

    def __init__(self, ctx: SensorContext) -> None:
        super().__init__({EXEC_REC_EXEC: ("exec", ExecRecord, self._exec),
                          EXEC_REC_FORK: ("fork", ForkRecord, self._fork),
                          EXEC_REC_EXIT: ("exit", ExitRecord, self._exit)})
        self.ctx = ctx
        self.cache = ctx.process_cache

    # ---- records --------------------------------------------------------------------------------

    def _exec(self, r: ExecRecord, raw: bytes) -> Event:
        hdr = r.hdr
        lens = (r.args_len, r.binary_len, r.cwd_len, r.cgroup_name_len, r.memcg_name_len)
        # The program writes exactly hdr.size bytes (bpf_ringbuf_output of the record it filled): a record
        # shorter than its header says was cut, even where the strings it names happen to fit.
        if _EXEC_SIZE + sum(lens) > len(raw) or hdr.size != len(raw):
            raise BadRecord("exec_lengths")
        pos = _EXEC_SIZE
        fields = []
        for n in lens:
            fields.append(raw[pos:pos + n])
            pos += n
        args_raw, binary, cwd, cg_name, memcg_name = fields
        flags = hdr.flags
        truncated = bool(flags & EXEC_F_ARGS_TRUNC)
        cgroup: dict[str, Any] = {"id": r.cgroup_id, "name": _text(cg_name), "parent_id": r.cgroup_parent_id}
        if r.memcg_id:
            cgroup["memory_id"] = r.memcg_id
            cgroup["memory_name"] = _text(memcg_name)
            cgroup["memory_parent_id"] = r.memcg_parent_id
        info = {
            "tid": hdr.tid, "ppid": r.ppid,
            "uid": r.uid, "euid": r.euid, "suid": r.suid, "fsuid": r.fsuid,
            "gid": r.gid, "egid": r.egid, "sgid": r.sgid, "fsgid": r.fsgid,
            "auid": r.auid,
            "binary": _text(binary), "binary_truncated": bool(flags & EXEC_F_BINARY_TRUNC),
            "binary_deleted": bool(flags & EXEC_F_BINARY_DELETED),
            "cwd": _text(cwd), "cwd_truncated": bool(flags & EXEC_F_CWD_TRUNC),
            "args": split_args(args_raw, truncated), "args_truncated": truncated,
            "cgroup": cgroup,
            "ns": {name: getattr(r, attr) for name, attr in _NS_FIELDS},
            "caps": (r.cap_permitted, r.cap_effective, r.cap_inheritable),
            "securebits": r.securebits,
            "user_ns": (r.user_ns_level, r.user_ns_uid, r.user_ns_gid),
        }
        process, parent = self.cache.on_exec(hdr.pid, hdr.ktime, info)
        self.counters["exec"] += 1
        body: dict[str, Any] = {"process": process}
        if parent is not None:
            body["parent"] = parent
        return self.ctx.make_event("process_exec", body, hdr.ktime)

    def _fork(self, r: ForkRecord, raw: bytes) -> None:
        if r.child_pid == r.parent_pid or not r.child_pid:  # a fork makes a new pid: never its parent's, never 0
            raise BadRecord("fork_pids")
        self.cache.on_fork(r.parent_pid, r.child_pid, r.hdr.ktime)
        self.counters["fork"] += 1
        return None

    def _exit(self, r: ExitRecord, raw: bytes) -> Event:
        hdr = r.hdr
        process, parent = self.cache.on_exit(hdr.pid, hdr.ktime)
        if process is None:
            # Not in the cache (started and ended while the agent was not looking): say what we know.
            process = {"pid": hdr.pid, "tid": hdr.tid}
        status, signame = exit_status(r.exit_code, r.group_exit_code, r.signal_flags)
        body: dict[str, Any] = {"process": process}
        if parent is not None:
            body["parent"] = parent
        if signame:
            body["signal"] = signame
        body["status"] = status
        body["time"] = rfc3339(ktime_to_wall_ns(hdr.ktime))  # Tetragon's ProcessExit.time: when it exited
        self.counters["exit"] += 1
        return self.ctx.make_event("process_exit", body, hdr.ktime)


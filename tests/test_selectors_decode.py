"""The hook decoder against hostile or damaged records: short, truncated, lying lengths, unknown hooks.
It must never raise (a raise drops the whole batch) and must count what it could not read."""

from __future__ import annotations

import os
import random
import struct

from sensorium import selectors as S
from sensorium_sensors.tracepoint.engine import EventRing, HookPlan, _EV
from sensorium_sensors.tracepoint.testing import DirectContext


class _HS:
    events = 0


def _ring_with_one_hook() -> tuple[EventRing, HookPlan]:
    args = [S.ArgPlan(kind=S.ARG_INT, from_=S.FROM_SYSCALL, offset=0, json_key="int_arg", size=4, signed=True),
            S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=1, json_key="string_arg")]
    compiled = S.compile_hook(policy_id=3, hook_id=0, kind=S.HOOK_SYSCALL, args=args, selectors=[],
                              arg_position={0: 0, 1: 1}, syscall_nr=257)
    plan = HookPlan(hook="kprobes[0] sys_openat", field="spec.kprobes[0]", compiled=compiled, args=args,
                    attach=("syscall", False), mechanism="raw_tp sys_enter", note="",
                    body={"function_name": "__x64_sys_openat"}, kind="process_kprobe")
    ring = EventRing(DirectContext(), "kprobe")
    ring.hooks = {(3, 0): (plan, "p", _HS())}
    return ring, plan


def _record(data: bytes, policy_id: int = 3, data_len: int | None = None, sel: int = 0, actions: int = 1) -> bytes:
    dl = len(data) if data_len is None else data_len
    return _EV.pack(S.REC_HOOK, 0, _EV.size + len(data), 1, 10, 10, policy_id, 0, 0, 1, sel, actions, 0, 2, dl) + data


def test_well_formed_record_decodes() -> None:
    ring, _ = _ring_with_one_hook()
    data = struct.pack("<BBHIq", 1, 0, 8, 0, -100) + struct.pack("<BBHI", 2, 0, 5, 0) + b"/etc/\0\0\0"
    [ev] = ring.decode([_record(data)])
    body = ev.as_dict()["process_kprobe"]
    assert body["args"] == [{"int_arg": -100}, {"string_arg": "/etc/"}]


def test_damaged_records_never_raise() -> None:
    ring, _ = _ring_with_one_hook()
    rnd = random.Random(1234)
    good = _record(struct.pack("<BBHIq", 1, 0, 8, 0, 7) + struct.pack("<BBHI", 2, 0, 300, 0) + b"x" * 16)
    bad = [b"", b"\x01", good[:30], good[:_EV.size + 3], _record(b"", policy_id=99),
           _record(b"\xff" * 40, data_len=4000), _record(b"", sel=250, actions=4),
           *(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 200))) for _ in range(200)),
           *(good[:i] + os.urandom(len(good) - i) for i in range(0, len(good), 7))]
    out = ring.decode(bad)  # must not raise
    assert ring.decode_errors >= 3  # the records shorter than a header were counted
    for ev in out:
        ev.json()  # whatever came out is encodable

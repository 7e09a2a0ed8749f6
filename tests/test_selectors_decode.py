"""The hook decoder against hostile or damaged records: short, truncated, lying lengths, unknown hooks.
It must never raise (a raise drops the whole batch) and must count what it could not read."""

from __future__ import annotations

import os
import random
import struct

import pytest

from sensorium.hooks import selectors as S
from sensorium.hooks.plan import HookPlan
from sensorium.hooks.render import EV as _EV
from sensorium.hooks.ring import EventRing
from sensorium.hooks.testing import DirectContext


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


# ---- records that do not fit their hook: dropped one by one and counted, never rendered ----------------
# Found by tests/test_fuzz_records.py. The kernel writes a hook's arguments in order, each of the kind the
# hook declares, and data_len is exactly their size (sensorium.hooks.render.render_args); anything else is not a
# record of this hook and must not become an event with made-up content, nor cost the other records of its batch.

INT7 = struct.pack("<BBHIq", 1, 0, 8, 0, 7)
ABC = struct.pack("<BBHI", 2, 0, 3, 0) + b"abc\0\0\0\0\0"


def _decoders() -> list[tuple[str, str]]:
    return [("decode", "1"), ("decode", "0"), ("decode_dicts", "1")]


def _decode(monkeypatch, how: tuple[str, str], recs: list[bytes]) -> tuple[EventRing, list[dict]]:
    monkeypatch.setenv("SENSORIUM_NATIVE_DECODE", how[1])
    ring, _ = _ring_with_one_hook()
    out = getattr(ring, how[0])(recs)
    return ring, [ev.as_dict()["process_kprobe"]["args"] for ev in out]


@pytest.mark.parametrize("how", _decoders(), ids=lambda h: f"{h[0]}-native{h[1]}")
def test_an_integer_cut_at_the_end_of_its_record_costs_only_that_record(monkeypatch, how) -> None:
    good = _record(INT7 + ABC)
    cut = _record(struct.pack("<BBHI", 1, 0, 8, 0))  # an integer's header, its value missing
    ring, args = _decode(monkeypatch, how, [good, cut, good])  # was: struct.error, the whole batch lost
    assert args == [[{"int_arg": 7}, {"string_arg": "abc"}]] * 2
    assert ring.dropped["bad_argument"] == 1 and ring.decode_errors == 1


@pytest.mark.parametrize("how", _decoders(), ids=lambda h: f"{h[0]}-native{h[1]}")
def test_arguments_of_another_kind_than_the_hook_declares_are_not_rendered(monkeypatch, how) -> None:
    swapped = _record(ABC + INT7)  # was rendered as {"int_arg": "abc"}, {"string_arg": 7}
    as_buffer = _record(INT7 + struct.pack("<BBHI", 3, 0, 3, 0) + b"abc\0\0\0\0\0")
    ring, args = _decode(monkeypatch, how, [swapped, as_buffer])
    assert args == [] and ring.dropped["bad_argument"] == 2


@pytest.mark.parametrize("how", _decoders(), ids=lambda h: f"{h[0]}-native{h[1]}")
def test_a_string_longer_than_the_record_data_is_not_rendered_cut(monkeypatch, how) -> None:
    long_str = _record(INT7 + struct.pack("<BBHI", 2, 0, 300, 0) + b"x" * 16)  # was rendered as "x" * 16
    past_data_len = _record(INT7 + ABC, data_len=16 + 4)  # data_len ends inside the string's header
    ring, args = _decode(monkeypatch, how, [long_str, past_data_len])
    assert args == [] and ring.dropped["bad_argument"] == 2


@pytest.mark.parametrize("how", _decoders(), ids=lambda h: f"{h[0]}-native{h[1]}")
def test_a_record_shorter_than_its_data_len_is_dropped_as_truncated(monkeypatch, how) -> None:
    whole = _record(INT7 + ABC)
    ring, args = _decode(monkeypatch, how, [whole[:-8], _record(INT7 + ABC, data_len=4000), whole])
    assert args == [[{"int_arg": 7}, {"string_arg": "abc"}]] and ring.dropped["truncated"] == 2


@pytest.mark.parametrize("how", _decoders(), ids=lambda h: f"{h[0]}-native{h[1]}")
def test_fewer_arguments_than_the_hook_has_are_a_whole_record(monkeypatch, how) -> None:
    # the kernel stops when the record has no room for the next argument: what it wrote is the event
    ring, args = _decode(monkeypatch, how, [_record(INT7), _record(b"")])
    assert args == [[{"int_arg": 7}], []] and ring.decode_errors == 0


@pytest.mark.parametrize("how", _decoders(), ids=lambda h: f"{h[0]}-native{h[1]}")
def test_data_after_the_last_argument_makes_a_record_malformed(monkeypatch, how) -> None:
    ring, args = _decode(monkeypatch, how, [_record(INT7 + ABC + b"\0" * 8)])
    assert args == [] and ring.dropped["bad_argument"] == 1


@pytest.mark.parametrize("how", _decoders(), ids=lambda h: f"{h[0]}-native{h[1]}")
def test_a_signal_from_a_selector_the_hook_does_not_have_is_dropped(monkeypatch, how) -> None:
    # the hook has no selectors: the kernel only ever posts its events (was: "signal": 0 of selector 3)
    ring, args = _decode(monkeypatch, how, [_record(INT7 + ABC, sel=3, actions=S.ACT_SIGNAL | S.ACT_POST)])
    assert args == [] and ring.dropped["bad_selector"] == 1


@pytest.mark.parametrize("how", _decoders(), ids=lambda h: f"{h[0]}-native{h[1]}")
def test_records_of_unloaded_hooks_and_of_other_types_are_counted(monkeypatch, how) -> None:
    other_type = bytearray(_record(INT7 + ABC))
    other_type[0] = 7
    ring, args = _decode(monkeypatch, how, [_record(INT7 + ABC, policy_id=99), bytes(other_type)])
    assert args == [] and ring.dropped["unknown_hook"] == 1 and ring.dropped["not_a_hook_record"] == 1
    assert ring.decode_errors == 1  # a record in flight when its hook went away is not malformed


# ---- the kprobe sensor's kernel-function additions (kfunc.wrap_decode) -----------------------------------


def _kfunc_ring() -> EventRing:
    """A ring with an fmod_ret hook (policy 3 hook 1: its selector 0 overrides with EPERM) beside the syscall
    hook of `_ring_with_one_hook` (policy 3 hook 0)."""
    from sensorium_sensors.kprobe.kfunc import ACT_OVERRIDE, wrap_decode

    ring, plan = _ring_with_one_hook()
    sel = [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["1"]}], "matchActions": [{"action": "Post"}]}]
    compiled = S.compile_hook(policy_id=3, hook_id=1, kind=S.HOOK_RAW_TP, args=plan.args, selectors=sel,
                              arg_position={0: 0, 1: 1})
    compiled.cfg.sel[0].actions |= ACT_OVERRIDE
    fmod = HookPlan(hook="kprobes[1] security_file_open", field="spec.kprobes[1]", compiled=compiled, args=plan.args,
                    attach=("kfunc", "security_file_open", "fmod_ret", (), (1, 0, 0, 0, 0), 2),
                    mechanism="fmod_ret", note="", body={"function_name": "security_file_open"}, kind="process_kprobe")
    ring.hooks = {**ring.hooks, (3, 1): (fmod, "p", _HS())}
    ring.decode = wrap_decode(ring, ring.decode)  # type: ignore[method-assign]
    return ring


def _hook_record(hook_id: int, sel: int, actions: int) -> bytes:
    data = INT7 + ABC
    return _EV.pack(S.REC_HOOK, 0, _EV.size + len(data), 1, 10, 10, 3, hook_id, 0, 1, sel, actions, 0, 2,
                    len(data)) + data


def test_an_override_record_reports_its_selectors_errno() -> None:
    from sensorium_sensors.kprobe.kfunc import ACT_OVERRIDE

    [ev] = _kfunc_ring().decode([_hook_record(1, 0, ACT_OVERRIDE | S.ACT_POST)])
    assert ev.body["action"] == "KPROBE_ACTION_OVERRIDE" and ev.body["override_return"] == -1


@pytest.mark.parametrize("hook_id,sel", [(1, 1), (1, 200), (0, 0)],
                         ids=["selector-without-override", "selector-past-the-hook", "syscall-hook"])
def test_an_override_bit_no_override_selector_sets_is_dropped_and_costs_no_other_record(hook_id, sel) -> None:
    # was "override_return": 0 (selectors 1 and 200), and an IndexError for a syscall hook's record that lost
    # the whole batch
    from sensorium_sensors.kprobe.kfunc import ACT_OVERRIDE

    ring = _kfunc_ring()
    good = _hook_record(0, 0, S.ACT_POST)
    out = ring.decode([good, _hook_record(hook_id, sel, ACT_OVERRIDE | S.ACT_POST), good])
    assert [ev.body["action"] for ev in out] == ["KPROBE_ACTION_POST"] * 2
    assert ring.dropped["bad_selector"] == 1

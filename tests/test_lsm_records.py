"""The lsm sensor's ring records (no kernel needed): socket guard records (sockaddr.bpf.c, ``lsm_net_event``) and
BPF LSM records (lsm.bpf.c, ``sens_event``) through the decoders the sensor runs on its ring batches.

A record the kernel programs cannot have written is counted in the policy's ``errors`` and becomes no event,
no decision and no kill; it never costs the other records of its batch. Found by tests/test_fuzz_records.py.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import sys
from typing import Any, ClassVar

import pytest

from sensorium.bpf.btf import LsmHookSig, LsmParam
from sensorium.hooks import selectors as S
from sensorium.hooks.render import ARG as _ARG
from sensorium.hooks.render import EV as _EV
from sensorium.hookspecs import PolicyView
from sensorium_sensors.lsm import bpflsm, netguard
from sensorium_sensors.lsm.plugin import LsmPolicyHandle, LsmSensor
from sensorium_sensors.lsm.rules import ArgPlan, HookPlan
from sensorium_sensors.lsm.schema import LsmHookSpec


class RecordingContext:
    """What the sensor's decoders use of a `SensorContext`: its events land in ``events``."""

    node_name = "test-node"
    config: ClassVar[dict[str, Any]] = {}
    process_cache = None

    def __init__(self) -> None:
        import logging

        self.log = logging.getLogger("sensorium.test.lsm-records")
        self.events: list[Any] = []

    def emit(self, events: Any) -> None:
        self.events.extend(events)

    def make_event(self, kind: str, body: Any, ktime_ns: int | None = None) -> Any:
        from sensorium.events import Event, ktime_to_wall_ns

        return Event(kind, body, self.node_name, ktime_to_wall_ns(ktime_ns or 0))


CONNECT_SIG = LsmHookSig("socket_connect", (LsmParam("sock", "struct socket *"),
                                            LsmParam("address", "struct sockaddr *"), LsmParam("addrlen", "int")))
OPEN_SIG = LsmHookSig("file_open", (LsmParam("file", "struct file *"),))


def connect_plan(mechanism: str, selectors: list[dict[str, Any]]) -> HookPlan:
    spec = LsmHookSpec.model_validate({"hook": "socket_connect", "args": [{"index": 1, "type": "sockaddr"}],
                                       "selectors": selectors})
    return HookPlan(0, spec, CONNECT_SIG, (ArgPlan(1, "sockaddr", "struct sockaddr *", None),), mechanism)


KILL_PORT_9 = [{"matchArgs": [{"index": 1, "operator": "DPort", "values": ["9"]}],
                "matchActions": [{"action": "Sigkill"}]}]


def handle(plan: HookPlan, ctx: RecordingContext, policy_id: int = 7) -> tuple[LsmSensor, LsmPolicyHandle]:
    sensor = LsmSensor(ctx)
    view = PolicyView(id=policy_id, name="guard", namespace=None, section="lsmhooks", items=[plan.spec])
    return sensor, LsmPolicyHandle(sensor, view, [plan], None)


def net_record(*, pid: int = 4242, policy_id: int = 7, rule: int = 0, hook: int = 1, verdict: int = 1,
               family: int = 2, action: int = netguard.A_DENY | netguard.A_POST, rtype: int = netguard.RECORD_TYPE,
               daddr: tuple[int, ...] = (0x0100007F, 0, 0, 0)) -> bytes:
    ev = netguard.NetEvent()
    ev.hdr.type, ev.hdr.size, ev.hdr.pid, ev.hdr.tid, ev.hdr.ktime = rtype, ctypes.sizeof(ev), pid, pid, 1000
    ev.policy_id, ev.rule, ev.hook, ev.verdict, ev.family, ev.protocol, ev.dport = policy_id, rule, hook, verdict, \
        family, 6, 9
    ev.daddr[:] = list(daddr)
    ev.action, ev.err, ev.comm = action, 1, b"curl"
    return bytes(ev)


# ---- socket guard records ------------------------------------------------------------------------------


def test_a_socket_guard_record_becomes_one_event_with_its_decision() -> None:
    ctx = RecordingContext()
    sensor, h = handle(connect_plan("bpf_lsm", KILL_PORT_9), ctx)
    ctx.emit(sensor._decode_net(h, h.plans[0], [net_record()]))
    [ev] = ctx.events
    assert ev.body["args"] == [{"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": 9}}]
    assert ev.body["enforcement"]["outcome"] == "blocked" and h.events == 1 and h.errors == 0


@pytest.mark.parametrize("bad", [
    {"family": 1},                # was rendered as AF_INET6 with the bytes of whatever the address held
    {"family": 0},
    {"verdict": 9},               # was rendered as verdict "9"
    {"hook": 0},                  # was rendered as hook "0"
    {"rule": 1},                  # a rule past the policy's one selector: was an IndexError, the batch lost
    {"rule": 0xFFFFFFFF},
    {"policy_id": 8},             # another policy's record in this policy's ring
    {"pid": 0},                   # the programs run in the connecting process: never pid 0
    {"pid": 1 << 31},
    {"rtype": 0x4C02},
], ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_a_socket_guard_record_the_kernel_cannot_write_is_counted_and_costs_no_other_record(bad) -> None:
    ctx = RecordingContext()
    sensor, h = handle(connect_plan("bpf_lsm", KILL_PORT_9), ctx)
    good = net_record(action=netguard.A_POST, verdict=0)
    ctx.emit(sensor._decode_net(h, h.plans[0],
                                [good, net_record(action=netguard.A_KILL | netguard.A_POST, **bad), good]))
    assert len(ctx.events) == 2 and h.errors == 1 and h.events == 2
    assert all(e.body["enforcement"]["outcome"] == "allowed" for e in ctx.events)


def _decode_in_a_child(records: str) -> list[str]:
    """Run the cgroup fallback's decoder (which kills in user space, on the record) on ``records`` (Python
    source of a list, ``me`` the child's pid) in a child in a session of its own: a kill that goes wrong takes
    the child, not the test run (``os.kill(0, ...)`` is the caller's whole process group). Returns its output."""
    code = (
        "import os, sys; sys.path.insert(0, %r)\n"
        "import test_lsm_records as T\n"
        "me, KILL = os.getpid(), T.netguard.A_KILL | T.netguard.A_POST\n"
        "ctx = T.RecordingContext()\n"
        "sensor, h = T.handle(T.connect_plan('cgroup/connect4+connect6', T.KILL_PORT_9), ctx)\n"
        "ctx.emit(sensor._decode_net(h, h.plans[0], %s))\n"
        "print(len(ctx.events), h.errors, *[e.body['enforcement']['outcome'] for e in ctx.events])\n"
    ) % (os.path.dirname(__file__), records)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       start_new_session=True)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    return r.stdout.split()


def test_a_kill_rule_on_a_record_naming_no_process_kills_nothing() -> None:
    # pid 0 was os.kill(0, SIGKILL): the agent's whole process group; 2**31 an OverflowError, the batch lost
    out = _decode_in_a_child("[T.net_record(pid=0, action=KILL), T.net_record(pid=1 << 31, action=KILL), "
                             "T.net_record(pid=0xFFFFFFFF, action=KILL)]")
    assert out == ["0", "3"]


def test_a_kill_rule_never_kills_the_agent_itself() -> None:
    assert _decode_in_a_child("[T.net_record(pid=me, action=KILL)]") == ["1", "0", "blocked"]


def test_a_kill_rule_kills_the_connecting_process() -> None:
    ctx = RecordingContext()
    sensor, h = handle(connect_plan("cgroup/connect4+connect6", KILL_PORT_9), ctx)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        ctx.emit(sensor._decode_net(h, h.plans[0],
                                    [net_record(pid=victim.pid, action=netguard.A_KILL | netguard.A_POST)]))
        assert victim.wait(10) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


# ---- BPF LSM records (sens_event, the engine's format) ---------------------------------------------------


def lsm_program(selectors: list[dict[str, Any]]) -> tuple[HookPlan, bpflsm.LsmProgram]:
    spec = LsmHookSpec.model_validate({"hook": "file_open", "args": [{"index": 0, "type": "file"}],
                                       "selectors": selectors})
    plan = HookPlan(0, spec, OPEN_SIG, (ArgPlan(0, "file", "struct file *", None),), "bpf_lsm")
    prog = bpflsm.LsmProgram(plan, policy_id=3, scope=None, enforce=True, build=None, open_object=None)  # type: ignore[arg-type]
    _compiled, prog.args, prog.errnos = bpflsm.compile_hook(plan, policy_id=3)
    return plan, prog


DENY_TMP = [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["/tmp/"]}],
             "matchActions": [{"action": "Override", "argError": -1}]}]


def lsm_record(path: bytes, *, sel: int = 0, data: bytes | None = None, data_len: int | None = None,
               policy_id: int = 3, hook_id: int = 0) -> bytes:
    if data is None:
        data = _ARG.pack(S.ARG_STR, 0, len(path), 0) + path + b"\0" * (-len(path) % 8)
    dl = len(data) if data_len is None else data_len
    return _EV.pack(S.REC_HOOK, 0, _EV.size + len(data), 5, 4242, 4242, policy_id, hook_id, 0, 1, sel, S.ACT_POST, 0,
                    1, dl) + data


def test_a_bpf_lsm_record_becomes_one_event_naming_its_file_and_errno() -> None:
    ctx = RecordingContext()
    plan, prog = lsm_program(DENY_TMP)
    sensor, h = handle(plan, ctx)
    ctx.emit(sensor._decode_lsm(h, plan, [lsm_record(b"/tmp/x")], prog))
    [ev] = ctx.events
    assert ev.body["args"] == [{"file_arg": {"path": "/tmp/x"}}]
    assert ev.body["enforcement"]["outcome"] == "blocked" and ev.body["enforcement"]["errno"] == "EPERM"


@pytest.mark.parametrize("bad", [
    # an integer where the file is, its value cut: was struct.error
    {"data": struct.pack("<BBHI", S.ARG_INT, 0, 8, 0)},
    {"data": struct.pack("<BBHIq", S.ARG_INT, 0, 8, 0, 5)},  # was rendered as {"file_arg": 5}
    {"data_len": 4000},                                    # the record is shorter than its data
    {"sel": 3},                                            # a selector the hook does not have: was an IndexError
    {"policy_id": 4},                                      # another policy's record in this program's ring
    {"hook_id": 1},
], ids=["int-cut", "int-as-file", "data_len", "selector", "policy", "hook"])
def test_a_bpf_lsm_record_that_does_not_fit_its_hook_is_counted_and_costs_no_other_record(bad) -> None:
    ctx = RecordingContext()
    plan, prog = lsm_program(DENY_TMP)
    sensor, h = handle(plan, ctx)
    good = lsm_record(b"/tmp/ok")
    ctx.emit(sensor._decode_lsm(h, plan, [good, lsm_record(b"/tmp/x", **bad), good], prog))
    assert [e.body["args"] for e in ctx.events] == [[{"file_arg": {"path": "/tmp/ok"}}]] * 2
    assert h.errors == 1 and h.events == 2


def test_a_hook_without_selectors_posts_with_the_kernels_no_selector_mark() -> None:
    ctx = RecordingContext()
    plan, prog = lsm_program([])
    sensor, h = handle(plan, ctx)
    ctx.emit(sensor._decode_lsm(h, plan, [lsm_record(b"/etc/x", sel=S.MAX_SELECTORS), lsm_record(b"/etc/y", sel=0)],
                                prog))
    assert [e.body["args"][0]["file_arg"]["path"] for e in ctx.events] == ["/etc/x"] and h.errors == 1
    assert ctx.events[0].body["enforcement"]["outcome"] == "allowed"


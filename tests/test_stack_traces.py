"""kernelStackTrace / userStackTrace of a Post action: a syscall hook (raw_tp sys_enter here; a kernel function
in the guests) posts its event with the kernel stack named from /proc/kallsyms and the user stack named from
the ELF symbols of the program that made the call, a program this test builds with a known function.
Events without stack traces keep their exact record size."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from hook_helpers import rig_fixture

from sensorium.hooks import selectors as S
from sensorium.hooks.render import EV_SIZE
from sensorium_sensors.kprobe.sensor import KprobeSensor

pytestmark = [pytest.mark.kernel]

rig = rig_fixture(KprobeSensor)

MAGIC = 424242  # the `who` of the test program's getpriority: no one else asks for it

# getpriority(PRIO_PROCESS, MAGIC) made by the syscall instruction inside a function of its own, so that the
# user stack starts in it (libc's syscall() keeps no frame pointer: its caller would not be seen), with frame
# pointers so that the kernel can walk to main. It then waits for its stdin to close.
PROGRAM = r"""
#include <unistd.h>

__attribute__((noinline)) long sensorium_stack_marker(long who)
{
	long ret;
	asm volatile("syscall" : "=a"(ret) : "0"(140L), "D"(0L), "S"(who) : "rcx", "r11", "memory");
	return ret;
}

int main(void)
{
	char c;
	long r = sensorium_stack_marker(%d);

	/* alive until the test has its event: a user stack is named from the process's own maps */
	(void)!read(0, &c, 1);
	return r == -4096 ? 1 : 0;
}
""" % MAGIC

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: stacks-test
spec:
  kprobes:
  - call: sys_getpriority
    syscall: true
    args:
    - index: 0
      type: int
    - index: 1
      type: int
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values: ["%d"]
      matchActions:
      - action: Post
%s""" % (MAGIC, "%s")

BOTH = "        kernelStackTrace: true\n        userStackTrace: true\n"


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the test program")
    d = tmp_path_factory.mktemp("stackprog")
    (d / "prog.c").write_text(PROGRAM)
    exe = d / "stackprog"
    subprocess.run([cc, "-O0", "-fno-omit-frame-pointer", "-o", str(exe), str(d / "prog.c")],
                   check=True, capture_output=True)
    return exe


def run(program: Path) -> subprocess.Popen:
    return subprocess.Popen([str(program)], stdin=subprocess.PIPE)


def done(p: subprocess.Popen) -> None:
    assert p.stdin is not None
    p.stdin.close()
    assert p.wait(timeout=10) == 0


def _ours(b: dict) -> bool:
    args = b.get("args") or []
    return len(args) == 2 and args[1].get("int_arg") == MAGIC


def _symbols(frames: list[dict]) -> list[str]:
    return [f.get("symbol", "") for f in frames]


def test_post_with_both_stack_traces_names_the_callers_function_and_the_syscall_path(rig, program: Path) -> None:
    h = rig.load(POLICY % BOTH, "kprobes")
    p = run(program)
    try:
        evs = rig.events(_ours, wait=3.0)
    finally:
        done(p)
    assert len(evs) == 1, evs
    e = evs[0]
    assert "user_stack_trace" in e, (e, h.status()["counters"])
    assert e["function_name"] == "__x64_sys_getpriority" and e["action"] == "KPROBE_ACTION_POST"
    user = e["user_stack_trace"]
    # the first frame is the function that made the call, in the program's own file, then its caller
    assert user[0]["symbol"] == "sensorium_stack_marker" and user[0]["module"] == str(program), user[:3]
    assert user[0]["offset"] > 0 and user[0]["address"] > 0
    assert "main" in _symbols(user)
    kernel = _symbols(e["kernel_stack_trace"])
    assert any(s in ("do_syscall_64", "entry_SYSCALL_64_after_hwframe", "entry_SYSCALL_64") for s in kernel), kernel
    assert all(f["address"] >= 1 << 63 for f in e["kernel_stack_trace"])  # kernel addresses
    # the exported JSON: Tetragon's StackTraceEntry, 64-bit integers as strings
    ev = next(x for x in rig.ctx.events if _ours(next(iter(x.as_dict().values()))))
    js = orjson.loads(ev.json())["process_kprobe"]
    assert js["user_stack_trace"][0] == {"address": str(user[0]["address"]), "offset": str(user[0]["offset"]),
                                         "symbol": "sensorium_stack_marker", "module": str(program)}
    assert js["kernel_stack_trace"][0]["address"] == str(e["kernel_stack_trace"][0]["address"])
    c = h.status()["counters"]
    assert {k: c[k] for k in c if k.startswith("stack_")} == dict.fromkeys(
        ("stack_map_full", "stack_collision", "stack_error", "stack_missing", "stack_process_gone"), 0)


def test_the_same_stack_again_is_read_again_after_its_id_was_deleted(rig, program: Path) -> None:
    h = rig.load(POLICY % BOTH, "kprobes")
    for _ in range(3):  # the same stacks three times: one id each, deleted after each batch that read it
        p = run(program)
        try:
            assert rig.events(lambda b: _ours(b) and "user_stack_trace" in b, wait=3.0)
        finally:
            done(p)
        rig.ctx.events.clear()
    c = h.status()["counters"]
    assert c["stack_missing"] == 0 and c["posted"] == 3


@pytest.fixture
def spied_rig(monkeypatch: pytest.MonkeyPatch):
    """A kprobe sensor rig whose ring decoder keeps a copy of every record as the kernel wrote it."""
    from hook_helpers import Rig

    from sensorium.hooks.ring import EventRing

    seen: list[bytes] = []
    real = EventRing.decode

    def spy(self, records):
        seen.extend(bytes(r) for r in records)
        return real(self, records)

    monkeypatch.setattr(EventRing, "decode", spy)
    r = Rig(KprobeSensor)
    r.seen = seen
    try:
        yield r
    finally:
        r.close()
    r.check_schema()


def test_an_event_without_stack_traces_keeps_its_record_size(spied_rig, program: Path) -> None:
    spied_rig.load(POLICY % "", "kprobes")
    p = run(program)
    try:
        evs = spied_rig.events(_ours, wait=3.0)
    finally:
        done(p)
    assert len(evs) == 1 and "kernel_stack_trace" not in evs[0] and "user_stack_trace" not in evs[0]
    # the header and two integer arguments (a sens_arg_rec and 8 bytes each): nothing more
    assert [len(r) for r in spied_rig.seen] == [EV_SIZE + 32]
    assert spied_rig.seen[0][50] == 0  # sens_event.flags: no stack ids follow


def test_with_stacks_the_record_grows_by_the_two_ids_only(spied_rig, program: Path) -> None:
    spied_rig.load(POLICY % BOTH, "kprobes")
    p = run(program)
    try:
        assert spied_rig.events(_ours, wait=3.0)
    finally:
        done(p)
    assert [len(r) for r in spied_rig.seen] == [EV_SIZE + 32 + 8]
    assert spied_rig.seen[0][50] == S.EV_KSTACK | S.EV_USTACK


CORPUS = Path(__file__).resolve().parent / "data" / "tetragon-policies" / "stack_traces.yaml"

# UDP to a port nobody listens on, sent by the syscall instruction inside a function of its own: the kernel drops
# the packet (kfree_skb_reason, reason NO_SOCKET) in the sender's context, its softirq run as the send returns.
SENDER = r"""
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

__attribute__((noinline)) long sensorium_stack_marker(long fd, const void *buf, long len, const void *to)
{
	long ret;
	register long r10 asm("r10") = 0;
	register long r8 asm("r8") = (long)to;
	register long r9 asm("r9") = sizeof(struct sockaddr_in);

	asm volatile("syscall" : "=a"(ret) : "0"(44L), "D"(fd), "S"(buf), "d"(len), "r"(r10), "r"(r8), "r"(r9)
			: "rcx", "r11", "memory");
	return ret;
}

int main(int argc, char **argv)
{
	struct sockaddr_in to;
	char c;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	memset(&to, 0, sizeof(to));
	to.sin_family = AF_INET;
	to.sin_port = htons(%d);
	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || sensorium_stack_marker(fd, "drop me", 7, &to) != 7)
		return 1;
	(void)!read(0, &c, 1);
	return 0;
}
"""


def _closed_udp_port() -> int:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there any more: a datagram to it is dropped (NO_SOCKET)
    return port


@pytest.mark.needs("fentry")
def test_the_corpus_policy_posts_a_dropped_packet_with_both_stacks(rig, tmp_path: Path) -> None:
    from sensorium.bpf.btf import kernel_functions

    text = CORPUS.read_text()
    funcs = kernel_functions()
    if "kfree_skb_reason" not in funcs and "sk_skb_reason_drop" not in funcs:
        pytest.skip("kfree_skb_reason appeared in 5.17 (sk_skb_reason_drop in 6.11): no drop-reason function here")
    if "kfree_skb_reason" not in funcs:
        # 6.11+: kfree_skb_reason is an inline wrapper of sk_skb_reason_drop(sk, skb, reason), the function to hook
        text = (text.replace("call: kfree_skb_reason", "call: sk_skb_reason_drop")
                .replace("- index: 1\n          type: int", "- index: 2\n          type: int")
                .replace("- index: 0\n          type: skb", "- index: 1\n          type: skb"))
        function = "sk_skb_reason_drop"
    else:
        function = "kfree_skb_reason"
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the test program")
    port = _closed_udp_port()
    (tmp_path / "sender.c").write_text(SENDER % port)
    exe = tmp_path / "sender"
    subprocess.run([cc, "-O0", "-fno-omit-frame-pointer", "-o", str(exe), str(tmp_path / "sender.c")], check=True)
    h = rig.load(text, "kprobes")
    p = run(exe)
    try:
        evs = rig.events(lambda b: b["process"]["pid"] == p.pid and "user_stack_trace" in b, wait=20.0)
    finally:
        done(p)
    assert evs, (rig.events(lambda b: b["process"]["pid"] == p.pid, wait=0), h.status()["counters"])
    e = evs[0]
    assert e["function_name"] == function and e["policy_name"] == "stack-traces-example"
    assert e["args"][0]["skb_arg"]["dport"] == port
    assert e["user_stack_trace"][0]["symbol"] == "sensorium_stack_marker"
    assert e["user_stack_trace"][0]["module"] == str(exe)
    assert "main" in _symbols(e["user_stack_trace"])
    kernel = _symbols(e["kernel_stack_trace"])
    assert any(s.startswith("__udp4_lib_rcv") for s in kernel), kernel
    assert "do_syscall_64" in kernel, kernel
    assert h.status()["hooks"][0]["mechanism"] == "fentry"


def test_a_process_gone_before_its_user_stack_is_named_keeps_its_kernel_stack_and_is_counted(rig, program: Path) -> None:
    h = rig.load(POLICY % BOTH, "kprobes")
    p = run(program)
    done(p)  # exited (and reaped) before the rig's reader decodes its record
    evs = rig.events(_ours, wait=3.0)
    assert len(evs) == 1
    assert "user_stack_trace" not in evs[0]
    assert "do_syscall_64" in _symbols(evs[0]["kernel_stack_trace"])
    c = h.status()["counters"]
    assert c["stack_process_gone"] == 1 and c["stack_missing"] == 0


def test_stack_traces_on_a_tracepoint_warn_that_tetragon_format_has_no_field_for_them() -> None:
    from sensorium.hooks.testing import _Sections
    from sensorium.policy import parse_policy

    text = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: tp-stacks
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_getpriority
    selectors:
    - matchActions:
      - action: Post
        kernelStackTrace: true
      - action: NoPost
        userStackTrace: true
"""
    pol = parse_policy(text, "tp.yaml", _Sections())
    assert pol.warnings == [
        "tp.yaml:12: spec.tracepoints[0].selectors[0].matchActions[0].kernelStackTrace: Tetragon's process_tracepoint "
        "event has no stack trace fields: the stacks are exported only with events.format: extended",
        "tp.yaml:14: spec.tracepoints[0].selectors[0].matchActions[1].userStackTrace: userStackTrace has no effect "
        "with the NoPost action (only Post takes stack traces): ignored",
    ]


def test_stack_traces_on_lsmhooks_are_refused_by_name() -> None:
    from sensorium.hooks.testing import _Sections
    from sensorium.policy import parse_policy
    from sensorium.policy_rules import validate_policies
    from sensorium.yamlsrc import SourceError

    text = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: lsm-stacks
spec:
  lsmhooks:
  - hook: file_open
    selectors:
    - matchActions:
      - action: Post
        userStackTrace: true
"""
    with pytest.raises(SourceError) as ei:
        validate_policies(text, "lsm.yaml", _Sections())
    assert "stack traces are not implemented on lsmhooks" in str(ei.value)
    assert "matchActions[0].userStackTrace" in str(ei.value)
    assert parse_policy(text, "lsm.yaml", _Sections())  # the document itself is valid: the rule refuses it


TP_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: tp-stacks
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_getpriority
    args:
    - index: 5
      type: int
    - index: 6
      type: int
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values: ["%d"]
      matchActions:
      - action: Post
        kernelStackTrace: true
        userStackTrace: true
""" % MAGIC


@pytest.fixture(params=("tetragon", "extended"))
def tp_rig(request: pytest.FixtureRequest):
    from hook_helpers import Rig

    from sensorium import schema
    from sensorium_sensors.tracepoint.sensor import TracepointSensor

    schema.set_format(request.param)
    r = Rig(TracepointSensor)
    try:
        yield r, request.param
    finally:
        r.close()
        try:
            r.check_schema()
        finally:
            schema.set_format("tetragon")


def test_a_tracepoint_takes_the_stacks_and_exports_them_only_in_the_extended_format(tp_rig, program: Path) -> None:
    rig, fmt = tp_rig
    h = rig.load(TP_POLICY, "tracepoints")
    p = run(program)
    try:
        evs = rig.events(lambda b: [a.get("int_arg") for a in b.get("args", [])][-1:] == [MAGIC], wait=3.0)
    finally:
        done(p)
    assert len(evs) == 1
    assert evs[0]["user_stack_trace"][0]["symbol"] == "sensorium_stack_marker"  # the body has them either way
    line = orjson.loads(next(e for e in rig.ctx.events).json())["process_tracepoint"]
    if fmt == "tetragon":  # Tetragon's ProcessTracepoint has no stack fields
        assert "user_stack_trace" not in line and "kernel_stack_trace" not in line
    else:
        assert line["user_stack_trace"][0]["symbol"] == "sensorium_stack_marker"
        if "kernel_stack_trace" in line:
            assert "do_syscall_64" in [f.get("symbol") for f in line["kernel_stack_trace"]]
        else:  # 5.10 hands a syscalls tracepoint the task's user registers: bpf_get_stackid has no kernel stack
            assert h.status()["counters"]["stack_error"] == 1

"""Named lists (spec.lists) and "list:NAME" references, as Tetragon's list-syscalls examples use them: a
kprobes item on "list:NAME" hooks every syscall of the list; a list in an InMap matchArgs compares the
syscall id with the listed syscalls' numbers. Parsed offline, then loaded on the real kernel."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hook_helpers import rig_fixture

from sensorium.policy import parse_policies
from sensorium.syscalls_x86_64 import SYSCALLS_X86_64
from sensorium.yamlsrc import SourceError
from sensorium_sensors.kprobe.sensor import KprobeSensor
from sensorium_sensors.tracepoint.sensor import TracepointSensor

KPROBES = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: dups
spec:
  lists:
  - name: dups
    type: syscalls
    values:
    - sys_dup
    - sys_dup2
  kprobes:
  - call: list:dups
    args:
    - index: 0
      type: int
"""

TRACEPOINT = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: dups-tp
spec:
  lists:
  - name: dups
    type: syscalls
    values: [sys_dup, sys_dup2]
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args:
    - index: 4
      type: uint64
    selectors:
    - matchArgs:
      - index: 0
        operator: InMap
        values: ["list:dups"]
"""

# dup2(1, 987) then dup(987) through libc (Python's os.dup is fcntl(F_DUPFD_CLOEXEC), and the interpreter
# makes dup2 calls of its own at start): the two listed syscalls, from one process we know.
DUPS = "import os, ctypes; libc = ctypes.CDLL(None); libc.dup2(1, 987); libc.dup(987)"


@pytest.fixture
def reg() -> Any:
    from sensorium.plugins import PluginRegistry

    return PluginRegistry().discover()


def refused(text: str, reg: Any) -> str:
    with pytest.raises(SourceError) as ei:
        parse_policies(text, "p.yaml", reg)
    return str(ei.value)


def test_a_call_on_a_list_becomes_one_syscall_hook_per_name_with_the_items_lines(reg) -> None:
    [p] = parse_policies(KPROBES, "p.yaml", reg)
    [sec] = p.sections
    assert [(i.call, i.syscall) for i in sec.items] == [("sys_dup", True), ("sys_dup2", True)]
    assert p.hook_line("kprobes", 0) == p.hook_line("kprobes", 1) == 13  # both from the one item the user wrote


def test_an_inmap_list_becomes_the_syscall_numbers(reg) -> None:
    [p] = parse_policies(TRACEPOINT, "p.yaml", reg)
    [m] = p.sections[0].items[0].selectors[0].matchArgs
    assert (m.operator, m.op, m.values) == ("InMap", "Equal",
                                            [str(SYSCALLS_X86_64["dup"]), str(SYSCALLS_X86_64["dup2"])])


@pytest.mark.parametrize("change, error", [
    (("call: list:dups", "call: list:nope"), "p.yaml:13: spec.kprobes[0].call: 'list:nope' names no list of spec.lists"),
    (("    - sys_dup2\n", "    - __ia32_sys_dup\n"),
     None),  # a call on a 32-bit syscall: refused by the sensor at load, like a written-out one
    (("type: syscalls", "type: generated_ftrace"),
     "p.yaml:9: spec.lists[0].values: a generated_ftrace list is the kernel functions its pattern matches: it "
     "takes no values"),
    (("type: syscalls", "type: nonsense"),
     "p.yaml:8: spec.lists[0].type: list type 'nonsense' is not one of syscalls, generated_syscalls, generated_ftrace"),
    (("  - call: list:dups\n", "  - call: list:dups\n    syscall: false\n"),
     "p.yaml:14: spec.kprobes[0].syscall: list 'dups' names syscalls: syscall: false contradicts it"),
])
def test_list_mistakes_are_named_with_file_line_and_field(reg, change, error) -> None:
    text = KPROBES.replace(*change)
    if error is None:
        [p] = parse_policies(text, "p.yaml", reg)
        assert [i.call for i in p.sections[0].items] == ["sys_dup", "__ia32_sys_dup"]
        return
    assert refused(text, reg) == error


def test_a_32bit_syscall_in_an_inmap_list_is_its_i386_number_marked_as_tetragon_does(reg) -> None:
    text = TRACEPOINT.replace("values: [sys_dup, sys_dup2]", "values: [sys_dup, __ia32_sys_dup, i386/sys_dup2]")
    [p] = parse_policies(text, "p.yaml", reg)
    [m] = p.sections[0].items[0].selectors[0].matchArgs
    # i386: dup 41, dup2 63, with bit 31 (Tetragon's IS_32BIT), which only a 32-bit task's id carries
    assert m.values == [str(SYSCALLS_X86_64["dup"]), str(0x80000000 | 41), str(0x80000000 | 63)]


def test_a_name_in_neither_table_is_refused_by_name(reg) -> None:
    text = TRACEPOINT.replace("values: [sys_dup, sys_dup2]", "values: [sys_dup, __ia32_sys_nosuch]")
    assert refused(text, reg) == (
        "p.yaml:20: spec.tracepoints[0].selectors[0].matchArgs[0].values[0]: list 'dups': __ia32_sys_nosuch is not "
        "a syscall of x86_64 or of its 32-bit table (__ia32_sys_...)")


# A real 32-bit program (i386, no libc: only the host's gcc and binutils): dup(0), dup2(0, 987) through
# int $0x80, the i386 table (dup 41, dup2 63), then exit.
DUP32_C = r"""
static long sc(long nr, long a, long b)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b) : "memory");
	return r;
}
void _start(void)
{
	sc(41, 0, 0);
	sc(63, 0, 987);
	sc(1, 0, 0);
	for (;;)
		;
}
"""


def build_dup32(tmp_path: Path) -> Path:
    src, exe = tmp_path / "dup32.c", tmp_path / "dup32"
    src.write_text(DUP32_C)
    r = subprocess.run(["cc", "-m32", "-static", "-nostdlib", "-fno-pie", "-no-pie", "-O1", "-o", str(exe), str(src)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no 32-bit build here (cc -m32 -nostdlib): {r.stderr.strip()[:200]}")
    return exe


SYS64_TP = TRACEPOINT.replace("values: [sys_dup, sys_dup2]", "values: [sys_dup, __ia32_sys_dup]").replace(
    "type: uint64", "type: syscall64")


@pytest.mark.kernel
def test_an_i386_listed_syscall_matches_only_a_32bit_task(tp_rig, tmp_path: Path) -> None:
    exe = build_dup32(tmp_path)
    tp_rig.load(SYS64_TP, "tracepoints")
    p32 = subprocess.Popen([str(exe)])
    assert p32.wait(timeout=30) == 0

    def ids(pid: int) -> set[tuple[int, str]]:
        return {(e["args"][0]["syscall_id"]["id"], e["args"][0]["syscall_id"]["abi"])
                for e in tp_rig.events(lambda b: b["process"]["pid"] == pid, wait=2.0)}

    # its dup (i386 41) only: its dup2 (63) is not listed, and 41 of a 64-bit task would be socket()
    assert ids(p32.pid) == {(41, "i386")}
    evs = _dups_events(tp_rig, bool)  # a 64-bit process: its dup (x86_64 32), never 41
    assert {(e["args"][0]["syscall_id"]["id"], e["args"][0]["syscall_id"]["abi"]) for e in evs} == {
        (SYSCALLS_X86_64["dup"], "x64")}


def _dups_events(rig: Any, done: Callable[[list[dict]], bool], timeout: float = 10.0) -> list[dict]:
    """Run DUPS in a fresh process; its events once ``done`` holds for them (or after ``timeout``), plus
    0.3 s more for anything that should not come."""
    proc = subprocess.run([sys.executable, "-c", DUPS + "; print(os.getpid())"], check=True, capture_output=True,
                          text=True)
    pid = int(proc.stdout.split()[-1])

    def pred(b: dict) -> bool:
        return b.get("process", {}).get("pid") == pid

    deadline = time.monotonic() + timeout
    while not done(rig.events(pred, wait=0.2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return rig.events(pred, wait=0)


kprobe_rig = rig_fixture(KprobeSensor)
tp_rig = rig_fixture(TracepointSensor)


@pytest.mark.kernel
def test_the_list_call_hooks_dup_and_dup2_of_a_real_process(kprobe_rig) -> None:
    kprobe_rig.load(KPROBES, "kprobes")
    evs = _dups_events(kprobe_rig, lambda got: {e["function_name"] for e in got} >= {"__x64_sys_dup", "__x64_sys_dup2"})
    got = {(e["function_name"], e["args"][0]["int_arg"]) for e in evs}
    assert {("__x64_sys_dup", 987), ("__x64_sys_dup2", 1)} <= got, got
    assert {f for f, _ in got} == {"__x64_sys_dup", "__x64_sys_dup2"}  # nothing else is hooked


def _ids(got: list[dict]) -> set[int]:
    return {int(e["args"][0].get("uint_arg", e["args"][0].get("size_arg", -1))) for e in got}


@pytest.mark.kernel
def test_the_inmap_list_selects_dup_and_dup2_by_id(tp_rig) -> None:
    tp_rig.load(TRACEPOINT, "tracepoints")
    evs = _dups_events(tp_rig, lambda got: len(_ids(got)) >= 2)
    assert _ids(evs) == {SYSCALLS_X86_64["dup"], SYSCALLS_X86_64["dup2"]}  # both, and no other syscall


GENERATED = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: all-syscalls
spec:
  lists:
  - name: all
    type: generated_syscalls
  kprobes:
  - call: list:all
    selectors:
    - matchBinaries:
      - operator: In
        values: [BINARY]
"""


def test_a_generated_syscalls_list_is_every_x86_64_syscall_and_counts_as_one_hook(reg) -> None:
    [p] = parse_policies(GENERATED.replace("BINARY", "/usr/bin/kill"), "p.yaml", reg)
    [sec] = p.sections
    assert [i.call for i in sec.items] == [f"sys_{n}" for n in sorted(SYSCALLS_X86_64, key=SYSCALLS_X86_64.get)]
    assert len(sec.items) == len(SYSCALLS_X86_64) == 362  # over the 256 hooks of a policy, yet one written call
    assert {i.from_list for i in sec.items} == {0}
    assert refused(GENERATED.replace("type: generated_syscalls", "type: generated_syscalls\n    values: [sys_dup]"),
                   reg) == "p.yaml:9: spec.lists[0].values: a generated_syscalls list is every syscall: it takes no values"


def test_the_hook_limit_counts_a_list_call_once_and_written_items_each(reg) -> None:
    many = "".join("  - call: sys_dup\n" for _ in range(256))
    assert refused(GENERATED.replace("BINARY", "/usr/bin/kill") + many, reg).endswith(
        "spec.kprobes: 257 hooks in one policy; the limit is 256")
    [p] = parse_policies(GENERATED.replace("BINARY", "/usr/bin/kill") + many[: len(many) * 255 // 256], "p.yaml", reg)
    assert len(p.sections[0].items) == 362 + 255


@pytest.mark.kernel
def test_the_syscalls_of_a_list_are_one_object_whose_events_name_each_syscall(kprobe_rig) -> None:
    h = kprobe_rig.load(KPROBES, "kprobes")
    [(plan, _obj)] = h.objects  # one program for dup and dup2
    assert [m.body["function_name"] for m in plan.members] == ["__x64_sys_dup", "__x64_sys_dup2"]
    [st] = h.status()["hooks"]
    assert st["hook"] == "kprobes[0..1] syscall list: __x64_sys_dup, __x64_sys_dup2"
    assert st["mechanism"] == "raw_tp sys_enter"
    evs = _dups_events(kprobe_rig, lambda got: {e["function_name"] for e in got} >= {"__x64_sys_dup", "__x64_sys_dup2"})
    got = {(e["function_name"], e["args"][0]["int_arg"]) for e in evs}
    assert {("__x64_sys_dup", 987), ("__x64_sys_dup2", 1)} <= got, got
    assert {f for f, _ in got} == {"__x64_sys_dup", "__x64_sys_dup2"}


def _copy_binary(tmp_path: Path, src: str) -> str:
    import shutil

    dst = tmp_path / Path(src).name
    shutil.copy2(src, dst)
    return str(dst)


@pytest.mark.kernel
def test_a_generated_syscalls_list_is_one_program_reporting_every_syscall_of_a_binary_we_own(kprobe_rig,
                                                                                          tmp_path: Path) -> None:
    binary = _copy_binary(tmp_path, "/usr/bin/true")  # ours: only its syscalls match
    h = kprobe_rig.load(GENERATED.replace("BINARY", binary), "kprobes")
    [(plan, _obj)] = h.objects
    assert len(plan.members) == 362
    proc = subprocess.Popen([binary])
    assert proc.wait(10) == 0

    def ours(b: dict) -> bool:
        return b.get("process", {}).get("pid") == proc.pid

    deadline = time.monotonic() + 10
    names: list[str] = []
    while time.monotonic() < deadline and "__x64_sys_exit_group" not in names:
        names = [e["function_name"] for e in kprobe_rig.events(ours)]
    # /usr/bin/true (a copy: the selector's binary) maps its libraries and exits: one event per syscall it made
    # after its exec, each named as it ran, and its last is exit_group
    assert {"__x64_sys_exit_group", "__x64_sys_mmap", "__x64_sys_openat"} <= set(names), names
    assert names[-1] == "__x64_sys_exit_group"
    assert all(n.startswith("__x64_sys_") for n in names)


def test_the_syscalls_of_a_list_share_an_object_only_where_they_read_their_arguments_alike(kprobe_rig) -> None:
    text = KPROBES.replace("    - sys_dup\n    - sys_dup2\n", "    - sys_mkdir\n    - sys_rmdir\n    - sys_creat\n"
                                                            "    - sys_dup\n    - sys_dup2\n")
    text = text.replace("      type: int", "      type: string")
    plans = kprobe_rig.sensor.plan(kprobe_rig.view(text, "kprobes"))
    got = [(p.hook, [m.body["function_name"] for m in p.members]) for p in plans]
    assert got == [
        # paths made absolute from the cwd: one object for both
        ("kprobes[0..1] syscall list: __x64_sys_mkdir, __x64_sys_rmdir", ["__x64_sys_mkdir", "__x64_sys_rmdir"]),
        ("kprobes[2] sys_creat", []),  # its path is the opened file's, at sys_exit: a program of its own
        # a plain string (not a path parameter of theirs)
        ("kprobes[3..4] syscall list: __x64_sys_dup, __x64_sys_dup2", ["__x64_sys_dup", "__x64_sys_dup2"]),
    ]
    assert [p.compiled.cfg.syscall_nr for p in plans] == [-2, SYSCALLS_X86_64["creat"], -2]


def test_written_out_syscalls_keep_one_object_each(kprobe_rig) -> None:
    text = KPROBES.split("  lists:")[0] + "  kprobes:\n  - call: sys_dup\n  - call: sys_dup2\n"
    plans = kprobe_rig.sensor.plan(kprobe_rig.view(text, "kprobes"))
    assert [(p.hook, p.members) for p in plans] == [("kprobes[0] sys_dup", ()), ("kprobes[1] sys_dup2", ())]


def test_policy_check_says_the_items_came_from_a_list_call(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sensorium.cli import cli

    f = tmp_path / "all.yaml"
    f.write_text(GENERATED.replace("BINARY", "/usr/bin/kill"))
    res = CliRunner().invoke(cli, ["policy", "check", str(f)])
    assert res.exit_code == 0 and res.stdout == ("all-syscalls: valid (kprobes: 362 (362 from 1 list call); "
                                                 "enforcement)\n"), res.output


FTRACE = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: ftrace
spec:
  lists:
  - name: fns
    type: generated_ftrace
    pattern: "PATTERN"
  kprobes:
  - call: list:fns
"""


def test_a_generated_ftrace_list_is_the_kernel_functions_its_pattern_matches(reg) -> None:
    """Tetragon's semantics: an RE2 pattern searched in each traceable kernel function name of the node; each
    function is a kernel-function hook of its own (syscall: false)."""
    from sensorium.bpf.btf import kernel_functions
    from sensorium.policy_lists import _available_filter_functions

    names = set(kernel_functions())
    traceable = _available_filter_functions()  # None where tracefs' list cannot be read (lockdown, as here)
    if traceable is not None:
        names &= traceable
    want = sorted(n for n in ("ksys_read", "ksys_write") if n in names)
    assert want, "this kernel's BTF has neither ksys_read nor ksys_write"
    [p] = parse_policies(FTRACE.replace("PATTERN", "^ksys_(read|write)$"), "p.yaml", reg)
    [sec] = p.sections
    assert [(i.call, i.syscall) for i in sec.items] == [(n, False) for n in want]
    assert p.hook_line("kprobes", 0) == 11
    # the corpus's "^ksys_*": every function whose name starts with ksys
    [p] = parse_policies(FTRACE.replace("PATTERN", "^ksys_*"), "p.yaml", reg)
    assert [i.call for i in p.sections[0].items] == sorted(n for n in names if n.startswith("ksys"))


@pytest.mark.parametrize("pattern, error", [
    ("(a)\\\\1", "p.yaml:9: spec.lists[0].pattern: pattern '(a)\\\\1' is not a regular expression (RE2 syntax): "
                 "invalid escape sequence: \\1"),
    ("^sensorium_no_such_function$", "p.yaml:9: spec.lists[0].pattern: pattern '^sensorium_no_such_function$' "
                                     "matches no traceable kernel function on this node"),
    ("", "p.yaml:9: spec.lists[0].pattern: a generated_ftrace list needs a pattern (a regular expression over "
         "kernel function names)"),
    ("a" * 300, "p.yaml:9: spec.lists[0].pattern: pattern: at most 256 characters, no NUL"),
])
def test_generated_ftrace_pattern_mistakes_are_named(reg, pattern, error) -> None:
    assert refused(FTRACE.replace("PATTERN", pattern), reg) == error


def test_a_generated_ftrace_list_over_the_value_limit_names_the_count(reg) -> None:
    msg = refused(FTRACE.replace("PATTERN", "^s"), reg)  # thousands of functions start with s
    assert msg.startswith("p.yaml:9: spec.lists[0].pattern: pattern '^s' matches ") and "kernel functions on this node: at most" in msg


def test_a_pattern_that_backtracks_forever_elsewhere_is_linear_here(reg) -> None:
    """(a+)+$ takes exponential time in a backtracking engine on a long non-matching name; RE2 is linear."""
    t = time.monotonic()
    refused(FTRACE.replace("PATTERN", "^(_+)+$"), reg)
    assert time.monotonic() - t < 10

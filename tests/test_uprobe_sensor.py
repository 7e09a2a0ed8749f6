"""The uprobe sensor against the real kernel: a small C program compiled here, uprobe policies added to
the real agent with ``sensorium policy add``, argument values and return values in ``process_uprobe``
events, in-kernel selectors, Sigkill at function entry, and bad policies that leave nothing loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hook_helpers import rig_fixture

from sensorium.elf import ElfError, function_symbols
from sensorium.hookspecs import PolicyLoadError
from sensorium_sensors.uprobe.sensor import UprobeSensor

REPO = Path(__file__).resolve().parents[1]
CLI = [str(REPO / ".venv" / "bin" / "sensorium")] if (REPO / ".venv" / "bin" / "sensorium").exists() else \
    [sys.executable, "-c", "from sensorium.cli import main; main()"]

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")]

# sensorium_check(code, name) is called once per pair of arguments; its result is code*2 (+1 if name
# starts with 'x'). main prints the sum after every call, so a process killed at the entry of the
# function prints nothing.
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int sensorium_check(int code, const char *name)
{
	__asm__ volatile("" ::: "memory");
	return code * 2 + (name[0] == 'x');
}

int main(int argc, char **argv)
{
	int total = 0;

	for (int i = 1; i + 1 < argc; i += 2)
		total += sensorium_check(atoi(argv[i]), argv[i + 1]);
	printf("%d\n", total);
	return 0;
}
"""

rig = rig_fixture(UprobeSensor)


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the test program cannot be built")
    d = tmp_path_factory.mktemp("uprobe-prog")
    (d / "check.c").write_text(PROGRAM)
    subprocess.run([gcc, "-O1", "-o", str(d / "check"), str(d / "check.c")], check=True, capture_output=True)
    return d / "check"


def uprobe_policy(name: str, binary: Path | str, *, symbol: str = "sensorium_check", ret: bool = False,
                  selectors: str = "") -> str:
    text = f"""\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  uprobes:
  - path: "{binary}"
    symbols:
    - "{symbol}"
    args:
    - index: 0
      type: int
    - index: 1
      type: string
"""
    if ret:
        text += "    return: true\n    returnArg:\n      index: 0\n      type: int\n"
    return text + selectors


def cli(sock: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args, "--socket", str(sock)], capture_output=True, text=True, timeout=60)
    if check:
        assert res.returncode == 0, f"sensorium {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def uprobe_events(events: list[dict[str, Any]], policy: str, pid: int | None = None) -> list[dict[str, Any]]:
    out = []
    for e in events:
        b = e.get("process_uprobe")
        if b and b.get("policy_name") == policy and (pid is None or b.get("process", {}).get("pid") == pid):
            out.append(b)
    return out


def uprobes_on(binary: Path) -> list[dict[str, Any]]:
    """uprobe/uretprobe attachments on ``binary`` by any process (bpftool perf)."""
    out = subprocess.run(["bpftool", "perf", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return [p for p in json.loads(out or "[]") if p.get("filename") == str(binary)]


@pytest.fixture
def running(agent, tmp_path):
    sock = tmp_path / "run" / "api.sock"
    # extended: the uretprobe's return value is ours (Tetragon's ProcessUprobe has no return field)
    h = agent({"api": {"socket": str(sock)}, "sensors": {"uprobe": {"enabled": True}},
               "events": {"format": "extended"}})
    return h, sock


def test_uprobe_args_and_uretprobe_return_through_the_agent(running, program, tmp_path):
    h, sock = running
    p1 = tmp_path / "args.yaml"
    p1.write_text(uprobe_policy("up-args", program))
    assert cli(sock, "policy", "add", str(p1)).stdout == "policy up-args added\n"
    # The uretprobe policy posts only for the call whose name is "beta", decided in the kernel.
    p2 = tmp_path / "ret.yaml"
    p2.write_text(uprobe_policy("up-ret", program, ret=True, selectors="""\
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values:
        - "beta"
"""))
    cli(sock, "policy", "add", str(p2))
    assert {p["fd_type"] for p in uprobes_on(program)} == {"uprobe", "uretprobe"}

    proc = subprocess.run([str(program), "7", "alpha", "-3", "beta"], capture_output=True, text=True, check=True)
    assert proc.stdout == "8\n"  # the probes observe, they do not change what the function does
    # subprocess.run does not give the pid: find it from the events of the only process running `program`.
    h.wait_for(lambda e: len(uprobe_events([e], "up-args")) == 1 and
               e["process_uprobe"]["args"][1] == {"string_arg": "beta"})
    h.wait_for(lambda e: bool(uprobe_events([e], "up-ret")))
    time.sleep(0.5)  # anything else the kernel posted has arrived by now
    args_evs = uprobe_events(h.events(), "up-args")
    assert [e["args"] for e in args_evs] == [[{"int_arg": 7}, {"string_arg": "alpha"}],
                                             [{"int_arg": -3}, {"string_arg": "beta"}]]
    e = args_evs[0]
    assert e["path"] == str(program) and e["symbol"] == "sensorium_check"
    assert e["action"] == "KPROBE_ACTION_POST" and "return" not in e
    pid = e["process"]["pid"]
    assert pid > 0 and all(x["process"]["pid"] == pid for x in args_evs)
    # the process cache joined the event: the test program, with its arguments, and its parent (pytest)
    assert e["process"]["binary"] == str(program) and e["process"]["arguments"] == "7 alpha -3 beta"
    assert e["parent"]["pid"] == os.getpid()

    [r] = uprobe_events(h.events(), "up-ret")
    assert r["args"] == [{"int_arg": -3}, {"string_arg": "beta"}]
    assert r["return"] == {"int_arg": -6} and r["process"]["pid"] == pid

    rows = {r["name"]: r for r in json.loads(cli(sock, "policy", "list", "--json").stdout)}
    assert [hk["mechanism"] for hk in rows["up-ret"]["hooks"]] == ["uprobe + uretprobe"]
    assert [hk["mechanism"] for hk in rows["up-args"]["hooks"]] == ["uprobe"]
    assert rows["up-args"]["events"] >= 2

    cli(sock, "policy", "delete", "up-args")
    cli(sock, "policy", "delete", "up-ret")
    assert uprobes_on(program) == []


def test_bad_uprobe_policies_are_named_and_leave_nothing_loaded(running, program, tmp_path):
    _h, sock = running
    cases = {
        "no-binary.yaml": (uprobe_policy("bad1", tmp_path / "no-such-binary"),
                           ":7: spec.uprobes[0].path: ", f"binary {tmp_path / 'no-such-binary'} does not exist"),
        "no-symbol.yaml": (uprobe_policy("bad2", program, symbol="sensorium_no_such_function"),
                           ":9: spec.uprobes[0].symbols[0]: ",
                           f"symbol sensorium_no_such_function is not a function defined in {program}"),
        "not-elf.yaml": (uprobe_policy("bad3", tmp_path / "not-elf.yaml"), ":7: spec.uprobes[0].path: ",
                         "not an ELF file"),
    }
    for fname, (text, where, why) in cases.items():
        f = tmp_path / fname
        f.write_text(text)
        res = cli(sock, "policy", "add", str(f), check=False)
        assert res.returncode == 1, res.stdout
        assert f"{f}{where}" in res.stderr and why in res.stderr, f"{fname}: {res.stderr}"
    # Two symbols, the second missing: the first is not attached either.
    two = uprobe_policy("bad4", program).replace('    - "sensorium_check"\n',
                                                '    - "sensorium_check"\n    - "sensorium_missing"\n')
    f = tmp_path / "two.yaml"
    f.write_text(two)
    res = cli(sock, "policy", "add", str(f), check=False)
    assert res.returncode == 1 and "spec.uprobes[0].symbols[1]" in res.stderr and "sensorium_missing" in res.stderr
    assert json.loads(cli(sock, "policy", "list", "--json").stdout) == []
    assert uprobes_on(program) == []


# -- through the sensor directly (same kernel, same engine, no agent start per case) ------------------

def test_sigkill_at_entry_kills_before_the_function_runs(rig, program):
    text = uprobe_policy("up-kill", program, selectors="""\
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values:
        - "13"
      matchActions:
      - action: Sigkill
""")
    h = rig.load(text, "uprobes")
    ok = subprocess.run([str(program), "1", "a", "2", "b"], capture_output=True, text=True, timeout=30)
    assert (ok.returncode, ok.stdout) == (0, "6\n")
    killed = subprocess.run([str(program), "1", "a", "13", "x"], capture_output=True, text=True, timeout=30)
    assert killed.returncode == -9 and killed.stdout == ""
    [e] = rig.events(lambda b: b.get("policy_name") == "up-kill", wait=2.0)
    assert e["action"] == "KPROBE_ACTION_SIGKILL" and e["action_taken"] is True
    assert e["args"] == [{"int_arg": 13}, {"string_arg": "x"}]
    assert h.status()["hooks"][0]["note"].startswith("Sigkill/Signal are sent from the uprobe at entry")


def test_monitoring_mode_reports_the_kill_without_killing(rig, program):
    text = uprobe_policy("up-mon", program, selectors="""\
    selectors:
    - matchArgs:
      - index: 1
        operator: Prefix
        values:
        - "ki"
      matchActions:
      - action: Sigkill
""")
    rig.load(text, "uprobes", mode="monitoring")
    res = subprocess.run([str(program), "5", "kill-me"], capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout) == (0, "10\n")
    [e] = rig.events(lambda b: b.get("policy_name") == "up-mon", wait=2.0)
    assert e["policy_mode"] == "monitoring" and e["action_taken"] is False
    assert e["args"][1] == {"string_arg": "kill-me"}


def test_file_offset_target(rig, program):
    # The file offset of the function, as `bpftool perf` reported it for a symbol attachment.
    h = rig.load(uprobe_policy("by-sym", program), "uprobes")
    [att] = uprobes_on(program)
    off = att["offset"]
    h.unload()
    text = uprobe_policy("by-off", program).replace('    symbols:\n    - "sensorium_check"\n',
                                                    f"    offsets:\n    - {off}\n")
    rig.load(text, "uprobes")
    subprocess.run([str(program), "4", "zz"], check=True, capture_output=True)
    [e] = rig.events(lambda b: b.get("policy_name") == "by-off", wait=2.0)
    assert e["offset"] == off and "symbol" not in e and e["args"] == [{"int_arg": 4}, {"string_arg": "zz"}]


def test_offset_past_the_end_and_unsupported_type_are_refused(rig, program):
    size = program.stat().st_size
    text = uprobe_policy("bad-off", program).replace('    symbols:\n    - "sensorium_check"\n',
                                                     f"    offsets:\n    - {size + 16}\n")
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.check_policy(rig.view(text, "uprobes"))
    assert ei.value.field == "spec.uprobes[0].offsets[0]" and "past the end" in str(ei.value)
    text = uprobe_policy("bad-type", program).replace("type: string", "type: file")
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.check_policy(rig.view(text, "uprobes"))
    assert ei.value.field == "spec.uprobes[0].args[1].type"


def test_elf_symbols_and_hostile_files(program, tmp_path):
    syms = function_symbols(program)
    assert "sensorium_check" in syms and "main" in syms
    bad = tmp_path / "truncated"
    bad.write_bytes(program.read_bytes()[:200])
    with pytest.raises(ElfError):
        function_symbols(bad)
    (tmp_path / "text").write_text("hello")
    with pytest.raises(ElfError, match="not an ELF file"):
        function_symbols(tmp_path / "text")


def _libc() -> Path:
    for line in Path("/proc/self/maps").read_text().splitlines():
        f = line.split()[-1]
        if "/libc.so" in f or "/libc-" in f:
            return Path(os.path.realpath(f))
    pytest.skip("no libc mapped in this process")


def test_match_binaries_on_a_shared_library_function(rig, program):
    # strtol in libc (our atoi() is inlined to it) is called by many processes; the selector keeps only
    # our program's calls.
    libc = _libc()
    text = f"""\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: libc-strtol
spec:
  uprobes:
  - path: "{libc}"
    symbols: ["strtol"]
    args:
    - index: 0
      type: string
    selectors:
    - matchBinaries:
      - operator: In
        values: ["{program}"]
"""
    rig.load(text, "uprobes")
    other = subprocess.Popen([sys.executable, "-c", "import ctypes; ctypes.CDLL(None).strtol(b'77', None, 10)"])
    ours = subprocess.Popen([str(program), "41", "q"], stdout=subprocess.DEVNULL)
    assert ours.wait(30) == 0 and other.wait(30) == 0
    evs = rig.events(lambda b: b.get("policy_name") == "libc-strtol", wait=2.0)
    assert evs and {e["process"]["pid"] for e in evs} == {ours.pid}
    assert {"string_arg": "41"} in [e["args"][0] for e in evs]
    assert all(e["path"] == str(libc) and e["symbol"] == "strtol" for e in evs)


def test_signal_action_and_match_return_args(rig, program):
    # Signal at entry for code 21; a uretprobe that posts only when the function returned more than 100.
    sig = uprobe_policy("up-signal", program, selectors="""\
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values:
        - "21"
      matchActions:
      - action: Signal
        argSig: 10
""")
    rig.load(sig, "uprobes", policy_id=8)
    ret = uprobe_policy("up-big", program, ret=True, selectors="""\
    selectors:
    - matchReturnArgs:
      - index: 0
        operator: GT
        values:
        - "100"
""")
    rig.load(ret, "uprobes", policy_id=9)
    res = subprocess.run([str(program), "3", "a", "60", "b"], capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout) == (0, "126\n")
    [big] = rig.events(lambda b: b.get("policy_name") == "up-big", wait=2.0)
    assert big["return"] == {"int_arg": 120} and big["args"] == [{"int_arg": 60}, {"string_arg": "b"}]
    res = subprocess.run([str(program), "21", "a"], capture_output=True, text=True, timeout=30)
    assert res.returncode == -10 and res.stdout == ""  # SIGUSR1's default action ends the process
    [e] = rig.events(lambda b: b.get("policy_name") == "up-signal", wait=2.0)
    assert e["action"] == "KPROBE_ACTION_SIGNAL" and e["signal"] == 10 and e["action_taken"] is True


def test_uprobe_policy_from_the_policies_directory(agent, program, tmp_path):
    d = tmp_path / "policies"
    d.mkdir()
    (d / "up.yaml").write_text(uprobe_policy("up-dir", program))
    (d / "bad.yaml").write_text(uprobe_policy("up-dir-bad", program, symbol="sensorium_nope"))
    sock = tmp_path / "run" / "api.sock"
    h = agent({"api": {"socket": str(sock)}, "policies": {"directory": str(d)}})
    rows = json.loads(cli(sock, "policy", "list", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("up-dir", "enabled")]
    [err] = json.loads(cli(sock, "status", "--json").stdout)["policy_directory_errors"]
    assert f"{d / 'bad.yaml'}:9: spec.uprobes[0].symbols[0]" in err["error"] and "sensorium_nope" in err["error"]
    subprocess.run([str(program), "5", "dir"], check=True, capture_output=True)
    ev = h.wait_for(lambda e: bool(uprobe_events([e], "up-dir")))
    assert ev["process_uprobe"]["args"] == [{"int_arg": 5}, {"string_arg": "dir"}]

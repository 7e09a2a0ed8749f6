"""The usdt sensor against the real kernel: a program with hand-written USDT notes (tests/data/usdt), Tetragon's
usdts example policies pointed at it, the arguments of process_usdt events read from registers, memory,
constants and scaled-index memory, the semaphore counted while attached, every site of a probe, and bad
binaries and policies refused by name. The Set action (bpf_probe_write_user) runs in the VM lane where the
kernel allows it; this host's lockdown refuses the helper, which the test checks is said so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hook_helpers import rig_fixture
from sensorium_testlib import IN_VM

from sensorium.elf import ElfError
from sensorium.hookspecs import PolicyLoadError
from sensorium_sensors.usdt.notes import ARG_CONST, ARG_DEREF, ARG_REG, ARG_SIB, parse_arg, usdt_probes
from sensorium_sensors.usdt.sensor import UsdtSensor

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "tetragon-policies"
CLI = [str(REPO / ".venv" / "bin" / "sensorium")] if (REPO / ".venv" / "bin" / "sensorium").exists() else \
    [sys.executable, "-c", "from sensorium.cli import main; main()"]

rig = rig_fixture(UsdtSensor)
kernel = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the test program cannot be built")
    out = tmp_path_factory.mktemp("usdt-prog") / "usdt_prog"
    subprocess.run([gcc, "-O1", "-o", str(out), str(REPO / "tests/data/usdt/usdt_prog.c")], check=True,
                   capture_output=True)
    return out


def corpus(name: str, binary: Path) -> str:
    """A usdts example policy of Tetragon's corpus, its binary replaced by ours (same providers and names)."""
    text = (CORPUS / name).read_text()
    for old in ("/home/jolsa/tetragon/contrib/tester-progs/usdt-override", "/home/jolsa/tetragon/contrib/tester-progs/usdt"):
        text = text.replace(old, str(binary))
    return text


def run(program: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=30, check=True)


# -- notes, without a kernel -------------------------------------------------------------------------

def test_notes_of_the_test_program(program):
    probes = {(p.provider, p.name): p for p in usdt_probes(program)}
    u3 = probes[("test", "usdt3")]
    assert u3.semaphore and u3.semaphore_offset and u3.args_spec == "-4@%edi -8@%rsi 8@%rdx"
    assert [(a.type, a.size, a.signed) for a in u3.args] == [(ARG_REG, 4, True), (ARG_REG, 8, True), (ARG_REG, 8, False)]
    assert probes[("tetragon", "test_4B")].args[0].type == ARG_DEREF
    assert [a.type for a in probes[("test", "forms")].args] == [ARG_CONST, ARG_SIB, ARG_DEREF]
    assert len([p for p in usdt_probes(program) if p.name == "twice"]) == 2


def test_arg_specs():
    a = parse_arg("-1@-96(%rbp,%rax,8)")
    assert (a.type, a.size, a.signed, a.val, a.scale) == (ARG_SIB, 1, True, -96, 3)
    assert parse_arg("4@$-9").val == -9 and parse_arg("8@%r12").reg == 24
    for bad, why in (("8@%rip", "register %rip"), ("4@%ah", "bits 8-15"), ("3@%rax", "size 3"),
                     ("%rax", "no size"), ("8@foo(%rip)", "operand 'foo(%rip)'")):
        with pytest.raises(ElfError, match=why.replace("(", r"\(").replace(")", r"\)")):
            parse_arg(bad)


def test_hostile_notes_are_refused_by_name(tmp_path, program):
    data = bytearray(program.read_bytes())
    spec = b"-4@%edi -8@%rsi 8@%rdx"
    at = data.index(spec)
    bad = tmp_path / "bad-arg"
    bad.write_bytes(bytes(data[:at]) + b"-4@%xyz -8@%rsi 8@%rdx" + bytes(data[at + len(spec):]))
    with pytest.raises(ElfError, match=r"USDT test:usdt3: argument '-4@%xyz': unknown or unsupported register"):
        usdt_probes(bad)
    cut = tmp_path / "cut"
    cut.write_bytes(bytes(data[:len(data) // 3]))
    with pytest.raises(ElfError):
        usdt_probes(cut)
    (tmp_path / "text").write_text("not an elf\n" * 10)
    with pytest.raises(ElfError, match="not an ELF file"):
        usdt_probes(tmp_path / "text")


# -- against the kernel ------------------------------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")
def test_usdt_example_args_and_semaphore(rig, program):
    """Tetragon's usdt.yaml (test:usdt3, args 0 int32 and 1 int64): the semaphore is counted while the
    probe is attached (the guarded code runs), the arguments come from %edi and %rsi."""
    assert run(program, "sema").stdout == "semaphore 0\n"
    h = rig.load(corpus("usdt.yaml", program), "usdts")
    res = run(program, "sema")
    assert res.stdout == "semaphore 1\n"
    [e] = rig.events(lambda b: b.get("policy_name") == "usdts", wait=2.0)
    assert (e["path"], e["provider"], e["name"]) == (str(program), "test", "usdt3")
    assert e["args"] == [{"int_arg": 1}, {"long_arg": 42}]
    assert e["action"] == "KPROBE_ACTION_POST"
    assert e["process"]["pid"] > 0
    [hk] = h.status()["hooks"]
    assert hk["mechanism"] == "uprobe (USDT)" and "semaphore" in hk["note"]
    h.unload()
    assert run(program, "sema").stdout == "semaphore 0\n"  # detached: the count went back down


POLICY = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  usdts:
  - path: "{path}"
    provider: "test"
    name: "{probe}"
    args:
{args}
"""


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")
def test_constant_scaled_index_and_memory_arguments(rig, program):
    args = "    - index: 2\n      type: int16\n    - index: 0\n      type: uint32\n    - index: 1\n      type: int16\n"
    rig.load(POLICY.format(name="forms", path=program, probe="forms", args=args), "usdts")
    run(program, "forms")
    [e] = rig.events(lambda b: b.get("policy_name") == "forms", wait=2.0)
    assert e["args"] == [{"int_arg": -1}, {"uint_arg": 42}, {"int_arg": -6}]


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")
def test_every_site_of_a_probe_and_matchargs(rig, program):
    args = "    - index: 0\n      type: int32\n"
    sel = "    selectors:\n    - matchArgs:\n      - index: 0\n        operator: Equal\n        values:\n        - \"2\"\n"
    h = rig.load(POLICY.format(name="twice", path=program, probe="twice", args=args), "usdts")
    assert len(h.status()["hooks"]) == 2
    rig.load(POLICY.format(name="twice-2", path=program, probe="twice", args=args) + sel, "usdts", policy_id=8)
    run(program, "forms")
    evs = rig.events(lambda b: b.get("policy_name") == "twice", wait=2.0)
    rig.events(lambda b: False, wait=0.5)
    assert sorted(e["args"][0]["int_arg"] for e in rig.events(lambda b: b.get("policy_name") == "twice")) == [1, 2]
    assert [e["args"] for e in rig.events(lambda b: b.get("policy_name") == "twice-2")] == [[{"int_arg": 2}]]
    assert evs


@pytest.mark.kernel
@pytest.mark.vm  # the lane's kernels run without lockdown: Set is checked there
@pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")
def test_set_overwrites_the_argument(rig, program):
    """Tetragon's usdt-set.yaml (tetragon:test_4B, Set argIndex 0 to 32): the program's local, passed as the
    probe's memory argument, is 32 after the probe. Where the kernel refuses bpf_probe_write_user (lockdown,
    as on this host) the policy is refused saying so, and nothing is loaded."""
    text = corpus("usdt-set.yaml", program)
    if not rig.ctx.kernel.has("bpf_probe_write_user"):
        assert not IN_VM, f"the VM lane's kernel {IN_VM} refuses bpf_probe_write_user: Set is checked nowhere"
        with pytest.raises(PolicyLoadError) as ei:
            rig.load(text, "usdts")
        assert "Set action cannot be served on this kernel" in ei.value.reason
        assert ei.value.field == "spec.usdts[0].selectors[0].matchActions"
        assert run(program, "set", "3", "4").stdout == "0\n"
        pytest.skip("this kernel refuses bpf_probe_write_user (lockdown): Set is checked in the VM lane")
    h = rig.load(text, "usdts")
    assert run(program, "set", "3", "4").stdout == "32\n"
    [e] = rig.events(lambda b: b.get("policy_name") == "usdts", wait=2.0)
    assert (e["provider"], e["name"]) == ("tetragon", "test_4B")
    assert e["args"] == [{"int_arg": 0}, {"int_arg": 3}, {"int_arg": 4}]  # read before the write
    assert e["action"] == "KPROBE_ACTION_SET"
    h.unload()
    assert run(program, "set", "3", "4").stdout == "0\n"


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")
def test_bad_usdt_policies_are_named(rig, program, tmp_path):
    args = "    - index: 0\n      type: int32\n"
    cases = [
        (POLICY.format(name="b1", path=program, probe="nosuch", args=args), "spec.usdts[0].name",
         f"USDT probe test:nosuch is not in {program}"),
        (POLICY.format(name="b2", path=tmp_path / "none", probe="usdt3", args=args), "spec.usdts[0].path",
         "does not exist"),
        (POLICY.format(name="b3", path=program, probe="twice", args="    - index: 3\n      type: int32\n"),
         "spec.usdts[0].args[0].index", "the probe has 1 arguments"),
    ]
    for text, field, why in cases:
        with pytest.raises(PolicyLoadError) as ei:
            rig.load(text, "usdts")
        assert ei.value.field == field and why in ei.value.reason, (field, ei.value)
    assert rig.sensor.status()["hooks"] == 0


def test_policy_check_accepts_the_usdt_examples():
    for name in ("usdt.yaml", "usdt-set.yaml"):
        res = subprocess.run([*CLI, "policy", "check", str(CORPUS / name)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")
def test_usdt_policy_through_the_agent(agent, program, tmp_path):
    """``sensorium policy add`` of usdt.yaml (our binary) to a running agent: the process_usdt event joins
    the process cache (binary, arguments, parent), and the policy's hook says how it is served."""
    import json

    sock = tmp_path / "run" / "api.sock"
    h = agent({"api": {"socket": str(sock)}})
    f = tmp_path / "usdt.yaml"
    f.write_text(corpus("usdt.yaml", program))

    def cli(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([*CLI, *args, "--socket", str(sock)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res

    assert cli("policy", "add", str(f)).stdout == "policy usdts added\n"
    assert run(program, "sema").stdout == "semaphore 1\n"
    ev = h.wait_for(lambda e: "process_usdt" in e)["process_usdt"]
    assert ev["args"] == [{"int_arg": 1}, {"long_arg": "42"}]  # 64-bit integers are JSON strings
    assert ev["process"]["binary"] == str(program) and ev["process"]["arguments"] == "sema"
    assert ev["parent"]["pid"] == os.getpid()
    [row] = json.loads(cli("policy", "list", "--json").stdout)
    assert [hk["mechanism"] for hk in row["hooks"]] == ["uprobe (USDT)"]
    cli("policy", "delete", "usdts")
    assert run(program, "sema").stdout == "semaphore 0\n"

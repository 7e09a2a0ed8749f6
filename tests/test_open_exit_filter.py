"""The opened-file syscall hooks served at sys_exit alone (tp_btf, `sens_open_exit` in selectors.h) reject
most calls early, from the path's length and its first/last component, before the full evaluation. These
tests check that the shortcut never changes a decision: every rule is loaded twice at the same time, once
on the fast program and once on the sys_enter + sys_exit pair that has no shortcut, and the same process's
opens (absolute, relative to the cwd and to a dirfd, through "..", "//" and "/./", a symlink, a hard link,
a failed open, a mount crossing, a path deeper than the walk and one longer than a captured string, "/"
itself) must be matched by exactly the same rules. Each open carries a tag in its unused `mode` register,
so an event says which open it was."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hook_helpers import open_exit_available, rig_fixture, scope_of

from sensorium.hooks import hookset as engine
from sensorium.hooks import openexit
from sensorium_sensors.kprobe.sensor import KprobeSensor

needs_open_exit = pytest.mark.skipif(not open_exit_available(), reason="this kernel has no bpf_rdonly_cast kfunc "
                                     "(6.2+): the exit-only program does not load here (the pair serves the hook)")

pytestmark = [pytest.mark.kernel]

rig = rig_fixture(KprobeSensor)

# The child: one open per tag through the raw syscall (glibc drops `mode` without O_CREAT), then prints its pid.
CHILD = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ops = json.loads(sys.argv[1])
os.chdir(ops["cwd"])
res = {}
for tag, (nr, dirfd, path, flags) in ops["ops"].items():
    dfd = os.open(dirfd, os.O_RDONLY | os.O_DIRECTORY) if dirfd else -100
    p = path.encode()
    if nr == 2:
        fd = libc.syscall(2, p, flags, int(tag))
    else:
        fd = libc.syscall(257, dfd, p, flags, int(tag))
    res[tag] = fd if fd >= 0 else -ctypes.get_errno()
    if fd >= 0:
        os.close(fd)
    if dfd >= 0:
        os.close(dfd)
print(json.dumps({"pid": os.getpid(), "res": res}))
"""

O_DIRECTORY = os.O_DIRECTORY


def _policy(name: str, call: str, selectors: str) -> str:
    return f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  kprobes:
  - call: {call}
    syscall: true
    args:
    - {{index: 0, type: int}}
    - {{index: 1, type: string}}
    - {{index: 3, type: int}}
    selectors:
{selectors}
"""


def _sel(op: str, *values: str, index: int = 1) -> str:
    vals = ", ".join(json.dumps(v) for v in values)
    return f"""    - matchArgs:
      - {{index: {index}, operator: {op}, values: [{vals}]}}
"""


@pytest.fixture
def tree(tmp_path: Path):
    """The files the child opens, and its list of opens by tag."""
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    secret = d / "secret.txt"
    secret.write_text("s")
    (d / "secreu.txt").write_text("u")               # same length, another last component
    (tmp_path / "xyz").mkdir()
    (tmp_path / "xyz" / "secret.txt").write_text("x")  # same length, same last component, another directory
    (tmp_path / "link").symlink_to(secret)
    os.link(secret, tmp_path / "hard.txt")
    deep = tmp_path / "deep"
    p = deep
    for i in range(40):                                # deeper than the 32-step walk
        p = p / f"d{i}"
    p.mkdir(parents=True)
    (p / "secret.txt").write_text("deep")
    longd = tmp_path / ("L" * 120) / ("M" * 120)       # longer than a captured string (255 bytes)
    longd.mkdir(parents=True)
    (longd / "secret.txt").write_text("long")
    shm = None
    if os.path.ismount("/dev/shm"):
        shm = Path("/dev/shm") / f"sensorium-pq-{os.getpid()}.txt"
        shm.write_text("shm")
    ops: dict[str, tuple[int, str | None, str, int]] = {
        "1": (257, None, str(secret), 0),
        "2": (257, None, "secret.txt", 0),                        # relative to the cwd (d)
        "3": (257, None, "sub/../secret.txt", 0),
        "4": (257, None, f"{d}/sub/../secret.txt", 0),
        "5": (257, None, str(tmp_path / "link"), 0),              # symlink to the protected file
        "6": (257, None, str(tmp_path / "hard.txt"), 0),          # hard link: its own name
        "7": (257, str(d), "secret.txt", 0),                      # relative to a dirfd
        "8": (257, None, str(d / "secreu.txt"), 0),
        "9": (257, None, str(tmp_path / "xyz" / "secret.txt"), 0),
        "10": (257, None, str(secret), O_DIRECTORY),              # fails (ENOTDIR): the string decides
        "11": (257, None, "sub/../missing.txt", 0),               # fails (ENOENT)
        "12": (257, None, "/", O_DIRECTORY),
        "13": (257, None, str(d), O_DIRECTORY),
        "14": (257, None, str(p / "secret.txt"), 0),
        "15": (257, None, str(longd / "secret.txt"), 0),
        "16": (257, None, f"{d}//./secret.txt", 0),
        "17": (2, None, str(tmp_path / "link"), 0),               # open(2), not openat
        "18": (257, None, "../link", 0),
    }
    if shm is not None:
        ops["19"] = (257, None, str(shm), 0)                      # another mount
        ops["20"] = (257, None, "/dev/shm/../shm/" + shm.name, 0)
    try:
        yield {"tmp": tmp_path, "d": d, "secret": secret, "deep": p / "secret.txt", "long": longd / "secret.txt",
               "shm": shm, "ops": {"cwd": str(d), "ops": ops}}
    finally:
        if shm is not None:
            shm.unlink()


def _run(rig, tree, cg, rules: dict[str, str], call: str = "sys_openat") -> dict[str, tuple[set[str], set[str]]]:
    """Load every rule on both mechanisms, run the child once, return per rule the tags each one matched."""
    handles = {}
    for name, sels in rules.items():
        for fast in (True, False):
            engine.OPEN_EXIT_ENABLED = fast
            try:
                h = rig.load(_policy(f"{name}-{'fast' if fast else 'pair'}", call, sels), "kprobes",
                             policy_id=len(handles) + 10, scope=scope_of(cg))
            finally:
                engine.OPEN_EXIT_ENABLED = True
            want = engine.OPEN_EXIT_MECHANISM if fast else "raw_tp sys_enter + sys_exit"
            assert h.status()["hooks"][0]["mechanism"] == want, h.status()["hooks"][0]
            handles[(name, fast)] = h
    out = cg.run([sys.executable, "-c", CHILD, json.dumps(tree["ops"])], capture_output=True, text=True,
                 check=True)
    child = json.loads(out.stdout)
    pid = child["pid"]
    n_ops = len(tree["ops"]["ops"])
    # wait until the events of the widest rule have all arrived, then take everything
    rig.events(lambda b: False, wait=0.5)
    bodies = rig.events(lambda b: b.get("process", {}).get("pid") == pid, wait=0.1)
    got: dict[str, tuple[set[str], set[str]]] = {name: (set(), set()) for name in rules}
    everything: dict[str, tuple[list, list]] = {name: ([], []) for name in rules}
    for b in bodies:
        pname = b["policy_name"]
        name, _, kind = pname.rpartition("-")
        tag = str(b["args"][2]["int_arg"])
        # every event, the interpreter's own opens included, is compared; the tagged ones are returned
        everything[name][0 if kind == "fast" else 1].append((tag, b["args"][1].get("string_arg"), b["return"]))
        if tag in tree["ops"]["ops"]:
            got[name][0 if kind == "fast" else 1].add(tag)
    for name, (fast_evs, pair_evs) in everything.items():
        assert sorted(fast_evs, key=repr) == sorted(pair_evs, key=repr), name
    for (_name, _fast), h in handles.items():
        assert h.counters()["dropped"] == 0
        h.unload()
    rig.handles.clear()
    for tag in tree["ops"]["ops"]:
        assert tag in child["res"]
    assert n_ops == len(child["res"])
    return got


@needs_open_exit
def test_early_rejection_decides_exactly_as_the_full_evaluation(rig, tree, cgroup2_dir) -> None:
    d, secret = tree["d"], tree["secret"]
    rules = {
        "eq": _sel("Equal", str(secret)),
        "eq-two": _sel("Equal", str(d / "secreu.txt"), str(secret)),
        "eq-noslash": _sel("Equal", "secret.txt"),
        "eq-root": _sel("Equal", "/"),
        "eq-deep": _sel("Equal", str(tree["deep"])),
        "eq-long": _sel("Equal", str(tree["long"])[:255]),           # the path as captured: cut at 255 bytes
        "postfix-cut": _sel("Postfix", str(tree["long"])[245:255]),  # the end of the cut path
        "prefix-dir": _sel("Prefix", str(d) + "/"),
        "prefix-file": _sel("Prefix", str(secret)),
        "prefix-top-start": _sel("Prefix", "/tm"),
        "prefix-none": _sel("Prefix", "/nonexistent-sensorium-bench/"),
        "prefix-root": _sel("Prefix", "/"),
        "prefix-shm": _sel("Prefix", "/dev/shm/"),
        "postfix-leaf": _sel("Postfix", "/secret.txt"),
        "postfix-end": _sel("Postfix", "cret.txt"),
        "postfix-dir": _sel("Postfix", "dir/secret.txt"),
        "postfix-ext": _sel("Postfix", ".txt"),
        "notprefix": _sel("NotPrefix", "/nonexistent-sensorium-bench/"),
        "or": _sel("Prefix", "/nonexistent-sensorium-bench/") + _sel("Postfix", "/hard.txt"),
        "or-int": _sel("Prefix", "/nonexistent-sensorium-bench/") + _sel("Equal", "13", index=3),
    }
    got = _run(rig, tree, cgroup2_dir, rules)
    for name, (fast, pair) in got.items():
        assert fast == pair, (name, sorted(fast), sorted(pair))
    # and the decisions are the ones the rules mean (symlink/relative/..//dirfd caught, hard link not)
    caught = {"1", "2", "3", "4", "5", "7", "10", "16", "18"}  # 17 is open(2): not this hook
    assert got["eq"][0] == caught
    assert got["eq-two"][0] == caught | {"8"}
    assert got["eq-noslash"][0] == set() and got["prefix-none"][0] == set()
    assert got["eq-root"][0] == {"12"}
    assert got["eq-deep"][0] == set()       # deeper than the walk: reported from "/...", never equal
    assert got["eq-long"][0] == {"15"} and got["postfix-cut"][0] == {"15"}
    assert got["postfix-dir"][0] == caught
    assert got["postfix-leaf"][0] >= caught | {"9", "14"} and "6" not in got["postfix-leaf"][0]
    assert got["or"][0] == {"6"} and got["or-int"][0] == {"13"}
    assert got["notprefix"][0] == set(tree["ops"]["ops"]) - {"17"}
    if tree["shm"] is not None:
        assert got["prefix-shm"][0] == {"19", "20"}


@needs_open_exit
def test_open_syscall_on_the_fast_program(rig, tree, cgroup2_dir) -> None:
    """open(2) is served by the same exit-only program (its path is parameter 0)."""
    secret = tree["secret"]
    text = f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: open-fast}}
spec:
  kprobes:
  - call: sys_open
    syscall: true
    args:
    - {{index: 0, type: string}}
    - {{index: 2, type: int}}
    selectors:
    - matchArgs:
      - {{index: 0, operator: Equal, values: ["{secret}"]}}
"""
    h = rig.load(text, "kprobes", scope=scope_of(cgroup2_dir))
    assert h.status()["hooks"][0]["mechanism"] == engine.OPEN_EXIT_MECHANISM
    out = cgroup2_dir.run([sys.executable, "-c", CHILD, json.dumps(tree["ops"])], capture_output=True, text=True,
                          check=True)
    pid = json.loads(out.stdout)["pid"]
    evs = rig.events(lambda b: b.get("process", {}).get("pid") == pid, wait=1.0)
    assert [str(e["args"][1]["int_arg"]) for e in evs] == ["17"]  # the symlink opened with open(2)
    assert evs[0]["args"][0]["string_arg"] == str(secret)


@pytest.mark.parametrize("op,value,expect", [
    ("eq", b"/etc/shadow", (11, 3, openexit.PQ_LEAF, openexit.PQ_EXACT, 6, 5)),
    ("eq", b"/" + b"x" * 254, (255, 1, openexit.PQ_LEAF, openexit.PQ_EXACT, 254, 1)),  # could equal a cut path
    ("eq", b"shadow", (6, 1, openexit.PQ_NEVER, 0, 0, 0)),
    ("eq", b"/", (1, 3, openexit.PQ_LEAF, openexit.PQ_EXACT, 0, 1)),
    ("prefix", b"/etc/", (5, 0, openexit.PQ_TOP, openexit.PQ_EXACT, 3, 1)),
    ("prefix", b"/et", (3, 0, openexit.PQ_TOP, openexit.PQ_STARTS, 2, 1)),
    ("prefix", b"/", (1, 0, 0, 0, 0, 0)),
    ("prefix", b"etc/", (4, 0, openexit.PQ_NEVER, 0, 0, 0)),
    ("postfix", b"/shadow", (7, 0, openexit.PQ_LEAF, openexit.PQ_EXACT, 6, 1)),
    ("postfix", b"adow", (4, 0, openexit.PQ_LEAF, openexit.PQ_ENDS, 4, 0)),
    ("postfix", b"etc/", (4, 0, openexit.PQ_LEAF, openexit.PQ_EXACT, 0, 4)),
])
def test_early_rejection_facts_of_a_value(op: str, value: bytes, expect: tuple) -> None:
    assert openexit.pq_value(op, value) == expect


def test_without_the_fast_object_the_pair_serves_the_hook(rig, tree, cgroup2_dir, monkeypatch) -> None:
    """Where the exit-only object cannot load (a kernel without tp_btf or the bpf_rdonly_cast kfunc, here
    simulated with a source that does not build), the hook is served by sys_enter + sys_exit, says so,
    and still decides on the opened file."""
    from sensorium.hookspecs import ProbeSource

    monkeypatch.setattr(engine, "HOOK_OPEN_PROBE", ProbeSource(name="sens_hook_open_missing",
                                                               source=tree["tmp"] / "missing.bpf.c"))
    text = _policy("fallback", "sys_openat", _sel("Equal", str(tree["secret"])))
    h = rig.load(text, "kprobes", scope=scope_of(cgroup2_dir))
    hook = h.status()["hooks"]
    assert len(hook) == 1 and hook[0]["mechanism"] == "raw_tp sys_enter + sys_exit", hook
    assert "tp_btf sys_exit not available here" in hook[0]["note"]
    out = cgroup2_dir.run([sys.executable, "-c", CHILD, json.dumps(tree["ops"])], capture_output=True, text=True,
                          check=True)
    pid = json.loads(out.stdout)["pid"]
    evs = rig.events(lambda b: b.get("process", {}).get("pid") == pid and str(b["args"][2]["int_arg"]) == "5",
                     wait=1.0)
    assert evs and evs[0]["args"][1]["string_arg"] == str(tree["secret"])  # the symlink, caught

"""`sensorium policy replay` decides as the kernel does: a differential test on this host's kernel.

One agent runs a broad monitoring policy (every openat, pread64, connect and unlinkat of the test's own
binaries) beside candidate policies, also in monitoring, one hook per operator or selector kind, each named
by its `message`. The test's processes make known calls; then every candidate is replayed over the broad
recording and the events it would post must be exactly those the kernel posted for it, call by call
(pid, thread, the call's path/address/sizes, the action). Unit tests of the evaluator are in
tests/test_policy_replay_units.py.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sensorium_testlib import REPO, SENSORIUM_BIN, cgroup2_mount, make_cgroup, start_agent

pytestmark = [pytest.mark.kernel, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")]

WORKLOAD_C = REPO / "tests" / "data" / "replay" / "workload.c"
HOOKS = {  # the broad recording's hooks: (section, item without selectors)
    "openat": ("kprobes", {"call": "sys_openat", "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "string"},
                                                           {"index": 2, "type": "int"}]}),
    "pread": ("kprobes", {"call": "sys_pread64", "return": True, "returnArg": {"index": 0, "type": "long"},
                          "args": [{"index": 0, "type": "int"}, {"index": 2, "type": "size_t"},
                                   {"index": 3, "type": "long"}]}),
    "connect": ("kprobes", {"call": "sys_connect", "args": [{"index": 0, "type": "int"},
                                                             {"index": 1, "type": "sockaddr"}]}),
    "unlinkat": ("tracepoints", {"subsystem": "syscalls", "event": "sys_enter_unlinkat",
                                 "args": [{"index": 5, "type": "int"}, {"index": 6, "type": "string"}]}),
    # uprobes on the workload's own functions (path filled in by the fixture)
    "umark": ("uprobes", {"symbols": ["work_mark"], "args": [{"index": 0, "type": "string"},
                                                             {"index": 1, "type": "int64"}]}),
    "ubuf": ("uprobes", {"symbols": ["work_buf"], "args": [{"index": 0, "type": "char_buf", "sizeArgIndex": 2},
                                                           {"index": 1, "type": "size_t"}]}),
}


def _policy(name: str, items: list[tuple[str, dict[str, Any]]]) -> str:
    spec: dict[str, Any] = {"options": [{"name": "policy-mode", "value": "monitor"}]}
    for section, item in items:
        spec.setdefault(section, []).append(item)
    # JSON is YAML: the policy loader reads it as any policy file
    return json.dumps({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name},
                       "spec": spec}, indent=1)


def _cases(d: Path, ports: tuple[int, int]) -> dict[str, tuple[str, dict[str, Any]]]:
    """case (its hook's message) -> (hook family, item): one operator or selector kind each. Every selector
    also requires one of the test's binaries, as the broad policy does."""
    bins = {"operator": "Prefix", "values": [f"{d}/bin/"]}
    p1, p2 = ports
    long_path = _long_path(d)

    def arg(i: int, op: str, *values: Any) -> dict[str, Any]:
        return {"index": i, "operator": op, "values": [str(v) for v in values]} if values else \
            {"index": i, "operator": op}

    def item(hook: str, *selectors: dict[str, Any], args: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        it = _hook(hook, d)
        if args is not None:
            it["args"] = args
        it["selectors"] = [{**s, "matchBinaries": [bins, *s.get("matchBinaries", [])]} for s in selectors]
        return it

    path_only = [{"index": 1, "type": "string"}]  # a layout unlike the recording's: mapped by parameter
    c: dict[str, tuple[str, dict[str, Any]]] = {
        "s-eq": ("openat", item("openat", {"matchArgs": [arg(1, "Equal", f"{d}/f1")]}, args=path_only)),
        "s-ne": ("openat", item("openat", {"matchArgs": [arg(1, "NotEqual", f"{d}/f1")]}, args=path_only)),
        "s-prefix": ("openat", item("openat", {"matchArgs": [arg(1, "Prefix", f"{d}/sub/")]}, args=path_only)),
        "s-notprefix": ("openat", item("openat", {"matchArgs": [arg(1, "NotPrefix", f"{d}/sub/")]})),
        "s-postfix": ("openat", item("openat", {"matchArgs": [arg(1, "Postfix", ".cfg")]})),
        "s-notpostfix": ("openat", item("openat", {"matchArgs": [arg(1, "NotPostfix", ".cfg")]})),
        "s-inmap": ("openat", item("openat", {"matchArgs": [arg(1, "InMap", f"{d}/f1", f"{d}/f2.cfg")]})),
        "s-notinmap": ("openat", item("openat", {"matchArgs": [arg(1, "NotInMap", f"{d}/f1", f"{d}/f2.cfg")]})),
        "s-long-255": ("openat", item("openat", {"matchArgs": [arg(1, "Equal", long_path[:255])]})),
        "s-long-prefix": ("openat", item("openat", {"matchArgs": [arg(1, "Prefix", long_path[:200])]})),
        "s-relative": ("openat", item("openat", {"matchArgs": [arg(1, "Equal", f"{d}/rel.txt")]})),
        "i-mask": ("openat", item("openat", {"matchArgs": [arg(2, "Mask", "0x40")]})),
        "i-eq-neg": ("openat", item("openat", {"matchArgs": [arg(0, "Equal", -100)]})),
        "i-ne": ("openat", item("openat", {"matchArgs": [arg(2, "NotEqual", 0)]})),
        "i-lt-signed": ("openat", item("openat", {"matchArgs": [arg(0, "LT", 0)]})),
        "i-as-uint32": ("openat", item("openat", {"matchArgs": [arg(0, "Equal", 2**32 - 100)]},
                                       args=[{"index": 0, "type": "uint32"},
                                             {"index": 1, "type": "string"}])),
        "first-match": ("openat", item("openat",
                                       {"matchArgs": [arg(1, "Prefix", f"{d}/sub/")],
                                        "matchActions": [{"action": "Sigkill"}]},
                                       {"matchArgs": [arg(1, "Prefix", f"{d}/")]})),
        "nopost": ("openat", item("openat",
                                  {"matchArgs": [arg(1, "Prefix", f"{d}/sub/")],
                                   "matchActions": [{"action": "NoPost"}]},
                                  {"matchArgs": [arg(1, "Prefix", f"{d}/")]})),
        "signal": ("openat", item("openat", {"matchArgs": [arg(1, "Postfix", ".cfg")],
                                             "matchActions": [{"action": "Signal", "argSig": 10}]})),
        "ratelimit": ("openat", item("openat", {"matchArgs": [arg(1, "Equal", f"{d}/f1")],
                                                "matchActions": [{"action": "Post", "rateLimit": "1m"}]})),
        "bin-in": ("openat", item("openat", {"matchBinaries": [{"operator": "In", "values": [f"{d}/bin/work-b"]}]})),
        "bin-notin": ("openat", item("openat", {"matchBinaries": [{"operator": "NotIn",
                                                                   "values": [f"{d}/bin/work-b"]}]})),
        "bin-postfix": ("openat", item("openat", {"matchBinaries": [{"operator": "Postfix", "values": ["-b"]}]})),
        "bin-notpostfix": ("openat", item("openat", {"matchBinaries": [{"operator": "NotPostfix",
                                                                        "values": ["-b"]}]})),
        "bin-notprefix": ("openat", item("openat", {"matchBinaries": [{"operator": "NotPrefix",
                                                                       "values": [f"{d}/bin/work-b"]}]})),
        "bin-symlink": ("openat", item("openat", {"matchBinaries": [{"operator": "In",
                                                                     "values": [f"{d}/bin/link-a"]}]})),
        "bin-follow": ("openat", item("openat", {"matchBinaries": [{"operator": "In", "values": [f"{d}/bin/work-c"],
                                                                    "followChildren": True}]})),
        "ns-net-not-host": ("openat", item("openat", {"matchNamespaces": [{"namespace": "Net", "operator": "NotIn",
                                                                           "values": ["host_ns"]}]})),
        "ns-mnt-host": ("openat", item("openat", {"matchNamespaces": [{"namespace": "Mnt", "operator": "In",
                                                                       "values": ["host_ns"]}]})),
        "cap-in": ("openat", item("openat", {"matchCapabilities": [{"type": "Effective", "operator": "In",
                                                                    "values": ["CAP_SYS_ADMIN"]}]})),
        "cap-notin": ("openat", item("openat", {"matchCapabilities": [{"type": "Permitted", "operator": "NotIn",
                                                                       "values": ["SYS_ADMIN"]}]})),
        "p-gt": ("pread", item("pread", {"matchArgs": [arg(2, "GT", 100)]})),
        "p-lt": ("pread", item("pread", {"matchArgs": [arg(3, "LT", 50)]})),
        "p-ret-gt": ("pread", item("pread", {"matchReturnArgs": [arg(0, "GT", 5)]})),
        "p-ret-eq": ("pread", item("pread", {"matchReturnArgs": [arg(0, "Equal", 0)]})),
        "c-daddr": ("connect", item("connect", {"matchArgs": [arg(1, "DAddr", "127.0.0.1")]})),
        "c-notdaddr": ("connect", item("connect", {"matchArgs": [arg(1, "NotDAddr", "127.0.0.0/8")]})),
        "c-daddr6": ("connect", item("connect", {"matchArgs": [arg(1, "DAddr", "::1/128")]})),
        "c-mapped": ("connect", item("connect", {"matchArgs": [arg(1, "DAddr", "127.0.0.0/8")]})),
        "c-saddr": ("connect", item("connect", {"matchArgs": [arg(1, "SAddr", "127.0.0.2")]})),
        "c-dport-range": ("connect", item("connect", {"matchArgs": [arg(1, "DPort", f"{max(ports)}:{min(ports)}")]})),
        "c-notdport": ("connect", item("connect", {"matchArgs": [arg(1, "NotDPort", p1)]})),
        "c-sport": ("connect", item("connect", {"matchArgs": [arg(1, "SPort", p2)]})),
        "c-dportpriv": ("connect", item("connect", {"matchArgs": [arg(1, "DPortPriv")]})),
        "c-notdportpriv": ("connect", item("connect", {"matchArgs": [arg(1, "NotDPortPriv")]})),
        "c-family": ("connect", item("connect", {"matchArgs": [arg(1, "Family", "AF_INET6")]})),
        "c-family-num": ("connect", item("connect", {"matchArgs": [arg(1, "Family", 2)]})),
        "t-prefix": ("unlinkat", item("unlinkat", {"matchArgs": [arg(1, "Prefix", f"{d}/sub/")]})),
        "t-dfd": ("unlinkat", item("unlinkat", {"matchArgs": [arg(0, "Equal", -100)]})),
        "u-prefix": ("umark", item("umark", {"matchArgs": [arg(0, "Prefix", "hello")]})),
        "u-gt": ("umark", item("umark", {"matchArgs": [arg(1, "GT", 10)]}, args=[{"index": 1, "type": "int64"}])),
        "u-buf": ("ubuf", item("ubuf", {"matchArgs": [arg(0, "Postfix", "def")]})),
    }
    for name, (_, it) in c.items():
        it["message"] = name
    return c


def _hook(hook: str, d: Path) -> dict[str, Any]:
    it = dict(HOOKS[hook][1])
    if HOOKS[hook][0] == "uprobes":
        it["path"] = str(d / "bin" / "work-a")
    return it


def _pid_cases(d: Path, pid: int) -> dict[str, tuple[str, dict[str, Any]]]:
    bins = {"operator": "Prefix", "values": [f"{d}/bin/"]}

    def item(*pids: dict[str, Any]) -> dict[str, Any]:
        return {**_hook("openat", d), "selectors": [{"matchPIDs": list(pids), "matchBinaries": [bins]}]}
    c = {
        "pid-in": ("openat", item({"operator": "In", "values": [pid]})),
        "pid-notin": ("openat", item({"operator": "NotIn", "values": [pid]})),
        "pid-follow": ("openat", item({"operator": "In", "values": [pid], "followForks": True})),
        "pid-ns": ("openat", item({"operator": "In", "values": [pid], "isNamespacePID": True})),
    }
    for name, (_, it) in c.items():
        it["message"] = name
    return c


def _long_path(d: Path) -> str:
    """A file whose path is longer than the 255 bytes the kernel compares."""
    parts = [d] + [("x" * 60) + f"{i}" for i in range(5)]
    return str(Path(*parts) / "long-leaf.txt")


def _free_ports() -> tuple[int, int]:
    out = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        out.append(s.getsockname()[1])
        s.close()
    return out[0], out[1]


def _key(family: str, body: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one call whatever args a policy declared: the process, and the call's path, sizes or
    address (each call of the workload is distinct, or repeated on purpose)."""
    args = body.get("args") or []
    vals = {k: v for a in args for k, v in a.items() if k != "label"}
    p = body.get("process") or {}
    what = {"openat": lambda: vals.get("string_arg"), "unlinkat": lambda: vals.get("string_arg"),
            "umark": lambda: vals.get("long_arg"), "ubuf": lambda: vals.get("bytes_arg"),
            "connect": lambda: json.dumps(vals.get("sockaddr_arg"), sort_keys=True),
            "pread": lambda: (vals.get("size_arg"), vals.get("long_arg"), json.dumps(body.get("return")))}[family]()
    return (p.get("pid"), p.get("tid"), what, body.get("action"))


ACTION = {"Sigkill": "KPROBE_ACTION_SIGKILL", "Signal": "KPROBE_ACTION_SIGNAL"}


class Recording:
    def __init__(self, events: Path, broad: str, policies: dict[str, str], cases: dict[str, tuple[str, dict]],
                 since: dict[str, int]) -> None:
        self.events, self.broad, self.policies, self.cases, self.since = events, broad, policies, cases, since


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the workload")
    mp = cgroup2_mount()
    if mp is None:
        pytest.skip("no cgroup2 mount on this machine")
    d = tmp_path_factory.mktemp("replay")
    (d / "bin").mkdir()
    subprocess.run(["cc", "-O1", "-o", str(d / "bin" / "work-a"), str(WORKLOAD_C)], check=True)
    for other in ("work-b", "work-c"):
        shutil.copy(d / "bin" / "work-a", d / "bin" / other)
    (d / "bin" / "link-a").symlink_to(d / "bin" / "work-a")  # the kernel matches the file, not the link
    (d / "sub").mkdir()
    for f in ("f1", "f2.cfg", "sub/f3", "sub/f4.cfg", "rel.txt", "child.txt", "b.txt", "ns.txt", "cap.txt",
              "pid.txt", "pidchild.txt", "u1", "sub/u2", "follow.txt", "via-link.txt"):
        (d / f).write_text("x")
    (d / "data").write_bytes(b"d" * 300)
    long_path = Path(_long_path(d))
    long_path.parent.mkdir(parents=True)
    long_path.write_text("x")
    ports = _free_ports()
    cases = _cases(d, ports)
    pol = d / "policies"
    pol.mkdir()
    ours = {"matchBinaries": [{"operator": "Prefix", "values": [f"{d}/bin/"]}]}
    broad_items = [(HOOKS[h][0], {**_hook(h, d), "selectors": [ours]}) for h in HOOKS]
    broad = _policy("replay-broad", broad_items)
    (pol / "broad.yaml").write_text(broad)
    policies: dict[str, str] = {}
    for fam in HOOKS:
        names = [n for n, (f, _) in cases.items() if f == fam]
        for k in range(0, len(names), 12):  # a few policies of at most 12 hooks
            pname = f"replay-{fam}-{k // 12}"
            text = _policy(pname, [(HOOKS[fam][0], cases[n][1]) for n in names[k:k + 12]])
            (pol / f"{pname}.yaml").write_text(text)
            policies[pname] = text
    events = d / "events.jsonl"
    started: list[Any] = []
    with_cg = make_cgroup(mp, 2)
    cg = next(with_cg)
    try:
        # namespaces and capabilities are recorded only on request (Tetragon's defaults): the replay needs them
        h = start_agent(d / "agent", {"policies": {"directory": str(pol)},
                                      "events": {"process_credentials": True, "process_namespaces": True},
                                      "sensors": {"tracepoint": {"enabled": True}, "kprobe": {"enabled": True},
                                                  "uprobe": {"enabled": True}},
                                      "exporters": [{"type": "file", "path": str(events), "flush_interval_ms": 50,
                                                     "max_size_mb": 4096}]},
                        started=started, ready_timeout=180)
        a, b, c = (str(d / "bin" / n) for n in ("work-a", "work-b", "work-c"))
        p1, p2 = ports
        run = [a, f"open:{d}/f1", f"open:{d}/f2.cfg", f"open:{d}/sub/f3", f"open:{d}/sub/f4.cfg", "open:rel.txt",
               "mark:hello-world:5", "mark:hello:20", "mark:bye:30", "buf:abcdef", "buf:xyz",
               f"open:{d}/missing.cfg", f"creat:{d}/new.cfg", f"open:{long_path}", f"open:{d}/f1", f"open:{d}/f1",
               f"pread:{d}/data:200:10", f"pread:{d}/data:50:100", f"pread:{d}/data:10:5000",
               f"conn4:127.0.0.1:{p1}", f"conn4:127.0.0.2:{p2}", f"conn6:::1:{p1}", f"conn6:::ffff:127.0.0.1:{p2}",
               "conn4:127.0.0.1:80", f"unlink:{d}/u1", f"unlink:{d}/sub/u2", f"unlink:{d}/missing",
               "fork", f"open:{d}/child.txt", f"exec:{b}", f"open:{d}/f1", f"open:{d}/b-exec.txt"]
        assert cg.run(run, cwd=str(d)).returncode == 0
        assert cg.run([b, f"open:{d}/f1", f"open:{d}/b.txt", f"conn4:127.0.0.1:{p1}"]).returncode == 0
        assert cg.run([c, "fork", f"exec:{a}", f"open:{d}/follow.txt", "fork", f"exec:{b}",
                       f"open:{d}/follow.txt"]).returncode == 0
        assert cg.run([str(d / "bin" / "link-a"), f"open:{d}/via-link.txt"]).returncode == 0
        assert cg.run(["unshare", "-n", a, f"open:{d}/ns.txt"]).returncode == 0
        assert cg.run(["setpriv", "--bounding-set", "-sys_admin", a, f"open:{d}/cap.txt"]).returncode == 0
        # matchPIDs: a paused process, its pid put in policies added live; replayed from when they were added
        paused = cg.popen([a, "wait", f"open:{d}/pid.txt", "fork", f"open:{d}/pidchild.txt"], stdin=subprocess.PIPE)
        time.sleep(0.5)  # the shell wrapper has exec'd the workload (same pid)
        pid_cases = _pid_cases(d, paused.pid)
        pid_text = _policy("replay-pids", [("kprobes", it) for _, it in pid_cases.values()])
        (d / "pids.yaml").write_text(pid_text)
        add = subprocess.run([str(SENSORIUM_BIN), "policy", "add", str(d / "pids.yaml"), "--socket",
                              str(d / "agent" / "api.sock")], capture_output=True, text=True, timeout=120)
        assert add.returncode == 0, add.stderr
        since = time.time_ns()
        time.sleep(0.3)
        assert paused.stdin is not None
        paused.stdin.write(b"x")
        paused.stdin.close()
        assert paused.wait(30) == 0
        cases.update(pid_cases)
        policies["replay-pids"] = pid_text
        h.wait_for(lambda e: "pidchild.txt" in json.dumps(e.get("process_kprobe", {}).get("args", [])) and
                   e["process_kprobe"].get("policy_name") == "replay-broad", path=events, timeout=30)
        time.sleep(1.5)  # the candidates' events of the same calls
        h.stop()
        assert not Path(f"{events}.1").exists(), "the recording rotated: raise max_size_mb"
        yield Recording(events, broad, policies, cases, {"replay-pids": since})
    finally:
        for s in started:
            s.stop()
        try:
            next(with_cg)
        except StopIteration:
            pass


def _kernel_posted(rec: Recording, pname: str) -> dict[str, collections.Counter]:
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in rec.events.read_text().splitlines():
        ev = json.loads(line)
        kind = next((k for k in ev if k.startswith("process_")), "")
        body = ev.get(kind) or {}
        if kind in ("process_kprobe", "process_tracepoint", "process_uprobe") and body.get("policy_name") == pname:
            case = body.get("message")
            out[case][_key(rec.cases[case][0], body)] += 1
    return out


def _replayed(rec: Recording, pname: str) -> tuple[dict[str, collections.Counter], dict[str, Any]]:
    from sensorium.plugins import PluginRegistry
    from sensorium.policy_rules import validate_policies
    from sensorium.replay.records import read_events
    from sensorium.replay.report import Replay

    reg = PluginRegistry().discover()
    cand = validate_policies(rec.policies[pname], f"{pname}.yaml", reg)
    broad = validate_policies(rec.broad, "broad.yaml", reg)
    rp = Replay(cand, recorded_with=broad, since_ns=rec.since.get(pname), keep_decisions=True,
                unknown_ancestors="no-match")
    rp.feed(read_events(str(rec.events)), str(rec.events))
    lines = {x.line: x for x in rp.decisions}
    bodies: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(rec.events.read_text().splitlines(), 1):
        if n in lines:
            ev = json.loads(line)
            bodies[n] = next(v for k, v in ev.items() if k.startswith("process_"))
    selectors_of = {f"{sec.key}[{i}]": it for sec in cand[0].sections for i, it in enumerate(sec.items)}
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for x in rp.decisions:
        assert x.undecided is None, f"line {x.line}: {x.undecided}"
        if not x.posted:
            continue
        it = selectors_of[x.hook.split(" ")[0]]
        names = [a.action for a in it.selectors[x.selector].matchActions] if x.selector >= 0 else []
        action = next((ACTION[n] for n in names if n in ACTION), "KPROBE_ACTION_POST")
        body = {**bodies[x.line], "action": action}
        out[it.message][_key(rec.cases[it.message][0], body)] += 1
    return out, rp.result()


def _policy_of(rec: Recording, case: str) -> str:
    return next(p for p, text in rec.policies.items() if f'"message": "{case}"' in text)


CASES = ["s-eq", "s-ne", "s-prefix", "s-notprefix", "s-postfix", "s-notpostfix", "s-inmap", "s-notinmap",
         "s-long-255", "s-long-prefix", "s-relative", "i-mask", "i-eq-neg", "i-ne", "i-lt-signed", "i-as-uint32",
         "first-match", "nopost",
         "signal",
         "bin-in", "bin-notin", "bin-postfix", "bin-notpostfix", "bin-notprefix",
         "bin-follow", "ns-net-not-host", "ns-mnt-host", "cap-in", "cap-notin", "p-gt", "p-lt", "p-ret-gt",
         "p-ret-eq", "c-daddr", "c-notdaddr", "c-daddr6", "c-mapped", "c-saddr", "c-dport-range", "c-notdport",
         "c-sport", "c-dportpriv", "c-notdportpriv", "c-family", "c-family-num", "t-prefix", "t-dfd",
         "u-prefix", "u-gt", "u-buf", "pid-in", "pid-notin", "pid-follow", "pid-ns"]
_cache: dict[str, Any] = {}


@pytest.mark.parametrize("case", CASES)
def test_replay_posts_what_the_kernel_posted(recording: Recording, case: str) -> None:
    pname = _policy_of(recording, case)
    if pname not in _cache:
        _cache[pname] = (_kernel_posted(recording, pname), *_replayed(recording, pname))
    kernel, replayed, _ = _cache[pname]
    assert kernel[case], f"{case}: the kernel posted nothing: the case tests nothing"
    assert replayed[case] == kernel[case], (
        f"{case}: replay only {sorted(replayed[case] - kernel[case])}; "
        f"kernel only {sorted(kernel[case] - replayed[case])}")


def test_the_broad_recording_holds_every_call_the_candidates_saw(recording: Recording) -> None:
    """The comparison means something only if the recording is complete: Equal and NotEqual on the same value
    split the broad policy's calls between them, and each gets some."""
    pname = _policy_of(recording, "s-ne")
    kernel = _kernel_posted(recording, pname)
    broad_opens = sum(1 for line in recording.events.read_text().splitlines()
                      if '"policy_name":"replay-broad"' in line and "__x64_sys_openat" in line)
    assert 0 < sum(kernel["s-ne"].values()) < broad_opens
    assert sum(kernel["s-eq"].values()) + sum(kernel["s-ne"].values()) == broad_opens


def test_a_program_run_through_a_symlink_is_its_file_for_both(recording: Recording) -> None:
    """The kernel matches mm->exe_file (the file, never the link) and the recording names the same file, so
    a rule on the link's name matches nothing on either side."""
    pname = _policy_of(recording, "bin-symlink")
    if pname not in _cache:
        _cache[pname] = (_kernel_posted(recording, pname), *_replayed(recording, pname))
    kernel, replayed, _ = _cache[pname]
    assert not kernel["bin-symlink"] and not replayed["bin-symlink"]
    opens = [json.loads(line)["process_kprobe"] for line in recording.events.read_text().splitlines()
             if "via-link.txt" in line and '"process_kprobe"' in line and '"replay-broad"' in line]
    assert opens and all(b["process"]["binary"].endswith("/bin/work-a") for b in opens)


def test_a_rate_limit_posts_the_first_call_of_a_window_as_the_kernel_does(recording: Recording) -> None:
    """The kernel keys "the same arguments" on the captured bytes (run.h, sens_rl_hash_g), which are a function
    of the values alone (capture.h zeroes each string's padding), and the replay on the values: the same
    posts, call by call, and fewer than the matching calls."""
    pname = _policy_of(recording, "ratelimit")
    if pname not in _cache:
        _cache[pname] = (_kernel_posted(recording, pname), *_replayed(recording, pname))
    kernel, replayed, _ = _cache[pname]
    rl = replayed["ratelimit"]
    assert rl and kernel["ratelimit"] == rl
    calls = sum(1 for line in recording.events.read_text().splitlines()
                if '"replay-broad"' in line and f'"string_arg":"{Path(recording.events).parent}/f1"' in line)
    assert sum(rl.values()) < calls and sum(kernel["ratelimit"].values()) <= calls

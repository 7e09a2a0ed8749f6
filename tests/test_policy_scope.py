"""Policy scopes enforced in the kernel by the sensors on the shared hook engine (kprobe syscall hooks,
tracepoints, uprobes; kernel functions in the VM lane): `PolicyView.scope` bounds every hook to the
processes of the scope's cgroups (cgroup2 or the v1 memory hierarchy, descendants included), and
`set_scope` moves it live.

Real processes in real cgroups the tests create: the observable result is the SIGKILL a process got,
the open() that succeeded, the events that arrived (and those that did not). Every blocking rule matches
one file under the test's tmp_path, and is scoped to a test cgroup or, in the host test, restricted to a
copy of cat the test made (matchBinaries): nothing else on the machine can be touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openat_harness as openat
import pytest
from hook_helpers import Rig, gone, our_program_ids, rig_fixture, string_args
from sensorium_testlib import Cgroup, cgroup2_mount, make_cgroup, v1_memory_mount

from sensorium.hookspecs import CgroupRef, PolicyLoadError, Scope
from sensorium.scope import scope_of_directories
from sensorium_sensors.kprobe.sensor import KprobeSensor
from sensorium_sensors.tracepoint.sensor import TracepointSensor
from sensorium_sensors.uprobe.sensor import UprobeSensor

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")]

rig = rig_fixture(KprobeSensor)

HIERS = ["cgroup2", "memory"]


def openat_policy(path: Path | str, kill: bool = True, name: str = "scope-test", binary: str | None = None) -> str:
    actions = f"""      matchBinaries:
      - {{operator: In, values: ["{binary}"]}}
""" if binary is not None else ""
    return openat.openat_policy(path, name=name, flags=False, actions=actions + (openat.SIGKILL if kill else ""))


@pytest.fixture
def new_cgroup() -> Iterator[Callable[[str], Cgroup]]:
    """``new_cgroup("cgroup2" | "memory")``: one more test cgroup of that hierarchy (removed after, its
    processes killed); skips when the hierarchy is not mounted."""
    made: list[Iterator[Cgroup]] = []

    def make(hier: str) -> Cgroup:
        mp = cgroup2_mount() if hier == "cgroup2" else v1_memory_mount()
        if mp is None:
            pytest.skip(f"no {hier} hierarchy mounted on this machine")
        gen = make_cgroup(mp, 2 if hier == "cgroup2" else 1)
        cg = next(gen)
        made.append(gen)
        return cg

    yield make
    for gen in reversed(made):
        with contextlib.suppress(StopIteration):
            next(gen)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret.txt"
    p.write_text("top secret\n")
    return p


def scope_of(*cgs: Any, host: bool = False, roots: tuple[Any, ...] = ()) -> Scope:
    return scope_of_directories([os.fspath(c) for c in cgs], host=host,
                                container_roots=[os.fspath(c) for c in roots])


def cat(cg: Cgroup | None, path: Path, argv0: str = "cat") -> subprocess.CompletedProcess:
    """Run ``cat path`` inside ``cg`` (None: where the test runner is)."""
    argv = [argv0, str(path)]
    if cg is None:
        return subprocess.run(argv, capture_output=True, timeout=60)
    return cg.run(argv, capture_output=True)


def assert_killed(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == -9 and r.stdout == b"", r


def assert_read(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0 and r.stdout == b"top secret\n", r


OPENER = "import sys\nfor _ in sys.stdin:\n    open(sys.argv[1]).read()\n    print('ok', flush=True)\n"


class Opener:
    """A long-lived process in a cgroup that opens ``path`` each time it is asked: shows a scope change
    reaching a process that already runs."""

    def __init__(self, cg: Cgroup, path: Path) -> None:
        self.p = cg.popen([sys.executable, "-c", OPENER, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)

    def opens(self) -> bool:
        """True when the open succeeded; False when the process was killed by SIGKILL for it."""
        assert self.p.poll() is None, f"the opener already exited ({self.p.returncode})"
        assert self.p.stdin is not None and self.p.stdout is not None
        try:
            self.p.stdin.write("\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.p.stdout.readline()
        if line == "ok\n":
            return True
        assert self.p.wait(timeout=10) == -9, f"the opener ended with {self.p.returncode}, not SIGKILL"
        return False

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)


@pytest.fixture
def openers() -> Iterator[Callable[[Cgroup, Path], Opener]]:
    made: list[Opener] = []

    def start(cg: Cgroup, path: Path) -> Opener:
        o = Opener(cg, path)
        made.append(o)
        return o

    yield start
    for o in made:
        o.close()


def pid_events(rig: Rig, path: Path, wait: float = 0.5) -> set[int]:
    """pids of the processes the events about ``path`` came from."""
    return {b["process"]["pid"] for b in rig.events(lambda b: str(path) in string_args(b), wait=wait)}


# -- Sigkill scoped to one cgroup ------------------------------------------------------------------

@pytest.mark.parametrize("hier", HIERS)
def test_sigkill_only_inside_the_scoped_cgroup(rig, secret: Path, new_cgroup, hier: str) -> None:
    """(a) cgroup2 and (b) v1 memory, where containers live on this hybrid host."""
    cg, sibling = new_cgroup(hier), new_cgroup(hier)
    h = rig.load(openat_policy(secret), "kprobes", scope=scope_of(cg))
    assert_killed(cat(cg, secret))
    assert_read(cat(sibling, secret))
    assert_read(cat(None, secret))
    evs = rig.events(lambda b: str(secret) in string_args(b), wait=0.5)
    assert evs and all(e["action"] == "KPROBE_ACTION_SIGKILL" and e["action_taken"] for e in evs)
    assert h.status()["scope"] == {"cgroups": [os.path.realpath(cg)], "host": False, "container_roots": []}


@pytest.mark.parametrize("hier", HIERS)
def test_post_events_only_from_the_scoped_cgroup(rig, secret: Path, new_cgroup, hier: str) -> None:
    cg, sibling = new_cgroup(hier), new_cgroup(hier)
    rig.load(openat_policy(secret, kill=False), "kprobes", scope=scope_of(cg))
    outside = subprocess.Popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    other = sibling.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    inside = cg.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    for p in (outside, other, inside):
        assert p.wait(timeout=30) == 0
    assert pid_events(rig, secret) == {inside.pid}
    # and once more, so the one event above was not a lucky first one
    again = cg.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    assert again.wait(timeout=30) == 0
    assert pid_events(rig, secret) == {inside.pid, again.pid}


def test_scope_in_both_hierarchies_covers_each(rig, secret: Path, new_cgroup) -> None:
    v2, v1 = new_cgroup("cgroup2"), new_cgroup("memory")
    rig.load(openat_policy(secret), "kprobes", scope=scope_of(v2, v1))
    assert_killed(cat(v2, secret))
    assert_killed(cat(v1, secret))
    assert_read(cat(None, secret))


# -- live scope changes ----------------------------------------------------------------------------

@pytest.mark.parametrize("hier", HIERS)
def test_set_scope_moves_the_scope_live_both_ways(rig, secret: Path, new_cgroup, openers, hier: str) -> None:
    """(c) processes that already run see the change at their next open: no reload."""
    x, y = new_cgroup(hier), new_cgroup(hier)
    in_x, in_y = openers(x, secret), openers(y, secret)
    h = rig.load(openat_policy(secret), "kprobes", scope=scope_of(x))
    progs = set(rig.ctx.loaded_prog_ids)  # this rig's programs (other processes may load sens_* ones meanwhile)
    assert in_y.opens()
    assert_killed(cat(x, secret))
    h.set_scope(scope_of(y))
    assert in_x.opens()           # x is out of scope now...
    assert_read(cat(x, secret))
    assert not in_y.opens()       # ...and the process in y that could open a moment ago is killed
    h.set_scope(scope_of(x))
    assert not in_x.opens()
    assert_read(cat(y, secret))
    assert rig.ctx.loaded_prog_ids == progs and progs <= our_program_ids()  # map updates, no program was reloaded
    assert h.status()["scope"]["cgroups"] == [os.path.realpath(x)]


def test_set_scope_across_hierarchies(rig, secret: Path, new_cgroup) -> None:
    v2, v1 = new_cgroup("cgroup2"), new_cgroup("memory")
    h = rig.load(openat_policy(secret), "kprobes", scope=scope_of(v2))
    assert_read(cat(v1, secret))
    h.set_scope(scope_of(v1))
    assert_killed(cat(v1, secret))
    assert_read(cat(v2, secret))


def test_empty_scope_matches_nothing_until_set(rig, secret: Path, cgroup2_dir) -> None:
    """(d) `Scope()` (a pod-scoped policy whose pods are not here) applies to no process, never host-wide."""
    h = rig.load(openat_policy(secret, kill=False), "kprobes", scope=Scope())
    assert_read(cat(cgroup2_dir, secret))
    assert_read(cat(None, secret))
    assert not rig.events(lambda b: str(secret) in string_args(b), wait=0.5)
    h.set_scope(scope_of(cgroup2_dir))  # the hook was live all along: now it reports
    inside = cgroup2_dir.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    assert inside.wait(timeout=30) == 0
    assert pid_events(rig, secret) == {inside.pid}
    h.set_scope(Scope())
    assert_read(cat(cgroup2_dir, secret))
    assert pid_events(rig, secret, wait=0.3) == {inside.pid}


def test_empty_scope_sigkill_kills_nothing(rig, secret: Path, cgroup2_dir) -> None:
    rig.load(openat_policy(secret), "kprobes", scope=Scope())
    assert_read(cat(cgroup2_dir, secret))


# -- host processes (hostSelector) -----------------------------------------------------------------

@pytest.mark.parametrize("hier", HIERS)
def test_host_scope_covers_processes_outside_the_container_roots(rig, secret: Path, tmp_path: Path, new_cgroup,
                                                                 hier: str) -> None:
    """(e) host=True, container_roots=[a test cgroup]: a process outside it is killed, one inside (or in
    a cgroup below it) is not. The rule only matches a copy of cat made for this test."""
    mycat = tmp_path / "scope-cat"
    shutil.copy2("/bin/cat", mycat)
    root, outside = new_cgroup(hier), new_cgroup(hier)
    below = root.path / "pod"
    below.mkdir()
    pod = Cgroup(below, root.version)
    rig.load(openat_policy(secret, binary=str(mycat)), "kprobes", scope=scope_of(host=True, roots=(root,)))
    assert_read(cat(root, secret, str(mycat)))
    assert_read(cat(pod, secret, str(mycat)))
    assert_killed(cat(outside, secret, str(mycat)))
    assert_read(cat(outside, secret))  # another binary: the selector does not match
    evs = rig.events(lambda b: str(secret) in string_args(b), wait=0.5)
    assert len(evs) == 1 and evs[0]["action"] == "KPROBE_ACTION_SIGKILL"


def test_host_scope_post_reports_host_processes_only(rig, secret: Path, new_cgroup) -> None:
    root = new_cgroup("cgroup2")
    rig.load(openat_policy(secret, kill=False), "kprobes", scope=scope_of(host=True, roots=(root,)))
    inside = root.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    host = subprocess.Popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    assert inside.wait(timeout=30) == 0 and host.wait(timeout=30) == 0
    assert pid_events(rig, secret) == {host.pid}


def test_host_scope_with_an_included_pod_below_a_container_root(rig, secret: Path, new_cgroup) -> None:
    """hostSelector plus a pod: the pod's cgroup is in scope although it sits under a container root."""
    root = new_cgroup("cgroup2")
    (root.path / "pod").mkdir()
    (root.path / "other").mkdir()
    pod, other = Cgroup(root.path / "pod", 2), Cgroup(root.path / "other", 2)
    rig.load(openat_policy(secret, kill=False), "kprobes", scope=scope_of(pod, host=True, roots=(root,)))
    ps = [c.popen(["cat", str(secret)], stdout=subprocess.DEVNULL) for c in (pod, other)]
    host = subprocess.Popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    for p in (*ps, host):
        assert p.wait(timeout=30) == 0
    assert pid_events(rig, secret) == {ps[0].pid, host.pid}


# -- descendants -----------------------------------------------------------------------------------

@pytest.mark.parametrize("hier", HIERS)
def test_child_cgroup_created_after_load_is_covered(rig, secret: Path, new_cgroup, hier: str) -> None:
    """(f) a container the runtime creates in a scoped pod after the policy was loaded."""
    cg = new_cgroup(hier)
    rig.load(openat_policy(secret), "kprobes", scope=scope_of(cg))
    (cg.path / "ctr" / "inner").mkdir(parents=True)
    child, grandchild = Cgroup(cg.path / "ctr", cg.version), Cgroup(cg.path / "ctr" / "inner", cg.version)
    assert_killed(cat(child, secret))
    assert_killed(cat(grandchild, secret))
    assert_read(cat(None, secret))


# -- the other sensors on the engine ---------------------------------------------------------------

tp_rig = rig_fixture(TracepointSensor)
up_rig = rig_fixture(UprobeSensor)

TP_OPENAT = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: scoped-tp}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
    args:
    - {index: 6, type: string}
    selectors:
    - matchArgs:
      - {index: 0, operator: Equal, values: ["%s"]}
"""


@pytest.mark.parametrize("hier", HIERS)
def test_tracepoint_events_only_from_scope(tp_rig, secret: Path, new_cgroup, hier: str) -> None:
    cg, sibling = new_cgroup(hier), new_cgroup(hier)
    h = tp_rig.load(TP_OPENAT % secret, "tracepoints", scope=scope_of(cg))
    ps = [c.popen(["cat", str(secret)], stdout=subprocess.DEVNULL) for c in (cg, sibling)]
    host = subprocess.Popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    for p in (*ps, host):
        assert p.wait(timeout=30) == 0
    assert pid_events(tp_rig, secret) == {ps[0].pid}
    h.set_scope(scope_of(sibling))
    p = sibling.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    q = cg.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    assert p.wait(timeout=30) == 0 and q.wait(timeout=30) == 0
    assert pid_events(tp_rig, secret) == {ps[0].pid, p.pid}


UPROBE_PROGRAM = r"""
#include <stdio.h>
__attribute__((noinline)) int sensorium_scope_check(int code)
{
	__asm__ volatile("" ::: "memory");
	return code + 1;
}
int main(void)
{
	printf("%d\n", sensorium_scope_check(41));
	return 0;
}
"""


@pytest.fixture(scope="module")
def uprobe_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the uprobe test program cannot be built")
    d = tmp_path_factory.mktemp("scope-uprobe")
    (d / "p.c").write_text(UPROBE_PROGRAM)
    subprocess.run([gcc, "-O1", "-o", str(d / "p"), str(d / "p.c")], check=True, capture_output=True)
    return d / "p"


def uprobe_policy(binary: Path, kill: bool) -> str:
    text = f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: scoped-uprobe}}
spec:
  uprobes:
  - path: "{binary}"
    symbols: [sensorium_scope_check]
    args: [{{index: 0, type: int}}]
"""
    if kill:
        text += "    selectors:\n    - matchActions: [{action: Sigkill}]\n"
    return text


@pytest.mark.parametrize("hier", HIERS)
def test_uprobe_sigkill_and_events_only_in_scope(up_rig, uprobe_program: Path, new_cgroup, hier: str) -> None:
    cg, sibling = new_cgroup(hier), new_cgroup(hier)
    up_rig.load(uprobe_policy(uprobe_program, kill=True), "uprobes", scope=scope_of(cg))
    r = cg.run([str(uprobe_program)], capture_output=True)
    assert r.returncode == -9 and r.stdout == b"", r
    for where in (sibling, None):
        r = where.run([str(uprobe_program)], capture_output=True) if where else \
            subprocess.run([str(uprobe_program)], capture_output=True, timeout=30)
        assert r.returncode == 0 and r.stdout == b"42\n", r
    evs = up_rig.events(lambda b: b.get("symbol") == "sensorium_scope_check", wait=0.5)
    assert len(evs) == 1 and evs[0]["action"] == "KPROBE_ACTION_SIGKILL"


def test_uprobe_post_live_scope(up_rig, uprobe_program: Path, new_cgroup) -> None:
    x, y = new_cgroup("cgroup2"), new_cgroup("memory")
    h = up_rig.load(uprobe_policy(uprobe_program, kill=False), "uprobes", scope=scope_of(x))
    px, py = (c.popen([str(uprobe_program)], stdout=subprocess.DEVNULL) for c in (x, y))
    assert px.wait(timeout=30) == 0 and py.wait(timeout=30) == 0
    h.set_scope(scope_of(y))
    qx, qy = (c.popen([str(uprobe_program)], stdout=subprocess.DEVNULL) for c in (x, y))
    assert qx.wait(timeout=30) == 0 and qy.wait(timeout=30) == 0
    evs = up_rig.events(lambda b: b.get("symbol") == "sensorium_scope_check", wait=0.5)
    assert {e["process"]["pid"] for e in evs} == {px.pid, qy.pid}


# -- contract details ------------------------------------------------------------------------------

def test_sensors_on_the_engine_declare_supports_scope() -> None:
    assert KprobeSensor.supports_scope and TracepointSensor.supports_scope and UprobeSensor.supports_scope


def test_host_wide_policy_cannot_be_scoped_later(rig, secret: Path, cgroup2_dir) -> None:
    h = rig.load(openat_policy(secret, kill=False), "kprobes")
    assert h.status()["scope"] is None
    with pytest.raises(ValueError, match="loaded host-wide"):
        h.set_scope(scope_of(cgroup2_dir))


def test_bad_scope_is_refused_before_anything_loads(rig, secret: Path, cgroup2_dir) -> None:
    bad = Scope(cgroups=(CgroupRef(hierarchy="cpu", id=1, path="/sys/fs/cgroup/cpu"),))
    with pytest.raises(PolicyLoadError, match="unknown hierarchy 'cpu'"):
        rig.load(openat_policy(secret), "kprobes", scope=bad)
    assert gone(set(rig.ctx.loaded_prog_ids))  # whatever this rig loaded for it is gone
    h = rig.load(openat_policy(secret), "kprobes", scope=scope_of(cgroup2_dir))
    with pytest.raises(ValueError, match="unknown hierarchy"):
        h.set_scope(bad)
    assert_killed(cat(cgroup2_dir, secret))  # the refused change left the scope as it was


# -- kernel functions (VM lane) --------------------------------------------------------------------

KFUNC_OPEN = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: scoped-kfunc}
spec:
  kprobes:
  - call: security_file_open
    syscall: false
    args: [{index: 0, type: file}]
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: ["%s"]}]
"""


@pytest.mark.needs("fentry")
def test_fentry_kernel_function_honours_scope(rig, secret: Path, new_cgroup) -> None:
    x, y = new_cgroup("cgroup2"), new_cgroup("cgroup2")
    h = rig.load(KFUNC_OPEN % secret, "kprobes", scope=scope_of(x))
    assert h.status()["hooks"][0]["mechanism"] == "fentry"

    def opened_by() -> set[int]:
        evs = rig.events(lambda b: b.get("function_name") == "security_file_open", wait=2.0)
        return {e["process"]["pid"] for e in evs}

    ps = [c.popen(["cat", str(secret)], stdout=subprocess.DEVNULL) for c in (x, y)]
    host = subprocess.Popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    for p in (*ps, host):
        assert p.wait(timeout=60) == 0
    assert opened_by() == {ps[0].pid}
    h.set_scope(scope_of(y))
    q = y.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    r = x.popen(["cat", str(secret)], stdout=subprocess.DEVNULL)
    assert q.wait(timeout=60) == 0 and r.wait(timeout=60) == 0
    assert opened_by() == {ps[0].pid, q.pid}

"""Policy changes are transactions: a ``policy add`` that fails anywhere, up to its very last attach, never
blocked a call nor posted an event (issue 11: before, the first document was attached, then rolled back).

Real kernel, real sensors, real processes: an exerciser process (in a test cgroup, named by ``matchPIDs``)
opens the protected file, or connects to the protected port, back to back for the whole time the failing
transactions run, and the test counts what it got; then the same document alone shows that the very same
loop does see a block and an event, so the zero is not a blind spot. On this host the first document is
served by fanotify or by cgroup sock_addr programs; tests/test_enforcement_bpf_lsm.py runs the BPF LSM twin in
the 6.12 guest.

A failure at the last step is made real: the second document's programs go to a test cgroup whose
connect6 attach point the test filled to the kernel's limit (64 programs that let everything through), so
its last attach fails with E2BIG after everything before it was attached.

Figures (failed transactions, operations exercised meanwhile, what they got) go to
build/reliability/enforcement.json (`enforcement_helpers.figure`) and from there to docs/reliability.md
("Policy transactions and persistent enforcement", scripts/reliability_doc.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from enforcement_helpers import (
    Exerciser,
    FullAttachPoint,
    Loop,
    Server,
    cli,
    connect_policy,
    figure,
    file_open_policy,
    missing_function_policy,
    policy_list,
)
from sensorium_testlib import cgroup2_mount, make_cgroup

from sensorium.policy import PolicyError

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, cgroups)")]

ROUNDS = 20  # failed adds per test, as in the issue's measurement


@pytest.fixture
def exerciser(cgroup2_dir) -> Iterator[Exerciser]:
    ex = Exerciser(cgroup2_dir)
    yield ex
    ex.close()


@pytest.fixture
def server() -> Iterator[int]:
    srv = Server()
    yield srv.port
    srv.close()


@pytest.fixture
def full_cgroup() -> Iterator[Any]:
    """A second cgroup2 cgroup whose connect6 attach point is full: an attach there fails with E2BIG."""
    mp = cgroup2_mount()
    if mp is None:
        pytest.skip("no cgroup2 mount")
    gen = make_cgroup(mp, 2)
    cg = next(gen)
    full = FullAttachPoint.cgroup_connect6(cg.path)
    try:
        yield cg
    finally:
        full.close()
        gen.close()


class _Tracker:
    """The scope provider's tracker (`sensorium.k8s.scope`) for scoped test documents: their scope is the
    test's full cgroup (Kubernetes is what normally names the cgroups; the kernel side is real)."""

    def __init__(self, scope: Any) -> None:
        self.scope = scope

    def current(self) -> Any:
        return self.scope

    def summary(self) -> dict[str, Any]:
        return {"pods": [], "cgroups": len(self.scope.cgroups), "host": False}

    def close(self) -> None:
        pass


class _Provider:
    def __init__(self, scope: Any) -> None:
        self.scope = scope

    def track(self, policy: Any, on_update: Any) -> _Tracker:
        return _Tracker(self.scope)


@pytest.fixture
def lsm(full_cgroup) -> Iterator[tuple[Any, Any, Any]]:
    """The real lsm sensor in a real PolicyManager (the code `policy add` runs behind the API), with scoped
    documents bounded to the full cgroup."""
    from sensorium.plugins import PluginRegistry
    from sensorium.policy_manager import PolicyManager
    from sensorium.scope import scope_of_directories
    from sensorium_sensors.lsm.plugin import LsmSensor
    from sensorium_sensors.lsm.testing import LsmTestContext

    ctx = LsmTestContext()
    sensor = LsmSensor(ctx)
    sensor.start()
    pm = PolicyManager(PluginRegistry().discover(), {"lsm": sensor},
                       scope_provider=_Provider(scope_of_directories([full_cgroup.path])))
    try:
        yield pm, sensor, ctx
    finally:
        pm.unload_all()
        sensor.stop()


def scoped_connect(name: str, port: int) -> str:
    """socket_connect to ``port`` refused in the full cgroup: its programs attach there, connect4 first,
    then connect6, which the kernel refuses (the attach point is full)."""
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  podSelector:
    matchLabels: {{app: full}}
  lsmhooks:
  - hook: socket_connect
    args:
    - {{index: 1, type: sockaddr}}
    selectors:
    - matchArgs:
      - {{index: 1, operator: DPort, values: ["{port}"]}}
      matchActions:
      - {{action: Override, argError: -1}}
"""


def lsm_events(ctx: Any, policy: str) -> list[Any]:
    with ctx._lock:
        return [e for e in ctx.events
                if e.kind == "process_lsm" and e.as_dict()["process_lsm"]["policy_name"] == policy]


def connect4_ids(directory: str) -> set[int]:
    r = subprocess.run(["bpftool", "-j", "cgroup", "show", directory], capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(r.stdout.strip() or "[]") if p.get("attach_type") == "connect4"}


def fail_many(pm: Any, text: str, loop: Loop) -> list[str]:
    """ROUNDS failed adds of ``text`` while ``loop`` runs; the refusals' messages."""
    msgs = []
    time.sleep(0.2)  # the loop is going before the first transaction starts
    for _ in range(ROUNDS):
        with pytest.raises(PolicyError) as ei:
            pm.add(text, "two-docs.yaml")
        msgs.append(str(ei.value))
        assert pm.list() == []
    time.sleep(0.2)  # and after the last one ended
    return msgs


def test_a_transaction_failing_at_its_last_attach_never_blocked_an_open_nor_reported_one(lsm, exerciser, tmp_path,
                                                                                        server, full_cgroup):
    pm, sensor, ctx = lsm
    secret = tmp_path / "secret"
    secret.write_text("s")
    text = file_open_policy("first", secret, exerciser.pid) + "---\n" + scoped_connect("second", server)
    with Loop(lambda: exerciser.open(secret)) as loop:
        msgs = fail_many(pm, text, loop)
    # refused at the second document's line, by its last attach (connect6: the attach point is full)
    line = text.count("\n", 0, text.index("- hook: socket_connect", text.index("name: second"))) + 1
    assert all(m.startswith(f"two-docs.yaml:{line}: spec.lsmhooks[0]: failed to load lsmhooks[0] socket_connect: "
                            "cgroup/connect4+connect6: cannot attach program 'lsm_connect6'")
               and "Argument list too long" in m for m in msgs), msgs[0]
    time.sleep(0.1)
    assert loop.total > 0 and loop.counts == {"ok": loop.total}, loop.counts
    assert lsm_events(ctx, "first") == []
    assert sensor.guard.status()["rules"] == 0 and connect4_ids(full_cgroup.path) == set()
    figure("txn.open_fanotify", failed=ROUNDS, exercised=loop.total, enforced=0,
           result=f"{ROUNDS} failed adds of two documents (file_open Override served by fanotify; a connect hook whose "
                  f"last attach the kernel refuses): 0 of {loop.total} opens of the file refused, 0 events")
    # The same document alone: the same loop sees the block and the event (the zero above is not blindness).
    pm.add(file_open_policy("first", secret, exerciser.pid), "first.yaml")
    assert exerciser.open(secret) == "EPERM"
    ctx.wait_events(lambda e: e.kind == "process_lsm", 1)
    pm.delete("first")


def test_a_transaction_failing_at_its_last_attach_never_blocked_a_connect_nor_reported_one(lsm, exerciser, server,
                                                                                          full_cgroup):
    pm, _sensor, ctx = lsm
    text = connect_policy("first", server, exerciser.pid) + "---\n" + scoped_connect("second", server)
    with Loop(lambda: exerciser.connect(server)) as loop:
        fail_many(pm, text, loop)
    time.sleep(0.1)
    assert loop.total > 0 and loop.counts == {"ok": loop.total}, loop.counts
    assert lsm_events(ctx, "first") == []
    figure("txn.connect_sock_addr", failed=ROUNDS, exercised=loop.total, enforced=0,
           result=f"{ROUNDS} failed adds of two documents (socket_connect Override served by cgroup sock_addr "
                  f"programs; a connect hook whose last attach the kernel refuses): 0 of {loop.total} connects "
                  "refused, 0 events")
    pm.add(connect_policy("first", server, exerciser.pid), "first.yaml")
    assert exerciser.connect(server) == "EPERM"
    ctx.wait_events(lambda e: e.kind == "process_lsm", 1)
    pm.delete("first")
    assert exerciser.connect(server) == "ok"


def test_an_update_failing_at_its_last_attach_keeps_the_block_and_a_good_one_leaves_no_gap(lsm, exerciser, server,
                                                                                          full_cgroup):
    """A TracingPolicy object updated is `PolicyManager.replace`: a new version that fails at its last attach
    leaves the old version blocking, and a good one is active before the old one goes: under a connect loop
    running the whole time, every connect is refused."""
    pm, _sensor, _ctx = lsm
    pm.add(connect_policy("upd", server, exerciser.pid), "v1.yaml")
    assert exerciser.connect(server) == "EPERM"
    bad = scoped_connect("upd", server)  # its programs go to the full cgroup: the connect6 attach fails
    with Loop(lambda: exerciser.connect(server)) as loop:
        time.sleep(0.2)
        for _ in range(ROUNDS):
            with pytest.raises(PolicyError, match="Argument list too long"):
                pm.replace("upd", bad, "v2.yaml")
        for i in range(ROUNDS):
            assert pm.replace("upd", connect_policy("upd", server, exerciser.pid), f"v{i + 3}.yaml") == ["upd"]
        time.sleep(0.2)
    assert loop.total > 0 and loop.counts == {"EPERM": loop.total}, loop.counts
    [row] = pm.list()
    assert row["file"] == f"v{ROUNDS + 2}.yaml" and row["state"] == "enabled"
    assert connect4_ids(full_cgroup.path) == set()
    figure("txn.update", failed=ROUNDS, exercised=loop.total, enforced=0, let_through=0,
           result=f"{ROUNDS} updates failing at their last attach, then {ROUNDS} good ones, of a loaded connect block: "
                  f"{loop.total} of {loop.total} connects meanwhile refused (the old version stayed; no gap)")
    pm.delete("upd")
    assert exerciser.connect(server) == "ok"


def test_the_issue_case_through_the_agent_and_the_cli_blocks_nothing(agent, tmp_path, exerciser):
    """Issue 11 as measured: two documents, an Override on one file, then a kernel function that does not
    exist; `policy add` through the CLI, 20 times, while the file is opened back to back."""
    secret = tmp_path / "secret"
    secret.write_text("s")
    sock = tmp_path / "api.sock"
    h = agent({"plugins": {"allow": ["lsm", "kprobe", "stdout"]}, "sensors": {"lsm": {"enabled": True},
                                                                              "kprobe": {"enabled": True}},
               "api": {"socket": str(sock)}})
    f = tmp_path / "two.yaml"
    f.write_text(file_open_policy("first", secret, exerciser.pid) + "---\n" + missing_function_policy("second"))
    with Loop(lambda: exerciser.open(secret)) as loop:
        time.sleep(0.2)
        for _ in range(ROUNDS):
            res = cli(sock, "policy", "add", str(f), check=False)
            assert res.returncode != 0 and "sensorium_no_such_function" in res.stderr and "Traceback" not in res.stderr
            assert policy_list(sock) == []
        time.sleep(0.2)
    assert loop.total > 0 and loop.counts == {"ok": loop.total}, loop.counts
    time.sleep(0.5)  # the exporter's flush interval: anything posted would be on stdout by now
    assert [e for e in h.events() if "process_lsm" in e] == []
    figure("txn.issue_case_cli", failed=ROUNDS, exercised=loop.total, enforced=0,
           result=f"the issue's case through `sensorium policy add` ({ROUNDS} times: file_open Override, then a "
                  f"kernel function that does not exist): 0 of {loop.total} opens refused, 0 events exported")
    g = tmp_path / "first.yaml"
    g.write_text(file_open_policy("first", secret, exerciser.pid))
    cli(sock, "policy", "add", str(g))
    assert exerciser.open(secret) == "EPERM"
    h.wait_for(lambda e: "process_lsm" in e)
    cli(sock, "policy", "delete", "first")


# ---- the manager's rounds, with in-process sensors (bookkeeping only; the tests above are the kernel's) ----

def _mixed(journal: list) -> Any:
    """A manager over a transactional sensor (tracepoints) and a one-step one (lsmhooks, load_policy only)."""
    from policy_sensors import TxnTableSensor, registry_with

    from sensorium.policy_manager import PolicyManager
    from sensorium_sensors.lsm.schema import LsmHookSpec
    from sensorium_sensors.tracepoint.schema import TracepointSpec

    reg, sensors = registry_with(("tracepoint", "tracepoints", TracepointSpec, TxnTableSensor),
                                 ("lsm", "lsmhooks", LsmHookSpec), journal=journal)
    return PolicyManager(reg, sensors), sensors["tracepoint"], sensors["lsm"]


def tdoc(name: str, events: tuple[str, ...] = (), lsm: tuple[str, ...] = ()) -> str:
    out = f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"
    if events:
        out += "  tracepoints:\n" + "".join(f"  - subsystem: syscalls\n    event: {e}\n" for e in events)
    if lsm:
        out += "  lsmhooks:\n" + "".join(f"  - hook: {h}\n" for h in lsm)
    return out


def test_every_section_of_every_document_is_attached_before_any_is_activated():
    journal: list = []
    pm, txn, _one = _mixed(journal)
    pm.add(tdoc("a", ("sys_enter_read",)) + "---\n" + tdoc("b", ("sys_enter_write",)), "ab.yaml")
    assert journal == [("prepare", "a/tracepoints"), ("prepare", "b/tracepoints"), ("commit", "a/tracepoints"),
                       ("commit", "b/tracepoints"), ("activate", "a/tracepoints"), ("activate", "b/tracepoints")]
    assert set(txn.attached.values()) == {"enforcement"}


def test_a_commit_failure_in_the_last_document_aborts_the_first_before_it_was_ever_active():
    journal: list = []
    pm, txn, _one = _mixed(journal)
    with pytest.raises(PolicyError, match=r"ab.yaml:\d+: .*attach refused: E2BIG"):
        pm.add(tdoc("a", ("sys_enter_read",)) + "---\n" + tdoc("b", ("sys_enter_write", "commitfail")), "ab.yaml")
    assert ("activate", "a/tracepoints") not in journal and ("abort", "a/tracepoints") in journal
    assert txn.attached == {} and pm.list() == []


def test_one_step_sections_load_after_every_transactional_section_is_attached_and_roll_everything_back():
    journal: list = []
    pm, txn, one = _mixed(journal)
    seen: list = []
    real = one.load_policy
    one.load_policy = lambda view: (seen.append(dict(txn.attached)), real(view))[1]  # type: ignore[method-assign]
    with pytest.raises(PolicyError, match="attach failed: EINVAL"):
        pm.add(tdoc("a", ("sys_enter_read",), lsm=("fail-hook",)), "a.yaml")
    # when the one-step section loaded, the transactional one was attached but inert, and it never activated
    assert seen == [{(0, "tracepoints", 0, "syscalls/sys_enter_read"): "inert"}]
    assert ("activate", "a/tracepoints") not in journal and txn.attached == {} and one.attached == {}


def test_enable_is_a_transaction_too():
    journal: list = []
    pm, txn, _one = _mixed(journal)
    pm.add(tdoc("a", ("sys_enter_read",)), "a.yaml")
    pm.disable("a")
    journal.clear()
    pm.enable("a")
    assert [j[0] for j in journal] == ["prepare", "commit", "activate"]
    assert set(txn.attached.values()) == {"enforcement"}


def test_a_scope_change_one_section_refuses_leaves_every_section_on_its_previous_scope():
    from policy_sensors import default_registry

    from sensorium.hookspecs import CgroupRef, Scope
    from sensorium.policy_manager import PolicyManager

    reg, sensors = default_registry()
    handles: dict[str, Any] = {}

    class Handle:
        def __init__(self, view: Any) -> None:
            self.view, self.scope, self.fail = view, view.scope, False

        def status(self) -> dict:
            return {"hooks": [], "events": 0, "errors": 0, "kernel_memory_bytes": 0}

        def set_mode(self, mode: str) -> None: ...

        def unload(self) -> None: ...

        def set_scope(self, scope: Any) -> None:
            if self.fail:
                raise OSError("map update failed")
            self.scope = scope

    for name, s in sensors.items():
        type(s).supports_scope = True
        s.load_policy = lambda view, _n=name: handles.setdefault(_n, Handle(view))  # type: ignore[method-assign]

    class Tracker:
        def __init__(self, cb: Any) -> None:
            self.cb = cb

        def current(self) -> Any:
            return Scope()

        def summary(self) -> dict:
            return {"pods": [], "cgroups": 0, "host": False}

        def close(self) -> None: ...

    trackers: list = []

    class Provider:
        def track(self, policy: Any, cb: Any) -> Any:
            trackers.append(Tracker(cb))
            return trackers[-1]

    try:
        pm = PolicyManager(reg, sensors, scope_provider=Provider())
        text = tdoc("s", ("sys_enter_read",), lsm=("file_open",)).replace(
            "spec:\n", "spec:\n  podSelector:\n    matchLabels: {app: a}\n")
        pm.add(text, "s.yaml")
        one = Scope(cgroups=(CgroupRef("cgroup2", 11, "/sys/fs/cgroup/a"),))
        trackers[0].cb(one)
        assert handles["tracepoint"].scope == one and handles["lsm"].scope == one
        handles["lsm"].fail = True  # the second section refuses the next change
        trackers[0].cb(Scope(cgroups=(CgroupRef("cgroup2", 12, "/sys/fs/cgroup/b"),)))
        assert handles["tracepoint"].scope == one and handles["lsm"].scope == one  # both still on the old one
        [row] = pm.list()
        assert row["scope"]["errors"] == 1 and "map update failed" in row["scope"]["last_error"]
    finally:
        for s in sensors.values():
            if "supports_scope" in type(s).__dict__:
                del type(s).supports_scope


def test_a_new_version_is_active_before_the_old_one_is_unloaded():
    # A TracingPolicy object updated (`PolicyManager.replace`): no moment without the policy.
    journal: list = []
    pm, txn, _one = _mixed(journal)
    pm.add(tdoc("a", ("sys_enter_read",)), "a.yaml")
    old_id = pm.get("a")["id"]
    journal.clear()
    seen_at_activate: list = []
    real = txn.prepare_policy

    def prepare(view: Any) -> Any:
        sec = real(view)
        act = sec.activate
        sec.activate = lambda: (seen_at_activate.append(dict(txn.attached)), act())[1]
        return sec

    txn.prepare_policy = prepare  # type: ignore[method-assign]
    assert pm.replace("a", tdoc("a", ("sys_enter_write",)), "a2.yaml") == ["a"]
    # the old version was still attached and enforcing when the new one was activated
    assert seen_at_activate == [{(old_id, "tracepoints", 0, "syscalls/sys_enter_read"): "enforcement",
                                 (pm.get("a")["id"], "tracepoints", 0, "syscalls/sys_enter_write"): "inert"}]
    assert list(txn.attached.values()) == ["enforcement"]
    assert [k[3] for k in txn.attached] == ["syscalls/sys_enter_write"]
    assert [j[0] for j in journal] == ["prepare", "commit", "activate"]
    assert pm.get("a")["file"] == "a2.yaml" and pm.get("a")["id"] != old_id


def test_a_new_version_failing_at_its_last_attach_leaves_the_old_one_loaded_and_enforcing():
    journal: list = []
    pm, txn, _one = _mixed(journal)
    pm.add(tdoc("a", ("sys_enter_read",)), "a.yaml")
    before = dict(txn.attached)
    with pytest.raises(PolicyError, match=r"a2.yaml:\d+: .*attach refused: E2BIG"):
        pm.replace("a", tdoc("a", ("sys_enter_write", "commitfail")), "a2.yaml")
    assert txn.attached == before and set(before.values()) == {"enforcement"}
    [row] = pm.list()
    assert row["state"] == "enabled" and row["file"] == "a.yaml"
    with pytest.raises(PolicyError, match="must hold that one policy, not 'b'"):
        pm.replace("a", tdoc("b", ("sys_enter_write",)), "b.yaml")
    assert txn.attached == before

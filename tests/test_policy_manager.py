"""PolicyManager: policies load whole or not at all, never disturb each other, switch mode live."""

from __future__ import annotations

import pytest
from policy_sensors import default_registry

from sensorium.policy import PolicyError
from sensorium.policy_manager import PolicyManager, PolicyNotFound
from sensorium.yamlsrc import SourceError


def doc(name: str, *events: str, lsm: tuple[str, ...] = (), extra: str = "") -> str:
    out = f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n{extra}"
    if events:
        out += "  tracepoints:\n" + "".join(f"  - subsystem: syscalls\n    event: {e}\n" for e in events)
    if lsm:
        out += "  lsmhooks:\n" + "".join(f"  - hook: {h}\n" for h in lsm)
    return out


@pytest.fixture
def env():
    reg, sensors = default_registry()
    return PolicyManager(reg, sensors), sensors["tracepoint"], sensors["lsm"]


def test_add_loads_every_section_and_lists_state_mode_and_mechanism(env):
    pm, tp, lsm = env
    assert pm.add(doc("p1", "sys_enter_openat", "sys_enter_read", lsm=("file_open",)), "p1.yaml") == ["p1"]
    assert sorted(tp.attached) == [(0, "tracepoints", 0, "syscalls/sys_enter_openat"),
                                   (0, "tracepoints", 1, "syscalls/sys_enter_read")]
    assert list(lsm.attached) == [(0, "lsmhooks", 0, "file_open")]
    [row] = pm.list()
    assert ((row["name"], row["id"], row["state"], row["mode"], row["file"])
            == ("p1", 0, "enabled", "enforcement", "p1.yaml"))
    assert [(h["section"], h["hook"], h["mechanism"]) for h in row["hooks"]] == [
        ("tracepoints", "syscalls/sys_enter_openat", "table"), ("tracepoints", "syscalls/sys_enter_read", "table"),
        ("lsmhooks", "file_open", "table")]
    assert row["kernel_memory_bytes"] == 3 * 4096


def test_same_name_twice_is_refused_and_the_first_is_untouched(env):
    pm, tp, _ = env
    pm.add(doc("dup", "sys_enter_openat"), "a.yaml")
    before = dict(tp.attached)
    with pytest.raises(PolicyError) as ei:
        pm.add(doc("dup", "sys_enter_read"), "b.yaml")
    assert str(ei.value) == "b.yaml:4: metadata.name: a policy named 'dup' is already loaded (from a.yaml); delete it first"
    assert tp.attached == before and [p["name"] for p in pm.list()] == ["dup"]


def test_a_refusal_by_check_policy_loads_nothing_anywhere(env):
    pm, tp, lsm = env
    with pytest.raises(PolicyError) as ei:
        pm.add(doc("p", "sys_enter_openat", lsm=("file_open", "refuse_me")), "p.yaml")
    e = ei.value
    assert (e.file, e.line, e.path) == ("p.yaml", 11, "spec.lsmhooks[1]")
    assert "refused lsmhooks[1] refuse_me: no such hook on this kernel" in e.reason
    assert tp.attached == {} and lsm.attached == {} and pm.list() == []


def test_a_load_failure_unloads_the_sections_already_loaded(env):
    pm, tp, lsm = env
    with pytest.raises(PolicyError) as ei:
        pm.add(doc("p", "sys_enter_openat", lsm=("file_open", "fail_attach")), "p.yaml")
    assert "failed to load lsmhooks[1] fail_attach: attach failed: EINVAL" in str(ei.value)
    assert ei.value.line == 11
    assert tp.attached == {} and lsm.attached == {} and pm.list() == []
    pm.add(doc("p", "sys_enter_openat"), "p.yaml")  # the name is free again
    assert len(tp.attached) == 1


def test_a_section_whose_sensor_is_not_running_is_refused(env):
    pm, tp, _lsm = env
    pm.sensors.pop("lsm")
    with pytest.raises(PolicyError) as ei:
        pm.add(doc("p", "sys_enter_openat", lsm=("file_open",)), "p.yaml")
    assert "the 'lsm' sensor that serves 'lsmhooks' is not enabled in this agent's config" in str(ei.value)
    assert tp.attached == {}


def test_delete_never_disturbs_other_policies_and_ids_are_reused(env):
    pm, tp, _ = env
    for n in ("a", "b", "c"):
        pm.add(doc(n, f"sys_enter_{n}"), f"{n}.yaml")
    assert [(p["name"], p["id"]) for p in pm.list()] == [("a", 0), ("b", 1), ("c", 2)]
    pm.delete("b")
    assert sorted(k[0] for k in tp.attached) == [0, 2]
    pm.add(doc("d", "sys_enter_d"), "d.yaml")
    assert [(p["name"], p["id"]) for p in pm.list()] == [("a", 0), ("d", 1), ("c", 2)]
    with pytest.raises(PolicyNotFound, match="no policy named 'b' is loaded"):
        pm.delete("b")


def test_disable_unloads_and_enable_reloads_with_the_same_id(env):
    pm, tp, _ = env
    pm.add(doc("a", "sys_enter_a"), "a.yaml")
    pm.add(doc("b", "sys_enter_b"), "b.yaml")
    pm.disable("a")
    assert [k[0] for k in tp.attached] == [1]
    row = pm.get("a")
    assert row["state"] == "disabled" and row["hooks"][0]["mechanism"] is None
    pm.enable("a")
    assert sorted(k[0] for k in tp.attached) == [0, 1] and pm.get("a")["state"] == "enabled"


def test_set_mode_is_live_and_reverts_when_a_sensor_fails(env):
    pm, tp, lsm = env
    pm.add(doc("m", "sys_enter_openat", lsm=("file_open",)), "m.yaml")
    pm.set_mode("m", "monitoring")
    assert set(tp.attached.values()) == {"monitoring"} and set(lsm.attached.values()) == {"monitoring"}
    assert pm.get("m")["mode"] == "monitoring"
    lsm.fail_set_mode = True
    with pytest.raises(PolicyError, match="switching lsmhooks to enforcement failed: mode map update failed; the policy stays in monitoring"):
        pm.set_mode("m", "enforcement")
    assert set(tp.attached.values()) == {"monitoring"} and pm.get("m")["mode"] == "monitoring"
    with pytest.raises(PolicyError, match="not one of"):
        pm.set_mode("m", "loud")


def test_policy_mode_option_and_override(env):
    pm, tp, _ = env
    pm.add(doc("o", "sys_enter_openat", extra="  options:\n  - name: policy-mode\n    value: monitor\n"), "o.yaml")
    assert pm.get("o")["mode"] == "monitoring" and set(tp.attached.values()) == {"monitoring"}
    pm.add(doc("o2", "sys_enter_read"), "o2.yaml", mode="monitoring")
    assert pm.get("o2")["mode"] == "monitoring"


def test_a_multi_document_file_loads_whole_or_not_at_all(env):
    pm, tp, _ = env
    text = doc("one", "sys_enter_a") + "---\n" + doc("two", "sys_enter_b", lsm=("fail_here",))
    with pytest.raises(PolicyError, match="fail_here"):
        pm.add(text, "multi.yaml")
    assert pm.list() == [] and tp.attached == {}
    assert pm.add(doc("one", "sys_enter_a") + "---\n" + doc("two", "sys_enter_b"), "multi.yaml") == ["one", "two"]


def test_load_directory_loads_good_files_and_reports_bad_ones(env, tmp_path):
    pm, _tp, _ = env
    (tmp_path / "10-good.yaml").write_text(doc("good", "sys_enter_openat"))
    (tmp_path / "20-bad.yaml").write_text(doc("bad", "sys_enter_openat").replace("subsystem", "subsytem"))
    (tmp_path / "30-dup.yml").write_text(doc("good", "sys_enter_read"))
    (tmp_path / "README.md").write_text("not a policy")
    results = pm.load_directory(tmp_path)
    assert [r["ok"] for r in results] == [True, False, False]
    assert "20-bad.yaml:7: spec.tracepoints[0].subsystem: required field is missing; line 7: spec.tracepoints[0].subsytem: unknown field" in results[1]["error"]
    assert "already loaded" in results[2]["error"]
    assert [p["name"] for p in pm.list()] == ["good"] and len(pm.directory_errors) == 2
    with pytest.raises(SourceError, match="does not exist"):
        pm.load_directory(tmp_path / "nope")


def test_unload_all_leaves_nothing(env):
    pm, tp, lsm = env
    pm.add(doc("a", "sys_enter_a", lsm=("file_open",)), "a.yaml")
    pm.add(doc("b", "sys_enter_b"), "b.yaml")
    pm.unload_all()
    assert pm.list() == [] and tp.attached == {} and lsm.attached == {}


def test_a_sensor_raising_anything_is_contained(env):
    pm, tp, lsm = env

    def boom(view):
        raise RuntimeError("sensor bug")

    lsm.load_policy = boom  # type: ignore[method-assign]
    with pytest.raises(PolicyError, match="failed to load lsmhooks: RuntimeError: sensor bug"):
        pm.add(doc("p", "sys_enter_openat", lsm=("file_open",)), "p.yaml")
    assert tp.attached == {} and pm.list() == []


def test_policy_states_are_exported_as_metrics():
    from sensorium.metrics import Metrics

    reg, sensors = default_registry()
    m = Metrics()
    pm = PolicyManager(reg, sensors, metrics=m)
    pm.add(doc("a", "sys_enter_a"), "a.yaml")
    pm.add(doc("b", "sys_enter_b"), "b.yaml")
    pm.disable("b")
    text = m.scrape().decode()
    assert 'sensorium_policy_state{policy="a",state="enabled"} 1.0' in text
    assert 'sensorium_policy_state{policy="b",state="disabled"} 1.0' in text
    assert "sensorium_policies_loaded 2.0" in text
    pm.delete("a")
    text = m.scrape().decode()
    assert 'policy="a"' not in text and "sensorium_policies_loaded 1.0" in text


# ---- scoped policies ----------------------------------------------------------------------------------

import subprocess  # noqa: E402

from sensorium.hookspecs import Scope  # noqa: E402


class _Tracker:
    """What `sensorium.k8s.scope.ScopeTracker` gives the manager, driven by the test (`push`) instead of
    a pod watcher; the scopes it carries are made of real cgroups."""

    def __init__(self, provider: _Provider, policy, on_update) -> None:
        self.provider, self.policy, self.on_update = provider, policy, on_update
        self.scope = provider.scope
        self.closed = False

    def current(self) -> Scope:
        return self.scope

    def summary(self) -> dict:
        return {"pods": ["ns/a"] if self.scope.cgroups else [], "cgroups": len(self.scope.cgroups),
                "host": self.scope.host}

    def close(self) -> None:
        self.closed = True


class _Provider:
    def __init__(self, scope: Scope | None = None) -> None:
        self.scope = scope if scope is not None else Scope()
        self.trackers: list[_Tracker] = []

    def track(self, policy, on_update) -> _Tracker:
        t = _Tracker(self, policy, on_update)
        self.trackers.append(t)
        return t

    def push(self, scope: Scope) -> None:
        self.scope = scope
        for t in self.trackers:
            if not t.closed:
                t.scope = scope
                t.on_update(scope)


SCOPED = """apiVersion: cilium.io/v1alpha1
kind: {kind}
metadata:
  name: {name}{ns}
spec:
  podSelector:
    matchLabels: {{app: a}}
  {section}
"""


def scoped(name: str, section: str, kind: str = "TracingPolicy", ns: str | None = None) -> str:
    return SCOPED.format(name=name, section=section, kind=kind, ns=f"\n  namespace: {ns}" if ns else "")


TP = "tracepoints:\n  - {subsystem: syscalls, event: sys_enter_openat}"


def test_a_scoped_policy_is_refused_for_a_sensor_without_supports_scope(env):
    pm, tp, _lsm = env
    pm.scope_provider, pm.scoping_supported = _Provider(), True
    with pytest.raises(PolicyError) as ei:
        pm.add(scoped("p", TP), "p.yaml")
    e = ei.value
    assert (e.file, e.line, e.path) == ("p.yaml", 8, "spec.tracepoints")
    assert "the 'tracepoint' sensor that serves 'tracepoints' cannot bound its hooks to pods" in e.reason
    assert "podSelector" in e.reason
    assert tp.attached == {} and pm.list() == [] and pm.scope_provider.trackers == []


def test_without_kubernetes_pod_selectors_are_refused_at_parse_time(env):
    pm, _tp, _ = env
    with pytest.raises(PolicyError, match="podSelector is not served by this agent"):
        pm.add(scoped("p", TP), "p.yaml")
    with pytest.raises(PolicyError) as ei:
        pm.add(doc("h", "sys_enter_openat", extra="  hostSelector: {}\n"), "h.yaml")
    assert ei.value.path == "spec.hostSelector" and "without the Kubernetes support" in ei.value.reason


@pytest.mark.parametrize("value", ["{matchLabels: {a: b}}", "[]", "yes"])
def test_host_selector_other_than_empty_or_null_is_refused(env, value):
    pm, _, _ = env
    pm.scope_provider, pm.scoping_supported = _Provider(), True
    with pytest.raises(PolicyError) as ei:
        pm.add(doc("h", "sys_enter_openat", extra=f"  hostSelector: {value}\n"), "h.yaml")
    assert (ei.value.line, ei.value.path) == (6, "spec.hostSelector")
    assert "hostSelector must be {} (the host's processes, outside every pod) or null" in ei.value.reason


def test_host_selector_null_is_unset_and_empty_selects_the_host(env):
    pm, _tp, _ = env
    pm.scope_provider, pm.scoping_supported = _Provider(), True
    [p] = pm.parse(doc("h", "sys_enter_openat", extra="  hostSelector:\n"), "h.yaml")
    assert not p.host_selector and not p.scoped
    [p] = pm.parse(doc("h", "sys_enter_openat", extra="  hostSelector: {}\n"), "h.yaml")
    assert p.host_selector and p.scoped


def test_namespaced_policies_are_keyed_namespace_slash_name(env):
    pm, _, lsm = env
    type(lsm).supports_scope = True  # the table sensor stands in for a scoping sensor here
    try:
        lsm.set_scope_calls = []
        pm.scope_provider, pm.scoping_supported = _Provider(), True
        lsm_sec = "lsmhooks:\n  - {hook: file_open}"
        assert pm.add(scoped("same", lsm_sec, "TracingPolicyNamespaced", "ns1")) == ["ns1/same"]
        assert pm.add(scoped("same", lsm_sec, "TracingPolicyNamespaced", "ns2")) == ["ns2/same"]
        assert pm.add(doc("same", lsm=("file_open",))) == ["same"]  # cluster-wide: its own key
        assert sorted(r["key"] for r in pm.list()) == ["ns1/same", "ns2/same", "same"]
        pm.delete("same")
        with pytest.raises(PolicyNotFound) as ei:
            pm.delete("same")
        assert "namespace/name: ns1/same, ns2/same" in str(ei.value)
        pm.delete("ns1/same")
        assert [r["key"] for r in pm.list()] == ["ns2/same"]
    finally:
        del type(lsm).supports_scope


def test_scope_updates_reach_every_section_and_failures_are_counted(env):
    pm, _, lsm = env

    class Handle:
        def __init__(self, view):
            self.view, self.scopes, self.fail = view, [view.scope], False

        def status(self):
            return {"hooks": [], "events": 0, "errors": 0, "kernel_memory_bytes": 0}

        def set_mode(self, mode): ...

        def unload(self):
            self.unloaded = True

        def set_scope(self, scope):
            if self.fail:
                raise OSError("map update failed")
            self.scopes.append(scope)

    handles = []
    type(lsm).supports_scope = True
    orig = lsm.load_policy
    lsm.load_policy = lambda view: handles.append(Handle(view)) or handles[-1]
    try:
        prov = _Provider()
        pm.scope_provider, pm.scoping_supported = prov, True
        pm.add(scoped("p", "lsmhooks:\n  - {hook: file_open}"), "p.yaml")
        [h] = handles
        assert h.view.scope == Scope()  # no pod yet: nothing, never host-wide
        s1 = Scope(host=True)
        prov.push(s1)
        assert h.scopes == [Scope(), s1]
        h.fail = True
        prov.push(Scope())
        [row] = pm.list()
        assert row["scope"]["errors"] == 1 and "map update failed" in row["scope"]["last_error"]
        assert row["state"] == "enabled"
        pm.disable("p")
        assert prov.trackers[0].closed and getattr(h, "unloaded", False)
        pm.enable("p")
        assert len(prov.trackers) == 2 and not prov.trackers[1].closed
        pm.delete("p")
        assert prov.trackers[1].closed
    finally:
        lsm.load_policy = orig
        del type(lsm).supports_scope


@pytest.mark.kernel
def test_a_real_sensor_follows_scope_updates_live(cgroup2_dir, tmp_path):
    """The real kprobe sensor (raw_tp here) with a Sigkill on open of one file: out of scope nothing
    happens, the cgroup joins the scope live and its process is killed, deleting the policy lifts it."""
    from hook_helpers import Rig, scope_of

    from sensorium.plugins import PluginRegistry
    from sensorium_sensors.kprobe.sensor import KprobeSensor

    secret = tmp_path / "secret"
    secret.write_text("s\n")
    rig = Rig(KprobeSensor)
    try:
        prov = _Provider()
        pm = PolicyManager(PluginRegistry().discover(), {"kprobe": rig.sensor}, scope_provider=prov)
        section = ("kprobes:\n  - call: sys_openat\n    syscall: true\n    args:\n    - {index: 0, type: int}\n"
                   "    - {index: 1, type: string}\n    selectors:\n    - matchArgs:\n"
                   f"      - {{index: 1, operator: Equal, values: [\"{secret}\"]}}\n"
                   "      matchActions:\n      - {action: Sigkill}")
        pm.add(scoped("kill-open", section), "k.yaml")
        assert cgroup2_dir.run(["cat", str(secret)], capture_output=True).returncode == 0  # empty scope
        prov.push(scope_of(cgroup2_dir))
        assert cgroup2_dir.run(["cat", str(secret)], capture_output=True).returncode == -9
        assert subprocess.run(["cat", str(secret)], capture_output=True).returncode == 0  # outside
        [row] = pm.list()
        assert row["scope"]["cgroups"] == 1 and row["scope"]["errors"] == 0
        pm.delete("kill-open")
        assert cgroup2_dir.run(["cat", str(secret)], capture_output=True).returncode == 0
    finally:
        rig.close()


def test_a_selector_the_matcher_cannot_use_is_refused_at_its_line(env):
    pm, _, _ = env
    pm.scope_provider, pm.scoping_supported = _Provider(), True
    text = doc("p", "sys_enter_openat", extra="  podSelector:\n    matchExpressions:\n    - {key: app, operator: In}\n")
    with pytest.raises(PolicyError) as ei:
        pm.add(text, "p.yaml")
    assert (ei.value.line, ei.value.path) == (8, "spec.podSelector.matchExpressions[0].values")
    assert ei.value.reason == "In needs at least one value"


def test_an_oversized_file_in_the_directory_is_refused_without_reading_it_all(env, tmp_path):
    pm, _, _ = env
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:  # sparse: 8 GiB on paper, nothing on disk
        fh.truncate(8 << 30)
    (tmp_path / "good.yaml").write_text(doc("good", "sys_enter_openat"))
    [bad, good] = pm.load_directory(tmp_path)
    assert bad == {"file": str(big), "ok": False, "error": f"{big}: policy is larger than 1048576 bytes"}
    assert good["ok"] is True


def test_a_policy_added_directly_meets_the_kernel_independent_rules():
    from policy_sensors import registry_with

    from sensorium.policy import parse_policy
    from sensorium_sensors.kprobe.schema import KProbeSpec

    reg, sensors = registry_with(("kprobe", "kprobes", KProbeSpec))
    pm = PolicyManager(reg, sensors)
    p = parse_policy("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: k}\nspec:\n  kprobes:\n"
                     "  - call: sys_openat\n    args: [{index: 6, type: int}]\n", "k.yaml", reg)
    with pytest.raises(PolicyError, match=r"refused kprobes\[0\] sys_openat: index 6: syscalls have 6 parameters"):
        pm.add_policy(p)
    assert sensors["kprobe"].attached == {} and pm.list() == []

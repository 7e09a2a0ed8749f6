"""Pipeline stages are plugins (`sensorium.hookspecs.StageSpec`, group ``sensorium.stages``): the process join
and the Kubernetes enrichment register through entry points like any third-party stage, run in their order,
and a stage that fails to start is marked failed while the agent runs on with the others."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sensorium import hookimpl
from sensorium.config import AgentConfig
from sensorium.events import Event
from sensorium.hookspecs import STAGE_GROUP, HoldingStage, Stage, StageSpec
from sensorium.k8s import KubernetesStage
from sensorium.pipeline import Pipeline, ProcessJoin, StageContextImpl, build_stages
from sensorium.plugins import PluginRegistry
from sensorium.testing import make_event, plugin_registry


def stage_plugin(name: str, order: int, factory: Any) -> Any:
    class P:
        @staticmethod
        @hookimpl
        def sensorium_stage() -> StageSpec:
            return StageSpec(name=name, description=f"test stage {name}", factory=factory, order=order)

    return P()


class Tag:
    """A stage that marks every event with its name (to see the order stages ran in)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, events: Sequence[Event]) -> Sequence[Event]:
        return [e.replace(body={**e.body, "seen": [*e.body.get("seen", []), self.name]}) for e in events]


def ctx(cfg: AgentConfig | None = None) -> StageContextImpl:
    return StageContextImpl(node_name="n", config=cfg or AgentConfig(kubernetes={"enabled": False}),
                            process_cache=None)


def test_builtin_stages_are_discovered_through_entry_points_in_order() -> None:
    reg = PluginRegistry().discover()
    assert [(s.name, s.order) for s in reg.ordered_stages()][:2] == [("process", 100), ("kubernetes", 200)]
    rec = reg.record("stage", "kubernetes")
    assert rec is not None and rec.distribution == "sensorium" and rec.target == "sensorium.k8s"


def test_stages_run_in_their_order_whatever_the_registration_order() -> None:
    reg = plugin_registry(stages={"late": stage_plugin("late", 300, lambda c: Tag("late")),
                                  "early": stage_plugin("early", 10, lambda c: Tag("early")),
                                  "mid": stage_plugin("mid", 300 - 1, lambda c: Tag("mid"))})
    pipe = Pipeline(stages=build_stages(reg, ctx()))
    seen: list[Any] = []
    pipe.subscribe(seen.extend)
    pipe.submit([make_event()])
    assert seen[0].body["seen"] == ["early", "mid", "late"]


def test_a_failing_stage_is_marked_failed_and_the_others_run() -> None:
    def boom(c: Any) -> Any:
        raise RuntimeError("no database")

    reg = plugin_registry(stages={"boom": stage_plugin("boom", 1, boom),
                                  "notastage": stage_plugin("notastage", 2, lambda c: 42),
                                  "off": stage_plugin("off", 3, lambda c: None),
                                  "ok": stage_plugin("ok", 4, lambda c: Tag("ok"))})
    stages = build_stages(reg, ctx())
    assert [type(s).__name__ for s in stages] == ["Tag"]
    states = {r["name"]: (r["state"], r["reason"]) for r in reg.as_list() if r["kind"] == "stage"}
    assert states == {"boom": ("failed", "RuntimeError: no database"),
                      "notastage": ("failed", "TypeError: factory returned int, which is not a Stage (not callable)"),
                      "off": ("off", "not wanted by the agent config"), "ok": ("running", None)}


def test_a_stage_that_raises_on_a_batch_passes_it_on_unchanged() -> None:
    def bad(events: Sequence[Event]) -> Sequence[Event]:
        raise ValueError("bug")

    pipe = Pipeline(stages=[bad, Tag("after")])
    seen: list[Any] = []
    pipe.subscribe(seen.extend)
    pipe.submit([make_event()])
    assert pipe.stage_errors == 1 and seen[0].body["seen"] == ["after"]


def test_the_process_join_and_kubernetes_register_as_plugins() -> None:
    reg = PluginRegistry().discover()
    stages = build_stages(reg, ctx())
    assert [type(s) for s in stages if type(s).__module__.startswith("sensorium.")] == [ProcessJoin]
    rec = reg.record("stage", "kubernetes")
    assert rec is not None and (rec.state, rec.reason) == ("off", "not wanted by the agent config")


def test_kubernetes_that_cannot_start_is_failed_and_the_process_join_runs(tmp_path: Path) -> None:
    cfg = AgentConfig(kubernetes={"enabled": True, "kubeconfig": str(tmp_path / "missing")})
    reg = PluginRegistry().discover()
    stages = build_stages(reg, ctx(cfg))
    assert ProcessJoin in [type(s) for s in stages] and not any(isinstance(s, KubernetesStage) for s in stages)
    rec = reg.record("stage", "kubernetes")
    assert rec is not None and rec.state == "failed" and rec.reason


def test_the_kubernetes_stage_is_a_holding_stage_over_its_enricher() -> None:
    class FakeEnricher:
        held = 2

        def process(self, events: Sequence[Event]) -> list[Event]:
            return [e.replace(body={**e.body, "pod": "p"}) for e in events]

        def flush(self) -> list[Event]:
            return [make_event(pid=9)]

        def stats(self) -> dict[str, int]:
            return {"held": 2}

    st = KubernetesStage(watcher=None, enricher=FakeEnricher())
    assert isinstance(st, HoldingStage) and isinstance(st, Stage)
    assert st([make_event()])[0].body["pod"] == "p"
    assert st.held == 2 and [e.body["process"]["pid"] for e in st.flush()] == [9] and st.stats() == {"held": 2}


def test_the_process_join_flushes_what_it_holds() -> None:
    class NoCache:
        def get(self, pid: int, ktime: int | None = None) -> tuple[None, None]:
            return None, None

    join = ProcessJoin(NoCache(), hold_s=60)
    ev = Event("process_kprobe", {"process": {"pid": 5}}, "n", 1)
    assert join([ev]) == [] and join.held
    out = join.flush()
    assert out[0].body["process"] == {"pid": 5, "cache_miss": True} and not join.held


def test_an_allowlist_naming_no_stage_keeps_the_stages_one_naming_a_stage_governs_them() -> None:
    reg = PluginRegistry(allow=["exec", "stdout"]).discover()
    assert {n for n in reg.stages} >= {"process", "kubernetes"}
    reg = PluginRegistry(allow=["exec", "process"]).discover()
    assert "process" in reg.stages and "kubernetes" not in reg.stages
    rec = reg.record("stage", "kubernetes")
    assert rec is not None and rec.state == "not allowed"
    reg = PluginRegistry(allow=["exec"], deny=["kubernetes"]).discover()
    assert "kubernetes" not in reg.stages and "process" in reg.stages
    assert reg.add(STAGE_GROUP, "extra", stage_plugin("extra", 1, lambda c: None)).state == "loaded"


def test_sensorium_plugins_lists_the_stages() -> None:
    out = subprocess.run([sys.executable, "-m", "sensorium.cli", "plugins", "--json"], capture_output=True,
                         text=True, timeout=120)
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
    assert rows[("stage", "process")]["order"] == 100 and rows[("stage", "process")]["state"] == "loaded"
    assert rows[("stage", "kubernetes")]["order"] == 200

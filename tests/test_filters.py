"""Export filters with Tetragon's semantics: allow/deny (OR of ANDs), fields, redaction, rate limit."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from sensorium.config import load_config
from sensorium.filters import build_filters, parse_label_selector
from sensorium.testing import CaptureExporter, make_event, runner_for, wait_until
from sensorium.yamlsrc import SourceError


def keep(cfg: dict, ev) -> bool:
    return build_filters(cfg, "n")(ev) is not None


def test_allow_list_is_an_or_of_filters_whose_fields_are_anded() -> None:
    cfg = {"allow": [{"event_set": ["PROCESS_EXEC"], "binary_regex": ["^/usr/bin/"]}, {"namespace": ["prod"]}]}
    assert keep(cfg, make_event("process_exec", binary="/usr/bin/curl"))
    assert not keep(cfg, make_event("process_exit", binary="/usr/bin/curl"))  # AND: wrong type
    assert not keep(cfg, make_event("process_exec", binary="/bin/sh"))
    assert keep(cfg, make_event("process_exit", binary="/bin/sh", namespace="prod", pod="p"))  # second filter


def test_deny_list_drops_matches_even_when_allowed() -> None:
    cfg = {"allow": [{"event_set": ["PROCESS_EXEC"]}], "deny": [{"pod_regex": ["^debug-"]}]}
    assert keep(cfg, make_event(namespace="a", pod="web-1"))
    assert not keep(cfg, make_event(namespace="a", pod="debug-7"))


def test_empty_namespace_matches_host_processes() -> None:
    cfg = {"allow": [{"namespace": [""]}]}
    assert keep(cfg, make_event())
    assert not keep(cfg, make_event(namespace="kube-system", pod="x"))


@pytest.mark.parametrize(
    "field, value, yes, no",
    [
        ("arguments_regex", ["--password"], dict(arguments="-u a --password x"), dict(arguments="-u a")),
        ("parent_binary_regex", ["bash$"], dict(parent_binary="/bin/bash"), dict(parent_binary="/bin/zsh")),
        ("container_id", ["^abc"], dict(namespace="n", pod="p", container_id="abcdef"), dict(namespace="n", pod="p", container_id="ffff")),
        ("labels", ["app=web,tier!=db"], dict(namespace="n", pod="p", labels={"app": "web"}), dict(namespace="n", pod="p", labels={"app": "web", "tier": "db"})),
        ("labels", ["env in (prod, stage),!canary"], dict(namespace="n", pod="p", labels={"env": "prod"}), dict(namespace="n", pod="p", labels={"env": "prod", "canary": "1"})),
        ("pid", [42], dict(pid=42), dict(pid=43)),
    ],
)
def test_filter_fields(field: str, value: list, yes: dict, no: dict) -> None:
    cfg = {"allow": [{field: value}]}
    assert keep(cfg, make_event(**yes))
    assert not keep(cfg, make_event(**no))


def test_policy_names_match_the_events_policy() -> None:
    cfg = {"allow": [{"policy_names": ["block-curl"]}]}
    assert keep(cfg, make_event("process_kprobe", policy_name="block-curl"))
    assert not keep(cfg, make_event("process_kprobe", policy_name="other"))
    assert not keep(cfg, make_event("process_exec"))


def test_label_selector_forms() -> None:
    sel = parse_label_selector("a, b==1, c notin (x,y)")
    assert sel({"a": "", "b": "1", "c": "z"}) and not sel({"a": "", "b": "1", "c": "x"}) and not sel({"b": "1"})


def test_field_filter_include_keeps_only_the_listed_paths_for_the_listed_types() -> None:
    chain = build_filters({"fields": [{"event_set": ["PROCESS_EXEC"], "fields": "process.binary,process.pid"}]}, "n")
    ev = make_event(pid=7, arguments="secret")
    out = chain(ev)
    assert out.as_dict()["process_exec"] == {"process": {"binary": "/usr/bin/true", "pid": 7}}
    assert orjson.loads(out.json())["node_name"] == "test-node" and "time" in orjson.loads(out.json())
    assert ev.process["arguments"] == "secret"  # the original event is not mutated
    exit_ev = make_event("process_exit", status=0)
    assert chain(exit_ev) is exit_ev


def test_field_filter_exclude_removes_paths() -> None:
    chain = build_filters({"fields": [{"fields": ["process.arguments", "parent"], "action": "EXCLUDE"}]}, "n")
    out = chain(make_event(arguments="x", parent_binary="/bin/sh"))
    assert "arguments" not in out.process and "parent" not in out.body and out.process["binary"] == "/usr/bin/true"


def test_redaction_replaces_capture_groups_in_process_and_parent_arguments() -> None:
    cfg = {"redact": [{"match": [{"binary_regex": ["mysql"]}], "redact": [r"(?:--password|-p)[= ]?(\S+)"]}]}
    chain = build_filters(cfg, "n")
    ev = make_event(binary="/usr/bin/mysql", arguments="-u root --password=hunter2 -h db -psecret")
    out = chain(ev)
    assert out.process["arguments"] == "-u root --password=***** -h db -p*****"
    assert b"hunter2" not in out.json() and b"hunter2" in ev.json()
    other = make_event(binary="/bin/echo", arguments="--password=hunter2")
    assert chain(other).process["arguments"] == "--password=hunter2"


def test_rate_limit_drops_counts_and_exports_rate_limit_info() -> None:
    cap = CaptureExporter()
    r = runner_for(cap, filters={"rate_limit": {"events": 10, "interval_s": 0.5}}, batch_size=100)
    r.start()
    r.submit([make_event(pid=i) for i in range(25)])
    info = wait_until(lambda: [e for e in cap.events if e.kind == "rate_limit_info"], 5, "rate_limit_info")
    r.stop(2)
    assert [e.process["pid"] for e in cap.events if e.kind == "process_exec"] == list(range(10))
    assert info[0].body == {"number_of_dropped_process_events": 15}
    st = r.stats()
    assert st["rate_limited"] == 15 and st["dropped_by_reason"] == {"rate_limit": 15}


def test_runner_counts_filtered_events() -> None:
    cap = CaptureExporter()
    r = runner_for(cap, filters={"deny": [{"binary_regex": ["sh$"]}]})
    r.start()
    r.submit([make_event(binary="/bin/sh"), make_event(binary="/bin/ls"), make_event(binary="/bin/bash")])
    cap.wait_for(1)
    r.stop(2)
    assert [e.process["binary"] for e in cap.events] == ["/bin/ls"] and r.stats()["filtered"] == 2


def test_a_malformed_event_is_dropped_and_counted_not_fatal() -> None:
    from sensorium.events import Event

    cap = CaptureExporter()
    r = runner_for(cap, filters={"allow": [{"binary_regex": ["ls"]}]})
    r.start()
    r.submit([Event("process_exec", {"process": "not-a-mapping"}, "n", 1), make_event(binary="/bin/ls")])
    cap.wait_for(1)
    r.stop(2)
    assert r.stats()["dropped_by_reason"] == {"filter_error": 1}


@pytest.mark.parametrize(
    "filters, where",
    [
        ("      allow:\n        - binary_regex: ['ok', '(unclosed']\n", "line 6: exporters[0].filters.allow[0].binary_regex[1]"),
        ("      deny:\n        - labels: ['a in ()']\n", "line 6: exporters[0].filters.deny[0].labels[0]"),
        ("      allow:\n        - event_set: [PROCESS_EXCE]\n", "exporters[0].filters.allow[0].event_set[0]: unknown event type"),
        ("      redact:\n        - redact: ['password=\\S+']\n", "exporters[0].filters.redact[0].redact[0]: redaction regex"),
        ("      rate_limit: {events: 0}\n", "exporters[0].filters.rate_limit.events"),
        ("      allow:\n        - binary: ['x']\n", "exporters[0].filters.allow[0].binary: unknown key"),
    ],
)
def test_bad_filters_are_config_errors_naming_the_key_path(tmp_path: Path, filters: str, where: str) -> None:
    p = tmp_path / "agent.yaml"
    p.write_text("exporters:\n  - type: stdout\n    format: json\n    filters:\n" + filters)
    with pytest.raises(SourceError) as err:
        load_config(p)
    assert where in str(err.value), str(err.value)

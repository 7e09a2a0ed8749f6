"""TracingPolicy parsing: Tetragon's names accepted, anything unsupported refused by name with file:line."""

from __future__ import annotations

import time

import pytest
from policy_sensors import default_registry, registry_with

from sensorium import policy as P
from sensorium.policy import MatchAction, PolicyError, parse_policies, parse_policy
from sensorium.yamlsrc import SourceError
from sensorium_sensors.kprobe.schema import KProbeSpec
from sensorium_sensors.tracepoint.schema import TracepointSpec
from sensorium_sensors.uprobe.schema import UProbeSpec

OPENAT = """\
apiVersion: sensorium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: watch-shadow
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
    args:
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values:
        - /etc/shadow
      matchBinaries:
      - operator: In
        values: [/usr/bin/cat]
        followChildren: true
      matchActions:
      - action: Post
        rateLimit: 1m
        rateLimitScope: process
"""


@pytest.fixture
def reg():
    return default_registry()[0]


def refused(text: str, reg, file: str = "p.yaml") -> PolicyError:
    with pytest.raises(SourceError) as ei:
        parse_policies(text, file, reg)
    return ei.value  # type: ignore[return-value]


def test_valid_policy_is_split_by_section_into_validated_models(reg):
    p = parse_policy(OPENAT, "p.yaml", reg)
    assert (p.name, p.kind, p.mode, p.namespace) == ("watch-shadow", "TracingPolicy", "enforcement", None)
    [sec] = p.sections
    assert (sec.key, sec.sensor) == ("tracepoints", "tracepoint")
    [tp] = sec.items
    assert isinstance(tp, TracepointSpec)
    assert (tp.subsystem, tp.event, tp.args[0].type) == ("syscalls", "sys_enter_openat", "string")
    sel = tp.selectors[0]
    assert sel.matchArgs[0].values == ["/etc/shadow"] and sel.matchBinaries[0].followChildren
    assert sel.matchActions[0].rate_limit_ns == 60 * 10**9
    view = p.view(sec, 7)
    assert ((view.id, view.name, view.section, view.items, view.mode)
            == (7, "watch-shadow", "tracepoints", (tp,), "enforcement"))
    assert p.hook_line("tracepoints", 0) == 7


def test_cilium_api_version_is_accepted_unchanged(reg):
    p = parse_policy(OPENAT.replace("sensorium.io/v1alpha1", "cilium.io/v1alpha1"), "p.yaml", reg)
    assert p.api_version == "cilium.io/v1alpha1"


def test_unknown_api_version_and_kind_are_refused(reg):
    e = refused(OPENAT.replace("sensorium.io/v1alpha1", "example.com/v9"), reg)
    assert e.line == 1 and "apiVersion 'example.com/v9' is not supported" in str(e)
    e = refused(OPENAT.replace("kind: TracingPolicy", "kind: NetworkPolicy"), reg)
    assert e.line == 2 and "kind 'NetworkPolicy'" in str(e)


def test_unknown_hook_section_names_the_sensor_that_would_serve_it(reg):
    text = OPENAT.replace("  tracepoints:", "  kprobes:\n  - call: sys_openat\n  tracepoints:")
    e = refused(text, reg)
    assert str(e).startswith("p.yaml:6: spec.kprobes: unknown policy section 'kprobes'")
    assert "the 'kprobe' sensor would serve it, but it is not installed" in str(e)
    e = refused(OPENAT.replace("  tracepoints:", "  fentries: []\n  tracepoints:"), reg)
    assert "no Sensorium sensor implements 'fentries'" in str(e)
    e = refused(OPENAT.replace("  tracepoints:", "  bogus: []\n  tracepoints:"), reg)
    assert "unknown policy section 'bogus'" in str(e) and "sections served here: lsmhooks, tracepoints" in str(e)


def test_unsupported_tetragon_operator_is_refused_by_name_with_what_is_supported(reg):
    e = refused(OPENAT.replace("operator: Equal", "operator: SubString"), reg)
    assert e.line == 15 and e.path == "spec.tracepoints[0].selectors[0].matchArgs[0].operator"
    assert "matchArgs operator 'SubString' is not supported by Sensorium (supported: Equal, NotEqual," in e.reason


def test_unknown_operator_is_refused(reg):
    e = refused(OPENAT.replace("operator: Equal", "operator: Equals"), reg)
    assert "unknown matchArgs operator 'Equals'" in str(e)


def test_unsupported_action_is_refused_by_name(reg):
    text = OPENAT.replace("action: Post", "action: FollowFD")
    e = refused(text.replace("        rateLimit: 1m\n        rateLimitScope: process\n", ""), reg)
    assert "action 'FollowFD' is not supported by Sensorium (supported: Post, NoPost, Sigkill, Signal, Override, Set, TrackSock, UntrackSock, GetUrl, DnsLookup)" in str(e)


def test_too_many_values_gives_the_limit_and_line(reg):
    many = "\n".join(f"        - /etc/f{i}" for i in range(P.MAX_VALUES_PER_OPERATOR + 1))
    e = refused(OPENAT.replace("        - /etc/shadow", many), reg)
    assert e.path == "spec.tracepoints[0].selectors[0].matchArgs[0].values" and e.line == 16
    assert f"{P.MAX_VALUES_PER_OPERATOR + 1} values; the limit is {P.MAX_VALUES_PER_OPERATOR}" in e.reason


def test_too_many_selectors_gives_the_limit(reg):
    sel = "    - matchBinaries:\n      - operator: In\n        values: [/bin/x]\n"
    text = OPENAT.split("    selectors:\n")[0] + "    selectors:\n" + sel * (P.MAX_SELECTORS_PER_HOOK + 1)
    e = refused(text, reg)
    assert f"the limit is {P.MAX_SELECTORS_PER_HOOK}" in str(e) and e.path == "spec.tracepoints[0].selectors"


def test_overlong_string_value_gives_the_limit(reg):
    e = refused(OPENAT.replace("/etc/shadow", "/" + "a" * P.MAX_STRING_VALUE_LEN), reg)
    assert f"the limit is {P.MAX_STRING_VALUE_LEN} bytes" in str(e) and e.line == 17


def test_malformed_yaml_names_the_line(reg):
    e = refused(OPENAT.replace("    event: sys_enter_openat", "    event: [sys_enter_openat"), reg)
    assert e.file == "p.yaml" and e.line is not None and "malformed YAML" in str(e)
    assert 8 <= e.line <= 10


def test_unknown_field_is_refused_with_line_and_path(reg):
    e = refused(OPENAT.replace("    event: sys_enter_openat", "    event: sys_enter_openat\n    colour: red"), reg)
    assert str(e) == ("p.yaml:9: spec.tracepoints[0].colour: unknown field (fields here: args, selectors, message, "
                      "tags, subsystem, event, raw)")


def test_a_misspelt_field_gets_a_suggestion(reg):
    e = refused(OPENAT.replace("followChildren", "followChildern").replace("rateLimit:", "ratelimit:"), reg)
    assert [(p.line, p.path, p.reason) for p in e.problems] == [
        (21, "spec.tracepoints[0].selectors[0].matchBinaries[0].followChildern", "unknown field (did you mean 'followChildren'?)"),
        (24, "spec.tracepoints[0].selectors[0].matchActions[0].ratelimit", "unknown field (did you mean 'rateLimit'?)"),
    ]


def test_known_tetragon_field_we_do_not_implement_is_refused_not_ignored(reg):
    text = OPENAT.replace("      matchBinaries:", "      matchNamespaceChanges:\n      - operator: In\n        values: [Mnt]\n      matchBinaries:")
    e = refused(text, reg)
    assert e.path == "spec.tracepoints[0].selectors[0].matchNamespaceChanges"
    assert "not supported by Sensorium: matchNamespaceChanges is not implemented" in e.reason


def test_every_problem_is_reported_at_once(reg):
    text = OPENAT.replace("operator: Equal", "operator: SubString").replace("type: string", "type: kiocb")
    e = refused(text, reg)
    assert len(e.problems) == 2
    assert {p.path for p in e.problems} == {"spec.tracepoints[0].args[0].type",
                                            "spec.tracepoints[0].selectors[0].matchArgs[0].operator"}


@pytest.mark.parametrize("name", ["Upper", "has_underscore", "-dash", "a" * 254, ""])
def test_policy_name_must_be_dns1123(reg, name):
    e = refused(OPENAT.replace("name: watch-shadow", f"name: '{name}'"), reg)
    assert e.path in ("metadata.name", "metadata") and e.line == 4


def test_pod_and_container_selectors_are_refused_until_scoping_exists(reg):
    text = OPENAT.replace("spec:\n", "spec:\n  podSelector:\n    matchLabels:\n      app: web\n")
    e = refused(text, reg)
    assert e.path == "spec.podSelector" and "not served by this agent" in e.reason
    p = parse_policy(text, "p.yaml", reg, scoping_supported=True)
    assert p.pod_selector is not None and p.pod_selector.matchLabels == {"app": "web"}


def test_namespaced_policy_needs_a_namespace_and_is_refused_until_scoping_exists(reg):
    text = OPENAT.replace("kind: TracingPolicy", "kind: TracingPolicyNamespaced")
    assert "needs metadata.namespace" in str(refused(text, reg))
    text = text.replace("  name: watch-shadow", "  name: watch-shadow\n  namespace: prod")
    assert "TracingPolicyNamespaced is not served by this agent" in str(refused(text, reg))
    assert parse_policy(text, "p.yaml", reg, scoping_supported=True).namespace == "prod"


def test_policy_mode_option(reg):
    text = OPENAT.replace("spec:\n", "spec:\n  options:\n  - name: policy-mode\n    value: monitor\n")
    assert parse_policy(text, "p.yaml", reg).mode == "monitoring"
    e = refused(text.replace("policy-mode", "disable-kprobe-multi"), reg)
    assert "option 'disable-kprobe-multi' is not supported" in str(e) and e.line == 7


def test_unsupported_spec_keys_say_why(reg):
    e = refused(OPENAT.replace("spec:\n", "spec:\n  selectorsMacros:\n  - name: x\n"), reg)
    assert e.path == "spec.selectorsMacros" and "selector macros are not supported" in e.reason
    e = refused(OPENAT.replace("spec:\n", "spec:\n  lists:\n  - name: x\n    values: [a]\n"), reg)
    assert e.path == "spec.lists[0].type" and "list type None is not one of" in e.reason


def test_multi_document_file_and_duplicate_names(reg):
    two = OPENAT + "---\n" + OPENAT.replace("watch-shadow", "watch-shadow-2")
    assert [p.name for p in parse_policies(two, "p.yaml", reg)] == ["watch-shadow", "watch-shadow-2"]
    e = refused(OPENAT + "---\n" + OPENAT, reg)
    assert "appears twice in this file (first at line 1)" in str(e) and e.line == 30
    with pytest.raises(PolicyError, match="expected one policy document, found 2"):
        parse_policy(two, "p.yaml", reg)


def test_policy_without_hooks_is_refused(reg):
    e = refused(OPENAT.split("  tracepoints:")[0] + "  tracepoints: []\n", reg)
    assert "the policy has no hooks" in str(e)


def test_action_fields_must_fit_the_action(reg):
    with pytest.raises(ValueError, match="the Signal action needs argSig"):
        MatchAction(action="Signal")
    assert MatchAction(action="Sigkill", argError=-1).argError == -1  # accepted, ignored with a warning (below)
    with pytest.raises(ValueError, match="rateLimit 'soon'"):
        MatchAction(action="Post", rateLimit="soon")
    assert MatchAction(action="Override", argError=-1).blocking


def test_return_selectors_need_return(reg):
    with pytest.raises(ValueError, match="need 'return: true'"):
        KProbeSpec.model_validate({"call": "x", "selectors": [{"matchReturnArgs": [{"index": 0, "operator": "Equal", "values": ["0"]}]}]})
    k = KProbeSpec.model_validate({"call": "x", "return": True, "returnArg": {"index": 0, "type": "int"},
                                   "selectors": [{"matchReturnArgs": [{"index": 0, "operator": "Equal", "values": [0]}]}]})
    assert k.return_ and k.selectors[0].matchReturnArgs[0].values == ["0"]
    assert k.model_dump(by_alias=True, exclude_unset=True)["return"] is True


def test_uprobe_needs_absolute_path_and_a_target():
    with pytest.raises(ValueError, match="must be absolute"):
        UProbeSpec.model_validate({"path": "bash", "symbols": ["readline"]})
    with pytest.raises(ValueError, match="at least one of 'symbols' and 'offsets'"):
        UProbeSpec.model_validate({"path": "/bin/bash"})


# ---- hostile input ------------------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused_quickly(reg):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    t0 = time.monotonic()
    e = refused(bomb, reg)
    assert "aliases" in str(e) and time.monotonic() - t0 < 2


def test_oversized_nul_and_deeply_nested_input_are_refused(reg):
    assert "the limit is" in str(refused("#" * (P.MAX_POLICY_BYTES + 1), reg))
    assert "NUL" in str(refused(OPENAT + "\x00", reg))
    deep = "spec: " + "[" * 5000 + "]" * 5000 + "\n"
    e = refused(deep, reg)  # must be an error, not a crash
    assert isinstance(e, SourceError)


def test_non_utf8_bytes_are_refused(reg):
    assert "not UTF-8" in str(refused(b"\xff\xfe" + OPENAT.encode(), reg))  # type: ignore[arg-type]


@pytest.mark.parametrize("doc", ["", "just a string", "- a list", "apiVersion: sensorium.io/v1alpha1\n", "spec: 3\n"])
def test_odd_documents_give_errors_not_crashes(reg, doc):
    assert isinstance(refused(doc, reg), SourceError)


def test_a_section_can_come_from_a_third_party_sensor():
    from pydantic import BaseModel, ConfigDict

    class Knock(BaseModel):
        model_config = ConfigDict(extra="forbid")
        port: int

    reg, _ = registry_with(("knock", "knocks", Knock))
    p = parse_policy(OPENAT.split("  tracepoints:")[0] + "  knocks:\n  - port: 22\n", "p.yaml", reg)
    assert p.sections[0].sensor == "knock" and p.sections[0].items[0].port == 22


def test_the_limits_in_the_docs_are_the_limits_in_the_code():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "policies.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("MAX_"):
            rows[cells[0]] = int(cells[1])
    limits = {k: v for k, v in vars(P).items() if k.startswith("MAX_") and isinstance(v, int)}
    assert rows == limits


def test_a_policy_with_many_problems_gives_a_bounded_message(reg):
    items = "".join(f"  - subsystem: s\n    event: e{i}\n    bogus{i}: 1\n" for i in range(40))
    e = refused(OPENAT.split("  tracepoints:")[0] + "  tracepoints:\n" + items, reg)
    assert len(e.problems) == 40 and "and 30 more problems" in e.reason and len(str(e)) < 2000


def test_too_many_hooks_in_one_policy(reg):
    items = "".join(f"  - {{subsystem: s, event: e{i}}}\n" for i in range(P.MAX_HOOKS_PER_POLICY + 1))
    e = refused(OPENAT.split("  tracepoints:")[0] + "  tracepoints:\n" + items, reg)
    assert e.path == "spec.tracepoints" and f"the limit is {P.MAX_HOOKS_PER_POLICY}" in e.reason


# ---- strict types: a value must already have its field's type -------------------------------------

KPROBE = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: strict
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: 1
      type: string
    selectors:
    - matchPIDs:
      - operator: NotIn
        values: [1]
"""


@pytest.fixture
def kreg():
    return registry_with(("kprobe", "kprobes", KProbeSpec))[0]


def test_a_string_is_not_a_boolean(kreg):
    e = refused(KPROBE.replace("syscall: true", 'syscall: "yes"'), kreg)
    assert str(e) == "p.yaml:8: spec.kprobes[0].syscall: must be a boolean (true or false), not the string 'yes'"


def test_a_boolean_is_not_an_index(kreg):
    e = refused(KPROBE.replace("index: 1", "index: true"), kreg)
    assert str(e) == "p.yaml:10: spec.kprobes[0].args[0].index: must be an integer, not the boolean true"


def test_a_pid_written_as_a_string_is_refused(kreg):
    e = refused(KPROBE.replace("values: [1]", 'values: ["1"]'), kreg)
    assert str(e) == ("p.yaml:15: spec.kprobes[0].selectors[0].matchPIDs[0].values[0]: must be an integer, "
                      "not the string '1'")


@pytest.mark.parametrize("entry", ["matchPIDs:\n      - operator: NotIn\n        values: []",
                                   "matchNamespaces:\n      - namespace: Pid\n        operator: In\n        values: []",
                                   "matchCapabilities:\n      - operator: In\n        values: []"],
                         ids=["matchPIDs", "matchNamespaces", "matchCapabilities"])
def test_an_empty_values_list_is_refused(kreg, entry):
    text = KPROBE.split("    - matchPIDs:")[0] + "    - " + entry + "\n"
    assert refused(text, kreg).reason == "values must not be empty"


def test_numbers_in_a_string_value_list_are_still_taken_as_written(reg):
    p = parse_policy(OPENAT.replace("- /etc/shadow", "- 443"), "p.yaml", reg)
    assert list(p.sections[0].items[0].selectors[0].matchArgs[0].values) == ["443"]


def test_a_custom_tag_is_refused_not_a_crash(reg):
    e = refused(OPENAT.replace("kind: TracingPolicy", "kind: !foo TracingPolicy"), reg)
    assert str(e) == ("p.yaml:2: kind: YAML tag '!foo' is not allowed: only plain values (strings, numbers, "
                      "booleans, null, lists and mappings)")


def test_a_port_range_written_bare_stays_a_range(kreg):
    text = KPROBE.replace("type: string", "type: sockaddr").split("    - matchPIDs:")[0] + \
        "    - matchArgs:\n      - index: 1\n        operator: DPort\n        values: [20:21]\n"
    [p] = parse_policies(text.replace("sys_openat", "sys_connect"), "p.yaml", kreg)
    assert list(p.sections[0].items[0].selectors[0].matchArgs[0].values) == ["20:21"]


@pytest.mark.parametrize("field,value", [("subsystem", "0"), ("event", "12"), ("message", "42")])
def test_a_name_given_as_a_number_is_refused(reg, field, value):
    text = OPENAT.replace("    event: sys_enter_openat\n", "    event: sys_enter_openat\n    message: ok\n")
    text = text.replace(f"{field}: " + {"subsystem": "syscalls", "event": "sys_enter_openat", "message": "ok"}[field],
                        f"{field}: {value}")
    assert refused(text, reg).reason == f"must be a string, not the number {value}"


def test_argerror_on_sigkill_is_accepted_with_a_warning_as_tetragon_does(reg, tmp_path):
    """Tetragon accepts argError on a Sigkill action and ignores it: the policy is valid, `policy check`
    names the ignored field with its line, and the loaded policy lists the same warning."""
    from click.testing import CliRunner

    from sensorium.cli import cli

    f = tmp_path / "p.yaml"
    f.write_text(POLICY_ARGERROR_SIGKILL)
    [p] = parse_policies(f.read_text(), str(f), reg)
    assert p.warnings == [f"{f}:15: spec.tracepoints[0].selectors[0].matchActions[0].argError: argError has no effect "
                          "with the Sigkill action (only Override returns an error): ignored"]
    res = CliRunner().invoke(cli, ["policy", "check", str(f)])
    assert res.exit_code == 0, res.output
    assert res.stdout == "argerr: valid (tracepoints: 1; enforcement)\n"
    assert res.stderr == f"warning: {p.warnings[0]}\n"


POLICY_ARGERROR_SIGKILL = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: argerr
spec:
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args:
    - index: 4
      type: int64
    selectors:
    - matchActions:
      - action: Sigkill
        argError: -1
"""


@pytest.mark.parametrize("typ", ["socket", "const_buf", "bpf_cmd"])
def test_tetragon_argument_types_we_lack_are_named_unsupported_not_unknown(reg, typ):
    text = POLICY_ARGERROR_SIGKILL.replace("type: int64", f"type: {typ}")
    err = refused(text, reg)
    assert str(err).startswith(f"p.yaml:11: spec.tracepoints[0].args[0].type: argument type '{typ}' is not "
                               "supported by Sensorium (supported: int, ")


def test_policy_check_accepts_a_scoped_policy_and_warns_that_loading_needs_kubernetes():
    """A check validates: a scoped policy (Tetragon's modules-nohost.yaml) is valid; where it can load is the agent's
    business, said in a warning with the file, line and field (an agent without Kubernetes refuses it at load)."""
    from pathlib import Path

    from click.testing import CliRunner

    from sensorium.cli import cli

    f = Path(__file__).parent / "data" / "tetragon-policies" / "modules-nohost.yaml"
    res = CliRunner().invoke(cli, ["policy", "check", str(f)])
    assert res.exit_code == 0, res.output
    assert res.stdout == ("monitor-kernel-modules: valid (kprobes: 3; enforcement; scoped: needs an agent with "
                          "Kubernetes)\n")
    assert res.stderr == (f"warning: {f}:11: spec.podSelector: the policy is scoped by podSelector: loading it needs "
                          "an agent with its Kubernetes support (kubernetes.enabled in the agent config); an agent "
                          "without it refuses the policy\n")

"""`sensorium policy replay` without a kernel: each operator's edges, Tetragon's own JSON, the report's
shape, and bad input. The kernel agreement itself is tests/test_policy_replay.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sensorium.cli import cli
from sensorium.policy import sock_value
from sensorium.replay.evaluate import (
    ReplayRefused,
    Sock,
    Undecided,
    addr_in,
    int_match,
    parse_int_value,
    sock_from_json,
    sock_match,
    str_match,
)
from sensorium.replay.records import parse_rfc3339, parse_when

T0 = "2026-12-01T10:00:00.000000001Z"


# ---- operators ----------------------------------------------------------------------------------------

def test_equal_needs_the_same_length_and_prefix_a_string_at_least_as_long() -> None:
    assert str_match(b"/etc/passwd", "Equal", [b"/etc/passwd"])
    assert not str_match(b"/etc/passwd-", "Equal", [b"/etc/passwd"])
    assert str_match(b"/etc/passwd-", "Prefix", [b"/etc/passwd"])
    assert not str_match(b"/etc", "Prefix", [b"/etc/"])
    assert str_match(b"/a/b.cfg", "Postfix", [b".cfg"]) and not str_match(b"cfg", "Postfix", [b".cfg"])
    assert str_match(b"", "NotEqual", [b"x"]) and not str_match(b"", "Prefix", [b"x"])


def test_not_operators_mean_none_of_the_values() -> None:
    assert not str_match(b"/b", "NotEqual", [b"/a", b"/b"])
    assert str_match(b"/c", "NotEqual", [b"/a", b"/b"])
    assert not str_match(b"/usr/bin/x", "NotPrefix", [b"/bin/", b"/usr/"])
    assert str_match(b"/a.txt", "NotPostfix", [b".cfg", b".yaml"])


def test_strings_are_compared_on_the_255_bytes_the_kernel_captured() -> None:
    long = b"/" + b"x" * 250 + b"y" * 49
    assert str_match(long, "Equal", [long[:255]])          # the kernel compares its 255-byte capture
    assert not str_match(long, "Postfix", [long[-10:]])    # the real end was never captured...
    assert str_match(long, "Postfix", [long[245:255]])     # ...the capture's end is what Postfix sees


def test_integers_compare_as_the_kernels_64_bit_value() -> None:
    minus_one = -1 & (2**64 - 1)                            # an int argument of -1, sign-extended
    assert int_match(minus_one, True, "Equal", [parse_int_value("-1")])
    assert not int_match(0xFFFFFFFF, False, "Equal", [parse_int_value("-1")])  # a uint32 is not -1
    assert int_match(minus_one, True, "LT", [parse_int_value(0)])              # signed: -1 < 0
    assert int_match(minus_one, False, "GT", [parse_int_value(5)])             # unsigned: 2^64-1 > 5
    assert int_match(0o1101, False, "Mask", [parse_int_value("0x40")])         # any bit in common
    assert not int_match(0o1001, False, "Mask", [0x40, 0x2])
    assert int_match(7, False, "NotEqual", [1, 2]) and not int_match(2, False, "NotEqual", [1, 2])


def test_an_ipv4_cidr_matches_an_ipv4_mapped_address_and_an_ipv6_cidr_never_an_ipv4_one() -> None:
    k4 = sock_from_json("sockaddr_arg", {"family": "AF_INET", "addr": "10.1.2.3", "port": 80})
    k6m = sock_from_json("sockaddr_arg", {"family": "AF_INET6", "addr": "::ffff:10.1.2.3", "port": 80})
    assert addr_in(k4.family, k4.daddr, sock_value("DAddr", "10.0.0.0/8"))
    assert addr_in(k6m.family, k6m.daddr, sock_value("DAddr", "10.0.0.0/8"))
    assert not addr_in(k4.family, k4.daddr, sock_value("DAddr", "::/0"))


def test_socket_operators_on_ports_ranges_privilege_and_families() -> None:
    k = sock_from_json("sockaddr_arg", {"family": "AF_INET", "addr": "127.0.0.1", "port": 8080})
    assert sock_match(k, "DPort", [sock_value("DPort", "9000:8000")])       # reversed ends swapped
    assert sock_match(k, "SPort", [(8080, 8080)])                           # a sockaddr's one port
    assert sock_match(k, "NotDPortPriv", []) and not sock_match(k, "DPortPriv", [])
    assert sock_match(k, "Family", [sock_value("Family", "AF_INET")])
    unix = sock_from_json("sockaddr_arg", {"family": "AF_UNIX"})
    assert unix == Sock(1, 0, 0, 0, bytes(16), bytes(16))
    assert sock_match(unix, "NotDAddr", [sock_value("NotDAddr", "0.0.0.0/0")])  # another family: in none
    tcp = sock_from_json("sock_arg", {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                                      "saddr": "10.0.0.1", "daddr": "10.0.0.2", "sport": 40000, "dport": 443})
    assert sock_match(tcp, "Protocol", [sock_value("Protocol", "IPPROTO_TCP")])
    assert sock_match(tcp, "SAddr", [sock_value("SAddr", "10.0.0.1")]) and not sock_match(
        tcp, "DAddr", [sock_value("DAddr", "10.0.0.1")])


def test_rfc3339_times_keep_nanoseconds_and_offsets() -> None:
    assert parse_rfc3339("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_rfc3339("1970-01-01T01:00:00+01:00") == 0
    assert parse_rfc3339(T0) % 1_000_000_000 == 1
    with pytest.raises(ValueError, match="not a valid date"):
        parse_rfc3339("2026-02-30T00:00:00Z")
    assert parse_when("7d", now_ns=10 * 86400 * 10**9) == 3 * 86400 * 10**9
    with pytest.raises(ValueError, match="neither an RFC 3339 time"):
        parse_when("yesterday")


# ---- whole replays ------------------------------------------------------------------------------------

def _proc(pid: int = 100, binary: str = "/usr/bin/cat", **kw: Any) -> dict[str, Any]:
    p = {"exec_id": f"e{pid}", "pid": pid, "tid": pid, "binary": binary, "parent_exec_id": "e1",
         "flags": "execve clone",
         "cap": {"permitted": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN", "DAC_OVERRIDE"]},
         "ns": {"net": {"inum": 4026531833, "is_host": True}, "pid": {"inum": 4026531836, "is_host": True}}}
    p.update(kw)
    return p


def _openat(path: str, time: str = T0, policy: str = "rec", **proc: Any) -> dict[str, Any]:
    return {"process_kprobe": {"process": _proc(**proc), "parent": _proc(1, "/sbin/init", parent_exec_id=""),
                               "function_name": "__x64_sys_openat",
                               "args": [{"int_arg": -100}, {"string_arg": path}, {"int_arg": 0}],
                               "policy_name": policy, "action": "KPROBE_ACTION_POST"},
            "node_name": "n", "time": time}


def _policy(selectors: list[dict[str, Any]], name: str = "cand", mode: str | None = None,
            args: list[dict[str, Any]] | None = None) -> str:
    spec: dict[str, Any] = {"kprobes": [{"call": "sys_openat",
                                         "args": args or [{"index": 0, "type": "int"}, {"index": 1, "type": "string"},
                                                          {"index": 2, "type": "int"}],
                                         "selectors": selectors}]}
    if mode:
        spec["options"] = [{"name": "policy-mode", "value": mode}]
    return json.dumps({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name},
                       "spec": spec})


def _run(tmp_path: Path, policy: str, events: list[Any], *extra: str) -> tuple[int, str, str]:
    (tmp_path / "p.yaml").write_text(policy)
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    (tmp_path / "ev.jsonl").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(cli, ["policy", "replay", str(tmp_path / "p.yaml"), "--events",
                                 str(tmp_path / "ev.jsonl"), *extra])
    return r.exit_code, r.stdout, r.stderr


def _json(tmp_path: Path, policy: str, events: list[Any], *extra: str) -> dict[str, Any]:
    code, out, err = _run(tmp_path, policy, events, "--json", *extra)
    assert code in (0, 3), out + err
    return json.loads(out)


def test_json_report_counts_matches_and_actions_per_selector(tmp_path: Path) -> None:
    pol = _policy([{"matchArgs": [{"index": 1, "operator": "Prefix", "values": ["/etc/"]}],
                    "matchActions": [{"action": "Sigkill"}]},
                   {"matchArgs": [{"index": 1, "operator": "Postfix", "values": [".txt"]}]}])
    res = _json(tmp_path, pol, [_openat("/etc/shadow"), _openat("/etc/a.txt"), _openat("/tmp/a.txt"),
                                _openat("/tmp/b")])
    assert res["matched"] == 3 and res["actions"] == {"Sigkill": 2, "Post": 1}
    assert res["killed"] == 2 and res["posted"] == 3
    sel0, sel1 = res["policies"][0]["hooks"][0]["selectors"]
    assert (sel0["matched"], sel1["matched"]) == (2, 1)   # /etc/a.txt: the first selector that matches acts
    assert sel0["binaries"] == {"/usr/bin/cat": 2} and sel0["examples"][0]["args"][1] == {"string_arg": "/etc/shadow"}
    assert res["recording"]["events"] == 4 and res["undecided"] == 0


def test_monitoring_posts_a_would_be_kill_even_with_nopost(tmp_path: Path) -> None:
    sel = [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/etc/shadow"]}],
            "matchActions": [{"action": "Sigkill"}, {"action": "NoPost"}]}]
    mon = _json(tmp_path, _policy(sel), [_openat("/etc/shadow")], "--mode", "monitoring")
    enf = _json(tmp_path, _policy(sel), [_openat("/etc/shadow")], "--mode", "enforcement")
    assert (mon["posted"], mon["killed"], mon["actions"]["Sigkill"]) == (1, 0, 1)
    assert (enf["posted"], enf["killed"]) == (0, 1)


def test_the_policy_mode_option_is_the_default_mode(tmp_path: Path) -> None:
    sel = [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/x"]}],
            "matchActions": [{"action": "Sigkill"}]}]
    res = _json(tmp_path, _policy(sel, mode="monitor"), [_openat("/x")])
    assert res["policies"][0]["mode"] == "monitoring" and res["killed"] == 0


def test_events_of_a_killed_process_after_the_kill_are_counted(tmp_path: Path) -> None:
    sel = [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/x"]}],
            "matchActions": [{"action": "Sigkill"}]}]
    res = _json(tmp_path, _policy(sel), [_openat("/x"), _openat("/y"), _openat("/z", pid=7)])
    assert res["events_after_kill"] == 1


def test_rate_limit_posts_one_event_per_period_for_the_same_arguments(tmp_path: Path) -> None:
    sel = [{"matchArgs": [{"index": 1, "operator": "Prefix", "values": ["/"]}],
            "matchActions": [{"action": "Post", "rateLimit": "10s"}]}]
    evs = [_openat("/a", "2026-12-01T10:00:00Z"), _openat("/a", "2026-12-01T10:00:05Z"),
           _openat("/b", "2026-12-01T10:00:06Z"), _openat("/a", "2026-12-01T10:00:11Z")]
    res = _json(tmp_path, _policy(sel), evs)
    assert (res["matched"], res["posted"], res["rate_limited"]) == (4, 3, 1)


def test_binaries_capabilities_namespaces_and_pids(tmp_path: Path) -> None:
    evs = [_openat("/a"), _openat("/a", pid=5, binary="/usr/bin/curl",
                                  cap={"permitted": []}, ns={"net": {"inum": 99, "is_host": False}})]
    def matched(sel: dict[str, Any]) -> int:
        return _json(tmp_path, _policy([sel]), evs)["matched"]
    assert matched({"matchBinaries": [{"operator": "In", "values": ["/usr/bin/curl"]}]}) == 1
    assert matched({"matchBinaries": [{"operator": "NotPostfix", "values": ["/cat"]}]}) == 1
    assert matched({"matchCapabilities": [{"type": "Effective", "operator": "In", "values": ["SYS_ADMIN"]}]}) == 1
    assert matched({"matchCapabilities": [{"type": "Effective", "operator": "NotIn",
                                           "values": ["CAP_DAC_OVERRIDE"]}]}) == 1   # Tetragon's DAC_OVERRIDE
    assert matched({"matchNamespaces": [{"namespace": "Net", "operator": "NotIn", "values": ["host_ns"]}]}) == 1
    assert matched({"matchNamespaces": [{"namespace": "Net", "operator": "In", "values": ["99"]}]}) == 1
    assert matched({"matchPIDs": [{"operator": "NotIn", "values": [5]}]}) == 1


def test_what_the_recording_does_not_carry_is_undecided_with_the_reason(tmp_path: Path) -> None:
    ev = _openat("/a")
    del ev["process_kprobe"]["process"]["cap"]
    code, out, err = _run(tmp_path, _policy([{"matchCapabilities": [{"operator": "In", "values": ["SYS_ADMIN"]}]}]),
                          [ev])
    assert code == 3 and "undecided (1): selectors[0].matchCapabilities[0]: the event's process has no cap" in out
    assert "replay incomplete: 1 events could not be decided" in err


def test_an_undecided_selector_before_a_matching_one_leaves_the_event_undecided(tmp_path: Path) -> None:
    ev = _openat("/a")
    del ev["process_kprobe"]["process"]["ns"]
    pol = _policy([{"matchNamespaces": [{"namespace": "Net", "operator": "In", "values": ["host_ns"]}],
                    "matchActions": [{"action": "Sigkill"}]},
                   {"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/a"]}]}])
    assert _json(tmp_path, pol, [ev])["undecided"] == 1
    # ...but a selector whose other filter is False is decided whatever the undecided one would say
    pol2 = _policy([{"matchNamespaces": [{"namespace": "Net", "operator": "In", "values": ["host_ns"]}],
                     "matchArgs": [{"index": 1, "operator": "Equal", "values": ["/b"]}]}])
    res = _json(tmp_path, pol2, [ev])
    assert (res["undecided"], res["matched"]) == (0, 0)


def test_follow_children_walks_the_recorded_ancestry(tmp_path: Path) -> None:
    shell = {"process_exec": {"process": _proc(50, "/bin/bash", exec_id="e50", parent_exec_id="e1")},
             "time": T0}
    child = _openat("/a", pid=60, binary="/usr/bin/cat", exec_id="e60", parent_exec_id="e50")
    child["process_kprobe"]["parent"] = _proc(50, "/bin/bash", exec_id="e50", parent_exec_id="e1")
    stranger = _openat("/a", pid=70, exec_id="e70", parent_exec_id="e9")
    stranger["process_kprobe"]["parent"] = _proc(9, "/usr/sbin/cron", exec_id="e9", parent_exec_id="e8")
    pol = _policy([{"matchBinaries": [{"operator": "In", "values": ["/bin/bash"], "followChildren": True}]}])
    res = _json(tmp_path, pol, [shell, child, stranger])
    assert (res["matched"], res["undecided"]) == (1, 1)   # cron's parent e8 is not in the recording
    res = _json(tmp_path, pol, [shell, child, stranger], "--unknown-ancestors", "no-match")
    assert (res["matched"], res["undecided"]) == (1, 0) and res["assumptions"] == {"unknown_ancestors": "no-match"}


def test_a_call_before_a_forked_childs_exec_is_judged_on_the_parents_binary(tmp_path: Path) -> None:
    exec_ev = {"process_exec": {"process": _proc(60, "/usr/bin/curl", exec_id="e60")}, "time": "2026-12-01T10:00:01Z"}
    early = _openat("/a", "2026-12-01T10:00:00Z", pid=60, binary="/usr/bin/curl", exec_id="e60")
    early["process_kprobe"]["parent"] = _proc(50, "/bin/bash", exec_id="e50")
    pol = _policy([{"matchBinaries": [{"operator": "In", "values": ["/bin/bash"]}]}])
    assert _json(tmp_path, pol, [exec_ev, early])["matched"] == 1


def test_args_are_found_by_parameter_in_the_recording_policys_layout(tmp_path: Path) -> None:
    (tmp_path / "rec.yaml").write_text(_policy([], name="rec"))
    cand = _policy([{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/a"]}]}],
                   args=[{"index": 1, "type": "string"}])
    res = _json(tmp_path, cand, [_openat("/a"), _openat("/a", policy="other")], "--recorded-with",
                str(tmp_path / "rec.yaml"))
    assert res["matched"] == 1   # only the recording policy's events
    # without it, the recording is read with the candidate's own layout: one argument, not three
    code, out, _ = _run(tmp_path, cand, [_openat("/a")])
    assert code == 3 and "the event has 3 arguments where 1 were expected (pass --recorded-with" in out
    code, out, _ = _run(tmp_path, _policy([{"matchArgs": [{"index": 2, "operator": "Mask", "values": ["0x40"]}]}],
                                          args=[{"index": 2, "type": "uint64"}]), [_openat("/a")], "--recorded-with",
                        str(tmp_path / "rec.yaml"))
    assert code == 3 and "the recording kept 32 bits of the argument, the policy compares 64" in out


def test_tetragons_own_json_export_is_read(tmp_path: Path) -> None:
    ev = {"process_kprobe": {"process": {"exec_id": "a1", "pid": 321, "binary": "/usr/bin/cat", "tid": 321,
                                         "flags": "execve clone", "start_time": "2026-12-01T09:00:00.123Z",
                                         "pod": {"namespace": "shop", "name": "web-1"}},
                             "parent": {"exec_id": "a0", "pid": 300, "binary": "/bin/sh"},
                             "function_name": "security_file_open",
                             "args": [{"file_arg": {"path": "/etc/shadow", "permission": "-rw-r-----"}}],
                             "action": "KPROBE_ACTION_POST", "policy_name": "files",
                             "return_action": "KPROBE_ACTION_POST"},
          "node_name": "node-1", "time": "2026-12-01T10:00:00.123456789Z"}
    pol = json.dumps({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "c"},
                      "spec": {"kprobes": [{"call": "security_file_open", "syscall": False,
                                            "args": [{"index": 0, "type": "file"}],
                                            "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix",
                                                                          "values": ["/etc/"]}],
                                                           "matchActions": [{"action": "Override",
                                                                             "argError": -1}]}]}]}})
    res = _json(tmp_path, pol, [ev])
    sel = res["policies"][0]["hooks"][0]["selectors"][0]
    assert res["actions"] == {"Override": 1} and res["overridden"] == 1 and sel["pods"] == {"shop/web-1": 1}


def test_malformed_lines_are_counted_and_named_by_line(tmp_path: Path) -> None:
    evs: list[Any] = [_openat("/a"), "{not json", "[1, 2]", json.dumps({"node_name": "n"}),
                      json.dumps({**_openat("/b"), "time": "yesterday"})]
    code, out, _ = _run(tmp_path, _policy([]), evs)
    assert code == 0 and "4 malformed lines" in out
    assert f"malformed: {tmp_path / 'ev.jsonl'}:2: not JSON" in out
    assert f"{tmp_path / 'ev.jsonl'}:5: time: 'yesterday' is not an RFC 3339 time" in out


def test_since_and_until_select_the_window(tmp_path: Path) -> None:
    evs = [_openat("/a", "2026-12-01T10:00:00Z"), _openat("/b", "2026-12-02T10:00:00Z"),
           _openat("/c", "2026-12-03T10:00:00+02:00")]
    res = _json(tmp_path, _policy([]), evs, "--since", "2026-12-02T00:00:00Z", "--until", "2026-12-03T08:00:00Z")
    assert res["matched"] == 1
    res = _json(tmp_path, _policy([]), evs, "--since", "2026-12-02T00:00:00Z")
    assert res["matched"] == 2


@pytest.mark.parametrize("opts, words", [
    (["--since", "last week"], "Invalid value for --since: 'last week' is neither an RFC 3339 time"),
    (["--since", "2d", "--until", "3d"], "Invalid value for --since: '2d' is not before --until '3d'"),
    (["--until", "2026-13-01T00:00:00Z"], "Invalid value for --until: '2026-13-01T00:00:00Z' is neither"),
])
def test_bad_time_bounds_are_refused_naming_the_option(tmp_path: Path, opts: list[str], words: str) -> None:
    code, _, err = _run(tmp_path, _policy([]), [_openat("/a")], *opts)
    assert code == 2 and words in err


def test_a_missing_events_file_and_a_bad_policy_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(_policy([{"matchArgs": [{"index": 1, "operator": "Sometimes", "values": ["x"]}]}]))
    r = CliRunner().invoke(cli, ["policy", "replay", str(tmp_path / "p.yaml"), "--events", str(tmp_path / "no")])
    assert r.exit_code == 1 and "Sometimes" in r.stderr
    (tmp_path / "p.yaml").write_text(_policy([]))
    r = CliRunner().invoke(cli, ["policy", "replay", str(tmp_path / "p.yaml"), "--events", str(tmp_path / "no")])
    assert r.exit_code == 1 and f"--events {tmp_path / 'no'}: No such file or directory" in r.stderr


def test_what_the_agent_refuses_the_replay_refuses(tmp_path: Path) -> None:
    code, _, err = _run(tmp_path, _policy([{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/a"]}],
                                            "matchActions": [{"action": "Override", "argError": -1}]}]), [])
    assert code == 1 and "Override is not implemented on tracepoint, syscall and uprobe hooks" in err
    code, _, err = _run(tmp_path, _policy([{"matchArgs": [{"index": 1, "operator": "GT", "values": ["3"]}]}]), [])
    assert code == 1 and "operator GT does not apply to the string argument" in err


def test_undecided_is_an_exception_with_its_reason() -> None:
    with pytest.raises(Undecided, match="why"):
        raise Undecided("why")
    assert issubclass(ReplayRefused, ValueError)


def _in_pod(path: str, ns: str | None, name: str | None = None, labels: dict[str, str] | None = None,
            container: str = "main") -> dict[str, Any]:
    ev = _openat(path)
    if ns is not None:
        ev["process_kprobe"]["process"]["pod"] = {"namespace": ns, "name": name or "p", "pod_labels": labels or {},
                                                  "container": {"id": "c1", "name": container}}
    return ev


def _scoped(extra: dict[str, Any], kind: str = "TracingPolicy", namespace: str | None = None) -> str:
    doc = json.loads(_policy([]))
    doc["kind"] = kind
    if namespace:
        doc["metadata"]["namespace"] = namespace
    doc["spec"].update(extra)
    return json.dumps(doc)


def test_a_scoped_policy_applies_to_the_pods_and_host_it_selects(tmp_path: Path) -> None:
    evs = [_in_pod("/host", None), _in_pod("/web", "shop", "web-1", {"app": "web", "tier": "front"}),
           _in_pod("/db", "shop", "db-1", {"app": "db"}), _in_pod("/other", "ops", "web-2", {"app": "web"}),
           _in_pod("/side", "shop", "web-1", {"app": "web", "tier": "front"}, container="sidecar")]

    def matched(policy: str) -> list[str]:
        res = _json(tmp_path, policy, evs, "--examples", "10")
        ex = res["policies"][0]["hooks"][0]["selectors"][0]["examples"] if res["matched"] else []
        return sorted(e["args"][1]["string_arg"] for e in ex)
    assert matched(_scoped({}, "TracingPolicyNamespaced", "shop")) == ["/db", "/side", "/web"]
    assert matched(_scoped({"podSelector": {"matchLabels": {"app": "web"}}})) == ["/other", "/side", "/web"]
    assert matched(_scoped({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
                            "hostSelector": {}})) == ["/db", "/host", "/other"]
    assert matched(_scoped({"containerSelector": {"matchLabels": {"name": "sidecar"}}})) == ["/side"]
    assert matched(_scoped({"hostSelector": {}})) == ["/host"]
    res = _json(tmp_path, _scoped({"hostSelector": {}}), evs)
    assert res["policies"][0]["out_of_scope"] == 4


def test_events_of_several_recording_policies_on_one_hook_are_pointed_out(tmp_path: Path) -> None:
    code, out, _ = _run(tmp_path, _policy([]), [_openat("/a", policy="rec"), _openat("/a", policy="other")])
    assert code == 0 and "from 2 policies (other, rec): a call may be counted once per policy" in out


def test_signal_nine_counts_as_a_kill_for_the_events_after_it(tmp_path: Path) -> None:
    sel = [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/x"]}],
            "matchActions": [{"action": "Signal", "argSig": 9}]}]
    res = _json(tmp_path, _policy(sel), [_openat("/x"), _openat("/y")])
    assert (res["signalled"], res["killed"], res["events_after_kill"]) == (1, 0, 1)


def test_what_the_recording_policy_never_read_is_refused_before_reading_events(tmp_path: Path) -> None:
    (tmp_path / "rec.yaml").write_text(_policy([], name="rec", args=[{"index": 1, "type": "string"}]))
    cand = _policy([{"matchArgs": [{"index": 2, "operator": "Mask", "values": ["0x40"]}]}])
    code, _, err = _run(tmp_path, cand, [], "--recorded-with", str(tmp_path / "rec.yaml"))
    assert code == 1 and "selectors[0].matchArgs[0].index: the recording policy does not read parameter 2" in err
    other = json.loads(_policy([]))
    other["spec"]["kprobes"][0]["call"] = "sys_unlinkat"
    code, _, err = _run(tmp_path, json.dumps(other), [], "--recorded-with", str(tmp_path / "rec.yaml"))
    assert code == 1 and "spec.kprobes[0]: the recording policy (rec) does not hook __x64_sys_unlinkat" in err


# ---- replay accepts what the agent accepts --------------------------------------------------------------

_REPO = Path(__file__).resolve().parents[1]


def _check_and_replay(policy: Path, events: Path) -> tuple[Any, Any]:
    check = CliRunner().invoke(cli, ["policy", "check", str(policy)])
    rep = CliRunner().invoke(cli, ["policy", "replay", str(policy), "--events", str(events)])
    for r in (check, rep):
        assert r.exception is None or isinstance(r.exception, SystemExit), f"{policy}: {r.exception!r}"
    return check, rep


@pytest.mark.slow
def test_every_hostile_policy_is_refused_in_policy_checks_words(tmp_path: Path) -> None:
    """Half the hostile corpus (tests/data/hostile/policies, every kind of fault is in both halves): each is
    refused by `policy check`, and by `policy replay` with the same message."""
    events = tmp_path / "empty.jsonl"
    events.write_text("")
    corpus = sorted((_REPO / "tests" / "data" / "hostile" / "policies").glob("*.yaml"))[::2]
    assert len(corpus) > 400
    for f in corpus:
        check, rep = _check_and_replay(f, events)
        assert check.exit_code == 1, f"{f.name}: check accepted a hostile policy"
        assert (rep.exit_code, rep.stderr) == (1, check.stderr), f.name


def test_tetragons_example_policies_replay_as_check_reads_them(tmp_path: Path) -> None:
    """Tetragon's example policies: what check refuses, replay refuses in the same words; what it accepts,
    replay runs (over an empty recording) or refuses with a replay reason, never a traceback."""
    events = tmp_path / "empty.jsonl"
    events.write_text("")
    ran = 0
    for f in sorted((_REPO / "tests" / "data" / "tetragon-policies").rglob("*.yaml")):
        check, rep = _check_and_replay(f, events)
        if check.exit_code != 0:
            assert (rep.exit_code, rep.stderr) == (check.exit_code, check.stderr), f.name
        else:
            assert rep.exit_code == 0 or (rep.exit_code == 1 and rep.stderr.startswith("Error: cannot replay: ")), \
                f"{f.name}: {rep.stderr}"
            ran += rep.exit_code == 0
    assert ran >= 10


def test_the_process_table_forgets_the_least_recently_seen_process_first() -> None:
    from sensorium.replay.evaluate import ProcessTable

    t = ProcessTable(limit=2)
    t.add({"exec_id": "a", "pid": 1, "binary": "/a"})
    t.add({"exec_id": "b", "pid": 2, "binary": "/b"})
    t.add({"exec_id": "a", "pid": 1, "binary": "/a"})  # seen again
    t.add({"exec_id": "c", "pid": 3, "binary": "/c"})
    assert sorted(t.procs) == ["a", "c"]


def test_net_device_names_and_capability_sets_are_replayed(tmp_path: Path) -> None:
    """Kernel structures (sensorium.hooks.kstructs) as Tetragon records them: a net_device by its name, a
    capability set as 16 hex digits (matched with numbers or capability names); matchArgs on a structure
    Tetragon does not filter is refused in the planner's words."""
    def xmit(dev: str, caps: str) -> dict[str, Any]:
        return {"process_kprobe": {"process": _proc(), "function_name": "f",
                                   "args": [{"net_dev_arg": {"name": dev}}, {"kernel_cap_t_arg": caps}],
                                   "policy_name": "rec", "action": "KPROBE_ACTION_POST"}, "node_name": "n", "time": T0}

    def pol(selectors: list[dict[str, Any]], args: list[dict[str, Any]]) -> str:
        return json.dumps({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "c"},
                           "spec": {"kprobes": [{"call": "f", "syscall": False, "args": args,
                                                 "selectors": selectors}]}})

    args = [{"index": 0, "type": "net_device"}, {"index": 1, "type": "kernel_cap_t"}]
    events = [xmit("lo", "0000000000200000"), xmit("eth0", "0000000000000001"), xmit("lo", "0000000000000000")]
    res = _json(tmp_path, pol([{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["lo"]},
                                              {"index": 1, "operator": "Mask", "values": ["CAP_SYS_ADMIN,CAP_BPF"]}]}],
                              args), events)
    assert res["matched"] == 1 and res["undecided"] == 0
    res = _json(tmp_path, pol([{"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["eth"]}]}], args), events)
    assert res["matched"] == 1
    code, _, err = _run(tmp_path, pol([{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["x"]}]}],
                                      [{"index": 0, "type": "bpf_attr"}]), [])
    assert code == 1 and "matchArgs on a bpf_attr argument is not supported" in err

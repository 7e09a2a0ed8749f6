"""Kernel structures as kprobe arguments (sensorium.hooks.kstructs): Tetragon's bpf_attr, bpf_prog, bpf_map,
perf_event, user_namespace, capability, load_info, module, net_device, kernel_cap_t and cap_* types.

On every kernel (this host included): each type is checked against the function's BTF prototype, matchArgs
only with the operators Tetragon takes on the type (none for most: refused with the reason, by ``policy
check`` too), and each payload renders as Tetragon's KprobeArgument message. In the VM lane (fentry/fexit):
Tetragon's own example policies (bpf.yaml, dev_hard_start_xmit.yaml, creds-capability-usage.yaml) load, and
each hook, reached by a real call from a test cgroup, reports the values the kernel had
(tests/kstruct_triggers.py makes the calls: a BPF program and map, a kprobe perf event, capset, a module
load, a UDP datagram, sethostname in a new user namespace).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import struct
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hook_helpers import FakeCaps, rig_fixture, scope_of

from sensorium.bpf.btf import kernel_functions
from sensorium.hooks import kstructs as K
from sensorium.hooks import selectors as S
from sensorium.hooks.render import render_bytes, render_int
from sensorium.hookspecs import PolicyLoadError
from sensorium_sensors.kprobe.sensor import KprobeSensor

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "tetragon-policies"
TRIGGERS = HERE / "kstruct_triggers.py"

rig = rig_fixture(KprobeSensor)



def policy(call: str, body: str, name: str = "kstruct-test") -> str:
    return f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  kprobes:
  - call: {call}
    syscall: false
""" + body


def _function(name: str) -> Any:
    sig = kernel_functions().get(name)
    if sig is None:
        pytest.skip(f"{name} is not in this kernel's BTF (the VM lane's kernels have it)")
    return sig


def _index_of(sig: Any, ctypes_: tuple[str, ...]) -> int:
    return next(i for i, p in enumerate(sig.params) if p.ctype in ctypes_)


def _plan(rig: Any, text: str) -> Any:
    rig.ctx.kernel = FakeCaps("fentry", "fexit", "kprobe")
    (plan,) = rig.sensor.plan(rig.view(text, "kprobes"))
    return plan


def _refused(rig: Any, text: str) -> PolicyLoadError:
    rig.ctx.kernel = FakeCaps("fentry", "fexit", "kprobe")
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.plan(rig.view(text, "kprobes"))
    return ei.value


# ---- the planner: the types against the BTF prototype (every kernel) ------------------------------------

# (type, a function with such a parameter) for every type; the parameter is found by its C type
TYPED = [("bpf_attr", "bpf_check"), ("perf_event", "security_perf_event_alloc"), ("bpf_prog", "security_bpf_prog"),
         ("bpf_map", "security_bpf_map"), ("user_namespace", "cap_capable"), ("capability", "cap_capable"),
         ("net_device", "dev_hard_start_xmit"), ("kernel_cap_t", "cap_capset"), ("cap_effective", "cap_capset"),
         ("cap_inheritable", "cap_capset"), ("cap_permitted", "cap_capset"), ("load_info", "load_module"),
         ("module", "do_init_module")]


@pytest.mark.vm
@pytest.mark.parametrize("typ,func", TYPED, ids=[t for t, _ in TYPED])
def test_each_type_reads_its_parameter_of_the_btf_prototype(rig, typ: str, func: str) -> None:
    sig = _function(func)
    kt = K.KTYPES[typ]
    index = _index_of(sig, kt.ctypes)
    plan = _plan(rig, policy(func, f"    args: [{{index: {index}, type: {typ}, label: x}}]\n"))
    (ap,) = plan.args
    assert (ap.kind, ap.deref, ap.json_key, ap.type_name, ap.label) == (kt.kind, kt.deref, kt.json_key, typ, "x")
    assert ap.offset == index and ap.from_ == S.FROM_SYSCALL
    # another parameter of the function is not this type: refused naming the C type it reads
    other = next((i for i, p in enumerate(sig.params[:S.MAX_ARGS]) if p.ctype not in kt.ctypes), None)
    if other is not None:
        e = _refused(rig, policy(func, f"    args: [{{index: {other}, type: {typ}}}]\n"))
        assert f"type {typ} does not match parameter {other} '{sig.params[other].name}'" in str(e)
        assert f"({typ} reads {' or '.join(kt.ctypes)})" in str(e) and e.field == "spec.kprobes[0].args[0].type"


def test_auto_reads_a_kernel_structure_by_its_c_type(rig) -> None:
    sig = _function("bpf_check")
    plan = _plan(rig, policy("bpf_check", f"    args: [{{index: {_index_of(sig, ('union bpf_attr *',))}}}]\n"))
    assert plan.args[0].json_key == "bpf_attr_arg" and plan.args[0].type_name == "bpf_attr"
    sig = _function("cap_capable")
    plan = _plan(rig, policy("cap_capable", f"    args: [{{index: {_index_of(sig, ('int',))}}}]\n"))
    assert plan.args[0].kind == S.ARG_INT and plan.args[0].json_key != "capability_arg"  # capability: by name only


def test_anonymous_struct_typedef_pointer_keeps_its_name() -> None:
    """kernel_cap_t is a typedef of an anonymous struct since 6.3 (a named struct kernel_cap_struct before):
    the prototype says kernel_cap_t *, which the capability-set types read; a by-value anonymous struct
    (bpfptr_t) is still no integer."""
    sig = _function("cap_capset")
    assert sig.params[2].ctype in ("kernel_cap_t *", "struct kernel_cap_struct *"), sig.c_signature()
    check = kernel_functions().get("bpf_check")
    if check is not None and len(check.params) > 2:
        assert not check.params[2].is_int, check.c_signature()


def test_syscall_hooks_refuse_kernel_structures(rig) -> None:
    text = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: sc}
spec:
  kprobes:
  - call: sys_bpf
    args: [{index: 1, type: bpf_attr}]
"""
    r = _policy_check(text)
    assert r.returncode != 0 and "type bpf_attr is a kernel structure; a syscall parameter is a user value" in \
        r.stdout + r.stderr
    rig.ctx.kernel = FakeCaps("raw_tp", "fentry")
    with pytest.raises(PolicyLoadError, match="type bpf_attr is a kernel structure"):
        rig.sensor.plan(rig.view(text, "kprobes"))


# ---- matchArgs: Tetragon's operators, or refused with the reason (also by `policy check`) -------------

def test_match_args_on_a_structure_is_refused_with_the_reason(rig) -> None:
    sig = _function("bpf_check")
    i = _index_of(sig, ("union bpf_attr *",))
    text = policy("bpf_check", f"""    args: [{{index: {i}, type: bpf_attr}}]
    selectors:
    - matchArgs: [{{index: {i}, operator: Equal, values: ["x"]}}]
""")
    e = _refused(rig, text)
    words = "matchArgs on a bpf_attr argument is not supported: Tetragon takes no operator on it"
    assert words in str(e) and e.field == "spec.kprobes[0].selectors[0].matchArgs[0]"
    # the same words from the rules that need no kernel (sensorium policy check)
    r = _policy_check(text)
    assert r.returncode != 0 and words in r.stdout + r.stderr and "selectors[0].matchArgs[0]" in r.stdout + r.stderr


@pytest.mark.parametrize("typ", [t for t, kt in K.KTYPES.items() if not kt.ops])
def test_policy_check_refuses_match_args_on_each_unmatchable_type(typ: str) -> None:
    text = policy("some_function", f"""    args: [{{index: 0, type: {typ}}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Prefix, values: ["x"]}}]
""")
    out = _policy_check(text)
    assert out.returncode != 0 and f"matchArgs on a {typ} argument is not supported" in out.stdout + out.stderr


def _policy_check(text: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("sensorium")
    return subprocess.run([str(exe), "policy", "check", "-"], input=text, capture_output=True, text=True,
                          timeout=60)


def test_policy_check_takes_tetragons_operators_and_refuses_others() -> None:
    ok = policy("f", """    args: [{index: 0, type: net_device}, {index: 1, type: kernel_cap_t}]
    selectors:
    - matchArgs: [{index: 0, operator: Prefix, values: ["eth"]}, {index: 1, operator: Mask, values: ["CAP_BPF,SYS_ADMIN"]}]
""")
    r = _policy_check(ok)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = policy("f", """    args: [{index: 0, type: net_device}]
    selectors:
    - matchArgs: [{index: 0, operator: GT, values: ["1"]}]
""")
    r = _policy_check(bad)
    assert r.returncode != 0 and "operator GT does not apply to the net_device argument" in r.stdout + r.stderr
    assert "matchArgs[0].operator" in r.stdout + r.stderr


def test_net_device_and_capability_set_operators_compile(rig) -> None:
    sig = _function("dev_hard_start_xmit")
    i = _index_of(sig, ("struct net_device *",))
    plan = _plan(rig, policy("dev_hard_start_xmit", f"""    args: [{{index: {i}, type: net_device}}]
    selectors:
    - matchArgs: [{{index: {i}, operator: Postfix, values: ["0"]}}]
"""))
    m = plan.compiled.cfg.sel[0].args[0]
    assert m.op == S.OPS["Postfix"] and plan.compiled.cfg.strs[m.str_first].s == b"0"
    e = _refused(rig, policy("dev_hard_start_xmit", f"""    args: [{{index: {i}, type: net_device}}]
    selectors:
    - matchArgs: [{{index: {i}, operator: Mask, values: ["1"]}}]
"""))
    assert "operator Mask does not apply to the net_device argument (a net_device is matched by its name)" in str(e)
    sig = _function("cap_capset")
    j = _index_of(sig, K.KTYPES["cap_effective"].ctypes)
    plan = _plan(rig, policy("cap_capset", f"""    args: [{{index: {j}, type: cap_effective}}]
    selectors:
    - matchArgs: [{{index: {j}, operator: Mask, values: ["CAP_NET_RAW,sys_admin", "0x3"]}}]
"""))
    m = plan.compiled.cfg.sel[0].args[0]
    assert m.op == S.OPS["Mask"] and list(m.vals[:2]) == [1 << 13 | 1 << 21, 3]
    e = _refused(rig, policy("cap_capset", f"""    args: [{{index: {j}, type: cap_effective}}]
    selectors:
    - matchArgs: [{{index: {j}, operator: Equal, values: ["CAP_NO_SUCH"]}}]
"""))
    assert "'CAP_NO_SUCH' is no capability" in str(e) and e.field.endswith("matchArgs[0].values[0]")


# ---- rendering: Tetragon's KprobeArgument messages --------------------------------------------------------

def _plan_of(typ: str) -> S.ArgPlan:
    return K.arg_plan(typ, S.FROM_SYSCALL, 0, None)


def test_payloads_render_as_tetragons_messages() -> None:
    prog = bytes(S.SensKBpfProg(2, 7, b"kprobe_x"))
    assert render_bytes(_plan_of("bpf_attr"), prog, 0) == {
        "bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_KPROBE", "InsnCnt": 7, "ProgName": "kprobe_x"}}
    assert render_bytes(_plan_of("bpf_prog"), prog, 0)["bpf_prog_arg"]["ProgType"] == "BPF_PROG_TYPE_KPROBE"
    m = bytes(S.SensKBpfMap(27, 0, 0, 4096, b"rb"))
    assert render_bytes(_plan_of("bpf_map"), m, 0) == {"bpf_map_arg": {
        "MapType": "BPF_MAP_TYPE_RINGBUF", "KeySize": 0, "ValueSize": 0, "MaxEntries": 4096, "MapName": "rb"}}
    pe = bytes(S.SensKPerfEvent(1, 16, 6, 0, b"do_sys_open"))
    assert render_bytes(_plan_of("perf_event"), pe, 0) == {"perf_event_arg": {
        "KprobeFunc": "do_sys_open", "Type": "PERF_TYPE_MAX", "Config": 1, "ProbeOffset": 16}}
    # zero uint64s left out, as protojson does
    assert render_bytes(_plan_of("perf_event"), bytes(S.SensKPerfEvent(0, 0, 9, 0, b"")), 0) == {
        "perf_event_arg": {"KprobeFunc": "", "Type": "9"}}
    ns = bytes(S.SensKUserNs(1, 1000, 100, 4026532000))
    assert render_bytes(_plan_of("user_namespace"), ns, 0) == {"user_ns_arg": {
        "level": 1, "uid": 1000, "gid": 100, "ns": {"inum": 4026532000, "is_host": False}}}
    assert render_bytes(_plan_of("user_namespace"), bytes(S.SensKUserNs(0, 0, 0, 1)), 0)[
        "user_ns_arg"]["ns"]["is_host"] is True
    mod = bytes(S.SensKModule(1 << 12 | 1 << 13, 0, 0, b"dummy"))
    assert render_bytes(_plan_of("load_info"), mod, 0) == {"module_arg": {
        "name": "dummy", "signature_ok": False, "tainted": ["TAINT_OUT_OF_TREE_MODULE", "TAINT_UNSIGNED_MODULE"]}}
    # a struct module knows no signature; neither does a kernel without CONFIG_MODULE_SIG (sig_ok 2)
    assert render_bytes(_plan_of("module"), bytes(S.SensKModule(0, 2, 0, b"veth")), 0) == {"module_arg": {"name": "veth"}}
    assert "signature_ok" not in render_bytes(_plan_of("load_info"), bytes(S.SensKModule(0, 2, 0, b"x")), 0)["module_arg"]
    assert render_bytes(_plan_of("net_device"), b"lo", 0) == {"net_dev_arg": {"name": "lo"}}
    assert render_int(_plan_of("capability"), 21) == {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}}
    assert render_int(_plan_of("capability"), 0xFFFFFFFF) == {"capability_arg": {"value": -1, "name": ""}}
    assert render_int(_plan_of("kernel_cap_t"), 1 << 21 | 1) == {"kernel_cap_t_arg": "0000000000200001"}
    for t in K.KCAP_TYPES:
        assert render_int(_plan_of(t), 0x1FFFFFFFFFF) == {f"{t}_arg": "000001ffffffffff"}
    # a NULL pointer or a short payload: the zero message, flagged unreadable
    out = render_bytes(_plan_of("bpf_map"), b"", S.ARGF_ERR)
    assert out["bpf_map_arg"]["MapType"] == "BPF_MAP_TYPE_UNSPEC" and out["error"] == "unreadable"


def test_rendered_arguments_decode_with_tetragons_messages() -> None:
    import tetragon_schema

    from sensorium.events import Event

    reason = tetragon_schema.available()
    if reason:
        pytest.skip(reason)
    args = [render_bytes(_plan_of("bpf_attr"), bytes(S.SensKBpfProg(1, 2, b"p")), 0),
            render_bytes(_plan_of("bpf_prog"), bytes(S.SensKBpfProg(99, 2, b"p")), 0),
            render_bytes(_plan_of("bpf_map"), bytes(S.SensKBpfMap(2, 4, 8, 3, b"m")), 0),
            render_bytes(_plan_of("perf_event"), bytes(S.SensKPerfEvent(1 << 63, 5, 1, 0, b"f")), 0),
            render_bytes(_plan_of("user_namespace"), bytes(S.SensKUserNs(0, 0, 0, 4026531837)), 0),
            render_bytes(_plan_of("load_info"), bytes(S.SensKModule(8192 | 1, 1, 0, b"m")), 0),
            render_bytes(_plan_of("module"), bytes(S.SensKModule(0, 2, 0, b"m")), 0),
            render_bytes(_plan_of("net_device"), b"eth0", 0),
            render_int(_plan_of("capability"), 40), render_int(_plan_of("capability"), 63),
            *(render_int(_plan_of(t), 1 << 39) for t in K.KCAP_TYPES)]
    args[2]["label"] = "map"
    body = {"process": {"pid": 1, "tid": 1}, "function_name": "f", "args": args, "return": {"int_arg": 0},
            "policy_name": "p", "action": "KPROBE_ACTION_POST"}
    line = Event("process_kprobe", body, "n1", 1_765_000_000_000_000_000).json()
    assert tetragon_schema.problems(line) == []
    out = json.loads(line)["process_kprobe"]["args"]
    assert out[3]["perf_event_arg"]["Config"] == str(1 << 63)  # uint64: a JSON string, as protojson writes it


def _enum_names(header: str, enum: str) -> dict[int, set[str]]:
    m = re.search(r"enum " + enum + r" \{(.*?)\};", header, re.S)
    assert m, f"enum {enum} not in vmlinux.h"
    out: dict[int, set[str]] = {}
    for name, value in re.findall(r"(\w+) = (\d+),", m.group(1)):
        out.setdefault(int(value), set()).add(name)
    return out


def test_type_names_are_the_kernels() -> None:
    """Program and map type names: those of this kernel's enums (uapi/linux/bpf.h), for every value it has (a
    value with an alias, e.g. BPF_MAP_TYPE_CGROUP_STORAGE_DEPRECATED, by its current name)."""
    from sensorium.bpf.build import BuildError, vmlinux_h

    try:
        header = vmlinux_h().read_text()
    except BuildError as e:
        pytest.skip(str(e))
    for enum, table in (("bpf_prog_type", K.PROG_TYPES), ("bpf_map_type", K.MAP_TYPES)):
        names = _enum_names(header, enum)
        assert len(names) > 20, (enum, names)
        for value, aliases in names.items():
            if value < len(table):
                assert table[value] in aliases, (enum, value, aliases)


# ---- real hooks (VM lane): Tetragon's example policies and the values the kernel had --------------------

def _trigger(cgroup2_dir: Any, *argv: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = cgroup2_dir.run([sys.executable, str(TRIGGERS), *argv], capture_output=True, text=True, timeout=120,
                        env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _args_of(rig: Any, func: str, pred: Any = lambda b: True, wait: float = 5.0) -> list[list[dict]]:
    evs = rig.events(lambda b: b.get("function_name") == func and pred(b), wait=wait)
    return [e["args"] for e in evs]


@pytest.mark.needs("fentry")
def test_bpf_yaml_reports_program_map_and_perf_event(rig, cgroup2_dir) -> None:
    """Tetragon's bpf.yaml as it is: bpf_check's union bpf_attr, security_perf_event_alloc's perf_event, the
    map allocation hook this kernel has (security_bpf_map_alloc before 6.9, security_bpf_map_create since);
    and security_bpf_prog's struct bpf_prog from a policy of our own."""
    h = rig.load((CORPUS / "bpf.yaml").read_text(), "kprobes", scope=scope_of(cgroup2_dir))
    rig.load(policy("security_bpf_prog", "    args: [{index: 0, type: bpf_prog}]\n", name="bpf-prog"), "kprobes",
             scope=scope_of(cgroup2_dir), policy_id=8)
    states = {s["hook"].split()[-1]: s["state"] for s in h.status()["hooks"]}
    map_hook = "security_bpf_map_create" if "security_bpf_map_create" in kernel_functions() else \
        "security_bpf_map_alloc"
    assert states[map_hook] != "skipped" and [s for s in states.values() if s == "skipped"] == ["skipped"], states
    _trigger(cgroup2_dir, "bpf", "sens_kst", "sens_kst_map")
    pmu = _trigger(cgroup2_dir, "perf", "security_file_open")["pmu_type"]

    loads = _args_of(rig, "bpf_check", lambda b: b["args"][0]["bpf_attr_arg"]["ProgName"] == "sens_kst")
    assert loads and loads[0] == [{"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2,
                                                    "ProgName": "sens_kst"}}]
    maps = _args_of(rig, map_hook, lambda b: b["args"][0]["bpf_map_arg"]["MapName"] == "sens_kst_map")
    assert maps and maps[0] == [{"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_ARRAY", "KeySize": 4, "ValueSize": 8,
                                                 "MaxEntries": 3, "MapName": "sens_kst_map"}}]
    perfs = _args_of(rig, "security_perf_event_alloc",
                     lambda b: b["args"][0]["perf_event_arg"]["KprobeFunc"] == "security_file_open")
    assert perfs and perfs[0] == [{"perf_event_arg": {
        "KprobeFunc": "security_file_open", "Type": K.PERF_TYPES[pmu] if pmu < len(K.PERF_TYPES) else str(pmu)}}]
    progs = _args_of(rig, "security_bpf_prog", lambda b: b["args"][0]["bpf_prog_arg"]["ProgName"] == "sens_kst")
    assert progs and progs[0] == [{"bpf_prog_arg": {"ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2,
                                                    "ProgName": "sens_kst"}}]


@pytest.mark.needs("fentry")
def test_dev_hard_start_xmit_yaml_reports_and_matches_the_device_name(rig, cgroup2_dir) -> None:
    """Tetragon's dev_hard_start_xmit.yaml (matchArgs Equal "lo") reports a datagram sent over loopback; a
    policy for every other device (NotEqual "lo") does not, one on a suffix of the name (Postfix "o") does."""
    h = rig.load((CORPUS / "dev_hard_start_xmit.yaml").read_text(), "kprobes", scope=scope_of(cgroup2_dir))
    for pid, (op, value, name) in enumerate((("NotEqual", "lo", "not-lo"), ("Postfix", "o", "o-suffix")), start=8):
        body = f"""    args: [{{index: 1, type: net_device}}]
    selectors:
    - matchArgs: [{{index: 1, operator: {op}, values: ["{value}"]}}]
"""
        rig.load(policy("dev_hard_start_xmit", body, name=name), "kprobes", scope=scope_of(cgroup2_dir), policy_id=pid)
    _trigger(cgroup2_dir, "udp", "9")
    evs = rig.events(lambda b: b.get("function_name") == "dev_hard_start_xmit", wait=5.0)
    by_policy = {p: [e["args"] for e in evs if e["policy_name"] == p] for p in
                 ("dev-hard-start-xmit", "not-lo", "o-suffix")}
    assert by_policy["dev-hard-start-xmit"] and by_policy["dev-hard-start-xmit"][0] == [{"net_dev_arg": {"name": "lo"}}]
    assert by_policy["o-suffix"] and not by_policy["not-lo"], by_policy
    assert h.status()["hooks"][0]["mechanism"] in ("fentry", "kprobe")


@pytest.mark.needs("fentry", "fexit")
def test_creds_capability_usage_yaml_reports_the_user_namespace_and_capability(rig, cgroup2_dir) -> None:
    """Tetragon's creds-capability-usage.yaml (cap_capable, return value, Pid namespace NotIn host_ns):
    sethostname in a new user and pid namespace checks CAP_SYS_ADMIN in that user namespace (level 1, owned
    by root, the inode /proc/self/ns/user shows)."""
    rig.load((CORPUS / "process-credentials" / "creds-capability-usage.yaml").read_text(), "kprobes",
             scope=scope_of(cgroup2_dir))
    code = ("import os, socket; print(os.stat('/proc/self/ns/user').st_ino, flush=True); "
            "socket.sethostname('sensorium-kst')")
    r = cgroup2_dir.run(["unshare", "--user", "--map-root-user", "--pid", "--fork", "--uts", sys.executable, "-c",
                         code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    inum = int(r.stdout.split()[0])
    evs = _args_of(rig, "cap_capable", lambda b: b["args"][1]["capability_arg"]["value"] == 21
                   and b["args"][0]["user_ns_arg"]["ns"]["inum"] == inum)
    assert evs, "no cap_capable event for CAP_SYS_ADMIN in the new user namespace"
    assert evs[0] == [{"user_ns_arg": {"level": 1, "uid": 0, "gid": 0, "ns": {"inum": inum, "is_host": False}}},
                      {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}}]
    full = rig.events(lambda b: b.get("function_name") == "cap_capable"
                      and b["args"][0]["user_ns_arg"]["ns"]["inum"] == inum)[0]
    assert full["return"] == {"int_arg": 0} and full["policy_name"] == "creds-capability-checks"


@pytest.mark.needs("fentry")
def test_capability_sets_of_capset_are_reported_and_matched(rig, cgroup2_dir) -> None:
    sig = _function("cap_capset")
    eff, inh, prm = 2, 3, 4  # cap_capset(new, old, effective, inheritable, permitted)
    assert sig.params[eff].name == "effective" and sig.params[prm].name == "permitted"
    rig.load(policy("cap_capset", f"""    args: [{{index: {eff}, type: cap_effective}}, {{index: {inh}, type: cap_inheritable}},
           {{index: {prm}, type: cap_permitted}}]
    selectors:
    - matchArgs: [{{index: {eff}, operator: Mask, values: ["CAP_NET_RAW"]}}]
""", name="net-raw-kept"), "kprobes", scope=scope_of(cgroup2_dir))
    rig.load(policy("cap_capset", f"""    args: [{{index: {eff}, type: kernel_cap_t, label: eff}}]
    selectors:
    - matchArgs: [{{index: {eff}, operator: Equal, values: ["CAP_CHOWN"]}}]
""", name="chown-only"), "kprobes", scope=scope_of(cgroup2_dir), policy_id=8)
    both, chown = 1 << 13 | 1, 1
    _trigger(cgroup2_dir, "capset", str(both), str(both), "0", str(chown), str(chown), "0")
    evs = rig.events(lambda b: b.get("function_name") == "cap_capset", wait=5.0)
    kept = [e["args"] for e in evs if e["policy_name"] == "net-raw-kept"]
    assert kept == [[{"cap_effective_arg": "0000000000002001"}, {"cap_inheritable_arg": "0000000000000000"},
                     {"cap_permitted_arg": "0000000000002001"}]]
    only = [e["args"] for e in evs if e["policy_name"] == "chown-only"]
    assert only == [[{"kernel_cap_t_arg": "0000000000000001", "label": "eff"}]]


def _module_file() -> Path:
    base = Path("/lib/modules") / platform.release() / "kernel" / "drivers" / "net"
    for name in ("dummy.ko", "dummy.ko.xz", "dummy.ko.zst"):
        if (base / name).is_file():
            return base / name
    pytest.skip(f"no dummy module for {platform.release()} (the VM lane's kernels have one)")


@pytest.mark.needs("fentry", "fexit")
def test_module_load_reports_load_info_and_module(rig, cgroup2_dir, tmp_path: Path) -> None:
    """A module load from a file: security_kernel_read_file (READING_MODULE, as Tetragon's
    monitor-signed-kernel-modules.yaml), mod_sysfs_setup's struct load_info (name, signature verdict) and
    do_init_module's struct module (name, taints). (The example's own find_module_sections is inlined in the
    lane's kernels: test_tetragon_compat.py records that refusal.)"""
    ko = _module_file()
    if os.path.exists("/sys/module/dummy"):
        pytest.skip("the dummy module is loaded already")
    for i, (func, body) in enumerate((
            ("security_kernel_read_file", """    return: true
    args: [{index: 0, type: file}, {index: 1, type: int}]
    returnArg: {index: 0, type: int}
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: ["2"]}]
"""),
            ("mod_sysfs_setup", "    args: [{index: 1, type: load_info}]\n"),
            ("do_init_module", "    args: [{index: 0, type: module}]\n"))):
        _function(func)
        rig.load(policy(func, body, name=f"mod-{i}"), "kprobes", scope=scope_of(cgroup2_dir), policy_id=7 + i)
    out = _trigger(cgroup2_dir, "module", str(ko), env={**os.environ, "TMPDIR": str(tmp_path)})
    unsigned = "E" in out["taint"]
    reads = rig.events(lambda b: b.get("function_name") == "security_kernel_read_file", wait=5.0)
    assert reads and reads[0]["args"][1] == {"int_arg": 2} and reads[0]["return"] == {"int_arg": 0}
    assert reads[0]["args"][0]["file_arg"]["path"].endswith(".ko")
    (info,) = _args_of(rig, "mod_sysfs_setup")
    assert info[0]["module_arg"]["name"] == "dummy"
    assert info[0]["module_arg"]["signature_ok"] is (not unsigned)
    (mod,) = _args_of(rig, "do_init_module")
    assert mod[0]["module_arg"]["name"] == "dummy" and "signature_ok" not in mod[0]["module_arg"]
    if not out["taint"]:
        assert "tainted" not in mod[0]["module_arg"]
    elif unsigned:
        assert "TAINT_UNSIGNED_MODULE" in mod[0]["module_arg"]["tainted"]


def test_struct_payload_sizes_match_the_c_mirror() -> None:
    assert max(ctypes.sizeof(c) for c in (S.SensKBpfProg, S.SensKBpfMap, S.SensKPerfEvent, S.SensKUserNs,
                                          S.SensKModule)) == S.KSTRUCT_MAX
    assert struct.calcsize("<QQII128s") == ctypes.sizeof(S.SensKPerfEvent)


# ---- BPF LSM hooks read them too (the same engine) ---------------------------------------------------------

@pytest.mark.needs("bpf_lsm", "lsm")
def test_lsm_hooks_report_bpf_map_user_namespace_and_capability(cgroup2_dir) -> None:
    """lsmhooks bpf_map (struct bpf_map *) and capable (struct user_namespace *, int cap), served by BPF LSM
    programs: the map created and the capability checked in a new user namespace, as the kprobes report them."""
    from sensorium.hooks.testing import make_policy_view
    from sensorium_sensors.lsm.plugin import LsmSensor
    from sensorium_sensors.lsm.testing import LsmTestContext, scoped

    text = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: lsm-kstructs}
spec:
  lsmhooks:
  - hook: bpf_map
    args: [{index: 0, type: bpf_map}]
  - hook: capable
    args: [{index: 1, type: user_namespace}, {index: 2, type: capability}]
"""
    ctx = LsmTestContext()
    sensor = LsmSensor(ctx)
    sensor.start()
    try:
        h = sensor.load_policy(scoped(make_policy_view(text, "lsmhooks", policy_id=15), os.fspath(cgroup2_dir)))
        assert [x["mechanism"] for x in h.status()["hooks"]] == ["bpf_lsm", "bpf_lsm"]
        _trigger(cgroup2_dir, "bpf", "sens_lsm", "sens_lsm_map")
        code = ("import os, socket; print(os.stat('/proc/self/ns/user').st_ino, flush=True); "
                "socket.sethostname('sensorium-kst')")
        r = cgroup2_dir.run(["unshare", "--user", "--map-root-user", "--uts", sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        inum = int(r.stdout.split()[0])

        def body(e: Any) -> dict[str, Any]:
            return e.as_dict()["process_lsm"] if e.kind == "process_lsm" else {}

        maps = ctx.wait_events(lambda e: body(e).get("function_name") == "bpf_map"
                               and body(e)["args"][0]["bpf_map_arg"]["MapName"] == "sens_lsm_map")
        assert body(maps[0])["args"] == [{"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_ARRAY", "KeySize": 4,
                                                          "ValueSize": 8, "MaxEntries": 3, "MapName": "sens_lsm_map"}}]
        caps = ctx.wait_events(lambda e: body(e).get("function_name") == "capable"
                               and body(e)["args"][0]["user_ns_arg"]["ns"]["inum"] == inum
                               and body(e)["args"][1]["capability_arg"]["value"] == 21)
        assert body(caps[0])["args"] == [
            {"user_ns_arg": {"level": 1, "uid": 0, "gid": 0, "ns": {"inum": inum, "is_host": False}}},
            {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}}]
        h.unload()
    finally:
        sensor.stop()
    from tetragon_schema import check_events

    check_events([e for e in ctx.events if e.kind == "process_lsm"], "the lsm sensor")


def test_lsm_rules_check_kernel_structures_against_the_hook() -> None:
    """The lsm sensor's planner: a kernel structure type against the hook's BTF prototype, matchArgs with
    Tetragon's operators only (the words of the kprobe planner)."""
    from sensorium.bpf.btf import lsm_hooks
    from sensorium.hooks.testing import make_policy_view
    from sensorium_sensors.lsm import rules

    if not {"bpf_map", "capable"} <= set(lsm_hooks()):
        pytest.skip("this kernel's BTF has no bpf_lsm_ hooks")

    def plan(body: str) -> Any:
        text = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: l}\nspec:\n  lsmhooks:\n" + body
        kernel = types.SimpleNamespace(bpf_lsm=True, program_types={"lsm": types.SimpleNamespace(ok=True)})
        return rules.plan_section(make_policy_view(text, "lsmhooks", policy_id=3), kernel)

    (p,) = plan("  - hook: capable\n    args: [{index: 1}, {index: 2, type: capability}]\n")
    assert [(a.type, a.ctype) for a in p.args] == [("user_namespace", "struct user_namespace *"), ("capability", "int")]
    with pytest.raises(PolicyLoadError) as ei:
        plan("  - hook: bpf_map\n    args: [{index: 0, type: bpf_prog}]\n")
    assert "type bpf_prog does not match argument 0" in str(ei.value) and "(type bpf_prog reads struct bpf_prog *)" \
        in str(ei.value)
    with pytest.raises(PolicyLoadError) as ei:
        plan("  - hook: bpf_map\n    args: [{index: 0, type: bpf_map}]\n    selectors:\n"
             "    - matchArgs: [{index: 0, operator: Equal, values: ['x']}]\n")
    assert "matchArgs on a bpf_map argument is not supported" in str(ei.value)
    assert ei.value.field == "spec.lsmhooks[0].selectors[0].matchArgs[0]"

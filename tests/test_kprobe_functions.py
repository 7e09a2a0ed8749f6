"""kprobe sensor: kernel functions in ``kprobes`` sections (``call: <kernel function>``).

Checks against the function's BTF prototype run on every kernel (this host included): a missing
function, an argument index out of range, a type that does not fit, Override where it cannot apply, are
refused naming the field, with nothing loaded. Loading needs fentry/fexit or kprobes: those tests are
marked ``needs(...)`` (skipped here with the reason, run in the VM lane: scripts/vm/run.sh backports
tests/test_kprobe_functions.py). The kprobe/kretprobe path is exercised in guests that also have
trampolines by hiding fentry from the sensor's view of the kernel (`WithoutTrampolines`), as on a
kernel built without them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hook_helpers import FakeCaps, gone, rig_fixture, scope_of

from sensorium.hookspecs import PolicyLoadError
from sensorium_sensors.kprobe.kfunc import decode_sock
from sensorium_sensors.kprobe.sensor import KprobeSensor

rig = rig_fixture(KprobeSensor)



class WithoutTrampolines:
    """The real capabilities minus fentry/fexit/fmod_ret: forces the kprobe/kretprobe mechanism."""

    def __init__(self, caps: Any) -> None:
        self.caps = caps

    def has(self, name: str) -> bool:
        return name not in ("fentry", "fexit", "fmod_ret") and self.caps.has(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.caps, name)


def policy(call: str, body: str, name: str = "kfunc-test") -> str:
    return f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  kprobes:
  - call: {call}
    syscall: false
""" + body


def refused(rig, text: str) -> PolicyLoadError:
    before = set(rig.ctx.loaded_prog_ids)
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.load_policy(rig.view(text, "kprobes"))
    assert rig.ctx.loaded_prog_ids == before  # nothing loaded
    assert not [h for h in rig.sensor.handles if not h._unloaded]
    return ei.value


# ---- bad policies: checked against BTF on every kernel --------------------------------------------

def test_missing_kernel_function_is_named(rig) -> None:
    e = refused(rig, policy("sensorium_no_such_function", "    args: [{index: 0, type: int}]\n"))
    assert "kernel function sensorium_no_such_function does not exist" in str(e)
    assert e.field == "spec.kprobes[0].call"


def test_missing_function_skipped_with_call_not_found(rig) -> None:
    h = rig.load(policy("sensorium_no_such_function", "    ignore: {callNotFound: true}\n"), "kprobes")
    st = h.status()["hooks"]
    assert st[0]["state"] == "skipped" and "does not exist" in st[0]["note"]


def test_arg_index_out_of_range_names_the_arg(rig) -> None:
    e = refused(rig, policy("security_file_open", "    args: [{index: 0, type: file}, {index: 3, type: int}]\n"))
    assert "index 3 is out of range" in str(e) and "security_file_open(struct file *file)" in str(e)
    assert e.field == "spec.kprobes[0].args[1].index"


def test_type_mismatch_with_btf_signature_names_the_arg(rig) -> None:
    e = refused(rig, policy("tcp_connect", "    args: [{index: 0, type: file}]\n"))
    assert "type file does not match parameter 0 'sk'" in str(e) and "struct sock *" in str(e)
    assert e.field == "spec.kprobes[0].args[0].type"
    e = refused(rig, policy("security_file_open", "    args: [{index: 0, type: int}]\n"))
    assert "type int does not match parameter 0 'file'" in str(e)


def test_override_refused_on_a_function_that_cannot_take_it(rig) -> None:
    body = """    args: [{index: 0, type: sock}]
    selectors:
    - matchActions: [{action: Override, argError: -1}]
"""
    e = refused(rig, policy("tcp_connect", body))
    assert "Override cannot apply to tcp_connect" in str(e)
    assert e.field == "spec.kprobes[0].selectors[0].matchActions[0].action"


def test_override_on_a_security_hook_needs_fmod_ret(rig) -> None:
    body = """    args: [{index: 0, type: file}]
    selectors:
    - matchActions: [{action: Override, argError: -1}]
"""
    rig.ctx.kernel = FakeCaps("fentry", "fexit", "kprobe")
    e = refused(rig, policy("security_file_open", body))
    assert "security_file_open is an LSM security_ hook" in str(e) and "needs fmod_ret" in str(e)
    rig.ctx.kernel = FakeCaps("fentry", "fexit", "fmod_ret")
    (plan,) = rig.sensor.plan(rig.view(policy("security_file_open", body), "kprobes"))
    assert plan.mechanism == "fmod_ret" and plan.attach[4][0] == 1  # EPERM for selector 0
    e = refused(rig, policy("security_file_open", "    return: true\n" + body))
    assert "Override and 'return: true' together" in str(e)


def test_return_arg_type_must_fit(rig) -> None:
    e = refused(rig, policy("security_file_open", "    return: true\n    returnArg: {index: 0, type: file}\n"))
    assert e.field == "spec.kprobes[0].returnArg.type"


# ---- mechanism choice (planner; no load) ----------------------------------------------------------

@pytest.mark.parametrize("caps,ret,mech", [
    (("fentry", "fexit", "kprobe"), False, "fentry"),
    (("fentry", "fexit", "kprobe"), True, "fexit"),
    (("kprobe",), False, "kprobe"),
    (("kprobe",), True, "kretprobe"),
])
def test_mechanism_follows_kernel_capabilities(rig, caps, ret, mech) -> None:
    rig.ctx.kernel = FakeCaps(*caps)
    text = policy("security_file_open", "    args: [{index: 0, type: file}]\n" + ("    return: true\n" if ret else ""))
    (plan,) = rig.sensor.plan(rig.view(text, "kprobes"))
    assert plan.mechanism == mech and plan.attach[:3] == ("kfunc", "security_file_open", mech)
    assert "security_file_open(struct file *file)" in plan.note


def test_no_mechanism_refused_with_the_reason(rig) -> None:
    rig.ctx.kernel = FakeCaps("raw_tp")
    e = refused(rig, policy("tcp_connect", "    args: [{index: 0, type: sock}]\n"))
    assert "no kprobes and fentry refused on this kernel" in str(e) and e.field == "spec.kprobes[0].call"


def test_sock_summary_decodes_to_tetragon_shape() -> None:
    import struct

    raw = struct.pack("<HHHHHH16s16s", 2, 1, 6, 40000, 8080, 2, socket.inet_aton("127.0.0.1") + bytes(12),
                      socket.inet_aton("127.0.0.2") + bytes(12))
    assert decode_sock(raw.hex()) == {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                                      "saddr": "127.0.0.1", "daddr": "127.0.0.2", "sport": 40000, "dport": 8080,
                                      "state": "TCP_SYN_SENT"}


# ---- real hooks (VM lane) -------------------------------------------------------------------------

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", int(sys.argv[1])))
print(s.getsockname()[1])
"""


def _listener() -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    return srv


def _tcp_connect_reports_5_tuple(rig, cgroup2_dir) -> dict:
    h = rig.load(policy("tcp_connect", "    args: [{index: 0, type: sock, label: sk}]\n", name="tcp-connect"),
                 "kprobes", scope=scope_of(cgroup2_dir))
    srv = _listener()
    port = srv.getsockname()[1]
    try:
        out = cgroup2_dir.run([sys.executable, "-c", CONNECT, str(port)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        sport = int(out.stdout)
    finally:
        srv.close()
    evs = rig.events(lambda b: b.get("function_name") == "tcp_connect", wait=5.0)
    assert evs, "no tcp_connect event"
    ev = evs[0]
    sk = ev["args"][0]
    assert sk["label"] == "sk"
    assert sk["sock_arg"] == {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                              "saddr": "127.0.0.1", "daddr": "127.0.0.1", "sport": sport, "dport": port,
                              "state": "TCP_SYN_SENT"}
    assert ev["policy_name"] == "tcp-connect" and ev["action"] == "KPROBE_ACTION_POST"
    return h.status()["hooks"][0]


@pytest.mark.needs("kprobe")
def test_kprobe_on_tcp_connect_reports_the_5_tuple(rig, cgroup2_dir) -> None:
    rig.ctx.kernel = WithoutTrampolines(rig.ctx.kernel)
    st = _tcp_connect_reports_5_tuple(rig, cgroup2_dir)
    assert st["mechanism"] == "kprobe"


@pytest.mark.needs("fentry")
def test_fentry_on_tcp_connect_reports_the_5_tuple(rig, cgroup2_dir) -> None:
    st = _tcp_connect_reports_5_tuple(rig, cgroup2_dir)
    assert st["mechanism"] == "fentry"


FILE_OPEN = """    return: true
    args: [{index: 0, type: file}]
    returnArg: {index: 0, type: int}
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: ["%s"]}]
"""


def _file_open_typed_and_return(rig, cgroup2_dir, tmp_path: Path) -> dict:
    target = tmp_path / "watched.txt"
    target.write_text("x\n")
    other = tmp_path / "other.txt"
    other.write_text("y\n")
    h = rig.load(policy("security_file_open", FILE_OPEN % target), "kprobes", scope=scope_of(cgroup2_dir))
    assert cgroup2_dir.run(["cat", str(other)], capture_output=True).returncode == 0
    assert cgroup2_dir.run(["cat", str(target)], capture_output=True).returncode == 0
    evs = rig.events(lambda b: b.get("function_name") == "security_file_open", wait=5.0)
    # the selector filtered 'other' (6.1 calls security_file_open twice for one open of cat's: both reported)
    assert {e["args"][0]["file_arg"]["path"] for e in evs} == {str(target)}
    assert evs[0]["return"] == {"int_arg": 0}
    assert evs[0]["process"]["pid"] > 0
    return h.status()["hooks"][0]


@pytest.mark.needs("fentry", "fexit")
def test_fexit_file_arg_and_return_value(rig, cgroup2_dir, tmp_path: Path) -> None:
    assert _file_open_typed_and_return(rig, cgroup2_dir, tmp_path)["mechanism"] == "fexit"


@pytest.mark.needs("kprobe")
def test_kretprobe_file_arg_and_return_value(rig, cgroup2_dir, tmp_path: Path) -> None:
    rig.ctx.kernel = WithoutTrampolines(rig.ctx.kernel)
    assert _file_open_typed_and_return(rig, cgroup2_dir, tmp_path)["mechanism"] == "kretprobe"


@pytest.mark.needs("fentry", "fexit")
def test_fexit_user_string_and_negative_return(rig, cgroup2_dir, tmp_path: Path) -> None:
    """do_sys_openat2(int dfd, const char __user *filename, struct open_how *how): the filename is a user
    pointer (copied by the program), the return value the fd or -errno."""
    missing = tmp_path / "does-not-exist"
    body = f"""    return: true
    args: [{{index: 0, type: int}}, {{index: 1, type: string}}]
    returnArg: {{index: 0, type: int}}
    selectors:
    - matchArgs: [{{index: 1, operator: Equal, values: ["{missing}"]}}]
"""
    h = rig.load(policy("do_sys_openat2", body), "kprobes", scope=scope_of(cgroup2_dir))
    assert cgroup2_dir.run(["cat", str(missing)], capture_output=True).returncode != 0
    evs = rig.events(lambda b: b.get("function_name") == "do_sys_openat2", wait=5.0)
    assert evs, "no do_sys_openat2 event"
    assert evs[0]["args"] == [{"int_arg": -100}, {"string_arg": str(missing)}]  # AT_FDCWD
    assert evs[0]["return"] == {"int_arg": -2}  # -ENOENT
    assert h.status()["hooks"][0]["mechanism"] == "fexit"


SIGKILL = """    args: [{index: 0, type: file}]
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: ["%s"]}]
      matchActions: [{action: Sigkill}]
"""


def _sigkill_scoped(rig, cgroup2_dir, tmp_path: Path, mode: str | None = None):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    h = rig.load(policy("security_file_open", SIGKILL % secret, name="kill-open"), "kprobes", mode=mode,
                 scope=scope_of(cgroup2_dir))
    return h, secret


@pytest.mark.needs("fentry")
def test_sigkill_only_in_the_test_cgroup(rig, cgroup2_dir, tmp_path: Path) -> None:
    h, secret = _sigkill_scoped(rig, cgroup2_dir, tmp_path)
    inside = cgroup2_dir.run(["cat", str(secret)], capture_output=True, text=True)
    assert inside.returncode == -9
    outside = subprocess.run(["cat", str(secret)], capture_output=True, text=True)
    assert outside.returncode == 0 and outside.stdout == "top secret\n"
    ev = rig.events(lambda b: b.get("function_name") == "security_file_open", wait=5.0)[0]
    assert ev["action"] == "KPROBE_ACTION_SIGKILL" and ev["policy_mode"] == "enforcement" and ev["action_taken"]
    assert ev["args"][0]["file_arg"]["path"] == str(secret)
    assert h.status()["hooks"][0]["mechanism"] == "fentry"
    assert os.getpid() > 0  # (still here: the runner is outside the cgroup)


@pytest.mark.needs("fentry")
def test_monitoring_mode_reports_then_enforces_live(rig, cgroup2_dir, tmp_path: Path) -> None:
    h, secret = _sigkill_scoped(rig, cgroup2_dir, tmp_path, mode="monitoring")
    r = cgroup2_dir.run(["cat", str(secret)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "top secret\n"
    ev = rig.events(lambda b: b.get("function_name") == "security_file_open", wait=5.0)[0]
    assert ev["action"] == "KPROBE_ACTION_SIGKILL" and ev["policy_mode"] == "monitoring"
    assert ev["action_taken"] is False
    h.set_mode("enforcement")
    assert cgroup2_dir.run(["cat", str(secret)], capture_output=True).returncode == -9


@pytest.mark.needs("kprobe")
def test_kprobe_sigkill_and_unload_detaches(rig, cgroup2_dir, tmp_path: Path) -> None:
    rig.ctx.kernel = WithoutTrampolines(rig.ctx.kernel)
    h, secret = _sigkill_scoped(rig, cgroup2_dir, tmp_path)
    assert h.status()["hooks"][0]["mechanism"] == "kprobe"
    assert cgroup2_dir.run(["cat", str(secret)], capture_output=True).returncode == -9
    ids = set(rig.ctx.loaded_prog_ids)
    h.unload()
    assert gone(ids)
    assert cgroup2_dir.run(["cat", str(secret)], capture_output=True).returncode == 0


def test_cred_summary_decodes_to_tetragon_shape() -> None:
    import struct

    from sensorium_sensors.kprobe.kfunc import decode_cred

    raw = struct.pack("<8I3Q", 1000, 100, 1000, 100, 0, 100, 0, 100, 0, 1 << 21 | 1, 1 << 21)
    d = decode_cred(raw.hex())
    assert d["uid"] == 1000 and d["euid"] == 0 and d["gid"] == 100
    assert d["caps"] == {"permitted": ["CAP_CHOWN", "CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"], "inheritable": []}


@pytest.mark.needs("fentry")
def test_fentry_cred_arg_of_commit_creds(rig, cgroup2_dir) -> None:
    rig.load(policy("commit_creds", "    args: [{index: 0, type: cred}]\n"), "kprobes", scope=scope_of(cgroup2_dir))
    r = cgroup2_dir.run([sys.executable, "-c", "import os; os.setgid(65534); os.setuid(65534)"], capture_output=True,
                        text=True)
    assert r.returncode == 0, r.stderr
    evs = rig.events(lambda b: b.get("function_name") == "commit_creds"
                     and b["args"][0]["process_credentials_arg"]["uid"] == 65534, wait=5.0)
    assert evs, "no commit_creds event with the new uid"
    cred = evs[0]["args"][0]["process_credentials_arg"]
    assert cred["euid"] == cred["fsuid"] == 65534 and cred["gid"] == 65534
    assert cred["caps"]["effective"] == []  # setuid away from root clears the effective set


@pytest.mark.needs("fentry")
def test_fentry_dentry_arg_of_vfs_unlink(rig, cgroup2_dir, tmp_path: Path) -> None:
    victim = tmp_path / "unlinked.txt"
    victim.write_text("x")
    # vfs_unlink's dentry is its third parameter since 5.12 (an idmap first), its second before (5.10)
    from sensorium.bpf.btf import kernel_functions

    params = kernel_functions()["vfs_unlink"].params
    index = next(i for i, p in enumerate(params) if p.ctype == "struct dentry *")
    rig.load(policy("vfs_unlink", f"    args: [{{index: {index}, type: dentry}}]\n"), "kprobes",
             scope=scope_of(cgroup2_dir))
    assert cgroup2_dir.run(["rm", str(victim)]).returncode == 0 and not victim.exists()
    evs = rig.events(lambda b: b.get("function_name") == "vfs_unlink", wait=5.0)
    assert evs, "no vfs_unlink event"
    path = evs[0]["args"][0]["path_arg"]["path"]
    # a dentry knows no mount: the path is from its own filesystem's root (the whole path on the root fs)
    assert path.endswith(f"/{tmp_path.name}/unlinked.txt") and str(victim).endswith(path)


OVERRIDE = """    args: [{index: 0, type: file}]
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: ["%s"]}]
      matchActions: [{action: Override, argError: -1}]
"""


@pytest.mark.needs("fmod_ret")
def test_override_through_fmod_ret_fails_open_with_eperm_in_the_cgroup_only(rig, cgroup2_dir, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    h = rig.load(policy("security_file_open", OVERRIDE % secret, name="deny-open"), "kprobes",
                 scope=scope_of(cgroup2_dir))
    assert h.status()["hooks"][0]["mechanism"] == "fmod_ret"
    inside = cgroup2_dir.run(["cat", str(secret)], capture_output=True, text=True)
    assert inside.returncode == 1 and "Operation not permitted" in inside.stderr
    outside = subprocess.run(["cat", str(secret)], capture_output=True, text=True)
    assert outside.returncode == 0 and outside.stdout == "top secret\n"
    ev = rig.events(lambda b: b.get("function_name") == "security_file_open", wait=5.0)[0]
    assert ev["action"] == "KPROBE_ACTION_OVERRIDE" and ev["override_return"] == -1 and ev["action_taken"]
    assert ev["args"][0]["file_arg"]["path"] == str(secret)
    h.set_mode("monitoring")
    r = cgroup2_dir.run(["cat", str(secret)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "top secret\n"


@pytest.mark.needs("fentry")
def test_a_generated_ftrace_list_hooks_each_matching_kernel_function(rig, cgroup2_dir, tmp_path: Path) -> None:
    """Tetragon's generated_ftrace list (list-generated-ftrace.yaml's shape): the pattern's functions, one
    fentry hook each; a cat in our cgroup reads and writes, and both functions report it by name."""
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    text = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ftrace-list}
spec:
  lists:
  - {name: rw, type: generated_ftrace, pattern: "^ksys_(read|write)$"}
  kprobes:
  - call: list:rw
"""
    h = rig.load(text, "kprobes", scope=scope_of(cgroup2_dir))
    assert len(h.status()["hooks"]) == 2
    assert {x["mechanism"] for x in h.status()["hooks"]} == {"fentry"}
    assert cgroup2_dir.run(["cat", str(src)], capture_output=True).returncode == 0
    evs = rig.events(lambda b: b.get("policy_name") == "ftrace-list", wait=5.0)  # scoped: only the cat
    rig.events(lambda b: False, wait=0.5)
    got = {b["function_name"] for b in rig.events(lambda b: b.get("policy_name") == "ftrace-list")}
    assert evs and got == {"ksys_read", "ksys_write"}, got

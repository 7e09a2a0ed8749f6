"""Socket operators (SAddr, DAddr, SPort, DPort, their Not* and *Priv forms, Protocol, Family) and several
matchBinaries entries in one selector, evaluated in the kernel.

On this host: connect(2) hooks (raw_tp sys_enter) whose ``sockaddr`` argument is the user's address,
driven by real loopback connections of a child in the test's cgroup; matchBinaries with real copies of
cat. In the VM lane (``needs("fentry")``): tcp_connect's ``struct sock *`` and security_socket_connect's
``struct sockaddr *`` selected by address and port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hook_helpers import rig_fixture, scope_of, string_args

from sensorium.hooks import selectors as S
from sensorium.hookspecs import PolicyLoadError
from sensorium.policy import PolicyError
from sensorium_sensors.kprobe.sensor import KprobeSensor

pytestmark = [pytest.mark.kernel]

rig = rig_fixture(KprobeSensor)


def connect_policy(selectors: str, name: str = "connect-sel", call: str = "sys_connect", index: int = 1) -> str:
    sel = f"    selectors:\n{selectors}" if selectors else ""
    return f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  kprobes:
  - call: {call}
    args:
    - {{index: 0, type: int}}
    - {{index: {index}, type: sockaddr, label: addr}}
{sel}
"""


# A child that connects to each (host, port) given on its command line, in order, and ignores refusals:
# the hook sees connect() at entry whatever its outcome.
CLIENT = """
import socket, sys
for item in sys.argv[1:]:
    host, port = item.rsplit(",", 1)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, int(port)))
    except OSError:
        pass
    s.close()
print("done", flush=True)
"""


MAPPED = "::ffff:127.0.0.1"


class Listeners:
    """Loopback listeners: port A on 127.0.0.1, 127.0.0.2 and (if IPv6 works) ::1; port B on 127.0.0.1."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        a = self._listen(socket.AF_INET, "127.0.0.1", 0)
        self.a = a.getsockname()[1]
        self.b = self._listen(socket.AF_INET, "127.0.0.1", 0).getsockname()[1]
        try:
            self._listen(socket.AF_INET, "127.0.0.2", self.a)
        except OSError:
            pass  # connect() still reaches the hook; it is refused instead
        self.v6 = True
        try:
            self._listen(socket.AF_INET6, "::1", self.a)
        except OSError:
            self.v6 = False

    def _listen(self, fam: int, host: str, port: int) -> socket.socket:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.bind((host, port))
        s.listen(8)
        self.socks.append(s)
        return s

    def destinations(self) -> list[tuple[str, int]]:
        out = [("127.0.0.1", self.a), ("127.0.0.1", self.b), ("127.0.0.2", self.a)]
        if self.v6:  # an IPv6 socket to ::1, and one to 127.0.0.1 through its IPv4-mapped address
            out += [("::1", self.a), (MAPPED, self.a)]
        return out

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    ls = Listeners()
    yield ls
    ls.close()


def run_client(cgroup2_dir, dests: list[tuple[str, int]]) -> subprocess.CompletedProcess:
    return cgroup2_dir.run([sys.executable, "-c", CLIENT, *[f"{h},{p}" for h, p in dests]], capture_output=True,
                           text=True, timeout=60)


def posted(rig, wait: float = 1.0) -> list[tuple[str, int]]:
    out = []
    for b in rig.events(lambda b: b.get("function_name") == "__x64_sys_connect", wait=wait):
        sa = b["args"][1]["sockaddr_arg"]
        if sa.get("family") in ("AF_INET", "AF_INET6"):
            out.append((sa["addr"], sa["port"]))
    return out


def test_connect_daddr_dport_posts_only_the_chosen_destination(rig, cgroup2_dir, listeners) -> None:
    """A Tetragon-style connect policy: the event comes for 127.0.0.1:A only, not for port B nor 127.0.0.2."""
    rig.load(connect_policy(f"""    - matchArgs:
      - {{index: 1, operator: DAddr, values: ["127.0.0.1"]}}
      - {{index: 1, operator: DPort, values: ["{listeners.a}"]}}
"""), "kprobes", scope=scope_of(cgroup2_dir))
    # the expected destination goes last: once its event is in, a wrong one (earlier in the ring) would be too
    dests = [("127.0.0.1", listeners.b), ("127.0.0.2", listeners.a), ("127.0.0.1", listeners.a)]
    r = run_client(cgroup2_dir, dests)
    assert r.returncode == 0, r.stderr
    evs = rig.events(lambda b: b.get("function_name") == "__x64_sys_connect", wait=2.0)
    assert len(evs) == 1, evs
    ev = evs[0]
    assert ev["args"][1] == {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": listeners.a},
                             "label": "addr"}
    assert ev["action"] == "KPROBE_ACTION_POST"


ALL = lambda a, b: {("127.0.0.1", a), ("127.0.0.1", b), ("127.0.0.2", a), ("::1", a), (MAPPED, a)}  # noqa: E731


@pytest.mark.parametrize("op,values,expect", [
    # an IPv4 CIDR also matches the IPv4-mapped address an IPv6 socket connects to
    ("DAddr", ["127.0.0.0/8"], lambda a, b: {("127.0.0.1", a), ("127.0.0.1", b), ("127.0.0.2", a), (MAPPED, a)}),
    ("SAddr", ["127.0.0.2/32", "10.0.0.0/8"], lambda a, b: {("127.0.0.2", a)}),  # Tetragon's name for it
    ("NotDAddr", ["127.0.0.1"], lambda a, b: {("127.0.0.2", a), ("::1", a)}),
    ("DAddr", ["::1/128"], lambda a, b: {("::1", a)}),
    ("DAddr", ["::ffff:0:0/96"], lambda a, b: {(MAPPED, a)}),
    ("SPort", ["A"], lambda a, b: {("127.0.0.1", a), ("127.0.0.2", a), ("::1", a), (MAPPED, a)}),
    ("NotDPort", ["A"], lambda a, b: {("127.0.0.1", b)}),
    ("DPort", ["LO:HI"], ALL),
    ("DPort", ["HI:LO"], ALL),
    ("Family", ["AF_INET6"], lambda a, b: {("::1", a), (MAPPED, a)}),
    ("Family", ["2"], lambda a, b: {("127.0.0.1", a), ("127.0.0.1", b), ("127.0.0.2", a)}),
    ("DPortPriv", [], lambda a, b: set()),
    ("NotDPortPriv", [], ALL),
])
def test_sockaddr_operators(rig, cgroup2_dir, listeners, op: str, values: list[str], expect) -> None:
    a, b = listeners.a, listeners.b
    subst = {"A": str(a), "LO:HI": f"{min(a, b)}:{max(a, b)}", "HI:LO": f"{max(a, b)}:{min(a, b)}"}
    vals = ", ".join(f'"{subst.get(v, v)}"' for v in values)
    rig.load(connect_policy(f"""    - matchArgs:
      - {{index: 1, operator: {op}, values: [{vals}]}}
"""), "kprobes", scope=scope_of(cgroup2_dir))
    r = run_client(cgroup2_dir, listeners.destinations())
    assert r.returncode == 0, r.stderr
    want = {d for d in expect(a, b) if listeners.v6 or ":" not in d[0]}
    got = posted(rig, wait=1.5)
    assert set(got) == want and len(got) == len(want), (got, want)


UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in sys.argv[1:]:
    s.sendto(b"x", ("127.0.0.1", int(port)))
"""


def test_sendto_destination_selected_by_dport(rig, cgroup2_dir) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    port, other_port = rx.getsockname()[1], other.getsockname()[1]
    try:
        rig.load(connect_policy(f"""    - matchArgs:
      - {{index: 4, operator: DPort, values: ["{port}"]}}
      - {{index: 4, operator: DAddr, values: ["127.0.0.0/8"]}}
""", call="sys_sendto", index=4), "kprobes", scope=scope_of(cgroup2_dir))
        r = cgroup2_dir.run([sys.executable, "-c", UDP_CLIENT, str(other_port), str(port)], capture_output=True,
                            text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        evs = rig.events(lambda b: b.get("function_name") == "__x64_sys_sendto", wait=1.5)
        assert [e["args"][1]["sockaddr_arg"] for e in evs] == [{"family": "AF_INET", "addr": "127.0.0.1",
                                                                 "port": port}], evs
    finally:
        rx.close()
        other.close()


BAD_POINTER_CLIENT = """
import ctypes, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket()
assert libc.connect(s.fileno(), ctypes.c_void_p(8), 16) == -1 and ctypes.get_errno() == 14  # EFAULT
s.close()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.close()
"""


def test_unreadable_sockaddr_matches_no_operator_not_even_not(rig, cgroup2_dir, listeners) -> None:
    rig.load(connect_policy("""    - matchArgs:
      - {index: 1, operator: NotDAddr, values: ["10.0.0.0/8"]}
"""), "kprobes", scope=scope_of(cgroup2_dir))
    r = cgroup2_dir.run([sys.executable, "-c", BAD_POINTER_CLIENT, str(listeners.b)], capture_output=True, text=True,
                        timeout=60)
    assert r.returncode == 0, r.stderr
    evs = rig.events(lambda b: b.get("function_name") == "__x64_sys_connect", wait=1.5)
    assert [e["args"][1]["sockaddr_arg"].get("port") for e in evs] == [listeners.b], evs


def test_sigkill_on_dport_kills_only_that_connect_in_the_test_cgroup(rig, cgroup2_dir, listeners) -> None:
    rig.load(connect_policy(f"""    - matchArgs:
      - {{index: 1, operator: DPort, values: ["{listeners.a}"]}}
      matchActions:
      - {{action: Sigkill}}
"""), "kprobes", scope=scope_of(cgroup2_dir))
    ok = run_client(cgroup2_dir, [("127.0.0.1", listeners.b)])
    assert ok.returncode == 0 and "done" in ok.stdout, ok.stderr
    killed = run_client(cgroup2_dir, [("127.0.0.1", listeners.b), ("127.0.0.1", listeners.a)])
    assert killed.returncode == -9 and "done" not in killed.stdout
    # outside the test's cgroup the rule does not apply: this process connects to A unharmed
    with socket.create_connection(("127.0.0.1", listeners.a), timeout=2):
        pass
    evs = rig.events(lambda b: b.get("function_name") == "__x64_sys_connect", wait=1.0)
    assert [e["args"][1]["sockaddr_arg"]["port"] for e in evs] == [listeners.a]
    assert evs[0]["action"] == "KPROBE_ACTION_SIGKILL" and evs[0]["action_taken"] is True


# ---- checked before load, naming the field ------------------------------------------------------------

def refused(rig, text: str) -> PolicyLoadError:
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.check_policy(rig.view(text, "kprobes"))
    return ei.value


def test_bind_address_is_local_daddr_refused(rig) -> None:
    e = refused(rig, connect_policy("""    - matchArgs:
      - {index: 1, operator: DAddr, values: ["127.0.0.1"]}
""", call="sys_bind"))
    assert "operator DAddr does not apply to the sockaddr argument" in str(e) and "local" in str(e)
    assert e.field == "spec.kprobes[0].selectors[0].matchArgs[0].operator"
    rig.sensor.check_policy(rig.view(connect_policy("""    - matchArgs:
      - {index: 1, operator: SAddr, values: ["127.0.0.1"]}
      - {index: 1, operator: SPortPriv}
""", call="sys_bind"), "kprobes"))


def test_protocol_on_a_sockaddr_refused(rig) -> None:
    e = refused(rig, connect_policy("""    - matchArgs:
      - {index: 1, operator: Protocol, values: ["IPPROTO_TCP"]}
"""))
    assert "operator Protocol does not apply to the sockaddr argument" in str(e) and "no protocol" in str(e)


def test_sockaddr_only_where_the_process_passes_one(rig) -> None:
    e = refused(rig, connect_policy("", call="sys_accept"))
    assert "type sockaddr reads the address a process passes in" in str(e)
    assert e.field == "spec.kprobes[0].args[1].type"


def test_socket_operator_on_an_integer_refused(rig) -> None:
    e = refused(rig, connect_policy("""    - matchArgs:
      - {index: 0, operator: DPort, values: ["80"]}
"""))
    assert "operator DPort applies to sock and sockaddr arguments" in str(e)


def test_socket_values_limit(rig) -> None:
    many = ", ".join(f'"10.0.0.{i}"' for i in range(9))
    e = refused(rig, connect_policy(f"""    - matchArgs:
      - {{index: 1, operator: DAddr, values: [{many}]}}
"""))
    assert f"at most {S.MAX_VALUES} per operator" in str(e)


@pytest.mark.parametrize("op,value,why", [
    ("DAddr", "300.1.1.1", "is not an IPv4/IPv6 address or CIDR"),
    ("DAddr", "10.0.0.0/33", "is not an IPv4/IPv6 address or CIDR"),
    ("DPort", "70000", "outside 0..65535"),
    ("DPort", "1:2:3", "a range is 'min:max'"),
    ("Protocol", "IPPROTO_BOGUS", "is not a number"),
    ("Family", "AF_NOPE", "is not a number"),
])
def test_bad_socket_values_refused_at_parse_with_file_and_line(op: str, value: str, why: str) -> None:
    from policy_sensors import registry_with

    from sensorium.policy import parse_policy
    from sensorium_sensors.kprobe.schema import KProbeSpec

    text = connect_policy(f"""    - matchArgs:
      - {{index: 1, operator: {op}, values: ["{value}"]}}
""")
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "p.yaml", registry_with(("kprobe", "kprobes", KProbeSpec))[0])
    msg = str(ei.value)
    assert why in msg and "p.yaml:" in msg and "matchArgs[0]" in msg, msg


def test_priv_operator_takes_no_values() -> None:
    from policy_sensors import registry_with

    from sensorium.policy import parse_policy
    from sensorium_sensors.kprobe.schema import KProbeSpec

    with pytest.raises(PolicyError, match="takes no values"):
        parse_policy(connect_policy("""    - matchArgs:
      - {index: 1, operator: DPortPriv, values: ["80"]}
"""), "p.yaml", registry_with(("kprobe", "kprobes", KProbeSpec))[0])


def test_kernel_function_sockaddr_follows_tetragon(rig) -> None:
    """security_socket_connect's struct sockaddr *: SAddr/SPort/Family only (Tetragon's rule), checked from
    BTF on every kernel; sock arguments take every socket operator."""
    kf = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: kf}
spec:
  kprobes:
  - call: %s
    syscall: false
    args: [{index: %d, type: %s}]
    selectors:
    - matchArgs:
      - {index: %d, operator: %s, values: ["%s"]}
"""
    e = refused(rig, kf % ("security_socket_connect", 1, "sockaddr", 1, "DAddr", "127.0.0.1"))
    assert "operator DAddr does not apply to the sockaddr argument" in str(e) and "Tetragon" in str(e)
    for op, v in (("SAddr", "127.0.0.1"), ("SPort", "80"), ("Family", "AF_INET")):
        e = refused(rig, kf % ("security_socket_connect", 1, "sockaddr", 1, op, v))
        assert "does not apply" not in str(e)  # passes the selector checks (refused later only for the mechanism)
    for op, v in (("DAddr", "10.0.0.0/8"), ("NotDPort", "1:1023"), ("Protocol", "IPPROTO_TCP")):
        e = refused(rig, kf % ("tcp_connect", 0, "sock", 0, op, v))
        assert "does not apply" not in str(e)
        e = refused(rig, kf % ("ip_output", 2, "skb", 2, op, v))
        assert "does not apply" not in str(e) and "not supported" not in str(e), str(e)


# ---- several matchBinaries entries (ANDed) ------------------------------------------------------------

def open_policy(target: Path, bins: str) -> str:
    return f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: bins-and}}
spec:
  kprobes:
  - call: sys_openat
    args: [{{index: 1, type: string}}]
    selectors:
    - matchArgs:
      - {{index: 1, operator: Equal, values: ["{target}"]}}
      matchBinaries:
{bins}
"""


@pytest.mark.parametrize("bins", [
    '      - {operator: Prefix, values: ["DIR/"]}\n      - {operator: NotIn, values: ["DIR/cat2"]}\n',
    '      - {operator: In, values: ["DIR/cat1", "DIR/cat2"]}\n      - {operator: NotPostfix, values: ["/cat2"]}\n',
])
def test_match_binaries_entries_are_anded(rig, tmp_path: Path, bins: str) -> None:
    target = tmp_path / "t.txt"
    target.write_text("x")
    cat = shutil.which("cat")
    for n in ("cat1", "cat2"):
        shutil.copy(cat, tmp_path / n)
    rig.load(open_policy(target, bins.replace("DIR", str(tmp_path))), "kprobes")
    pids = {}
    # the one expected to post last: any wrong event would be in the ring before it
    for argv in ([str(tmp_path / "cat2"), str(target)], [cat, str(target)], [str(tmp_path / "cat1"), str(target)]):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        p.wait()
        pids[Path(argv[0]).name] = p.pid
    evs = rig.events(lambda b: str(target) in string_args(b), wait=2.0)
    assert [e["process"]["pid"] for e in evs] == [pids["cat1"]], (evs, pids)


def test_match_binaries_limit_and_one_follow_children(rig, tmp_path: Path) -> None:
    five = "".join(f'      - {{operator: NotIn, values: ["/x{i}"]}}\n' for i in range(S.MAX_BINS + 1))
    e = refused(rig, open_policy(tmp_path / "t", five))
    assert f"at most {S.MAX_BINS} in the kernel" in str(e) and e.field.endswith("selectors[0].matchBinaries")
    two = ('      - {operator: In, values: ["/bin/sh"], followChildren: true}\n'
           '      - {operator: Prefix, values: ["/usr/"], followChildren: true}\n')
    e = refused(rig, open_policy(tmp_path / "t", two))
    assert "one matchBinaries entry with followChildren per selector" in str(e)
    assert e.field.endswith("matchBinaries[1].followChildren")


# ---- kernel functions (VM lane) ---------------------------------------------------------------------

KF_CONNECT = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: kf-connect}
spec:
  kprobes:
  - call: %s
    syscall: false
    args: [{index: %d, type: %s}]
    selectors:
    - matchArgs:
%s
"""


@pytest.mark.needs("fentry")
def test_tcp_connect_sock_daddr_dport_selects_the_destination(rig, cgroup2_dir, listeners) -> None:
    rig.load(KF_CONNECT % ("tcp_connect", 0, "sock", f"""      - {{index: 0, operator: DAddr, values: ["127.0.0.1/32"]}}
      - {{index: 0, operator: DPort, values: ["{listeners.a}"]}}
      - {{index: 0, operator: Protocol, values: ["IPPROTO_TCP"]}}"""), "kprobes", scope=scope_of(cgroup2_dir))
    r = run_client(cgroup2_dir, [("127.0.0.1", listeners.b), ("127.0.0.2", listeners.a), ("127.0.0.1", listeners.a)])
    assert r.returncode == 0, r.stderr
    evs = rig.events(lambda b: b.get("function_name") == "tcp_connect", wait=3.0)
    assert [(e["args"][0]["sock_arg"]["daddr"], e["args"][0]["sock_arg"]["dport"]) for e in evs] == \
        [("127.0.0.1", listeners.a)], evs
    assert evs[0]["args"][0]["sock_arg"]["family"] == "AF_INET"


@pytest.mark.needs("fentry")
def test_tcp_connect_sock_not_daddr(rig, cgroup2_dir, listeners) -> None:
    rig.load(KF_CONNECT % ("tcp_connect", 0, "sock", """      - {index: 0, operator: NotDAddr, values: ["127.0.0.1"]}
      - {index: 0, operator: Family, values: ["AF_INET"]}"""), "kprobes", scope=scope_of(cgroup2_dir))
    r = run_client(cgroup2_dir, [("127.0.0.1", listeners.b), ("127.0.0.2", listeners.a)])
    assert r.returncode == 0, r.stderr
    evs = rig.events(lambda b: b.get("function_name") == "tcp_connect", wait=3.0)
    assert [e["args"][0]["sock_arg"]["daddr"] for e in evs] == ["127.0.0.2"], evs


@pytest.mark.needs("fentry")
def test_security_socket_connect_sockaddr_saddr_sport(rig, cgroup2_dir, listeners) -> None:
    rig.load(KF_CONNECT % ("security_socket_connect", 1, "sockaddr", f"""      - {{index: 1, operator: SAddr, values: ["127.0.0.2"]}}
      - {{index: 1, operator: SPort, values: ["{listeners.a}"]}}"""), "kprobes", scope=scope_of(cgroup2_dir))
    r = run_client(cgroup2_dir, [("127.0.0.1", listeners.a), ("127.0.0.2", listeners.b), ("127.0.0.2", listeners.a)])
    assert r.returncode == 0, r.stderr
    evs = rig.events(lambda b: b.get("function_name") == "security_socket_connect", wait=3.0)
    assert [e["args"][0]["sockaddr_arg"] for e in evs] == \
        [{"family": "AF_INET", "addr": "127.0.0.2", "port": listeners.a}], evs


UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in sys.argv[1:]:
    s.sendto(b"sensorium", ("127.0.0.1", int(port)))
"""


@pytest.mark.needs("fentry")
def test_ip_output_skb_selected_by_dport_and_protocol(rig, cgroup2_dir) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    port, other_port = rx.getsockname()[1], other.getsockname()[1]
    try:
        rig.load(KF_CONNECT % ("ip_output", 2, "skb", f"""      - {{index: 2, operator: DPort, values: ["{port}"]}}
      - {{index: 2, operator: Protocol, values: ["IPPROTO_UDP"]}}
      - {{index: 2, operator: DAddr, values: ["127.0.0.0/8"]}}"""), "kprobes", scope=scope_of(cgroup2_dir))
        r = cgroup2_dir.run([sys.executable, "-c", UDP_SEND, str(other_port), str(port)], capture_output=True,
                            text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        evs = rig.events(lambda b: b.get("function_name") == "ip_output", wait=3.0)
        skbs = [e["args"][0]["skb_arg"] for e in evs]
        assert [(k["daddr"], k["dport"], k["protocol"]) for k in skbs] == [("127.0.0.1", port, "IPPROTO_UDP")], evs
        assert skbs[0]["len"] == 20 + 8 + len(b"sensorium") and skbs[0]["family"] == "AF_INET"
    finally:
        rx.close()
        other.close()


def test_follow_children_entry_anded_with_a_not_in_entry(rig, tmp_path: Path) -> None:
    """In [mysh] followChildren AND NotIn [cat]: mysh's children are followed, except cat; head outside mysh
    is not a descendant."""
    files = {n: tmp_path / f"f-{n}" for n in ("cat", "head", "direct")}
    for f in files.values():
        f.write_text("f\n")
    shell = tmp_path / "mysh"  # a binary of our own, so no ancestor of the test runner matches
    shutil.copy("/bin/sh", shell)
    cat, head = shutil.which("cat"), shutil.which("head")
    rig.load(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: follow-and}}
spec:
  kprobes:
  - call: sys_openat
    args: [{{index: 1, type: string}}]
    selectors:
    - matchArgs:
      - {{index: 1, operator: Prefix, values: ["{tmp_path}/f-"]}}
      matchBinaries:
      - {{operator: In, values: ["{shell}"], followChildren: true}}
      - {{operator: NotIn, values: ["{cat}", "{Path(cat).resolve()}"]}}
""", "kprobes")
    subprocess.run([head, str(files["direct"])], check=True, capture_output=True)  # not under mysh
    subprocess.run([str(shell), "-c", f"{cat} {files['cat']}; {head} {files['head']}"], check=True,
                   capture_output=True)
    evs = rig.events(lambda b: any(a.startswith(f"{tmp_path}/f-") for a in string_args(b)), wait=2.0)
    assert {a for e in evs for a in string_args(e)} == {str(files["head"])}, evs

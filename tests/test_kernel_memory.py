"""A loaded policy's kernel memory is the kernel's own figure, and its projection to a 96-CPU node adds only
what per-CPU maps would grow by.

The reference is bpftool (`bytes_memlock` of each program and map, read by id through the kernel), not our
own fdinfo reader; the per-CPU growth is computed here from bpftool's map types and sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from hook_helpers import getpgid_policy, rig_fixture

from sensorium.bpf.memory import PROJECTED_CPUS, PROJECTED_KEY, fdinfo, possible_cpus
from sensorium_sensors.kprobe.sensor import KprobeSensor

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root"),
              pytest.mark.needs("raw_tp", "ringbuf", "btf")]

BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"
rig = rig_fixture(KprobeSensor)


def bpftool(*args: str) -> dict:
    return json.loads(subprocess.run([BPFTOOL, "--json", *args], check=True, capture_output=True, text=True).stdout)


def test_a_policy_reports_the_kernels_memory_figures_and_the_96_cpu_projection(rig):
    if not os.path.exists(BPFTOOL):
        pytest.skip("bpftool is not installed")
    h = rig.load(getpgid_policy("    - matchArgs:\n      - {index: 0, operator: Equal, values: ['4242']}\n"),
                 "kprobes")
    st = h.status()
    map_ids: set[int] = set()
    expected = extra = 0
    for _plan, obj in h.objects:
        for prog in obj.programs.values():
            if prog.fd < 0:
                continue
            pid = int(fdinfo(prog.fd)["prog_id"])
            expected += bpftool("prog", "show", "id", str(pid))["bytes_memlock"]
        for m in obj.maps.values():
            if m.name == "sens_events" or m.fd < 0:
                continue  # the sensor's ring: every policy's, not this one's
            mid = int(fdinfo(m.fd)["map_id"])
            if mid in map_ids:
                continue
            map_ids.add(mid)
            info = bpftool("map", "show", "id", str(mid))
            expected += info["bytes_memlock"]
            if info["type"].startswith("percpu") or info["type"] == "lru_percpu_hash":
                extra += ((info["bytes_value"] + 7) // 8 * 8) * info["max_entries"] * (PROJECTED_CPUS - possible_cpus())
    assert expected > 0 and map_ids
    assert st["kernel_memory_bytes"] == expected
    assert extra > 0  # the engine's hooks have per-CPU scratch and counters
    assert st[PROJECTED_KEY] == expected + extra


def test_the_agent_exports_each_loaded_policys_kernel_memory(agent, tmp_path):
    """Through the real agent: the metric equals what `policy list` says (the kernel's figure and the
    96-CPU projection), refreshed by the agent's housekeeping (every 5 s)."""
    import re
    import socket
    import time
    import urllib.request

    from enforcement_helpers import policy_list

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    d = tmp_path / "policies"
    d.mkdir()
    (d / "mem.yaml").write_text(getpgid_policy("    - matchArgs:\n      - {index: 0, operator: Equal, values: ['4242']}\n",
                                               name="mem-e2e"))
    api = tmp_path / "api.sock"
    agent({"plugins": {"allow": ["exec", "kprobe", "stdout"]}, "api": {"socket": str(api)},
           "policies": {"directory": str(d)}, "metrics": {"enabled": True, "port": port}})
    [row] = policy_list(api)
    assert row["state"] == "enabled" and row["kernel_memory_bytes"] > 0
    series = re.compile(r'^sensorium_policy_kernel_memory_bytes\{node_cpus="(\w+)",policy="mem-e2e"\} ([0-9.e+]+)$', re.M)
    got: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(got) < 2:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        got = {m.group(1): float(m.group(2)) for m in series.finditer(body)}
        time.sleep(0.5)
    assert got == {"here": row["kernel_memory_bytes"], str(PROJECTED_CPUS): row[PROJECTED_KEY]}, got


def test_hooks_of_a_section_share_one_binary_cache_and_it_follows_exec(rig, tmp_path):
    """Two openat hooks of one policy matching the binary cat share one binary cache (one 2.7 MiB map, not
    one per hook). The same process opens both files as the shell, then execs cat, which opens them again:
    only cat's opens match, in both hooks (each object's exec program drops the shell's cached entry)."""
    import subprocess

    cat = os.path.realpath("/usr/bin/cat")
    f1, f2 = tmp_path / "one", tmp_path / "two"
    f1.write_text("1\n")
    f2.write_text("2\n")

    def item(path) -> str:
        return (f"  - call: sys_openat\n    args:\n    - {{index: 1, type: string}}\n    selectors:\n"
                f"    - matchBinaries: [{{operator: In, values: ['{cat}']}}]\n"
                f"      matchArgs: [{{index: 1, operator: Equal, values: ['{path}']}}]\n")

    head = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: bins}\nspec:\n  kprobes:\n"
    one = rig.load(head + item(f1), "kprobes", policy_id=8)
    mem_one = one.status()["kernel_memory_bytes"]
    one.unload()
    rig.handles.remove(one)
    two = rig.load(head + item(f1) + item(f2), "kprobes")
    bins = {int(fdinfo(obj.map("sens_bins").fd)["map_id"]) for _p, obj in two.objects}
    assert len(bins) == 1
    bins_bytes = int(fdinfo(two.objects[0][1].map("sens_bins").fd)["memlock"])
    assert bins_bytes > 1 << 20
    assert two.status()["kernel_memory_bytes"] < 2 * mem_one - bins_bytes // 2
    subprocess.run(["/bin/sh", "-c", f"read x < {f1}; read y < {f2}; exec {cat} {f1} {f2} > /dev/null"], check=True)
    evs = rig.events(lambda b: b.get("policy_name") == "bins", wait=2.0)
    rig.events(lambda b: False, wait=0.5)
    evs = rig.events(lambda b: b.get("policy_name") == "bins")
    # the shell's two opens do not match (0 events if cat's opens were taken as the shell's cached entry,
    # 4 if the binary were not checked)
    assert sorted(e["args"][0]["string_arg"] for e in evs) == [str(f1), str(f2)]

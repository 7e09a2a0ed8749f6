"""Kernel memory per loaded policy: the kernel's own figure here, and the same policy on a 96-CPU node.

Tetragon users report about 8 MB of kernel memory per policy on 96-CPU nodes, most of it per-CPU maps
sized by the CPU count; issue 15's goal for Sensorium is <= 1 MB per policy there. Each policy shape below
is loaded alone through the real sensor (the same objects the agent loads), its memory read from the kernel
(fdinfo memlock of its maps and programs, `sensorium.bpf.memory`), and unloaded. The sensor's one ring is
every policy's and not counted per policy. Run as root:

    .venv/bin/python benchmarks/policy_memory.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hook_helpers import Rig  # noqa: E402

from sensorium.bpf.memory import PROJECTED_CPUS, PROJECTED_KEY, possible_cpus  # noqa: E402
from sensorium_sensors.kprobe.sensor import KprobeSensor  # noqa: E402
from sensorium_sensors.tracepoint.sensor import TracepointSensor  # noqa: E402

GOAL = 1 << 20

HEAD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: mem}\nspec:\n"
SHAPES: list[tuple[str, type, str, str]] = [
    ("1 syscall, int match", KprobeSensor, "kprobes",
     "  kprobes:\n  - call: sys_getpgid\n    args: [{index: 0, type: int}]\n"
     "    selectors:\n    - matchArgs: [{index: 0, operator: Equal, values: ['4242']}]\n"),
    ("1 syscall, path prefix (openat)", KprobeSensor, "kprobes",
     "  kprobes:\n  - call: sys_openat\n    args: [{index: 1, type: string}]\n"
     "    selectors:\n    - matchArgs: [{index: 1, operator: Prefix, values: ['/etc/shadow', '/root/.ssh']}]\n"),
    ("5 syscalls, binaries + Sigkill", KprobeSensor, "kprobes",
     "".join(f"  - call: {c}\n    args: [{{index: 0, type: int}}]\n    selectors:\n"
             "    - matchBinaries: [{operator: In, values: ['/usr/bin/nc']}]\n      matchActions: [{action: Sigkill}]\n"
             for c in ("sys_getpgid", "sys_setuid", "sys_setgid", "sys_ptrace", "sys_unshare")).join(
                 ["  kprobes:\n", ""])),
    ("1 tracepoint (sched_process_exec)", TracepointSensor, "tracepoints",
     "  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n    args: [{index: 5, type: int}]\n"),
]


def measure() -> dict[str, Any]:
    out: dict[str, Any] = {"possible_cpus": possible_cpus(), "projected_cpus": PROJECTED_CPUS, "shapes": {}}
    for label, cls, section, body in SHAPES:
        rig = Rig(cls)
        try:
            h = rig.load(HEAD + body, section)
            st = h.status()
            hooks = len(st["hooks"])
            out["shapes"][label] = {"hooks": hooks, "bytes": st["kernel_memory_bytes"],
                                    "projected": st[PROJECTED_KEY],
                                    "objects": len(h.objects)}
        finally:
            rig.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = measure()
    print(f"possible CPUs here: {res['possible_cpus']}; projection to {res['projected_cpus']} CPUs; "
          f"goal <= {GOAL // 1024} KiB per policy there")
    print(f"{'policy shape':<36} {'hooks':>5} {'here':>10} {f'@{PROJECTED_CPUS} CPUs':>12} {'per hook':>10}  goal")
    for label, r in res["shapes"].items():
        print(f"{label:<36} {r['hooks']:>5} {r['bytes'] / 1024:>8.0f}Ki {r['projected'] / 1024:>10.0f}Ki "
              f"{r['projected'] / max(r['hooks'], 1) / 1024:>8.0f}Ki  {'met' if r['projected'] <= GOAL else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

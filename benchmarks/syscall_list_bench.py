"""A list of syscalls as one object versus one object per syscall: the cost on every other syscall.

A kprobes call on a 20-syscall list is served by raw_tp sys_enter, which every syscall of the machine runs.
Three runs side by side in one process, interleaved over several rounds (medians):
  bare      a C loop of getppid() (not in the list), nothing loaded;
  objects   the list as 20 objects (`SYSCALL_SETS_ENABLED` False, as before syscall sets): 20 programs on
            sys_enter, each comparing the number with its one syscall;
  set       the list as one object: one program looks the number up in its table (sens_sysset).
Printed: ns per getppid and the ratio to bare, by the storm's CPU time (BPF programs included: they run in
its syscalls; the steadier figure on a shared machine) and by wall clock.

Run as root:  .venv/bin/python benchmarks/syscall_list_bench.py [--calls N] [--rounds R] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

STORM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b, ca, cb;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ca);
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cb);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f %.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9,
           (cb.tv_sec - ca.tv_sec) + (cb.tv_nsec - ca.tv_nsec) / 1e9);
    return 0;
}
"""

# 20 syscalls the storm never makes
LISTED = ("dup", "dup2", "dup3", "mkdir", "rmdir", "chmod", "fchmod", "chown", "fchown", "link", "unlink",
          "symlink", "rename", "truncate", "ftruncate", "setuid", "setgid", "tkill", "ptrace", "mknod")

POLICY = "\n".join([
    "apiVersion: cilium.io/v1alpha1", "kind: TracingPolicy", "metadata:", "  name: twenty", "spec:", "  lists:",
    "  - name: twenty", "    type: syscalls", "    values:", *(f"    - sys_{n}" for n in LISTED), "  kprobes:",
    "  - call: list:twenty", "    args:", "    - index: 0", "      type: int", ""])


def storm(exe: Path, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one storm."""
    wall, cpu = subprocess.run([str(exe), str(n)], capture_output=True, text=True, check=True).stdout.split()
    return float(wall), float(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from hook_helpers import Rig

    from sensorium.hooks import syscalls
    from sensorium_sensors.kprobe.sensor import KprobeSensor

    rig = Rig(KprobeSensor)
    results: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in ("bare", "objects", "set")}
    objects: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, exe = Path(tmp) / "storm.c", Path(tmp) / "storm"
            src.write_text(STORM_C)
            subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
            storm(exe, args.calls // 10)  # warm up
            for _ in range(args.rounds):
                for run in ("bare", "objects", "set"):
                    h = None
                    if run != "bare":
                        syscalls.SYSCALL_SETS_ENABLED = run == "set"
                        h = rig.sensor.load_policy(rig.view(POLICY, "kprobes", policy_id=3))
                        objects[run] = len(h.objects)
                    try:
                        wall, cpu = storm(exe, args.calls)
                    finally:
                        if h is not None:
                            h.unload()
                    results[run]["wall"].append(wall)
                    results[run]["cpu"].append(cpu)
    finally:
        syscalls.SYSCALL_SETS_ENABLED = True
        rig.close()
    assert objects == {"objects": len(LISTED), "set": 1}, objects
    out: dict[str, dict[str, float]] = {}
    base = {k: statistics.median(v) for k, v in results["bare"].items()}
    print(f"getppid storm: {args.calls} calls x {args.rounds} rounds, a {len(LISTED)}-syscall list not called")
    print(f"{'run':<26}{'objects':>8}{'ns/call cpu':>13}{'x bare cpu':>12}{'ns/call wall':>14}{'x bare wall':>13}")
    for run in ("bare", "objects", "set"):
        med = {k: statistics.median(v) for k, v in results[run].items()}
        out[run] = {"objects": objects.get(run, 0), "ns_cpu": med["cpu"] / args.calls * 1e9,
                    "ns_wall": med["wall"] / args.calls * 1e9, "ratio_cpu": med["cpu"] / base["cpu"],
                    "ratio_wall": med["wall"] / base["wall"]}
        label = {"bare": "0 hooks", "objects": f"list as {len(LISTED)} objects", "set": "list as one object"}[run]
        o = out[run]
        print(f"{label:<26}{o['objects']:>8}{o['ns_cpu']:>13.1f}{o['ratio_cpu']:>12.3f}{o['ns_wall']:>14.1f}"
              f"{o['ratio_wall']:>13.3f}")
    print(f"set vs objects (cpu): {out['set']['ns_cpu'] / out['objects']['ns_cpu']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

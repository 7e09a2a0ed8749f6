"""openat loop with a fanotify-served file_open policy protecting one file: bare vs with the policy.

A small C program opens and closes a file N times and prints ns per open. Runs are interleaved and the
median of each case is reported with its ratio against the bare run:

  bare              no policy loaded, opening an ordinary file
  unmarked          the policy is loaded; the loop opens a file in the SAME directory that is not protected
                    (only the protected inode carries a mark: this must stay near 1.0)
  marked, allowed   the loop opens the protected file from outside the policy's cgroup (each open is a
                    round trip to the agent, answered "allow")
  marked, denied    the loop opens the protected file from inside the policy's cgroup (EPERM each time)

With ``--mechanism auto`` the policy is served by whatever the kernel offers (BPF LSM in the VM lane:
``scripts/vm/run.sh bookworm`` can run this script too); the default ``fallback`` forces fanotify.

Run as root:  .venv/bin/python benchmarks/fanotify_bench.py [--opens N] [--rounds R] [--mechanism auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[2]), denied = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) denied++; else close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f %ld\n", ns / n, denied);
    return 0;
}
"""

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: bench-file-open
spec:
  lsmhooks:
  - hook: file_open
    args: [{{index: 0, type: file}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Equal, values: ["{path}"]}}]
      matchActions: [{{action: Override, argError: -1}}]
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opens", type=int, default=200_000, help="opens per run of the unmarked cases")
    ap.add_argument("--marked-opens", type=int, default=20_000, help="opens per run of the marked cases")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mechanism", choices=("fallback", "auto"), default="fallback",
                    help="fallback: fanotify even where BPF LSM works; auto: the strongest mechanism here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from sensorium.hooks.testing import make_policy_view
    from sensorium_sensors.lsm.plugin import LsmSensor
    from sensorium_sensors.lsm.testing import LsmTestContext, scoped, scratch_cgroup

    with tempfile.TemporaryDirectory() as tmp, scratch_cgroup("sensorium-fanotify-bench") as cg:
        t = Path(tmp)
        (t / "loop.c").write_text(LOOP_C)
        subprocess.run(["cc", "-O2", "-o", str(t / "loop"), str(t / "loop.c")], check=True)
        protected, plain = t / "protected", t / "plain"
        protected.write_text("p")
        plain.write_text("x")

        def run(path: Path, n: int, in_cg: bool) -> tuple[float, int]:
            pre = None
            if in_cg:
                def pre() -> None:
                    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                        f.write(str(os.getpid()))
            out = subprocess.run([str(t / "loop"), str(path), str(n)], capture_output=True, text=True,
                                 preexec_fn=pre, check=True).stdout.split()
            return float(out[0]), int(out[1])

        ctx = LsmTestContext(config={"force_fallbacks": args.mechanism == "fallback"})
        sensor = LsmSensor(ctx)
        sensor.start()
        view = make_policy_view(POLICY.format(path=protected), "lsmhooks", policy_id=1)
        mechanism = "?"
        results: dict[str, list[float]] = {"bare": [], "unmarked": [], "marked, allowed": [], "marked, denied": []}
        denied_counts: dict[str, int] = {}
        try:
            for _ in range(args.rounds):
                results["bare"].append(run(plain, args.opens, True)[0])
                h = sensor.load_policy(scoped(view, cg))
                mechanism = h.status()["hooks"][0]["mechanism"]
                try:
                    results["unmarked"].append(run(plain, args.opens, True)[0])
                    ns, d = run(protected, args.marked_opens, False)
                    results["marked, allowed"].append(ns)
                    denied_counts["marked, allowed"] = d
                    ns, d = run(protected, args.marked_opens, True)
                    results["marked, denied"].append(ns)
                    denied_counts["marked, denied"] = d
                finally:
                    h.unload()
        finally:
            sensor.stop()
        bare = statistics.median(results["bare"])
        print(f"kernel {os.uname().release}; mechanism {mechanism}; {args.rounds} interleaved rounds; "
              "median ns per open()")
        bare_min = min(results["bare"])
        # The minimum is the run least disturbed by other load on the machine; both are shown.
        print(f"{'case':18} {'median':>10} {'ratio':>7} {'min':>10} {'ratio':>7}  note")
        for k, v in results.items():
            m, lo = statistics.median(v), min(v)
            note = ""
            if k in denied_counts:
                note = f"{denied_counts[k]}/{args.marked_opens} denied (last round)"
            print(f"{k:18} {m:10.1f} {m / bare:7.2f} {lo:10.1f} {lo / bare_min:7.2f}  {note}")
        st = sensor.guard.stats
        if mechanism.startswith("fanotify"):
            print(f"agent answers: {st['allowed'] + st['denied']} (denied {st['denied']}), slowest "
                  f"{st['max_answer_us']} us, errors {st['errors']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

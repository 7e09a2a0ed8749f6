"""The hook engine's programs before and after the verifier-budget restructuring, side by side in one run.

Before (``--old-rev``, default 2a8f735: the last commit before selectors.h was split and its loops moved into
global functions) and after (this tree) are built from their own headers and loaded by the same sensor code
with the same policy, alternately, round after round. For each policy the figure is the BPF run time per
openat()+close() of a storm (the kernel's bpf_stats: every program of the hook, entry and exit), and the
processed instructions of the hook's programs when they loaded. A variant the kernel refuses is reported with
the verifier's reason (the old sys_exit program is over the 1M limit on some kernel builds: issue 10).

Run as root:  .venv/bin/python benchmarks/hook_restructure_bench.py [--calls N] [--rounds R] [--old-rev REV]
              [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from openat_bench import POLICY, build_storm, in_kernel_ns_per_run, storm  # noqa: E402

# (label, policy text, opened_file_paths): what each variant is measured on
CASES = [
    ("never-matching Prefix, opened file", dict(op="Prefix", value="/nonexistent-sensorium-bench/"), True),
    ("never-matching Prefix, string at entry", dict(op="Prefix", value="/nonexistent-sensorium-bench/"), False),
    ("matching Equal, opened file", dict(op="Equal", value="{target}"), True),
    ("matching Equal, string at entry", dict(op="Equal", value="{target}"), False),
]


def old_sources(rev: str, into: Path) -> tuple[Path, Path]:
    """The engine's headers and hook.bpf.c at ``rev`` (git show), as (include dir, hook.bpf.c)."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev, "core/bpf/include"],
                           check=True, capture_output=True, text=True).stdout.split()
    for f in files + ["sensors/tracepoint/hook.bpf.c"]:
        data = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{f}"], check=True, capture_output=True).stdout
        dest = into / f
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return into / "core/bpf/include", into / "sensors/tracepoint/hook.bpf.c"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000, help="openat calls per storm")
    ap.add_argument("--rounds", type=int, default=5, help="alternating old/new rounds per case (medians)")
    ap.add_argument("--old-rev", default="2a8f735", help="the revision measured as 'before'")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    args = ap.parse_args()

    from hook_helpers import Rig

    from sensorium.bpf.build import build_object
    from sensorium.bpf.libbpf import LibbpfError
    from sensorium.hooks import probes as engine
    from sensorium.hooks.testing import DirectContext
    from sensorium_sensors.kprobe.sensor import KprobeSensor

    tmp = Path(tempfile.mkdtemp(prefix="sensorium-restructure-bench-"))
    old_inc, old_hook = old_sources(args.old_rev, tmp / "old")
    exe = build_storm(tmp)
    target = tmp / "bench-file"
    target.write_text("x")

    class VariantContext(DirectContext):
        """Builds the engine's hook objects from the old sources while ``variant`` is "old"."""

        variant = "new"

        def build(self, probe: Any) -> Path:
            if self.variant == "old" and Path(probe.source) == engine.HOOK_PROBE.source:
                return build_object(dataclasses.replace(probe, source=old_hook), host_include=old_inc)
            return build_object(probe)

    rig = Rig.__new__(Rig)
    rig.ctx = VariantContext()
    rig.sensor = KprobeSensor(rig.ctx)
    rig.sensor.start()
    rig.handles = []
    results: list[dict[str, Any]] = []
    try:
        storm(exe, 20_000, target)  # warm the dentry and page caches
        for label, fmt, opened in CASES:
            text = POLICY.format(name="bench-restructure", op=fmt["op"], value=fmt["value"].format(target=target))
            row: dict[str, Any] = {"case": label, "old": {}, "new": {}}
            rig.sensor.opened_file_paths = opened
            for variant in ("old", "new"):  # what loads, with which mechanism and verifier count
                rig.ctx.variant = variant
                try:
                    h = rig.sensor.load_policy(rig.view(text, "kprobes", policy_id=3))
                except Exception as e:  # noqa: BLE001 - a refused variant is a result, with its reason
                    v = getattr(getattr(e, "__cause__", None), "verifier", None)
                    reason = v.error if v is not None else str(e).splitlines()[-1]
                    insns = v.insns if v is not None else None
                    row[variant] = {"loads": False, "reason": reason[:200], "insns": insns}
                    continue
                insns = {}
                for _plan, obj in h.objects:
                    for name, prog in obj.programs.items():
                        if prog.autoload and name not in ("sens_fork", "sens_exec", "sens_exit"):
                            insns[name] = prog.verified_insns
                row[variant] = {"loads": True, "mechanism": h.objects[0][0].mechanism, "insns": insns, "ns": []}
                h.unload()
            for _ in range(args.rounds):
                for variant in ("old", "new"):
                    if not row[variant].get("loads"):
                        continue
                    rig.ctx.variant = variant
                    row[variant]["ns"].append(in_kernel_ns_per_run(rig, exe, args.calls, target, text))
            for variant in ("old", "new"):
                if row[variant].get("ns"):
                    row[variant]["ns_median"] = round(statistics.median(row[variant]["ns"]), 1)
            if row["old"].get("ns_median") and row["new"].get("ns_median"):
                row["new_over_old"] = round(row["new"]["ns_median"] / row["old"]["ns_median"], 3)
            results.append(row)
            print(_line(row), flush=True)
    except LibbpfError as e:
        print(f"hook_restructure_bench: {e}", file=sys.stderr)
        return 1
    finally:
        rig.close()
    if args.json:
        args.json.write_text(json.dumps({"kernel": subprocess.run(["uname", "-r"], capture_output=True,
                                                                  text=True).stdout.strip(),
                                         "calls": args.calls, "rounds": args.rounds, "old_rev": args.old_rev,
                                         "results": results}, indent=1))
    return 0


def _line(row: dict[str, Any]) -> str:
    def cell(v: dict[str, Any]) -> str:
        if not v.get("loads"):
            return f"does not load ({v.get('reason')}; {v.get('insns') or '?'} insns)"
        insns = ", ".join(f"{k} {n:,}" for k, n in sorted(v["insns"].items()) if n)
        return f"{v['ns_median']} ns/call [{v['mechanism']}; {insns}]"
    ratio = f"  new/old {row['new_over_old']}" if "new_over_old" in row else ""
    return f"{row['case']}:\n  old: {cell(row['old'])}\n  new: {cell(row['new'])}{ratio}"


if __name__ == "__main__":
    sys.exit(main())

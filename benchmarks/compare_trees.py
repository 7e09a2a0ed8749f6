"""Two checkouts of Sensorium side by side in one run: does a change cost anything?

Runs the same benchmarks from an OLD and a NEW checkout (each with its own .venv, as `make setup` makes
it), alternating old/new in every round so both see the same machine load, and prints the median of each
figure per tree and the new/old ratio. For a refactor the expected ratio is 1 within the rounds' spread
(printed: min..max per tree), which this noisy 2-core VM makes wide.

Figures: from `exec_storm.py` (agent slowdown on a fork+exec storm, agent CPU per exec event, RSS) and from
`openat_bench.py` (never-matching syscall rule cost, per-round ratio to bare by CPU time; matching events
exported by the sensor alone and through `sensorium run` with the file exporter, events/s and CPU).

    .venv/bin/python benchmarks/compare_trees.py --old /path/to/old --new . [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FIGURES = {
    # name: (benchmark, path in its JSON, better when)
    "exec: agent slowdown ratio": ("exec", ("agent_slowdown_ratio",), "lower"),
    "exec: agent CPU ms per exec event": ("exec", ("agent_cpu_ms_per_exec_event",), "lower"),
    "exec: agent RSS MB after the storms": ("exec", ("agent_peak_rss_mb",), "lower"),
    "openat: never-matching rule, CPU ratio to bare": ("openat", ("nomatch_cpu_ratio",), "lower"),
    "openat: matching, sensor export events/s": ("openat", ("export_events_per_s",), "higher"),
    "openat: matching, consumer CPU us/event": ("openat", ("consumer_cpu_us_per_event",), "lower"),
    "openat: through sensorium run, events/s": ("openat", ("agent_native", "events_per_s_median"), "higher"),
    "openat: through sensorium run, agent CPU us/event": ("openat", ("agent_native", "cpu_us_per_event_median"),
                                                            "lower"),
    # the agent's own code; the system part is mostly writev into the page cache (varies 3x run to run)
    "openat: through sensorium run, agent user CPU us/event": ("openat", ("agent_native",
                                                                          "user_cpu_us_per_event_median"), "lower"),
    "openat: through sensorium run, agent system CPU us/event": ("openat", ("agent_native",
                                                                            "system_cpu_us_per_event_median"), "lower"),
}


def _run(tree: Path, bench: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    py = str(tree / ".venv" / "bin" / "python")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if bench == "exec":
        cmd = [py, str(tree / "benchmarks" / "exec_storm.py"), "--execs", str(args.execs), "--rounds", "1",
               "--rss-storms", "1", "--rss-pause", "1"]
        r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise SystemExit(f"{tree}: exec_storm failed:\n{r.stderr[-2000:]}")
        return json.loads(r.stdout[r.stdout.index("{"):])
    cmd = [py, str(tree / "benchmarks" / "openat_bench.py"), "--calls", str(args.calls), "--rounds", "1",
           "--match-calls", str(args.match_calls), "--match-rounds", "1", "--native", "on", "--agent",
           "--json", str(out)]
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"{tree}: openat_bench failed:\n{r.stdout[-1500:]}\n{r.stderr[-2000:]}")
    return json.loads(out.read_text())


def _get(res: dict[str, Any], path: tuple[str, ...]) -> float | None:
    cur: Any = res
    for k in path:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return float(cur) if isinstance(cur, (int, float)) else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="the checkout before the change")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1], help="the checkout after")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--execs", type=int, default=2000, help="fork+exec per exec storm")
    ap.add_argument("--calls", type=int, default=200_000, help="openat calls per bare/never-matching storm")
    ap.add_argument("--match-calls", type=int, default=200_000, help="openat calls of the matching runs")
    ap.add_argument("--only", choices=("exec", "openat"), help="run one of the two benchmarks")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    got: dict[str, dict[str, list[float]]] = {t: {f: [] for f in FIGURES} for t in trees}
    with tempfile.TemporaryDirectory(prefix="sensorium-compare-") as tmp:
        for rnd in range(args.rounds):
            order = ("old", "new") if rnd % 2 == 0 else ("new", "old")
            for bench in ((args.only,) if args.only else ("exec", "openat")):
                for t in order:
                    res = _run(trees[t], bench, args, Path(tmp) / f"{t}-{bench}-{rnd}.json")
                    for fig, (b, path, _) in FIGURES.items():
                        if b == bench and (v := _get(res, path)) is not None:
                            got[t][fig].append(v)
            print(f"round {rnd + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
    rows = []
    print(f"old: {trees['old']}\nnew: {trees['new']}\n{args.rounds} interleaved rounds; medians, [min..max]")
    print(f"{'figure':52s} {'old':>22s} {'new':>22s}  new/old")
    for fig, (_, _, better) in FIGURES.items():
        o, n = got["old"][fig], got["new"][fig]
        if not o or not n:
            print(f"{fig:52s} (not reported by one of the trees)")
            continue
        mo, mn = statistics.median(o), statistics.median(n)
        ratio = mn / mo if mo else float("nan")
        rows.append({"figure": fig, "better": better, "old": o, "new": n, "ratio": ratio})
        print(f"{fig:52s} {mo:10.3f} [{min(o):.3g}..{max(o):.3g}] "
              f"{mn:10.3f} [{min(n):.3g}..{max(n):.3g}]  {ratio:5.3f}")
    if args.json:
        args.json.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Exec storm: fork+exec+wait of /bin/true, bare vs with the agent vs with bpftrace, interleaved in one run.

Prints, side by side: slowdown ratio of each against the bare runs (medians), the share of execs that
arrived as process_exec events, the agent's CPU time per exec event, and the agent's RSS before and after
repeated storms (flat is the target). Run as root:  .venv/bin/python benchmarks/exec_storm.py [--execs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENSORIUM = str(Path(sys.executable).parent / "sensorium")

STORM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>
#include <time.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    char *args[] = {"/bin/true", "sensorium-bench", NULL};
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) { execv("/bin/true", args); _exit(127); }
        int st; waitpid(p, &st, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""


def build_storm(tmp: Path) -> Path:
    src, exe = tmp / "storm.c", tmp / "storm"
    src.write_text(STORM_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def storm(exe: Path, n: int) -> float:
    return float(subprocess.run([str(exe), str(n)], capture_output=True, text=True, check=True).stdout)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Agent:
    def __init__(self, tmp: Path) -> None:
        self.out = tmp / "events.json"
        cfg = tmp / "agent.yaml"
        cfg.write_text(
            f"exporters:\n  - type: file\n    path: {self.out}\n    max_size_mb: 4096\n"
            f"api:\n  enabled: false\n"
        )
        self.proc = subprocess.Popen([SENSORIUM, "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "ready" in line:
                break
            if time.time() > deadline:
                raise RuntimeError("agent not ready")
        else:
            raise RuntimeError(f"agent exited: {self.proc.wait()}")
        # Keep draining stderr so the agent never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.offset = 0

    def count_bench_execs(self) -> int:
        n = 0
        if not self.out.exists():
            return 0
        with self.out.open("rb") as f:
            for line in f:
                if b'"process_exec"' in line and b"sensorium-bench" in line:
                    n += 1
        return n

    def wait_events(self, expected: int, timeout: float = 30.0) -> int:
        deadline = time.time() + timeout
        got = 0
        while time.time() < deadline:
            got = self.count_bench_execs()
            if got >= expected:
                return got
            time.sleep(0.5)
        return got

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class Bpftrace:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["bpftrace", "-e", 'tracepoint:sched:sched_process_exec { printf("%d %s\\n", pid, comm); }'],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(4)  # bpftrace prints "Attaching" before it is attached; give it time

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rss-storms", type=int, default=5, help="storms in one agent life for the RSS figures")
    ap.add_argument("--rss-pause", type=float, default=11.0, help="seconds between those storms")
    args = ap.parse_args()
    have_bpftrace = shutil.which("bpftrace") is not None
    times: dict[str, list[float]] = {"bare": [], "agent": [], "bpftrace": []}
    delivered: list[float] = []
    cpu_per_event_ms: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        exe = build_storm(tmp)
        storm(exe, 200)  # warm caches
        for r in range(args.rounds):
            times["bare"].append(storm(exe, args.execs))

            (tmp / f"a{r}").mkdir()
            agent = Agent(tmp / f"a{r}")
            before = agent.count_bench_execs()
            cpu0 = proc_cpu_s(agent.proc.pid)
            times["agent"].append(storm(exe, args.execs))
            got = agent.wait_events(before + args.execs) - before
            cpu1 = proc_cpu_s(agent.proc.pid)
            delivered.append(got / args.execs)
            cpu_per_event_ms.append((cpu1 - cpu0) * 1000 / max(got, 1))
            agent.stop()

            if have_bpftrace:
                bt = Bpftrace()
                times["bpftrace"].append(storm(exe, args.execs))
                bt.stop()

        # RSS across repeated storms in one agent life.
        (tmp / "rss").mkdir()
        agent = Agent(tmp / "rss")
        rss_start = proc_rss_mb(agent.proc.pid)
        rss = []
        for _ in range(args.rss_storms):
            storm(exe, args.execs)
            # Past the cache's grace period (process_cache.exited_grace_s, 10 s by default) exited
            # entries are freed as the next storm's exits sweep them: steady state, not the grace window.
            time.sleep(args.rss_pause)
            rss.append(proc_rss_mb(agent.proc.pid))
        peak = proc_rss_mb(agent.proc.pid, "VmHWM")
        agent.stop()

    bare = statistics.median(times["bare"])
    result = {
        "execs_per_storm": args.execs,
        "rounds": args.rounds,
        "bare_s_median": round(bare, 3),
        "agent_slowdown_ratio": round(statistics.median(times["agent"]) / bare, 3),
        "bpftrace_slowdown_ratio": round(statistics.median(times["bpftrace"]) / bare, 3) if times["bpftrace"] else None,
        "agent_events_delivered_share": round(min(delivered), 4),
        "agent_cpu_ms_per_exec_event": round(statistics.median(cpu_per_event_ms), 4),
        "agent_rss_mb_at_start": round(rss_start, 1),
        "agent_rss_mb_after_each_storm": [round(x, 1) for x in rss],
        "agent_peak_rss_mb": round(peak, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

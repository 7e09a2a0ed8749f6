"""The agent pod's memory under a busy workload, on the real single-node cluster (scripts/k8s/cluster.sh).

Installs the chart (ci/cluster-values.yaml), starts a Deployment that execs, opens files and connects at a
steady rate (CPU-limited, so it is busy without taking the machine), and samples the agent container's
memory every minute: its memory cgroup (rss + cache, as the kubelet counts it for limits) and the agent
process's VmRSS. Prints one JSON line per sample and a summary. Leaves the cluster as it found it (brought
up and down here when it was not running).

    .venv/bin/python benchmarks/k8s_agent_memory.py [--minutes 10] [--execs-per-s 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "k8s"))

from k8s_cluster import CHART, SOCK, VALUES, cluster_down, cluster_up, deployment, run, wait_for  # noqa: E402

NS = "sensorium-bench"
WORK_NS = "bench-busy"


def agent_pod(c: Any) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for p in c.pods(NS, "app.kubernetes.io/name=sensorium"):
            if any(x["type"] == "Ready" and x["status"] == "True" for x in p["status"].get("conditions") or []):
                return p
        return None
    return wait_for(ready, 300, "the agent pod Ready", every=1.0)


def memory(pod: dict[str, Any]) -> dict[str, Any]:
    """The agent container's memory cgroup (v1 memory or cgroup2) and the agent process's RSS."""
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    uid = pod["metadata"]["uid"]
    out: dict[str, Any] = {}
    for base in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        for qos in ("burstable", "besteffort", ""):
            d = Path(base, "sensorium-cluster", "kubepods", qos, f"pod{uid}", cid)
            if (d / "memory.stat").exists():
                stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines())
                out["cgroup_rss_mib"] = round(int(stat.get("total_rss", stat.get("anon", 0))) / 2**20, 1)
                out["cgroup_cache_mib"] = round(int(stat.get("total_cache", stat.get("file", 0))) / 2**20, 1)
                procs = (d / "cgroup.procs").read_text().split()
                rss = 0
                for pid in procs:
                    try:
                        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                            if line.startswith("VmRSS:"):
                                rss += int(line.split()[1])
                    except OSError:
                        pass
                out["processes_rss_mib"] = round(rss / 1024, 1)
                return out
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--execs-per-s", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("k8s_agent_memory: root needed (a Kubernetes node)", file=sys.stderr)
        return 1
    c = cluster_up()
    try:
        run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "k8s" / "agent_image.py"), "import",
             str(SOCK)], timeout=900)
        c.helm("uninstall", "sensorium", "-n", NS, "--wait", check=False)
        c.helm("install", "sensorium", str(CHART), "-n", NS, "--create-namespace", "-f", str(VALUES))
        pod = agent_pod(c)
        c.kubectl("create", "namespace", WORK_NS, check=False)
        batch = max(1, args.execs_per_s // 5)
        loop = ("i=0; while true; do j=0; while [ $j -lt %d ]; do /bin/cat /etc/hostname >/dev/null; "
                "j=$((j+1)); done; /bin/nc -w 1 10.213.0.1 26443 </dev/null >/dev/null 2>&1; "
                "/bin/sleep 0.2; done" % batch)
        dep = deployment(WORK_NS, "busy", ["/bin/sh", "-c", loop])
        dep["spec"]["replicas"] = 2
        dep["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "200m", "memory": "64Mi"}}
        c.apply(dep)
        c.kubectl("rollout", "status", "-n", WORK_NS, "deployment/busy", "--timeout=180s", timeout=200)
        samples = []
        t0 = time.monotonic()
        while True:
            m = {"minute": round((time.monotonic() - t0) / 60, 1), **memory(pod)}
            samples.append(m)
            print(json.dumps(m), flush=True)
            if time.monotonic() - t0 >= args.minutes * 60:
                break
            time.sleep(min(60.0, args.minutes * 60 - (time.monotonic() - t0)))
        # The event count from the agent itself (`kubectl logs` keeps only the kubelet's current log file).
        st = c.kubectl("exec", "-n", NS, pod["metadata"]["name"], "--", "sensorium", "status", timeout=60).stdout
        delivered = next((int(ln.split("delivered")[1].split(",")[0]) for ln in st.splitlines()
                          if "exporter stdout" in ln and "delivered" in ln), 0)
        print(json.dumps({"summary": {"minutes": args.minutes, "events_delivered_to_stdout": delivered,
                                      "first": samples[0], "last": samples[-1],
                                      "max_cgroup_rss_mib": max(s.get("cgroup_rss_mib", 0) for s in samples)}}))
    finally:
        c.kubectl("delete", "namespace", WORK_NS, "--wait=false", check=False)
        c.helm("uninstall", "sensorium", "-n", NS, "--wait", check=False)
        c.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        if c.started_here:
            cluster_down()
    return 0


if __name__ == "__main__":
    sys.exit(main())

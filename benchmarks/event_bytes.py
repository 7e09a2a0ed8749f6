"""Bytes per exported event, by kind, with the default process fields and with every optional group on.

Every exporter's sink pays per byte (storage, Kafka, a SIEM priced by volume). Two agents side by side in
one run, each writing Tetragon-format JSON lines to a file: the default (a process carries what Tetragon's
default carries) and `events.process_credentials` + `events.process_namespaces` on (Tetragon's
--enable-process-cred and --enable-process-ns). Each runs the same workload: N execs of /bin/true (exec and
exit events) and N opens of a watched file by a tracepoint policy (process_tracepoint events). Prints the
median line size per kind and config, as root:

    .venv/bin/python benchmarks/event_bytes.py [--n 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sensorium_testlib import start_agent  # noqa: E402

CONFIGS = {
    "default": {},
    "credentials + namespaces": {"process_credentials": True, "process_namespaces": True},
}
POLICY = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: bench-bytes}}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
    args: [{{index: 6, type: string}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Equal, values: ["{path}"]}}]
"""


def measure(tmp: Path, events: dict[str, Any], n: int) -> dict[str, int]:
    """Median bytes of the lines of each kind this workload made, for one agent config."""
    target = tmp / "watched.txt"
    target.write_text("x\n")
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "bench.yaml").write_text(POLICY.format(path=target))
    started: list[Any] = []
    h = start_agent(tmp / "agent", {"api": {"enabled": False}, "events": {"format": "tetragon", **events},
                                    "policies": {"directory": str(pol)},
                                    "sensors": {"tracepoint": {"enabled": True}}}, started=started)
    mark = uuid.uuid4().hex
    try:
        for _ in range(n):
            subprocess.run(["/bin/true", mark], check=True)
            subprocess.run(["/bin/cat", str(target)], check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            raw = h.stdout_path.read_bytes().splitlines()
            sizes: dict[str, list[int]] = {}
            for line in raw:
                if mark.encode() in line or str(target).encode() in line:
                    kind = next(iter(json.loads(line)))
                    sizes.setdefault(kind, []).append(len(line) + 1)
            if all(len(sizes.get(k, [])) >= n for k in ("process_exec", "process_tracepoint")) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for a in started:
            a.stop()
    return {k: int(statistics.median(v)) for k, v in sorted(sizes.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res: dict[str, dict[str, int]] = {}
    for name, events in CONFIGS.items():
        with tempfile.TemporaryDirectory(prefix="sensorium-bytes-") as tmp:
            res[name] = measure(Path(tmp), events, args.n)
    kinds = sorted({k for r in res.values() for k in r})
    print(f"median bytes per exported line (Tetragon format), {args.n} of each")
    print(f"{'kind':22s}" + "".join(f"{c:>28s}" for c in res))
    for k in kinds:
        print(f"{k:22s}" + "".join(f"{res[c].get(k, 0):>28,d}" for c in res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

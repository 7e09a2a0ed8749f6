"""Export throughput and cost: events/s delivered to Kafka (Tansu), to OTLP receivers (gRPC and HTTP) and to
the file exporter, side by side.

A producer thread offers a steady synthetic load (``--rates`` events/s, submitted every 10 ms like the
pipeline's ring-buffer drain) to the real `ExporterRunner` of each exporter; then a "max" round
offers everything at once. For each exporter it reports delivered events/s, drops, and the process
CPU (user+sys, librdkafka's threads included) per 1,000 exported events. Kafka deliveries are counted
from the broker's acknowledgements (delivery reports), OTLP ones from the receiver's replies; both peers run
in their own processes (`sensorium_exporters.otlp_receiver` for OTLP), so their CPU is not counted here.

    .venv/bin/python benchmarks/export_bench.py [--duration 5] [--rates 10000,50000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sensorium.events import Event
from sensorium.exporting import ExporterContextImpl, ExporterRunner
from sensorium.testing import make_event, runner_for
from sensorium_exporters.file import FileExporter, FileOptions
from sensorium_exporters.kafka import KafkaExporter, KafkaOptions
from sensorium_exporters.otlp import OtlpExporter, OtlpOptions

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "scripts" / "peers" / "kafka.sh"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def synthetic(n: int, salt: int) -> list[Event]:
    """Fresh events (their JSON is not cached yet, as in the agent), shaped like real exec events from 20 pods
    (one container each)."""
    return [
        make_event(
            "process_exec", pid=100_000 + i, binary="/usr/bin/curl",
            arguments=f"-s -o /dev/null https://svc-{i % 50}.prod.svc.cluster.local/api/v1/items/{i}",
            namespace="prod", pod=f"web-{i % 20}", labels={"app": "web", "tier": "frontend"},
            container_id=f"{salt:08x}{i % 20:024x}", parent_binary="/bin/sh", node_name="bench-node",
        )
        for i in range(n)
    ]


def make_runner(kind: str, work: Path, bootstrap: str | None, otlp: dict[str, str] | None = None) -> ExporterRunner:
    queue = 1_000_000
    if kind.startswith("otlp-"):
        protocol = "grpc" if kind == "otlp-grpc" else "http/protobuf"
        ctx = ExporterContextImpl(kind, "bench-node")
        ex = OtlpExporter(OtlpOptions(endpoint=(otlp or {})[protocol], protocol=protocol, insecure=True), ctx)
        return runner_for(ex, name=kind, ctx=ctx, queue_size=queue, batch_size=4096, flush_interval_ms=200)
    if kind == "file":
        path = work / "events.log"
        ex: Any = FileExporter(FileOptions(path=path, max_size_mb=256, max_backups=2),
                               ExporterContextImpl("file", "bench-node"))
    else:
        ctx = ExporterContextImpl("kafka", "bench-node")
        ctx.log.setLevel(logging.CRITICAL)
        ex = KafkaExporter(KafkaOptions(brokers=[bootstrap], topic="bench", key="pod", compression="lz4",
                                        linger_ms=5, delivery_timeout_ms=30_000), ctx)
        return runner_for(ex, name=kind, ctx=ctx, queue_size=queue, batch_size=4096, flush_interval_ms=200)
    return runner_for(ex, name=kind, queue_size=queue, batch_size=4096, flush_interval_ms=200)


def run_round(kind: str, rate: int | None, duration: float, work: Path, bootstrap: str | None, salt: int,
              otlp: dict[str, str] | None = None) -> dict[str, Any]:
    total = int((rate or 200_000) * duration)
    events = synthetic(total, salt)
    r = make_runner(kind, work, bootstrap, otlp)
    r.start()
    time.sleep(0.3)  # let the sink open (Kafka metadata) before the clock starts
    c0, t0 = cpu_s(), time.monotonic()
    if rate is None:
        r.submit(events)
    else:
        step = 0.01
        per = max(1, int(rate * step))
        next_t = t0
        for i in range(0, total, per):
            r.submit(events[i:i + per])
            next_t += step
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    offered_s = time.monotonic() - t0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = r.stats()
        if st["exported"] + st["dropped"] >= total:
            break
        time.sleep(0.005)
    t1, c1 = time.monotonic(), cpu_s()
    r.stop(30)
    st = r.stats()
    wall = t1 - t0
    return {
        "exporter": kind,
        "offered_per_s": rate if rate is not None else "max",
        "events": total,
        "delivered": st["exported"],
        "dropped": st["dropped"],
        "delivered_per_s": round(st["exported"] / wall) if wall else 0,
        "offer_s": round(offered_s, 2),
        "drain_s": round(wall, 2),
        "cpu_ms_per_1000": round((c1 - c0) * 1000 / max(1, st["exported"]) * 1000, 2),
        "failed_writes": st["failed"],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_otlp_receiver(protocol: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sensorium_exporters.otlp_receiver", "--protocol", protocol],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"the OTLP {protocol} receiver did not start: {line!r}")
    return proc, line.split()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of steady load per round")
    ap.add_argument("--rates", default="10000,50000", help="offered events/s, comma-separated")
    ap.add_argument("--no-max", action="store_true", help="skip the as-fast-as-possible round")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--exporters", default="kafka,otlp-grpc,otlp-http,file", help="which, comma-separated")
    args = ap.parse_args()
    rates: list[int | None] = [int(x) for x in args.rates.split(",") if x]
    if not args.no_max:
        rates.append(None)

    work = Path(tempfile.mkdtemp(prefix="sensorium-bench-"))
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    subprocess.run([str(KAFKA_SH), "start", str(work / "tansu"), str(port)], check=True, stdout=subprocess.DEVNULL)
    results = []
    receivers: list[subprocess.Popen] = []
    try:
        otlp = {}
        for protocol in ("grpc", "http/protobuf"):
            proc, endpoint = start_otlp_receiver(protocol)
            receivers.append(proc)
            otlp[protocol] = endpoint
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": bootstrap, "logger": logging.getLogger("bench.admin")})
        for f in admin.create_topics([NewTopic("bench", 1, 1)]).values():
            f.result(10)
        salt = 0
        for rate in rates:
            for kind in args.exporters.split(","):
                salt += 1
                res = run_round(kind, rate, args.duration, work, bootstrap, salt, otlp)
                results.append(res)
                print(json.dumps(res), file=sys.stderr)
                (work / "events.log").unlink(missing_ok=True)
    finally:
        for proc in receivers:
            proc.terminate()
            proc.wait(10)
        subprocess.run([str(KAFKA_SH), "stop", str(work / "tansu")], check=False)
        shutil.rmtree(work, ignore_errors=True)

    cols = ["exporter", "offered_per_s", "delivered_per_s", "delivered", "dropped", "drain_s", "cpu_ms_per_1000"]
    widths = [max(len(c), *(len(str(r[c])) for r in results)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in results:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    print(f"\n{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; Kafka = Tansu (memory storage) on loopback, "
          "lz4, acks=all, idempotent; otlp-grpc / otlp-http = OTLP log records to a receiver process on loopback "
          "(no compression); file = JSON lines on local disk. CPU is the whole process (user+sys).")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

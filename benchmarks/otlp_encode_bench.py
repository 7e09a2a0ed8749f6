"""OTLP encoding cost: the otlp exporter's own wire encoder beside the official `opentelemetry-proto` message
classes and the OpenTelemetry SDK's OTLP log encoder, on the same events (encode + serialize, no I/O).

Why the exporter writes the protobuf itself (docs/otlp.md, "Throughput"). The SDK part needs
`opentelemetry-sdk` and `opentelemetry-exporter-otlp-proto-common` (not dependencies of the agent; skipped
when absent):

    .venv/bin/python benchmarks/otlp_encode_bench.py [--events 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_bench import synthetic  # the export benchmark's events

from sensorium import __version__
from sensorium_exporters.otlp_encode import (
    Encoder,
    record_attributes,
    reference_request,
    resource_attributes,
    resource_key,
    severity_of,
)


def sdk_encoder() -> Callable[[Any], bytes] | None:
    try:
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
        from opentelemetry.sdk._logs import ReadableLogRecord
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    except ImportError:
        return None
    scope = InstrumentationScope("sensorium", __version__)
    resources: dict[tuple, Any] = {}

    def encode(events: Any) -> bytes:
        now = time.time_ns()
        records = []
        for ev in events:
            key = resource_key(ev)
            res = resources.get(key)
            if res is None:
                res = resources[key] = Resource(resource_attributes(key, {}))
            sev = severity_of(ev)
            attrs = {k: v for k, v in record_attributes(ev).items() if v is not None and v != ""}
            records.append(ReadableLogRecord(LogRecord(
                timestamp=ev.time_ns, observed_timestamp=now, severity_number=SeverityNumber(sev),
                severity_text="WARN" if sev == 13 else "INFO", body=ev.json().decode(), attributes=attrs,
                event_name=ev.kind), res, scope))
        return encode_logs(records).SerializeToString()
    return encode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--request", type=int, default=1_000, help="records per request (the exporter's default)")
    args = ap.parse_args()
    encoders: list[tuple[str, Callable[[Any], bytes] | None]] = [
        ("otlp exporter (wire encoder)", lambda evs: Encoder({}).request(evs)),
        ("opentelemetry-proto messages", lambda evs: reference_request(evs, {}, time.time_ns()).SerializeToString()),
        ("OpenTelemetry SDK encode_logs", sdk_encoder()),
    ]
    for label, encode in encoders:
        if encode is None:
            print(f"{label}: skipped (not installed)")
            continue
        best = 0.0
        for rep in range(3):
            events = synthetic(args.events, rep)
            for ev in events:
                ev.json()  # the JSON every exporter shares is not part of this cost
            t0 = time.perf_counter()
            for i in range(0, len(events), args.request):
                encode(events[i:i + args.request])
            best = max(best, len(events) / (time.perf_counter() - t0))
        print(f"{label}: {best:,.0f} events/s (best of 3)")
    print(f"\n{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; one thread, encode + serialize, no I/O.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

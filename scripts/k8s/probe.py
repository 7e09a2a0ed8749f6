#!/usr/bin/env python3
"""Liveness/readiness probe of the agent container (installed as /usr/local/bin/sensorium-probe).

live:  the agent answers ``status`` on its local API socket within the timeout.
ready: it answers, at least one sensor runs, and (when Kubernetes enrichment runs) its pod
       watcher has listed this node's pods, so events leave with their pod.
Exit 0 ok, 1 not ok (the reason on stderr, which the kubelet records in the pod's events).
"""

from __future__ import annotations

import json
import os
import socket
import sys

SOCKET = os.environ.get("SENSORIUM_API_SOCKET", "/var/run/sensorium/api.sock")


def status(timeout: float = 4.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(SOCKET)
        s.sendall(b'{"id": 1, "method": "status", "params": {}}\n')
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            buf += chunk
    resp = json.loads(buf.split(b"\n", 1)[0])
    if not resp.get("ok"):
        raise RuntimeError(f"status failed: {resp.get('error')}")
    return resp.get("result") or {}


def not_ready_reason(st: dict) -> str | None:
    # A sensor that cannot run on this node's kernel (e.g. no BPF LSM) must not hold a rollout
    # forever: ready needs at least one running sensor, and the pod watcher synced.
    sensors = st.get("sensors") or []
    if isinstance(sensors, dict):
        sensors = [dict(v, name=k) for k, v in sensors.items() if isinstance(v, dict)]
    states = [s.get("state") for s in sensors if isinstance(s, dict)]
    if states and "running" not in states:
        return "no sensor is running: " + ", ".join(
            f"{s.get('name', '?')} {s.get('state')}" for s in sensors if isinstance(s, dict))
    k8s = st.get("kubernetes") or {}
    watcher = k8s.get("watcher") if isinstance(k8s, dict) else None
    if isinstance(watcher, dict) and not watcher.get("synced", True):
        return f"pod watcher not synced ({watcher.get('last_error') or 'listing'})"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("live", "ready"):
        print("usage: sensorium-probe live|ready", file=sys.stderr)
        return 2
    try:
        st = status()
    except Exception as exc:  # noqa: BLE001 - any failure to answer is "not alive"
        print(f"agent API at {SOCKET} does not answer: {exc}", file=sys.stderr)
        return 1
    if argv[1] == "ready":
        why = not_ready_reason(st)
        if why:
            print(why, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

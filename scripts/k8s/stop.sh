#!/usr/bin/env bash
# Stop what start-apiserver.sh / start-containerd.sh started (by their recorded pids only) and remove the
# pod sandboxes and cgroups that the tests' kubelet left. --apiserver-only: leave containerd running;
# --containerd-only: leave etcd and the apiserver running.
set -uo pipefail
RUN="${SENSORIUM_K8S_RUN:-/run/sensorium-k8s}"
stop_pid() {
    local f="$RUN/$1.pid" pid
    [[ -s "$f" ]] || return 0
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"; for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$f"
}
if [[ "${1:-}" != "--containerd-only" ]]; then
    stop_pid apiserver
    stop_pid etcd
fi
[[ "${1:-}" == "--apiserver-only" ]] && exit 0

SOCK="$RUN/containerd.sock"
if [[ -S "$SOCK" ]] && ctr --address "$SOCK" version >/dev/null 2>&1; then
    # Pod sandboxes first (they own the shims and the pod cgroups), through CRI via the test helper.
    REPO="$(cd "$(dirname "$0")/../.." && pwd)"
    "$REPO/.venv/bin/python" "$REPO/tests/k8s/k8s_kubelet.py" --cleanup "unix://$SOCK" || true
fi
stop_pid containerd
for c in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$c" ]] || continue
    find "$c" -depth -mindepth 1 -type d -exec rmdir {} \; 2>/dev/null
    rmdir "$c" 2>/dev/null
done
exit 0

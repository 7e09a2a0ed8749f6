#!/usr/bin/env bash
# Stop what start-apiserver.sh / start-containerd.sh started (by their recorded pids only) and remove the
# pod sandboxes and cgroups that the tests' kubelet left. --apiserver-only: leave containerd running;
# --containerd-only: leave etcd and the apiserver running.
set -uo pipefail
RUN="${SENSORIUM_K8S_RUN:-/run/sensorium-k8s}"
source "$(dirname "$0")/lib.sh"
if [[ "${1:-}" != "--containerd-only" ]]; then
    k8s_stop_pid apiserver 5
    k8s_stop_pid etcd 5
fi
[[ "${1:-}" == "--apiserver-only" ]] && exit 0

SOCK="$RUN/containerd.sock"
if [[ -S "$SOCK" ]] && ctr --address "$SOCK" version >/dev/null 2>&1; then
    # Pod sandboxes first (they own the shims and the pod cgroups), through CRI via the test helper.
    REPO="$(cd "$(dirname "$0")/../.." && pwd)"
    "$REPO/.venv/bin/python" "$REPO/tests/k8s/k8s_kubelet.py" --cleanup "unix://$SOCK" || true
fi
k8s_stop_pid containerd 5
for c in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$c" ]] || continue
    find "$c" -depth -mindepth 1 -type d -exec rmdir {} \; 2>/dev/null
    rmdir "$c" 2>/dev/null
done
exit 0

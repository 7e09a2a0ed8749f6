#!/usr/bin/env bash
# Start a PRIVATE containerd (own root, state and socket; it never touches a system containerd) with the
# CRI plugin set for this host: runc (crun fails on hybrid cgroups), cgroupfs driver so pod cgroups sit at
# /kubepods/besteffort/pod<uid>/<containerID>, restrict_oom_score_adj (no CAP_SYS_RESOURCE here), and the
# hand-built sandbox/test images imported. Idempotent: a running instance is reused.
# Prints the CRI endpoint. Stop with stop.sh.
set -euo pipefail
CACHE="${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}"
RUN="${SENSORIUM_K8S_RUN:-/run/sensorium-k8s}"
LIB="${SENSORIUM_K8S_LIB:-/var/lib/sensorium-k8s}"
SOCK="$RUN/containerd.sock"
source "$(dirname "$0")/lib.sh"
mkdir -p "$RUN" "$LIB/containerd" "$LIB/cni/bin" "$LIB/cni/conf" "$CACHE"
k8s_build_images
k8s_containerd_toml "$LIB/containerd" "$SOCK" "$LIB/cni/bin" "$LIB/cni/conf" >"$RUN/containerd.toml"

alive() { [[ -S "$SOCK" ]] && ctr --address "$SOCK" version >/dev/null 2>&1; }
if ! alive; then
    rm -f "$SOCK"
    setsid containerd --config "$RUN/containerd.toml" >"$RUN/containerd.log" 2>&1 </dev/null &
    echo $! >"$RUN/containerd.pid"
    for _ in $(seq 1 100); do alive && break; sleep 0.1; done
    alive || { echo "containerd did not start; log:" >&2; tail -20 "$RUN/containerd.log" >&2; exit 1; }
fi
k8s_import_images "$SOCK" "$TEST_IMAGE"
echo "unix://$SOCK"

#!/usr/bin/env bash
# Start a PRIVATE containerd (own root, state and socket; it never touches a system containerd) with the
# CRI plugin set for this host: runc (crun fails on hybrid cgroups), cgroupfs driver so pod cgroups sit at
# /kubepods/besteffort/pod<uid>/<containerID>, restrict_oom_score_adj (no CAP_SYS_RESOURCE here), and the
# hand-built sandbox/test images imported. Idempotent: a running instance is reused.
# Prints the CRI endpoint. Stop with stop.sh.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}"
RUN="${SENSORIUM_K8S_RUN:-/run/sensorium-k8s}"
LIB="${SENSORIUM_K8S_LIB:-/var/lib/sensorium-k8s}"
SOCK="$RUN/containerd.sock"
PAUSE_IMAGE=docker.io/sensorium/pause:1
TEST_IMAGE=docker.io/sensorium/test:1
mkdir -p "$RUN" "$LIB/containerd" "$LIB/cni/bin" "$LIB/cni/conf" "$CACHE"

# Images: static pause + busybox-static, built once and cached.
if [[ ! -s "$CACHE/images.tar" || "$HERE/build-image.py" -nt "$CACHE/images.tar" || "$HERE/pause.c" -nt "$CACHE/images.tar" ]]; then
    gcc -static -O2 -o "$CACHE/pause" "$HERE/pause.c"
    python3 "$HERE/build-image.py" "$CACHE/images.tar.tmp" /bin/busybox "$CACHE/pause" "$PAUSE_IMAGE" "$TEST_IMAGE" >/dev/null
    mv "$CACHE/images.tar.tmp" "$CACHE/images.tar"
fi

cat >"$RUN/containerd.toml" <<TOML
version = 2
root = "$LIB/containerd"
state = "$RUN/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$RUN/containerd-debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$LIB/cni/bin"
    conf_dir = "$LIB/cni/conf"
TOML

alive() { [[ -S "$SOCK" ]] && ctr --address "$SOCK" version >/dev/null 2>&1; }
if ! alive; then
    rm -f "$SOCK"
    setsid containerd --config "$RUN/containerd.toml" >"$RUN/containerd.log" 2>&1 </dev/null &
    echo $! >"$RUN/containerd.pid"
    for _ in $(seq 1 100); do alive && break; sleep 0.1; done
    alive || { echo "containerd did not start; log:" >&2; tail -20 "$RUN/containerd.log" >&2; exit 1; }
fi
if ! ctr --address "$SOCK" -n k8s.io images ls -q | grep -qx "$TEST_IMAGE"; then
    ctr --address "$SOCK" -n k8s.io images import "$CACHE/images.tar" >/dev/null
fi
echo "unix://$SOCK"

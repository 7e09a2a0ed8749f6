# shellcheck shell=bash
# What start-apiserver.sh, start-containerd.sh, stop.sh and cluster.sh share. Sourced, never run; every
# function works on the caller's $RUN (pid files) and $CACHE (built images).
K8S_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PAUSE_IMAGE=docker.io/sensorium/pause:1
TEST_IMAGE=docker.io/sensorium/test:1

# $CACHE/images.tar: the static pause image and a busybox-static test image, built once and again only
# when build-image.py or pause.c change.
k8s_build_images() {
    local tar="$CACHE/images.tar"
    if [[ ! -s "$tar" || "$K8S_SCRIPTS/build-image.py" -nt "$tar" || "$K8S_SCRIPTS/pause.c" -nt "$tar" ]]; then
        gcc -static -O2 -o "$CACHE/pause" "$K8S_SCRIPTS/pause.c"
        python3 "$K8S_SCRIPTS/build-image.py" "$tar.tmp" /bin/busybox "$CACHE/pause" "$PAUSE_IMAGE" "$TEST_IMAGE" >/dev/null
        mv "$tar.tmp" "$tar"
    fi
}

# A private containerd's config on stdout (own root, state and socket; it never touches a system containerd),
# with the CRI plugin set for this host: runc (crun fails on hybrid cgroups), the cgroupfs driver,
# restrict_oom_score_adj (no CAP_SYS_RESOURCE here).
k8s_containerd_toml() {  # root sock cni-bin-dir cni-conf-dir
    cat <<TOML
version = 2
root = "$1"
state = "$RUN/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$2"
[ttrpc]
  address = "$2.ttrpc"
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
    bin_dir = "$3"
    conf_dir = "$4"
TOML
}

# Import $CACHE/images.tar into containerd's k8s.io namespace unless `image` is there already.
k8s_import_images() {  # sock image
    if ! ctr --address "$1" -n k8s.io images ls -q | grep -qx "$2"; then
        ctr --address "$1" -n k8s.io images import "$CACHE/images.tar" >/dev/null
    fi
}

# ETCD_ARGS: a one-member etcd on loopback (peer port = client port + 10). An array rather than a function
# that starts etcd, so the caller backgrounds a simple command and $! is etcd's own pid.
k8s_etcd_args() {  # name data-dir client-port
    local client="http://127.0.0.1:$3" peer="http://127.0.0.1:$(($3 + 10))"
    ETCD_ARGS=(--name "$1" --data-dir "$2" --listen-client-urls "$client" --advertise-client-urls "$client"
               --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" --initial-cluster "$1=$peer")
}

# Stop the process recorded in $RUN/<name>.pid (TERM, then KILL after timeout-s) and forget it.
k8s_stop_pid() {  # name [timeout-s, default 10]
    local f="$RUN/$1.pid" pid
    [[ -s "$f" ]] || return 0
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 $(( ${2:-10} * 10 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

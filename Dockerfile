# The Sensorium agent image (one per node, from the Helm chart's DaemonSet).
# Build: docker build -t sensorium/agent:0.1.0 .
# clang/llvm and libbpf headers are in the image because sensors compile their CO-RE objects at start
# against the node's BTF (cached under /var/cache/sensorium); bpftool generates vmlinux.h.
FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv clang-14 llvm-14 libbpf-dev libbpf1 bpftool linux-libc-dev libc6-dev ca-certificates \
 && ln -sf /usr/bin/clang-14 /usr/local/bin/clang \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sensorium/src
COPY pyproject.toml README.md ./
COPY core ./core
COPY sensors ./sensors
COPY exporters ./exporters
RUN python3 -m venv /opt/sensorium/venv \
 && /opt/sensorium/venv/bin/pip install --no-cache-dir ".[kafka,k8s]" \
 && ln -s /opt/sensorium/venv/bin/sensorium /usr/local/bin/sensorium

# The probes the chart's DaemonSet calls (liveness: the API answers; readiness: sensors up, pods synced).
COPY scripts/k8s/probe.py /usr/local/bin/sensorium-probe
RUN chmod 0755 /usr/local/bin/sensorium-probe

ENV SENSORIUM_API_SOCKET=/var/run/sensorium/api.sock
# For `docker run` outside Kubernetes; Kubernetes uses the exec probes of the chart instead.
HEALTHCHECK --interval=20s --timeout=5s --retries=3 CMD ["/usr/local/bin/sensorium-probe", "live"]
ENTRYPOINT ["sensorium"]
CMD ["run", "--config", "/etc/sensorium/config/agent.yaml"]

"""Agent config inputs: the valid bases and their faults."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hostile.inputs import Collector, to_yaml
from hostile.mutations import mutate_fields, yaml_attacks
from hostile.schema import Node, walk

CONFIG_BASES = {
    "full": """\
node_name: node-1
log_level: info
plugins:
  allow: [exec, tracepoint, kprobe, lsm, network, stdout, file, kafka, syslog]
  deny: [uprobe]
sensors:
  exec: {enabled: true, max_args_bytes: 4096, ring_buffer_kb: 4096}
  tracepoint: {enabled: true, ring_buffer_kb: 4096, opened_file_paths: true}
  network: {enabled: false, tcp: true, udp: false, udp_dedup_seconds: 10.0, max_sockets: 65536}
  lsm: {enabled: false, force_fallbacks: false}
exporters:
- type: stdout
  format: compact
  timestamps: true
- type: file
  name: events
  path: /var/log/sensorium/events.json
  max_size_mb: 10.0
  max_backups: 5
  compress: true
  fsync: false
  queue_size: 65536
  batch_size: 1024
  flush_interval_ms: 200
  filters:
    allow:
    - event_set: [PROCESS_EXEC]
      binary_regex: ["^/usr/bin/"]
      pid: [1]
    deny:
    - namespace: [kube-system]
    rate_limit: {events: 1000, interval_s: 60.0}
- type: kafka
  brokers: [10.0.0.1:9092]
  topic: sensorium-events
  compression: zstd
  idempotence: true
  linger_ms: 20
  connect_timeout_s: 10.0
  tls: {ca_file: /etc/ca.pem, verify_hostname: true}
  sasl: {mechanism: SCRAM-SHA-512, username: agent, password_file: /etc/pw}
- type: syslog
  address: udp://127.0.0.1:514
  facility: local0
  max_message_bytes: 65000
  connect_timeout_s: 5.0
process_cache: {max_size: 65536, exited_grace_s: 10.0}
pipeline: {poll_interval_ms: 20, ring_buffer_kb: 4096}
api: {socket: /run/sensorium/api.sock, enabled: true}
metrics: {enabled: true, address: 127.0.0.1, port: 2112, bpf_stats: false}
policies: {directory: /etc/sensorium/policies}
network: false
kubernetes:
  enabled: false
  hold_s: 5.0
  hold_max_events: 10000
  deleted_pod_grace_s: 60.0
  watch_timeout_s: 300
  resolve_workloads: true
  policy_crds: true
""",
    "chart": """\
log_level: info
plugins:
  allow: [exec, tracepoint, kprobe, lsm, network, uprobe, stdout, file]
exporters:
- type: file
  path: /var/log/sensorium/events.log
  max_size_mb: 100
  max_backups: 3
  filters:
    fields:
    - fields: [process.binary, process.pid]
      action: include
      invert_event_set: false
    redact:
    - redact: ["--password[= ](\\\\S+)"]
api: {socket: /var/run/sensorium/api.sock}
kubernetes: {enabled: true}
metrics: {enabled: true, address: 0.0.0.0, port: 2112}
""",
}


def config_nodes(data: dict[str, Any], reg: Any) -> Iterator[Node | tuple[str, tuple, Any]]:
    from sensorium.config import AgentConfig, ExporterItem

    yield from walk({k: v for k, v in data.items() if k not in ("exporters", "sensors")}, AgentConfig)
    yield ("mapping", (), AgentConfig)
    for i, item in enumerate(data.get("exporters") or []):
        spec = reg.exporters.get(item.get("type"))
        host = {k: v for k, v in item.items() if k in ExporterItem.model_fields and k != "type"}
        yield from walk(host, ExporterItem, ("exporters", i))
        if spec is not None and spec.options is not None:
            yield from walk({k: v for k, v in item.items() if k not in ExporterItem.model_fields}, spec.options,
                            ("exporters", i))
    for name, section in (data.get("sensors") or {}).items():
        if "enabled" in section:
            yield Node(("sensors", name, "enabled"), "bool", None, "enabled", False)
        spec = reg.sensors.get(name)
        if spec is not None and spec.options is not None:
            yield from walk({k: v for k, v in section.items() if k != "enabled"}, spec.options, ("sensors", name))


def mutate_config(col: Collector, base: str, data: dict[str, Any], reg: Any) -> None:
    def emit(kind: str, what: str, new: Any, expect: list[str], cap: int | None = None) -> None:
        if not col.full(kind, cap):
            col.add(base, kind, what, to_yaml(new).encode(), expect, cap=cap)

    mutate_fields(col, base, list(config_nodes(data, reg)), data, emit, set(), True, {}, set())
    # Static checks and values a user could mean another way.
    for label, sock, words in (("too-long", "/run/" + "s" * 100 + "/api.sock", "at most 107 bytes"),
                               ("directory", "/tmp", "is an existing directory")):
        new = copy.deepcopy(data)
        new.setdefault("api", {})["socket"] = sock
        emit(f"socket {label}", f"api.socket {sock[:30]!r}", new, ["api.socket", words])
    new = copy.deepcopy(data)
    new["node_name"] = "a\0b"
    emit("nul-in-string", "a NUL character in a string", new, ["strings cannot contain NUL characters"])
    new = copy.deepcopy(data)
    new["sensors"] = {"exec": {"enabled": "false"}}
    emit("enabled-string", "enabled: \"false\" (a string, which used to start the sensor)", new,
         ["sensors.exec.enabled", "must be a boolean"])
    for name in ("exec", "tracepoint", "network", "lsm", "kprobe", "uprobe"):
        new = copy.deepcopy(data)
        new["sensors"] = {name: {"enabled": True, "bogus_option": 1}}
        emit(f"sensor-option {name}", f"an option the {name} sensor does not have", new,
             [f"sensors.{name}.bogus_option"])
    for label, brokers in (("trailing-comma", "10.0.0.1:9092,"), ("no-port", "kafka-1"), ("port-range", "h:99999"),
                           ("empty", ""), ("list-item", ["10.0.0.1"])):
        new = copy.deepcopy(data)
        new["exporters"] = [{"type": "kafka", "brokers": brokers, "topic": "t"}]
        emit(f"kafka-brokers {label}", f"kafka brokers {brokers!r}", new, ["exporters[0].brokers"])
    for label, regex in (("unclosed-group", "(a"), ("bad-escape", "\\")):
        new = copy.deepcopy(data)
        new["exporters"] = [{"type": "stdout", "filters": {"allow": [{"binary_regex": [regex]}]}}]
        emit(f"filter-regex {label}", f"binary_regex {regex!r} does not compile", new, ["invalid regular expression"])
    new = copy.deepcopy(data)
    new["exporters"] = [{"type": "stdout", "filters": {"allow": [{"event_set": ["PROCESS_TELEPATHY"]}]}}]
    emit("filter-event-kind", "an unknown event type in a filter", new, ["unknown event type"])
    new = copy.deepcopy(data)
    new["exporters"] = [{"type": "stdout", "filters": {"redact": [{"redact": ["password"]}]}}]
    emit("filter-redact-group", "a redaction regex without a group", new, ["has no capture group"])
    new = copy.deepcopy(data)
    new["exporters"] = [{"type": "kafka", "brokers": ["h:1"], "topic": "t",
                         "sasl": {"username": "u", "password": "p", "password_file": "/p"}}]
    emit("kafka-two-passwords", "both password and password_file", new, ["set exactly one of password"])
    col.add(base, "two-documents", "two YAML documents", (to_yaml(data) + "---\n" + to_yaml(data)).encode(),
            ["expected one YAML document"], line=False)


def config_corpus(reg: Any) -> Collector:
    from sensorium.config import CONFIG_LIMITS
    from sensorium.yamlsrc import load_one

    col = Collector("configs", per_kind=1)  # two bases share their kinds: one input of each is enough
    for base, text in CONFIG_BASES.items():
        data = load_one(text, base, CONFIG_LIMITS).data
        mutate_config(col, base, data, reg)
        yaml_attacks(col, base, text.encode(), "config", "configs")
    return col

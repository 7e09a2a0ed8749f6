"""Events as OTLP log records: the attribute mapping (semantic conventions), severity, resource grouping,
and the encoder that writes `ExportLogsServiceRequest` bytes (see docs/otlp.md, "What a record holds").
"""

from __future__ import annotations

import struct
import time
from collections.abc import (
    Mapping,  # fast isinstance() (typing.Mapping is slow)
    Sequence,
)
from typing import Any

from sensorium.events import Event

# Policy actions that stopped or changed what a process did: a WARN record (see docs/otlp.md).
ENFORCING_ACTIONS = frozenset({
    "KPROBE_ACTION_SIGKILL", "KPROBE_ACTION_OVERRIDE", "KPROBE_ACTION_NOTIFYENFORCER",
    "SIGKILL", "OVERRIDE", "NOTIFY_ENFORCER", "DENY", "BLOCK",
})
SEVERITY_INFO, SEVERITY_WARN = 9, 13  # SeverityNumber INFO and WARN
# Event kinds that never carry a policy action: their severity is known without building the body.
_NO_ACTION_KINDS = frozenset({"process_exec", "process_exit"})

# workload_kind (as the Kubernetes enricher writes it) -> the semantic-convention attribute of its name
WORKLOAD_ATTRIBUTES = {
    "Deployment": "k8s.deployment.name", "ReplicaSet": "k8s.replicaset.name",
    "StatefulSet": "k8s.statefulset.name", "DaemonSet": "k8s.daemonset.name",
    "Job": "k8s.job.name", "CronJob": "k8s.cronjob.name",
}


# ---- events -> OTLP messages ----------------------------------------------------------------------


def _mapping(v: object) -> Mapping[str, Any]:
    """``v`` if it is a mapping, else empty: a body (and its process) is what a sensor built, typed or not,
    and an exporter never fails on a malformed one."""
    return v if isinstance(v, Mapping) else {}


def severity_of(ev: Event) -> int:
    if ev.kind in _NO_ACTION_KINDS:
        return SEVERITY_INFO
    if ev.kind == "rate_limit_info":
        return SEVERITY_WARN
    body = _mapping(ev.body)
    action = body.get("action")
    if isinstance(action, str) and action.upper() in ENFORCING_ACTIONS:
        return SEVERITY_WARN
    return SEVERITY_INFO


def resource_key(ev: Event) -> tuple:
    """What tells one resource from another: the node and the pod container the process runs in."""
    pod = _mapping(ev.process).get("pod")
    if not isinstance(pod, Mapping):
        return (ev.node_name,)
    c = pod.get("container")
    c = c if isinstance(c, Mapping) else {}
    image = c.get("image")
    labels = pod.get("pod_labels")
    return (ev.node_name, pod.get("namespace"), pod.get("name"), c.get("name"), c.get("id"),
            image.get("name") if isinstance(image, Mapping) else None, pod.get("workload_kind"), pod.get("workload"),
            tuple(labels.items()) if isinstance(labels, Mapping) else ())


def resource_attributes(key: tuple, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The semantic-convention resource attributes for a `resource_key`."""
    attrs: dict[str, Any] = {"host.name": key[0]}
    if len(key) > 1:
        _node, ns, pod, cname, cid, image, wkind, wname, labels = key
        attrs["k8s.node.name"] = key[0]
        for k, v in (("k8s.namespace.name", ns), ("k8s.pod.name", pod), ("k8s.container.name", cname),
                     ("container.id", cid), ("container.image.name", image)):
            if v:
                attrs[k] = v
        if wname and wkind in WORKLOAD_ATTRIBUTES:
            attrs[WORKLOAD_ATTRIBUTES[wkind]] = wname
        for name, value in labels:
            attrs[f"k8s.pod.label.{name}"] = str(value)
    for k, v in extra.items():
        attrs.setdefault(k, v)
    return attrs


def any_value(v: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def key_values(attrs: Mapping[str, Any]) -> list[Any]:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items() if v is not None and v != ""]


def record_attributes(ev: Event) -> dict[str, Any]:
    """``event.name`` and the acting process (``process.*``), plus the policy for policy events."""
    proc = _mapping(ev.process)
    binary = proc.get("binary")
    args = proc.get("arguments")
    attrs: dict[str, Any] = {"event.name": ev.kind, "process.pid": proc.get("pid"),
                             "process.executable.path": binary}
    if isinstance(binary, str) and binary:
        attrs["process.executable.name"] = binary.rsplit("/", 1)[-1]
        attrs["process.command_line"] = f"{binary} {args}" if args else binary
    attrs["process.working_directory"] = proc.get("cwd")
    attrs["process.user.id"] = proc.get("uid")
    attrs["sensorium.exec_id"] = proc.get("exec_id")
    if ev.kind not in _NO_ACTION_KINDS:
        body = _mapping(ev.body)
        attrs["sensorium.policy_name"] = body.get("policy_name")
        attrs["sensorium.action"] = body.get("action")
    return attrs


def reference_request(events: Sequence[Event], extra_resource: Mapping[str, Any], now_ns: int) -> Any:
    """The request built with the official `opentelemetry-proto` message classes. `Encoder` writes the same
    bytes directly, about ten times faster (benchmarks/README.md); tests compare the two byte for byte."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    from sensorium import __version__

    groups: dict[tuple, list[Any]] = {}
    for ev in events:
        sev = severity_of(ev)
        groups.setdefault(resource_key(ev), []).append(LogRecord(
            time_unix_nano=ev.time_ns, observed_time_unix_nano=now_ns, severity_number=SeverityNumber.ValueType(sev),
            severity_text="WARN" if sev == SEVERITY_WARN else "INFO", event_name=ev.kind,
            body=AnyValue(string_value=ev.json().decode()), attributes=key_values(record_attributes(ev))))
    scope = InstrumentationScope(name="sensorium", version=__version__)
    return ExportLogsServiceRequest(resource_logs=[
        ResourceLogs(resource=Resource(attributes=key_values(resource_attributes(key, extra_resource))),
                     scope_logs=[ScopeLogs(scope=scope, log_records=recs)])
        for key, recs in groups.items()])


# ---- the protobuf wire format, written directly ------------------------------------------------------
# Building a message object per record and attribute costs more than everything else the agent does per
# event; the request's shape is fixed and small, so it is written here field by field (field numbers from
# opentelemetry/proto/{collector/logs,logs,common,resource}/v1/*.proto), in field-number order as the
# official serializer writes it.

_Q = struct.Struct("<Q").pack
_D = struct.Struct("<d").pack
_SMALL = [bytes((i,)) for i in range(128)]


def _uv(n: int) -> bytes:
    """A base-128 varint (n >= 0)."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _uv(len(payload)) + payload


def _any_value(v: Any) -> bytes:
    """An AnyValue: string_value = 1, bool_value = 2, int_value = 3, double_value = 4."""
    if isinstance(v, str):
        return _ld(b"\x0a", v.encode())
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        return b"\x18" + _uv(v & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(v, float):
        return b"\x21" + _D(v)
    return _ld(b"\x0a", str(v).encode())


_KEYS: dict[str, bytes] = {}


def _key_value(key: str, v: Any) -> bytes:
    """A KeyValue (key = 1, value = 2), without the enclosing field's tag."""
    k = _KEYS.get(key)
    if k is None:
        k = _KEYS[key] = _ld(b"\x0a", key.encode())
    return k + _ld(b"\x12", _any_value(v))


def _attributes(tag: bytes, attrs: Mapping[str, Any]) -> bytes:
    return b"".join(_ld(tag, _key_value(k, v)) for k, v in attrs.items() if v is not None and v != "")


def _sattr(key: bytes, v: str) -> bytes:
    """A string attribute as a LogRecord.attributes field (6); ``key`` is the KeyValue's key field."""
    b = v.encode()
    n = len(b)
    kv = len(key) + n + 4
    if kv < 128:  # the usual short value: every length fits one byte
        return b"\x32%c%b\x12%c\x0a%c%b" % (kv, key, n + 2, n, b)
    return _ld(b"\x32", key + _ld(b"\x12", _ld(b"\x0a", b)))


def _iattr(key: bytes, v: int) -> bytes:
    return _ld(b"\x32", key + _ld(b"\x12", b"\x18" + _uv(v & 0xFFFFFFFFFFFFFFFF)))


def _key(name: str) -> bytes:
    return _ld(b"\x0a", name.encode())


_K_EVENT, _K_PID, _K_PATH = _key("event.name"), _key("process.pid"), _key("process.executable.path")
_K_NAME, _K_CMD = _key("process.executable.name"), _key("process.command_line")
# (process field, attribute key) after the command line, in `record_attributes` order
_PROC_TAIL = (("cwd", _key("process.working_directory")), ("uid", _key("process.user.id")),
              ("exec_id", _key("sensorium.exec_id")))


# LogRecord fields: time_unix_nano = 1 (fixed64), severity_number = 2, severity_text = 3, body = 5,
# attributes = 6, observed_time_unix_nano = 11 (fixed64), event_name = 12.
_SEVERITY = {SEVERITY_INFO: b"\x10\x09\x1a\x04INFO", SEVERITY_WARN: b"\x10\x0d\x1a\x04WARN"}


class Encoder:
    """Writes `ExportLogsServiceRequest` bytes (the same bytes as `reference_request`); remembers each
    resource's encoded attributes (a node sees a few hundred pods, not millions: the cache is cleared when
    it grows past `RESOURCE_CACHE`)."""

    RESOURCE_CACHE = 4096

    def __init__(self, extra_resource: Mapping[str, Any]) -> None:
        from sensorium import __version__

        self.extra = dict(extra_resource)
        # InstrumentationScope: name = 1, version = 2; as ScopeLogs.scope (field 1)
        self.scope = _ld(b"\x0a", _ld(b"\x0a", b"sensorium") + _ld(b"\x12", __version__.encode()))
        self._resources: dict[tuple, bytes] = {}
        self._kinds: dict[str, tuple[bytes, bytes]] = {}  # kind -> (its event_name field, its attribute)

    def resource(self, key: tuple) -> bytes:
        """ResourceLogs.resource (field 1): a Resource whose attributes are field 1."""
        r = self._resources.get(key)
        if r is None:
            if len(self._resources) >= self.RESOURCE_CACHE:
                self._resources.clear()
            r = self._resources[key] = _ld(b"\x0a", _attributes(b"\x0a", resource_attributes(key, self.extra)))
        return r

    def record(self, ev: Event, observed: bytes) -> bytes:
        """One LogRecord: the hot path. The same attributes as `record_attributes`, written directly."""
        kind = self._kinds.get(ev.kind)
        if kind is None:
            kind = self._kinds[ev.kind] = (_ld(b"\x62", ev.kind.encode()), _sattr(_K_EVENT, ev.kind))
        body = ev.json()
        proc = _mapping(ev.process)
        parts = [b"\x09" + _Q(ev.time_ns) if ev.time_ns else b"", _SEVERITY[severity_of(ev)],
                 _ld(b"\x2a", _ld(b"\x0a", body)), kind[1]]
        pid = proc.get("pid")
        if pid is not None:
            parts.append(_iattr(_K_PID, pid))
        binary = proc.get("binary")
        if isinstance(binary, str) and binary:
            args = proc.get("arguments")
            parts += (_sattr(_K_PATH, binary), _sattr(_K_NAME, binary.rsplit("/", 1)[-1]),
                      _sattr(_K_CMD, f"{binary} {args}" if args else binary))
        elif binary is not None and binary != "":
            parts.append(_ld(b"\x32", _key_value("process.executable.path", binary)))
        for key, k in _PROC_TAIL:
            v = proc.get(key)
            if v is not None and v != "":
                parts.append(_sattr(k, v) if isinstance(v, str) else _iattr(k, v) if type(v) is int
                             else _ld(b"\x32", _key_value(k[1:].decode(), v)))
        if ev.kind not in _NO_ACTION_KINDS:
            body_map = _mapping(ev.body)
            for key in ("policy_name", "action"):
                v = body_map.get(key)
                if v is not None and v != "":
                    parts.append(_ld(b"\x32", _key_value(f"sensorium.{key}", v)))
        parts += (observed, kind[0])
        return b"".join(parts)

    def request(self, events: Sequence[Event], now_ns: int | None = None) -> bytes:
        now = time.time_ns() if now_ns is None else now_ns
        observed = b"\x59" + _Q(now) if now else b""
        groups: dict[tuple, list[bytes]] = {}
        for ev in events:
            rec = self.record(ev, observed)
            groups.setdefault(resource_key(ev), []).append(b"\x12" + _uv(len(rec)) + rec)  # ScopeLogs.log_records
        # ExportLogsServiceRequest.resource_logs = 1; ResourceLogs: resource = 1, scope_logs = 2
        return b"".join(
            _ld(b"\x0a", self.resource(key) + _ld(b"\x12", self.scope + b"".join(recs)))
            for key, recs in groups.items())

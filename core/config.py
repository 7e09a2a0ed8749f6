"""Agent configuration: a YAML file validated by pydantic; the Helm chart's values.yaml has the same shape.

The file is read by the one hardened loader (`sensorium.yamlsrc`, `CONFIG_LIMITS`) and validated with
JSON's strictness (`validate_strict`): ``enabled: "false"`` is refused, never read as true. Exporter items
and sensor sections are validated in a second step against the options model that each plugin declares,
with the same strictness, so errors name the exact key path (``exporters[1].max_size_mb``) and the line.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, with_config
from typing_extensions import TypedDict

from sensorium.filters import ExportFilters
from sensorium.yamlsrc import Located, SourceError, YamlLimits, load_one, read_file, validate_strict

# A config is a few KiB; the cap only bounds what a mistaken path (a log file, /dev/zero) costs.
CONFIG_LIMITS = YamlLimits(what="config", whats="configs", max_bytes=4 << 20, max_depth=32, max_aliases=64)

# sockaddr_un.sun_path is 108 bytes, one of them the terminating NUL.
MAX_UNIX_SOCKET_PATH = 107


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginsConfig(Strict):
    allow: list[str] | None = Field(
        default=None,
        description="Plugin names (glob patterns) allowed to load. Unset: every discovered plugin; the "
        "agent runs as root, so production configs (and the Helm chart) set it explicitly.",
    )
    deny: list[str] = Field(default_factory=list)


class ProcessCacheConfig(Strict):
    max_size: int = Field(default=65536, ge=128, le=4_194_304, description="Entries kept, exited ones evicted first")
    exited_grace_s: float = Field(
        default=10.0, ge=0,
        description="Keep an exited process this long for late events (other rings, late exporters)")


class PipelineConfig(Strict):
    poll_interval_ms: int = Field(default=20, ge=1, le=1000,
                                  description="Ring buffer drain period (no per-event wakeups)")
    ring_buffer_kb: int = Field(default=4096, ge=64, le=1 << 20)


class ActionsConfig(Strict):
    """GetUrl and DnsLookup: the requests the agent makes when a policy's selector with one of them matches
    (`sensorium.actions`). A workload decides how often that happens, so they are bounded here."""

    enabled: bool = Field(default=True, description="Serve GetUrl and DnsLookup (as Tetragon does); false: a policy "
                          "with one is refused at load")
    rate_per_s: float = Field(default=1.0, gt=0, le=1000,
                              description="Requests per second per policy and action (a token bucket)")
    burst: int = Field(default=5, ge=1, le=1000, description="Requests a policy and action may make at once")
    queue_size: int = Field(default=64, ge=1, le=65536, description="Requests waiting for a worker at most")
    workers: int = Field(default=1, ge=1, le=16, description="Threads making the requests")
    timeout_s: float = Field(default=2.0, gt=0, le=30, description="One request's connect and answer time at most")
    dns_resolver: str | None = Field(
        default=None, description="host:port of the DNS server DnsLookup asks (one A query over UDP); unset: the "
        "system resolver")

    @field_validator("dns_resolver")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None:
            from sensorium.actions import parse_host_port

            parse_host_port(v)  # ValueError -> the key's error with its line
        return v


class ApiConfig(Strict):
    socket: Path = Path("/run/sensorium/api.sock")
    enabled: bool = True

    @field_validator("socket")
    @classmethod
    def _bindable(cls, v: Path) -> Path:
        # Checked here so the agent never starts its sensors only to fail at bind() (or worse, bind a
        # truncated path: Python refuses, but a message about sun_path is clearer than "AF_UNIX path too long").
        n = len(os.fsencode(v))
        if n > MAX_UNIX_SOCKET_PATH:
            raise ValueError(f"the socket path is {n} bytes; a unix socket path is at most {MAX_UNIX_SOCKET_PATH} "
                             "bytes (sun_path)")
        if v.is_dir():
            raise ValueError("the socket path is an existing directory; name the socket file inside it")
        return v


class MetricsConfig(Strict):
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(default=2112, ge=0, le=65535)
    bpf_stats: bool = Field(
        default=False,
        description="Turn on the kernel's BPF run-time statistics while the agent runs, for the program "
        "run count/time metrics (costs a few ns per program run, node-wide)",
    )


class PoliciesConfig(Strict):
    directory: Path | None = None


class EnforcementConfig(Strict):
    """Whether blocks outlive the agent (persistent enforcement); docs/enforcement.md."""

    persist: bool = Field(
        default=False,
        description="Pin every enforcing program and its maps in bpffs so that a stopped, crashed or killed "
        "agent leaves its blocks in place, and keep the policies added through the API in state_dir to load "
        "them again at start. Off (the default): every block ends with the agent",
    )
    state_dir: Path = Field(default=Path("/var/lib/sensorium"),
                            description="Where policies added through the API are kept (persist: true)")
    pin_dir: Path = Field(default=Path("/sys/fs/bpf/sensorium"),
                          description="Where enforcing programs are pinned, one directory per policy; in bpffs")
    non_persistent: Literal["serve", "refuse"] = Field(
        default="serve",
        description="With persist: true, a hook that enforces but cannot outlive the agent (fanotify, a link "
        "the kernel will not pin): serve it and say so in `status` and `policy list` (serve), or refuse the "
        "policy (refuse)",
    )

    @field_validator("state_dir", "pin_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        # The agent may run from any directory (a unit's WorkingDirectory, a container's /): a relative
        # path would put state or pins somewhere nobody looks.
        if not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v


class EventsConfig(Strict):
    format: Literal["tetragon", "extended"] = Field(
        default="tetragon",
        description="tetragon: every event decodes strictly with Tetragon's messages; extended: plus Sensorium's "
        "own fields (cgroup, byte counts, mechanism, ...), for consumers that ignore unknown fields "
        "(docs/events.md)",
    )
    process_credentials: bool = Field(
        default=False,
        description="Every process and parent carries process_credentials (uids, gids, securebits, caps) and cap "
        "(Tetragon's --enable-process-cred, off by default there too: ~2.5 KB per process of a root task)",
    )
    process_namespaces: bool = Field(
        default=False,
        description="Every process and parent carries ns, its ten namespaces (Tetragon's --enable-process-ns)",
    )


class KubernetesConfig(Strict):
    """Pod enrichment (sensorium.k8s): watch this node's pods and add ``pod`` to events."""

    enabled: bool | None = Field(default=None, description="None: on when running in a pod or kubeconfig is set")
    kubeconfig: Path | None = Field(default=None, description="None: in-cluster service account")
    hold_s: float = Field(default=5.0, ge=0, le=120, description="Hold an event this long for its container's pod")
    hold_max_events: int = Field(default=10000, ge=0, le=1_000_000)
    deleted_pod_grace_s: float = Field(default=60.0, ge=0, le=3600, description="Deleted pods stay resolvable")
    watch_timeout_s: int = Field(default=300, ge=10, le=3600)
    resolve_workloads: bool = Field(default=True, description="Read ReplicaSets/Jobs to name Deployments/CronJobs")
    policy_crds: bool = Field(default=True, description="Load TracingPolicy custom resources from the API server")
    cgroup_root: str = Field(default="/", pattern=r"^/[A-Za-z0-9_.@/-]*$",
                             description="The kubelet's --cgroup-root (cgroupRoot): where its kubepods cgroup sits")


class ExporterItem(BaseModel):
    """Host-level keys of every exporter item; the rest belongs to the exporter's own options model."""

    model_config = ConfigDict(extra="allow")
    type: str
    name: str | None = None
    queue_size: int = Field(default=65536, ge=16, le=10_000_000, description="Events queued before dropping")
    batch_size: int = Field(default=1024, ge=1, le=100_000)
    flush_interval_ms: int = Field(default=200, ge=1, le=60_000)
    filters: ExportFilters = Field(default_factory=ExportFilters, description="allow/deny, fields, redact, rate_limit")


HOST_EXPORTER_KEYS = frozenset(ExporterItem.model_fields)


@with_config(ConfigDict(extra="allow"))
class SensorSection(TypedDict, total=False):
    """``sensors: {<name>: {enabled: bool, ...}}``: the host reads ``enabled``; the rest is the sensor's own
    options, validated against its `SensorSpec.options` when it starts (`validate_sensor_options`)."""

    enabled: bool


class AgentConfig(Strict):
    node_name: str = Field(default_factory=lambda: os.environ.get("NODE_NAME") or socket.gethostname())
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    sensors: dict[str, SensorSection] = Field(
        default_factory=dict, description="Per sensor: {enabled: bool, ...its own options}"
    )
    exporters: list[ExporterItem] = Field(default_factory=lambda: [ExporterItem(type="stdout")])
    process_cache: ProcessCacheConfig = Field(default_factory=ProcessCacheConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    enforcement: EnforcementConfig = Field(default_factory=EnforcementConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    network: bool = Field(default=False,
                          description="Report TCP connect/accept/close and UDP sends: enables the network sensor")
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    actions: ActionsConfig = Field(default_factory=ActionsConfig)

    # Set by load_config; not a config key.
    _source: Located | None = None

    @property
    def source(self) -> Located | None:
        return self._source

    def sensor_sections(self) -> dict[str, dict[str, Any]]:
        """Every sensor's section as the agent applies it: ``sensors`` with the config's own shortcut folded in
        (``network: true`` is ``sensors: {network: {enabled: true}}`` unless that section says ``enabled``)."""
        out: dict[str, dict[str, Any]] = {name: dict(section) for name, section in self.sensors.items()}
        if self.network:
            out.setdefault("network", {}).setdefault("enabled", True)
        return out


def load_config(path: str | os.PathLike[str] | None) -> AgentConfig:
    """Read and validate the config file (or the embedded defaults when ``path`` is None).

    Raises `SourceError` (``file:line: key.path: reason``) for anything wrong, never another exception."""
    if path is None:
        return AgentConfig()
    name = str(Path(path))
    doc = load_one(read_file(path, CONFIG_LIMITS), name, CONFIG_LIMITS)
    if doc.data is None:
        doc = Located({}, doc.lines, name)
    if not isinstance(doc.data, dict):
        raise doc.error((), "the config must be a mapping")
    cfg = validate_strict(AgentConfig, doc.data, doc)
    cfg._source = doc
    return cfg


def validate_exporter_options(item: ExporterItem, index: int, model: type[BaseModel], doc: Located | None) -> BaseModel:
    """Validate an exporter item's own keys against its plugin's options model (strictly, as the config)."""
    own = {k: v for k, v in (item.model_extra or {}).items()}
    return validate_strict(model, own, doc, prefix=("exporters", index))


def validate_sensor_options(name: str, section: dict[str, Any], model: type[BaseModel] | None,
                            doc: Located | None) -> dict[str, Any]:
    own = {k: v for k, v in section.items() if k != "enabled"}
    if model is None:
        if own:
            key = next(iter(own))
            raise (doc.error(("sensors", name, key), "unknown key (this sensor takes no options)") if doc
                   else SourceError("unknown key (this sensor takes no options)", path=f"sensors.{name}.{key}"))
        return {}
    return validate_strict(model, own, doc, prefix=("sensors", name)).model_dump()

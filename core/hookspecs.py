"""The Sensorium plugin contract: the one module a plugin author needs to read.

A plugin is a Python object (usually a module) named by an entry point in one of two groups:

* ``sensorium.sensors``: it implements `sensorium_sensor` and returns a `SensorSpec`;
* ``sensorium.exporters``: it implements `sensorium_exporter` and returns an `ExporterSpec`.

The entry point's *name* is the short word users write (``type: kafka`` in the config, ``exec`` in the
plugin allowlist); it must equal the spec's ``name``. Built-in plugins use these very entry points.

Implement hooks with the ``sensorium.hookimpl`` marker::

    from sensorium import hookimpl
    from sensorium.hookspecs import SensorSpec

    @hookimpl
    def sensorium_sensor() -> SensorSpec:
        return SensorSpec(name="hello", description="...", factory=HelloSensor, probes=[...])

The host calls each plugin's hooks separately and contains failures: a plugin that raises at import,
returns a bad spec or fails to start is marked failed (``sensorium plugins`` says why) and the agent runs
on without it. Nothing here runs at import time in a plugin; do I/O in ``start``/``open``.

Threads: `Sensor.start`/`stop` and `Exporter.open`/`close` are called from the agent's main thread.
A sensor's ring-buffer decoder runs on the agent's single reader thread and must not block. Each exporter
runs on its own thread and receives batches in order.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import pluggy
from pydantic import BaseModel

from sensorium import PROJECT
from sensorium.events import Event

if TYPE_CHECKING:  # imported for types only; plugins never need these at import time
    from sensorium.bpf.libbpf import BpfMap, BpfObject
    from sensorium.bpf.probe import KernelCapabilities
    from sensorium.process import ProcessCache

hookspec = pluggy.HookspecMarker(PROJECT)

SENSOR_GROUP = "sensorium.sensors"
EXPORTER_GROUP = "sensorium.exporters"


# --------------------------------------------------------------------------------------------------
# Sensors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProbeSource:
    """One eBPF C program of a sensor, compiled with clang to a CO-RE object at run time (cached).

    ``source`` is the ``*.bpf.c`` file; ``include_dirs`` are added with ``-I`` after the generated
    ``vmlinux.h`` and the host's own headers (``sensorium/common.h``, ``sensorium/path.h``, ...).
    ``defines`` become ``-D`` flags and are part of the cache key. ``prebuilt`` is an optional object
    shipped in a wheel; it is used when clang is missing.
    """

    name: str
    source: Path
    include_dirs: tuple[Path, ...] = ()
    defines: Mapping[str, str] = dataclasses.field(default_factory=dict)
    prebuilt: Path | None = None


@dataclasses.dataclass(frozen=True)
class BudgetCase:
    """One program of a sensor in one of its most expensive configurations: what the verifier budget test
    (tests/test_verifier_budget.py, run on the host and on every VM-lane kernel) loads to check that the
    program verifies within ``sensorium.selectors.VERIFIER_BUDGET`` processed instructions.

    probe: the object; program: the program (its C function name) loaded alone; config: a short label of
    the configuration (e.g. "resolved strings"); prepare: called with the opened
    `sensorium.bpf.libbpf.BpfObject` before load to set its rodata and map sizes (autoload is set by the
    test); needs: kernel capabilities without which the program cannot load at all (e.g. ``fentry``): the
    test records "cannot load here" rather than a failure on such a kernel, and the VM lane measures it.
    Every program of every object in `SensorSpec.probes` and in the cases themselves must have a case.
    """

    probe: ProbeSource
    program: str
    config: str
    prepare: Callable[[Any], None] | None = None
    needs: frozenset[str] = frozenset()


@runtime_checkable
class Sensor(Protocol):
    """A running sensor, created by `SensorSpec.factory` with a `SensorContext`."""

    def start(self) -> None:
        """Build/load/attach programs and register ring buffers with ``ctx.add_ring_buffer``.

        Raise on failure after undoing whatever was attached: the host marks the sensor failed.
        """

    def stop(self) -> None:
        """Detach and close everything. Called once, also after a failed start. Must not raise."""

    def status(self) -> Mapping[str, Any]:
        """A JSON-able status: at least ``{"state": "running"|"failed"|"not implemented", ...}``.

        ``lost_events``: the cumulative number of records the kernel side could not submit (ring full,
        no scratch slot), over the sensor and all its policies. The host exports it as the
        ``kernel events lost`` metric; a sensor that can lose events must report it."""


class PolicyLoadError(Exception):
    """A policy section could not be served. ``hook`` names the hook (e.g. ``kprobes[0] __x64_sys_openat``),
    ``reason`` says why (missing kernel function, verifier message, unsupported on this kernel...).
    ``field`` optionally names the field path inside the policy spec."""

    def __init__(self, hook: str, reason: str, field: str | None = None):
        self.hook, self.reason, self.field = hook, reason, field
        super().__init__(f"{field + ': ' if field else ''}{hook}: {reason}")


@dataclasses.dataclass(frozen=True)
class PolicyView:
    """What a sensor sees of a policy being loaded (built by sensorium.policy).

    id: small integer unique among loaded policies, used as a key in kernel maps (e.g. the cgroup scope map).
    items: the validated items of the section this sensor owns (pydantic models of `SensorSpec.policy_sections`).
    mode: "enforcement" or "monitoring" (in monitoring, blocking actions only report what they would do).
    scope: None for a host-wide policy; else the cgroups it is bounded to (see `Scope`). A sensor that
    cannot bound its hooks to a scope must not declare ``supports_scope``: the manager then refuses scoped
    policies for its sections instead of applying them host-wide.
    pin_dir: None when enforcement is not persistent (the default); else a directory in bpffs, empty and this
    section's own, where the sensor pins the links (and the maps) of every program that enforces (blocks,
    kills, signals), so that they stay attached when the agent exits or is killed (agent config
    ``enforcement.persist``; see `PreparedSection` for when, and `PolicyHandle.unload`/``release`` for how
    they go). What cannot be pinned (a decision made in user space, such as fanotify, or a kernel that will
    not pin a link) is served anyway and reported per hook in the status: ``persistent: false`` and
    ``persistence`` saying why. A sensor that ignores ``pin_dir`` serves nothing persistently; the host
    then reports its sections as not persistent.
    """

    id: int
    name: str
    namespace: str | None
    section: str
    items: Sequence[BaseModel]
    mode: str = "enforcement"
    scope: "Scope | None" = None
    pin_dir: str | None = None


HIERARCHIES = ("cgroup2", "memory")


@dataclasses.dataclass(frozen=True)
class CgroupRef:
    """One cgroup directory in a scope.

    hierarchy: ``cgroup2`` (the unified hierarchy), or ``memory`` (the v1 memory controller: on a hybrid
    host, runtimes using the v1 cgroup driver place containers there and leave them at the cgroup2 root).
    id: the cgroup id (inode number of the directory), what the kernel side compares.
    path: the absolute directory (for mechanisms that attach to a cgroup or read /proc/<pid>/cgroup).
    """

    hierarchy: str
    id: int
    path: str


@dataclasses.dataclass(frozen=True)
class Scope:
    """The processes a scoped policy applies to; the kernel side of every mechanism checks it.

    A process is in scope when one of its cgroups, or an ancestor of it, is in ``cgroups`` (so a pod's
    cgroup covers every container of the pod, including one created later). When ``host`` is true,
    processes under none of ``container_roots`` (the runtimes' kubepods cgroups) are in scope as well
    (Tetragon's ``hostSelector: {}``). ``Scope()`` selects nothing: a pod-scoped policy whose pods are not
    on this node yet must not apply to anything (never host-wide).
    Built by `sensorium.scope` helpers; `sensorium.bpf.scope` turns it into kernel map entries.
    """

    cgroups: tuple[CgroupRef, ...] = ()
    host: bool = False
    container_roots: tuple[CgroupRef, ...] = ()


class PolicyHandle(Protocol):
    """A policy section loaded by a sensor."""

    def status(self) -> Mapping[str, Any]:
        """JSON-able: at least ``{"hooks": [{"hook": ..., "mechanism": ..., "note": ...}], "events": n,
        "errors": n, "kernel_memory_bytes": n}``. ``mechanism`` names what serves each hook
        (``tracepoint``, ``raw_tp sys_enter``, ``fentry``, ``kprobe``, ``bpf_lsm``, ``cgroup/connect4``,
        ``fanotify``, ``sigkill from tracepoint``...) and ``note`` what a fallback changes in meaning.
        With `PolicyView.pin_dir` set, each hook also says ``persistent`` (bool: it keeps enforcing when the
        agent is gone) and, when false or not enforcing, ``persistence`` (why)."""

    def set_mode(self, mode: str) -> None:
        """Switch enforcement/monitoring live (a map update, not a reload)."""

    def unload(self) -> None:
        """Detach and free everything of this section, pins included (the block is lifted). Idempotent, must
        not raise."""

    # Optional, for sections loaded with `PolicyView.pin_dir`:
    # def release(self) -> None:
    #     """The agent is stopping and enforcement persists: free what this process holds (threads, fds,
    #     user-space decisions) but leave the pinned programs attached and enforcing. Must not raise. The host
    #     calls `unload` instead when the handle has no ``release``."""

    # Optional, for sensors that declare ``supports_scope = True``:
    # def set_scope(self, scope: Scope) -> None:
    #     """Replace the scope live (map updates / attach changes, no reload). New entries are added before
    #     old ones are removed, so a process that stays in scope is never uncovered in between."""


@runtime_checkable
class PolicySensor(Protocol):
    """A `Sensor` that owns TracingPolicy sections implements these as well."""

    def check_policy(self, policy: PolicyView) -> None:
        """Check, before anything is loaded, that every item can be served on this kernel (functions and
        tracepoints exist, arg types match, limits hold). Raise `PolicyLoadError` naming the first problem."""

    def load_policy(self, policy: PolicyView) -> PolicyHandle:
        """Load and attach the section whole, or undo what was done and raise `PolicyLoadError`.

        A sensor with the class attribute ``supports_scope = True`` honours ``policy.scope`` in the kernel
        and its handles implement ``set_scope(scope)``; without it, a scoped policy is refused for it.

        This is the one-step form: the section enforces and posts events as soon as it returns. A sensor
        that implements only this (and not `TransactionalPolicySensor.prepare_policy`) still works, but its
        sections are all-or-nothing only on their own: the host runs them last in a transaction, so a
        failure among them still takes every other section back before anything of those was active, yet
        such a section, once loaded, was live until the host unloaded it again."""


@runtime_checkable
class PreparedSection(Protocol):
    """One policy section prepared for a transaction (`TransactionalPolicySensor.prepare_policy`).

    A policy change (``policy add`` of one or many documents, enable, a CRD applied) is a transaction over
    every section of every document involved. The host runs it in three rounds, and each round only starts
    when the previous one succeeded for every section:

    1. ``prepare_policy`` for every section: everything the kernel can refuse short of attaching is done
       here (build, open, load and verify each program, create the maps, fill those that do not enforce:
       configuration, scope, the process-tracking seed);
    2. `commit` for every section: attach every program (and pin it, with `PolicyView.pin_dir`), inert;
    3. `activate` for every section: open the gate. Only now does anything post an event or enforce.

    A failure in round 1 or 2 `abort`s every section of the transaction (whatever it had attached is
    detached), so a transaction that fails at its very last attach has not posted one event nor blocked one
    call. Inert means: every program attached returns at once without a record or a decision (the hook
    engine's ``sens_mode`` is ``SENS_MODE_INACTIVE``, a socket guard has no rules yet, a fanotify rule answers
    "allow" without a decision), so attaching early costs a few instructions per call and changes nothing.
    """

    def commit(self) -> None:
        """Attach everything prepared, inert. On a failure (an attach the kernel refuses), detach what this
        call attached and raise `PolicyLoadError`; the host then aborts every section of the transaction."""

    def activate(self) -> PolicyHandle:
        """Start posting and enforcing (map writes, a flag: nothing the kernel refuses) and return the handle.
        Not expected to fail; if it raises anyway, the host unloads the sections already activated (which
        may have posted events meanwhile) and aborts the others."""

    def abort(self) -> None:
        """Free everything of this section that was prepared (and committed, if `commit` ran) but is not
        active: programs, maps, links, pins, marks. Idempotent; must not raise."""


@runtime_checkable
class TransactionalPolicySensor(PolicySensor, Protocol):
    """A `PolicySensor` whose sections can take part in an all-or-nothing transaction across sections and
    documents (every built-in policy sensor). See `PreparedSection` for the rounds."""

    def prepare_policy(self, policy: PolicyView) -> PreparedSection:
        """Round 1 for one section: build, open, load, verify and fill the maps that do not enforce; attach
        nothing. Raise `PolicyLoadError` (after freeing what was made) naming the hook and the reason."""


RingDecoder = Callable[[Sequence[bytes]], Iterable[Event]]
"""A ring's decoder (`SensorContext.add_ring_buffer`): one batch of raw records, in ring order, -> the events
to export. The batch is a ``Sequence[bytes]``: a list of bytes, or, for a ring added with ``native_drain=True``
that the host drains natively, a `sensorium.bpf.ringbuf.RecordBlob` (also a ``Sequence[bytes]``: indexing or
iterating it makes each record's bytes; its ``blob`` and ``lens`` give them all at once without that). Runs on
the host's reader thread; decoders never run concurrently with each other; must not block."""


@runtime_checkable
class RingHandle(Protocol):
    """A ring buffer the host drains for a sensor: what `SensorContext.add_ring_buffer` returns.

    Close it when the program that writes the ring goes (a policy unloaded), before closing the program's
    object; rings still open when the sensor stops are closed by the host after `Sensor.stop`."""

    native_drain: bool
    """Whether this ring is drained natively (the sensor asked with ``native_drain=True`` and the native
    drain is available here): its decoder then receives `sensorium.bpf.ringbuf.RecordBlob` batches."""

    @property
    def closed(self) -> bool:
        """True once the ring is no longer drained."""

    def close(self) -> None:
        """Stop draining the ring: the records still in it are first delivered to its decoder (on the calling
        thread, never concurrently with another decoder), then the ring leaves the host's reader. Idempotent;
        callable from any thread, including the ring's own decoder; does not raise."""


class SensorContext(Protocol):
    """What the host gives a sensor. Sensors use these instead of reaching into host internals."""

    node_name: str
    log: logging.Logger
    kernel: "KernelCapabilities"
    process_cache: "ProcessCache"
    config: Mapping[str, Any]
    """This sensor's section of the agent config (``sensors: {<name>: {...}}``), already validated
    against `SensorSpec.options`, as a plain mapping."""

    def build(self, probe: ProbeSource) -> Path:
        """Compile (or fetch from the cache) the CO-RE object of ``probe``; raise `BuildError` with
        the compiler's message, or one naming the missing tool, on failure."""

    def open_object(self, path: Path) -> "BpfObject":
        """Open a compiled object with libbpf (not yet loaded: set rodata and autoload first)."""

    def add_ring_buffer(self, bpf_map: "BpfMap", decode: RingDecoder, *, native_drain: bool = False) -> "RingHandle":
        """Drain ``bpf_map`` (a loaded BPF_MAP_TYPE_RINGBUF) in batches on the reader thread, until the returned
        `RingHandle` is closed (or the sensor stops).

        ``decode`` (a `RingDecoder`) receives the raw records of one batch, in ring order, and returns the
        events to export (it may return fewer: internal records such as forks update the process cache
        only). A decoder exception drops that batch and is counted; it does not stop the reader.
        ``native_drain=True`` says the decoder also takes a `sensorium.bpf.ringbuf.RecordBlob` (the batch's
        records back to back in one bytes object): the host may then drain the ring in C, with no
        interpreter work per record (`RingHandle.native_drain` says whether it does here).
        May be called at any time, also after ``start`` (the ring of a program a policy loads: close its
        handle when the program goes), so a sensor never needs a reader or a poll thread of its own.
        Programs should submit with ``sensorium_submit()`` from ``sensorium/common.h``, which skips the
        per-event wakeup (INFRA.md: wakeups cost 10x in a VM); the reader polls on a short timer.
        """

    def emit(self, events: Iterable[Event]) -> None:
        """Export events that do not come from a ring buffer (thread-safe)."""

    def make_event(self, kind: str, body: Mapping[str, Any], ktime_ns: int | None = None) -> Event:
        """Build an `Event` stamped with this node and a time (kernel ktime or now)."""


@dataclasses.dataclass(frozen=True)
class SensorSpec:
    """What a sensor plugin declares.

    name: the entry-point name; unique across installed sensors.
    factory: ``factory(ctx) -> Sensor``; called only if the plugin is allowed and enabled.
    probes: the C programs the sensor ships (compiled by the host; listed by ``sensorium plugins``).
    options: pydantic model of the sensor's config section (``extra='forbid'`` recommended).
    policy_sections: TracingPolicy ``spec`` keys this sensor owns (e.g. ``tracepoints``) and the
        pydantic model of one list item. Two sensors claiming one key is a registration error.
    record_layouts: ``{C struct name: ctypes.Structure}`` of the records the decoder parses; the host
        test suite compares them with the compiled object's BTF so the two halves cannot drift.
    requires: kernel capabilities (names from `sensorium.bpf.probe.KernelCapabilities`) without
        which the sensor cannot run at all; the host refuses to start it and says which is missing.
    enabled_by_default: whether ``sensorium run`` with no config starts it.
    implemented: False for a placeholder: its status says "not implemented".
    budget_cases: ``budget_cases() -> Sequence[BudgetCase]``: every program the sensor can load, each in its
        most expensive configuration(s) (see `BudgetCase`); objects built per policy (one per hook or
        kernel function) are represented by a few instances. Called by tests and tools, never at start.
    """

    name: str
    description: str
    factory: Callable[[SensorContext], Sensor]
    probes: Sequence[ProbeSource] = ()
    options: type[BaseModel] | None = None
    policy_sections: Mapping[str, type[BaseModel]] = dataclasses.field(default_factory=dict)
    record_layouts: Mapping[str, type] = dataclasses.field(default_factory=dict)
    requires: frozenset[str] = frozenset()
    enabled_by_default: bool = False
    implemented: bool = True
    budget_cases: Callable[[], Sequence[BudgetCase]] | None = None


# --------------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class Exporter(Protocol):
    """A sink. Created from validated options; all I/O happens in these methods, not at import."""

    def open(self) -> None:
        """Connect/open files. May raise: the host retries with backoff and counts failures."""

    def write_batch(self, events: Sequence[Event]) -> int | None:
        """Write events in order. Raise to signal the batch was not delivered; the host keeps it
        queued (bounded), reopens the exporter and retries with backoff, counting what it finally
        drops. Raise `PartialWrite(n)` when the first ``n`` events did get through, so only the rest
        is resent (no duplicates beyond what the sink itself may repeat).

        Return None (or 0) when the sink took every event. A transport that cannot confirm delivery
        (UDP: no refusal seen is not an acknowledgement) returns how many of the batch's events it sent
        unconfirmed; the host counts those as ``unconfirmed``, never as ``delivered``.

        The host classifies a failure by a stable reason (`FAILURE_REASONS`) for its per-reason counters:
        from `ExportError.code` / `PartialWrite.code` when set, else from the exception (an ``OSError``'s
        errno: ECONNREFUSED is ``peer_refused``, ENOSPC ``disk_full``...)."""

    def flush(self) -> None:
        """Push buffered data out (called on a timer and at shutdown)."""

    def close(self) -> None:
        """Flush and release resources. Must not raise."""


FAILURE_REASONS = ("peer_refused", "peer_closed", "peer_unreachable", "timeout", "disk_full", "rejected",
                   "open_error", "write_error")
"""Why a write or an open failed (the batch is kept and retried): the per-reason keys of an exporter's
``retried`` and ``failures`` counters. ``rejected``: the sink answered with an error about the data or
the request (a broker error code), ``open_error``/``write_error``: anything not classified otherwise."""

DROP_REASONS = ("queue_full", "rate_limit", "filter_error", "shutdown")
"""Why the host gave up on an event (the per-reason keys of an exporter's ``dropped`` counter):
the exporter's queue was full, its rate limit or a failing filter removed it, or the agent stopped
before it could be written (what was still queued when the shutdown grace ran out)."""


class ExportError(Exception):
    """Raise from `Exporter.open`/`write_batch` to give a failure its reason (one of `FAILURE_REASONS`)
    when the exception type alone would not say it (``ExportError("topic missing", code="rejected")``)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class PartialWrite(Exception):
    """Raised by `Exporter.write_batch` when only the first ``delivered`` events of the batch were written.

    ``code`` is the reason the rest failed (one of `FAILURE_REASONS`; None: derived from ``__cause__``);
    ``unconfirmed`` says how many of the ``delivered`` events were sent without confirmation (UDP)."""

    def __init__(self, delivered: int, reason: str = "", *, code: str | None = None, unconfirmed: int = 0) -> None:
        super().__init__(reason or f"{delivered} events delivered before the failure")
        self.delivered = delivered
        self.code = code
        self.unconfirmed = unconfirmed


class TargetError(Exception):
    """Raised by `ExporterSpec.check`: the configured target can never be written. ``key`` names the option
    at fault (``path``, ``address``) so the host's message points at the config line."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ExporterContext(Protocol):
    node_name: str
    log: logging.Logger

    def count(self, metric: str, value: int = 1) -> None:
        """Add to an exporter-specific counter (exported as a metric labelled with this exporter)."""


@dataclasses.dataclass(frozen=True)
class ExporterSpec:
    """What an exporter plugin declares.

    name: the entry-point name (``type:`` in config).
    options: pydantic model of the exporter's config item, without ``type`` and without the
        host-level keys every exporter has (``name``, ``queue_size``, ``filters``...).
    factory: ``factory(options_instance, ctx) -> Exporter``.
    check: ``check(options_instance) -> None``, optional: called once by ``sensorium run`` before the agent
        says ready. Raise `TargetError` (one line) when the target can never be written: a directory where
        a file goes, a kernel pseudo-filesystem (/proc, /sys), a read-only mount, a socket path that is a
        directory. The agent then exits non-zero instead of running with a sink that loses everything.
        What may get better by itself (a collector or broker not up yet, a full disk) is not an error
        here: the runner retries it. No side effects beyond what ``open`` would do.
    """

    name: str
    description: str
    options: type[BaseModel]
    factory: Callable[[Any, ExporterContext], Exporter]
    check: Callable[[Any], None] | None = None


# --------------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sensorium_sensor() -> SensorSpec:
    """Return this sensor plugin's `SensorSpec`. Called once per plugin at discovery."""


@hookspec(firstresult=True)
def sensorium_exporter() -> ExporterSpec:
    """Return this exporter plugin's `ExporterSpec`. Called once per plugin at discovery."""


HOOKS = ("sensorium_sensor", "sensorium_exporter")

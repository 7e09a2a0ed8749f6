"""The Sensorium plugin contract: the one module a plugin author needs to read.

A plugin is a Python object (usually a module) named by an entry point in one of two groups:

* ``sensorium.sensors``: it implements `sensorium_sensor` and returns a `SensorSpec`;
* ``sensorium.exporters``: it implements `sensorium_exporter` and returns an `ExporterSpec`;
* ``sensorium.stages``: it implements `sensorium_stage` and returns a `StageSpec` (a pipeline stage between
  the decoders and the exporters: the process join and the Kubernetes enrichment are two).

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
A sensor's ring-buffer decoder runs on the agent's single reader thread and must not block; so do the
pipeline stages (also called by `SensorContext.emit`, one batch at a time). Each exporter runs on its own
thread and receives batches in order.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

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
STAGE_GROUP = "sensorium.stages"


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
    program verifies within ``sensorium.hooks.selectors.VERIFIER_BUDGET`` processed instructions.

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
class PackedRecords(Protocol):
    """The records of one batch held back to back: what a decoder receives from a natively drained ring.

    It is a ``Sequence[bytes]`` like any batch (indexing or iterating makes the records as ``bytes``, once),
    and also exposes the packed form, so a decoder that parses many records can walk them without a
    ``bytes`` object each: ``blob`` holds every record in ring order, ``lens`` (an ``array('I')``) their
    sizes (``sum(lens) == len(blob)``). Valid only during the `Decoder` call: keep what you need, not it.
    The host's implementation is `sensorium.bpf.ringbuf.RecordBlob`."""

    blob: bytes
    lens: Any

    def __len__(self) -> int:
        """The number of records in the batch."""

    def __getitem__(self, i: Any) -> Any:
        """One record as ``bytes`` (or a list of them for a slice)."""

    def __iter__(self) -> Any:
        """The records as ``bytes``, in ring order."""


Decoder = Callable[[Sequence[bytes]], Iterable[Event]]
"""A ring buffer's batch decoder (`SensorContext.add_ring_buffer`), run on the reader thread: it receives the
raw records of one drained batch, in ring order, and returns the events to export (fewer is fine: internal
records such as forks update the process cache only). The batch is a ``Sequence[bytes]``; for a ring drained
natively it is a `PackedRecords` as well (test with ``isinstance(records, PackedRecords)``): any decoder
that only indexes and iterates works with both. It must not block; an exception drops the batch (counted
per sensor as ``decode_errors``) and the reader goes on."""


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
    scope: None for a host-wide policy; else the cgroups it is bounded to (see `Scope`). Only a
    `ScopedPolicySensor` gets one: the manager refuses scoped policies for the sections of any other sensor
    instead of applying them host-wide.
    pin_dir: None when enforcement is not persistent (the default); else a directory in bpffs, empty and this
    section's own, where the sensor pins the links (and the maps) of every program that enforces (blocks,
    kills, signals), so that they stay attached when the agent exits or is killed (agent config
    ``enforcement.persist``; see `PreparedSection` for when, and `PolicyHandle.unload` and
    `PersistentPolicyHandle.release` for how they go). What cannot be pinned (a decision made in user
    space, such as fanotify, or a kernel that will not pin a link) is served anyway and reported per hook
    in the status: ``persistent: false`` and ``persistence`` saying why. A sensor that ignores ``pin_dir``
    serves nothing persistently; the host then reports its sections as not persistent. A sensor that pins
    returns `PersistentPolicyHandle`s.
    """

    id: int
    name: str
    namespace: str | None
    section: str
    items: Sequence[BaseModel]
    mode: str = "enforcement"
    scope: Scope | None = None
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
        "errors": n, "kernel_memory_bytes": n}`` (the kernel's own figure of its maps and programs, and
        ``kernel_memory_bytes_96cpu``, the same on a 96-CPU node: `sensorium.bpf.memory`). ``mechanism`` names
        what serves each hook
        (``tracepoint``, ``raw_tp sys_enter``, ``fentry``, ``kprobe``, ``bpf_lsm``, ``cgroup/connect4``,
        ``fanotify``, ``sigkill from tracepoint``...) and ``note`` what a fallback changes in meaning.
        With `PolicyView.pin_dir` set, each hook also says ``persistent`` (bool: it keeps enforcing when the
        agent is gone) and, when false or not enforcing, ``persistence`` (why)."""

    def set_mode(self, mode: str) -> None:
        """Switch enforcement/monitoring live (a map update, not a reload)."""

    def unload(self) -> None:
        """Detach and free everything of this section, pins included (the block is lifted). Idempotent, must
        not raise."""



@runtime_checkable
class PersistentPolicyHandle(PolicyHandle, Protocol):
    """A `PolicyHandle` of a section loaded with `PolicyView.pin_dir` that can let go without lifting its
    pinned blocks. The host calls `release` instead of `PolicyHandle.unload` when the agent stops with
    persistent enforcement; a handle without it is unloaded (its blocks end with the agent)."""

    def release(self) -> None:
        """The agent is stopping and enforcement persists: free what this process holds (threads, fds,
        user-space decisions) but leave the pinned programs attached and enforcing. Must not raise."""


@runtime_checkable
class ScopedPolicyHandle(PolicyHandle, Protocol):
    """The `PolicyHandle` of a `ScopedPolicySensor`: its scope moves live as pods come and go."""

    def set_scope(self, scope: Scope) -> None:
        """Replace the scope live (map updates / attach changes, no reload). New entries are added before
        old ones are removed, so a process that stays in scope is never uncovered in between. Called from the
        scope tracker's thread (pod watcher, cgroup scanner), never at the same time as `unload` of this
        handle. On a failure raise (anything): the host puts the policy's other sections back to the scope
        they had, counts the error in the policy's status, and this section keeps its previous scope."""


@runtime_checkable
class PolicySensor(Protocol):
    """A `Sensor` that owns TracingPolicy sections implements these as well."""

    def check_policy(self, policy: PolicyView) -> None:
        """Check, before anything is loaded, that every item can be served on this kernel (functions and
        tracepoints exist, arg types match, limits hold). Raise `PolicyLoadError` naming the first problem."""

    def load_policy(self, policy: PolicyView) -> PolicyHandle:
        """Load and attach the section whole, or undo what was done and raise `PolicyLoadError`.

        A `ScopedPolicySensor` honours ``policy.scope`` in the kernel and returns `ScopedPolicyHandle`s;
        any other sensor is refused a scoped policy (never loaded host-wide).

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


@runtime_checkable
class ScopedPolicySensor(PolicySensor, Protocol):
    """A `PolicySensor` that bounds its hooks to `PolicyView.scope` in the kernel (pods, containers, the host's
    processes): it declares the class attribute ``supports_scope = True`` and every handle it returns (from
    `load_policy`, or `PreparedSection.activate`) is a `ScopedPolicyHandle`. The host refuses a scoped
    policy for a sensor that is not one (`supports_scope`), rather than apply it to the whole host."""

    supports_scope: ClassVar[bool]
    """True: this sensor honours `PolicyView.scope` (a class attribute, read before anything loads)."""


def supports_scope(sensor: object) -> bool:
    """Whether ``sensor`` is a `ScopedPolicySensor` that declares ``supports_scope = True``."""
    return isinstance(sensor, ScopedPolicySensor) and type(sensor).supports_scope is True


RingDecoder = Decoder
"""The same as `Decoder` (the name `SensorContext.add_ring_buffer` uses)."""


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
    kernel: KernelCapabilities
    process_cache: ProcessCache
    config: Mapping[str, Any]
    """This sensor's section of the agent config (``sensors: {<name>: {...}}``), already validated
    against `SensorSpec.options`, as a plain mapping."""

    def build(self, probe: ProbeSource) -> Path:
        """Compile (or fetch from the cache) the CO-RE object of ``probe``; raise `BuildError` with
        the compiler's message, or one naming the missing tool, on failure."""

    def open_object(self, path: Path) -> BpfObject:
        """Open a compiled object with libbpf (not yet loaded: set rodata and autoload first)."""

    def add_ring_buffer(self, bpf_map: BpfMap, decode: RingDecoder, *, native_drain: bool = False) -> RingHandle:
        """Drain ``bpf_map`` (a loaded BPF_MAP_TYPE_RINGBUF) in batches on the reader thread, until the returned
        `RingHandle` is closed (or the sensor stops).

        ``decode`` (a `Decoder`) receives the raw records of one batch, in ring order, and returns the
        events to export (it may return fewer: internal records such as forks update the process cache
        only). A decoder exception drops that batch and is counted; it does not stop the reader.
        ``native_drain=True`` says the decoder also takes a `PackedRecords` (the batch's
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

    def run_action(self, policy: str, action: str, target: str) -> bool:
        """Offer the request of a user-space policy action whose selector matched: ``action`` ``GetUrl`` (an HTTP
        GET of the URL ``target``) or ``DnsLookup`` (a DNS A query for the name ``target``), on behalf of policy
        ``policy``. Called from a decoder on the reader thread: it never blocks and does no I/O; the host makes
        the request later on a worker of its own, bounded by the agent config's ``actions`` rate per policy and
        action, queue and timeout. Returns whether the request was queued; every request that was not (rate
        limit, queue full, stopping), or failed, is counted in the host's status (``actions``)."""


@dataclasses.dataclass(frozen=True)
class SensorSpec:
    """What a sensor plugin declares.

    name: the entry-point name; unique across installed sensors.
    factory: ``factory(ctx) -> Sensor``; called only if the plugin is allowed and enabled.
    probes: the C programs the sensor ships (compiled by the host; listed by ``sensorium plugins``).
    options: pydantic model of the sensor's config section (``extra='forbid'`` recommended).
    policy_sections: TracingPolicy ``spec`` keys this sensor owns (e.g. ``tracepoints``) and the
        pydantic model of one list item, kept in the sensor's own ``schema.py`` (usually a
        `sensorium.policy.HookSpec`, whose ``rules`` run in ``policy check`` and ``policy add``). The policy
        document is composed from these: a third-party section parses and is refused like a built-in one.
        Two sensors claiming one key is a registration error.
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

DROP_REASONS = ("queue_full", "rate_limit", "filter_error", "shutdown", "rejected")
"""Why the host gave up on an event (the per-reason keys of an exporter's ``dropped`` counter):
the exporter's queue was full, its rate limit or a failing filter removed it, the agent stopped
before it could be written (what was still queued when the shutdown grace ran out), or the sink
refused it for good (``rejected``: a permanent error such as an HTTP 400, `PartialWrite.dropped`)."""


class ExportError(Exception):
    """Raise from `Exporter.open`/`write_batch` to give a failure its reason (one of `FAILURE_REASONS`)
    when the exception type alone would not say it (``ExportError("topic missing", code="rejected")``)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class PartialWrite(Exception):
    """Raised by `Exporter.write_batch` when only the first ``delivered`` events of the batch were written.

    ``code`` is the reason the rest failed (one of `FAILURE_REASONS`; None: derived from ``__cause__``);
    ``unconfirmed`` says how many of the ``delivered`` events were sent without confirmation (UDP).
    ``dropped`` says how many events after the delivered ones the sink refused for good (a permanent
    error: sending the same data again cannot succeed): the host counts them as dropped (``rejected``)
    and does not resend them; only what follows them is retried."""

    def __init__(self, delivered: int, reason: str = "", *, code: str | None = None, unconfirmed: int = 0,
                 dropped: int = 0) -> None:
        super().__init__(reason or f"{delivered} events delivered before the failure")
        self.delivered = delivered
        self.code = code
        self.unconfirmed = unconfirmed
        self.dropped = dropped


class TargetError(Exception):
    """Raised by `ExporterSpec.check`: the configured target can never be written. ``key`` names the option
    at fault (``path``, ``address``) so the host's message points at the config line."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ExporterContext(Protocol):
    node_name: str
    log: logging.Logger
    stopping: threading.Event
    """Set when the host starts stopping the exporter (its drain deadline runs). A sink that waits inside
    ``write_batch`` (its own retry backoff) waits on this instead of sleeping, and when it is set stops
    waiting and raises: the host's runner then retries until its deadline and counts what is left."""

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
# Pipeline stages
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class Stage(Protocol):
    """A pipeline stage: called with every batch after the decoders, before the exporters' filters."""

    def __call__(self, events: Sequence[Event]) -> Sequence[Event]:
        """Return the events to pass on: new values where the stage changed one (`Event.replace`; events are
        immutable), fewer to drop or hold some back. A batch may be an `EventBatch` (events held as JSON
        lines): returning it unchanged keeps the fast path; iterating it makes the events. Must not block.
        An exception is contained: the batch goes on unchanged and the pipeline counts ``stage_errors``."""


@runtime_checkable
class HoldingStage(Stage, Protocol):
    """A `Stage` that may hold events back (waiting for what it needs to complete them) and release them
    later: the reader thread calls the pipeline with an empty batch after every poll while `held` is
    truthy, so held events go out on time without new ones."""

    held: Any
    """Truthy while events are held (a count, or the held events themselves)."""

    def flush(self) -> Sequence[Event]:
        """Release everything held now, as it is (the agent is stopping): the events to pass on."""


class StageContext(Protocol):
    """What the host gives a stage's factory."""

    node_name: str
    log: logging.Logger
    config: Any
    """The agent config (`sensorium.config.AgentConfig`), read-only: a stage reads the section it serves."""
    process_cache: ProcessCache


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """What a pipeline-stage plugin declares.

    name: the entry-point name (in the plugin allowlist and ``sensorium plugins``).
    factory: ``factory(ctx) -> Stage | None``, called once at agent start, before any sensor starts;
        None: the stage is not wanted with this config (it is then listed as ``off``). A factory that raises
        marks the stage failed (``sensorium plugins``, the agent's status) and the agent runs on without it.
    order: where the stage runs: ascending, ties by name. The built-ins: ``process`` (100, gives each event
        its process from the cache) and ``kubernetes`` (200, adds the pod); a stage that needs the pod
        comes after 200, one that must see events before the join before 100.
    """

    name: str
    description: str
    factory: Callable[[StageContext], Stage | None]
    order: int = 500


# --------------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sensorium_sensor() -> SensorSpec:
    """Return this sensor plugin's `SensorSpec`. Called once per plugin at discovery."""
    raise NotImplementedError  # a specification: plugins implement it, nothing calls this body


@hookspec(firstresult=True)
def sensorium_exporter() -> ExporterSpec:
    """Return this exporter plugin's `ExporterSpec`. Called once per plugin at discovery."""
    raise NotImplementedError  # a specification: plugins implement it, nothing calls this body


@hookspec(firstresult=True)
def sensorium_stage() -> StageSpec:
    """Return this pipeline-stage plugin's `StageSpec`. Called once per plugin at discovery."""
    raise NotImplementedError  # a specification: plugins implement it, nothing calls this body


HOOKS = ("sensorium_sensor", "sensorium_exporter", "sensorium_stage")

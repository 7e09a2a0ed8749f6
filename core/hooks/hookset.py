"""Loading and attaching: `HookSet`, one policy section of a hook sensor (one BPF object per hook).

One hook of a policy = one instance of the ``hook.bpf.c`` object (`sensorium.hooks.probes`), configured by its
rodata (`sensorium.hooks.selectors.compile_hook`), attached as a tracepoint, raw tracepoint, raw_tp
sys_enter/sys_exit (tp_btf sys_exit for opened files), or a uprobe/uretprobe; sensors with objects of their
own (the kprobe sensor's kfunc.bpf.c) subclass `HookSet` and reuse `prepare_object`, `start_object` and
`attach_tracking`. Every object of a sensor writes into the sensor's one ring (`sensorium.hooks.ring`).
`HookSet` is the `PolicyHandle` of a section and its `PreparedSection`: it loads whole or undoes and raises.

Scope (``PolicyView.scope``): None loads the hooks host-wide, with no check at all; a `Scope` sets
``SENS_CFG_CGROUP_SCOPED`` in every hook's rodata and fills its ``sens_scope`` map (sensorium/scope.h)
before anything attaches, so a scoped hook never runs unscoped. `HookSet.set_scope` replaces the scope
live in every object of the section.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import stat
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sensorium.bpf.memory import kernel_memory
from sensorium.bpf.scope import ScopeMap, scope_entries
from sensorium.hooks import selectors as S
from sensorium.hooks.openexit import open_exit_filter
from sensorium.hooks.plan import HookPlan
from sensorium.hooks.probes import HOOK_OPEN_PROBE, HOOK_PROBE, MODE_INACTIVE, OPEN_EXIT_MECHANISM
from sensorium.hooks.ring import EventRing
from sensorium.hooks.stacks import LOST_REASONS, StackMap
from sensorium.hooks.syscalls import sysset_table
from sensorium.hookspecs import PolicyLoadError, ProbeSource, Scope, SensorContext

__all__ = ["HookSet", "seed_follow", "tracking_programs", "OPEN_EXIT_ENABLED", "mark_socket_owners", "uses_socket_map",
           "refused_as", "read_binary"]

T = TypeVar("T")


@contextlib.contextmanager
def refused_as(plan: HookPlan) -> Iterator[None]:
    """Any failure inside (libbpf's OSError when loading or attaching, a map error) becomes this plan's
    `PolicyLoadError`, naming its hook and its policy field; a `PolicyLoadError` passes unchanged."""
    try:
        yield
    except PolicyLoadError:
        raise
    except Exception as e:
        raise PolicyLoadError(plan.hook, f"{type(e).__name__}: {e}", plan.field) from e


def read_binary(hook: str, field: str, path: str, read: Callable[[str], T]) -> T:
    """``read(path)`` of a binary a policy names (ELF symbols, USDT notes), refused with the reason at
    ``field`` when the path is missing, not a regular file, unreadable or not an ELF file (`ElfError`)."""
    from sensorium.elf import ElfError

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PolicyLoadError(hook, f"binary {path} does not exist", field) from None
    except OSError as e:
        raise PolicyLoadError(hook, f"binary {path}: {e.strerror}", field) from None
    if not stat.S_ISREG(st.st_mode):
        raise PolicyLoadError(hook, f"binary {path} is not a regular file", field)
    try:
        return read(path)
    except ElfError as e:
        raise PolicyLoadError(hook, f"binary {path}: {e}", field) from None
    except OSError as e:
        raise PolicyLoadError(hook, f"binary {path}: {e.strerror}", field) from None

# False: serve opened-file hooks with the sys_enter + sys_exit pair too (the benchmark compares both; the
# decisions are the same).
OPEN_EXIT_ENABLED = True


def tracking_programs(flags: int) -> set[str]:
    """The process tracking programs of a hook object (selectors.h) that its ``sens_cfg`` flags need: exec
    and exit for the binary cache and followChildren, fork for following, all three for the capabilities
    recorded at exec and fork (matchCapabilityChanges)."""
    out: set[str] = set()
    if flags & (S.CFG_NEED_BINARY | S.CFG_FOLLOW | S.CFG_CAP_CHANGES):
        out.update(("sens_exec", "sens_exit"))
    if flags & (S.CFG_FOLLOW | S.CFG_CAP_CHANGES):
        out.add("sens_fork")
    return out


def _set_reuse_proto() -> Callable[[int, int], int]:
    from sensorium.bpf.libbpf import lib

    f = lib().bpf_map__reuse_fd
    f.restype, f.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]
    return f


class HookSet:
    """A policy section: one hook object per item. Implements `sensorium.hookspecs.PolicyHandle`, and
    `sensorium.hookspecs.PreparedSection` for transactions: `prepare` (build, load, verify, fill the maps
    that do not enforce; the mode map says ``MODE_INACTIVE``), `commit` (attach, pin), `activate` (the real
    mode, the decoder told); `load` runs the three in one step."""

    def __init__(self, ctx: SensorContext, ring: EventRing, policy_id: int, policy_name: str, mode: str) -> None:
        self.ctx, self.ring = ctx, ring
        self.policy_id, self.policy_name, self.mode = policy_id, policy_name, mode
        self.objects: list[tuple[HookPlan, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.events = 0
        self._unloaded = False
        self.scope: Scope | None = None
        self._scope_maps: list[ScopeMap] = []
        # per object (same order as `objects`): how it attaches, once committed
        self._attach: list[Callable[[], None]] = []
        self.pin_dir: str | None = None
        # The maps every object of the section shares (`section_maps`): map name -> a dup of the fd of the first
        # object that uses it (it outlives that object if a fallback replaces it), reused by the others.
        self._shared: dict[str, int] = {}
        # The section's stack map (kernelStackTrace/userStackTrace) and the stacks its events asked for and did
        # not get, by reason (shown in `counters`).
        self.stack_map: StackMap | None = None
        self.stack_lost: dict[str, int] = dict.fromkeys(LOST_REASONS, 0)
        # id(obj) -> (persistent: True pinned, False not pinned though it enforces, None nothing to keep; why)
        self._pins: dict[int, tuple[bool | None, str]] = {}
        self.active = False

    # -- loading ----------------------------------------------------------------------------------
    def load(self, plans: Sequence[HookPlan], scope: Scope | None = None, pin_dir: str | None = None) -> None:
        """Load, attach and activate every plan, or undo everything and raise `PolicyLoadError` (the
        one-step form of `prepare` + `commit` + `activate`).

        ``scope`` None: host-wide (no check in the kernel); a `Scope`: every hook checks it first."""
        self.prepare(plans, scope, pin_dir)
        self.commit()
        self.activate()

    def prepare(self, plans: Sequence[HookPlan], scope: Scope | None = None, pin_dir: str | None = None) -> None:
        """Round 1 of a transaction: build, open and load (verify) every hook object, fill its scope and
        seed maps; nothing attached. Undoes everything and raises `PolicyLoadError` on failure."""
        if scope is not None:
            if not isinstance(scope, Scope):
                raise PolicyLoadError("scope", f"expected a sensorium.hookspecs.Scope, got {type(scope).__name__}")
            try:
                scope_entries(scope)  # a bad scope is refused before anything is loaded
            except ValueError as e:
                raise PolicyLoadError("scope", str(e)) from None
            for plan in plans:
                plan.compiled.cfg.flags |= S.CFG_CGROUP_SCOPED
                plan.compiled.flags |= S.CFG_CGROUP_SCOPED
        self.scope = scope
        self.pin_dir = pin_dir
        mark_socket_owners(plans)
        try:
            for plan in plans:
                self._load_one(plan)
        except PolicyLoadError:
            self.unload()
            raise
        except Exception as e:  # a libbpf error...
            self.unload()
            raise PolicyLoadError(getattr(e, "_hook", "?"), str(e)) from e

    def commit(self) -> None:
        """Round 2: attach every hook object (inert: its mode map says ``MODE_INACTIVE``) and, with a pin
        directory, pin what enforces. On a refused attach everything is undone and `PolicyLoadError` raised."""
        try:
            for i in range(len(self._attach)):
                self._attach[i]()
                if self.pin_dir is not None:
                    self._pin(i)
        except PolicyLoadError:
            self.unload()
            raise
        except Exception as e:
            self.unload()
            raise PolicyLoadError("?", f"{type(e).__name__}: {e}") from e

    def activate(self) -> HookSet:
        """Round 3: the real mode in every mode map (from here on the hooks post and enforce), and the
        decoder told about each hook. Map writes only."""
        for plan, obj in self.objects:
            obj.map("sens_mode").update(struct.pack("<I", 0), struct.pack("<I", self._mode_value(self.mode)))
            self.register(plan)
        self.active = True
        return self

    def abort(self) -> None:
        """Free a prepared (or committed) section that was never activated (`PreparedSection.abort`)."""
        self.unload()

    @staticmethod
    def _mode_value(mode: str) -> int:
        return 1 if mode == "monitoring" else 0

    def enforces(self, plan: HookPlan) -> bool:
        """Whether the hook takes an action that outlives the event (a signal): what persistence pins."""
        cfg = plan.compiled.cfg
        return any(cfg.sel[i].actions & (S.ACT_SIGKILL | S.ACT_SIGNAL) for i in range(cfg.nsel))

    def _pin(self, i: int) -> None:
        """Pin the links and maps of object ``i`` under ``pin_dir`` when its hook enforces. A link the kernel
        will not pin (a perf-event link on a kernel without BPF perf links) leaves the hook served, reported
        not persistent."""
        plan, obj = self.objects[i]
        if not self.enforces(plan):
            self._pins[id(obj)] = (None, "observes only: nothing to keep enforcing when the agent is gone")
            return
        base = os.path.join(self.pin_dir or "", f"{i}")
        try:
            os.makedirs(base, exist_ok=True)
            for n, link in enumerate(obj.links):
                link.pin(os.path.join(base, f"link{n}"))
            for m in obj.maps.values():
                if m.type == 27 or "." in m.name:  # the shared ring, and .rodata/.bss
                    continue
                m.pin(os.path.join(base, f"map_{m.name}"))
        except OSError as e:
            for link in obj.links:
                try:
                    link.unpin()
                except OSError:
                    pass
            self._pins[id(obj)] = (False, f"the kernel did not pin it: {e}")
            return
        self._pins[id(obj)] = (True, f"pinned at {base}")

    def _load_one(self, plan: HookPlan) -> None:
        if (OPEN_EXIT_ENABLED and plan.attach[0] == "syscall" and plan.attach[1]
                and any(a.ret_fd for a in plan.args)):
            # open/openat/openat2/creat on the opened file: sys_exit alone, with early rejection
            # (selectors.h, SENS_OPEN_EXIT). Where that object does not load (tp_btf, or the
            # bpf_rdonly_cast kfunc of 6.2+, missing), the enter+exit pair decides the same, slower.
            # The status names the mechanism when the planner wrote the words for it (`HookPlan.open_exit_note`,
            # the syscall planner); a plan another sensor labelled (lsm's "sigkill from tracepoint") keeps its own.
            ours = plan.open_exit_note is not None
            fast = (dataclasses.replace(plan, mechanism=OPEN_EXIT_MECHANISM, note=plan.open_exit_note)
                    if plan.open_exit_note is not None else plan)
            n_scope_maps = len(self._scope_maps)
            try:
                self._load_object(fast, HOOK_OPEN_PROBE)
                return
            except PolicyLoadError as e:
                del self._scope_maps[n_scope_maps:]  # the failed object's scope map must not be updated later
                self._drop_last(fast)
                if ours:
                    plan = dataclasses.replace(plan, note=plan.note + f"; {OPEN_EXIT_MECHANISM} not available "
                                                                      f"here ({e.reason[:200]})")
        self._load_object(plan, HOOK_PROBE)

    def _drop_last(self, plan: HookPlan) -> None:
        """Close the object of ``plan`` loaded last (before trying another mechanism for it)."""
        if self.objects and self.objects[-1][0] is plan:
            _p, obj = self.objects.pop()
            if len(self._attach) > len(self.objects):
                self._attach.pop()
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - closing a half-used object must not hide why it failed
                pass

    def _load_object(self, plan: HookPlan, probe: ProbeSource) -> None:
        try:
            path = self.ctx.build(probe)
            obj = self.ctx.open_object(path)
        except Exception as e:
            raise PolicyLoadError(plan.hook, f"cannot build the hook program: {e}") from e
        self.objects.append((plan, obj))
        with refused_as(plan):
            kind = plan.attach[0]
            if kind == "tp":
                progs = {"sens_tp"}
            elif kind == "raw":
                progs = {"sens_raw"}
            elif kind == "uprobe":  # ("uprobe", at_exit, binary, symbol | None, offset): the uprobe sensor
                progs = {"sens_uprobe", "sens_uretprobe"} if plan.attach[1] else {"sens_uprobe"}
            elif probe is HOOK_OPEN_PROBE:
                progs = {"sens_open_exit"}
                obj.set_rodata("sens_pq", bytes(open_exit_filter(plan.compiled.cfg)))
            else:
                progs = {"sens_sys_enter", "sens_sys_exit"} if plan.attach[1] else {"sens_sys_enter"}
            inflight = kind in ("syscall", "uprobe") and bool(plan.attach[1]) and probe is not HOOK_OPEN_PROBE
            wanted = self.prepare_object(plan, obj, progs, inflight)
            if plan.members:  # one object for a list of syscalls: its number -> member table
                obj.set_rodata("sens_sysset", sysset_table(plan))
            obj.load()
            self.start_object(plan, obj, wanted)

        def attach() -> None:
            at = plan.attach  # its kind is `kind`
            with refused_as(plan):
                self.attach_tracking(plan, obj, wanted)
                if at[0] == "tp":
                    obj.program("sens_tp").attach_tracepoint(at[1], at[2])
                elif at[0] == "raw":
                    obj.program("sens_raw").attach_raw_tracepoint(at[1])
                elif at[0] == "uprobe":
                    _k, at_exit, binary, symbol, offset = at
                    if at_exit:
                        obj.program("sens_uretprobe").attach_uprobe(binary, symbol, offset, retprobe=True)
                    obj.program("sens_uprobe").attach_uprobe(binary, symbol, offset)
                elif probe is HOOK_OPEN_PROBE:
                    obj.program("sens_open_exit").attach()
                else:
                    if "sens_sys_exit" in wanted:
                        obj.program("sens_sys_exit").attach_raw_tracepoint("sys_exit")
                    obj.program("sens_sys_enter").attach_raw_tracepoint("sys_enter")

        self._attach.append(attach)

    # Shared by every object built on selectors.h (this engine's hook.bpf.c, the kprobe sensor's kfunc.bpf.c):
    # what happens before load, after load (`start_object`), and when the hook attaches (`attach_tracking`).
    def prepare_object(self, plan: HookPlan, obj: Any, programs: set[str], inflight: bool) -> set[str]:
        """Before load: share the sensor's ring, set ``sens_cfg``, autoload ``programs`` plus the process
        tracking the selectors need, and shrink the maps the hook does not use. Returns the programs to load."""
        err = _set_reuse_proto()(obj.map("sens_events")._p(), self.ring.fd)
        if err < 0:
            raise OSError(-err, f"cannot share the sensor's ring buffer: {os.strerror(-err)}")
        for name in section_maps(plan.compiled):
            fd = self._shared.get(name)
            if fd is not None:
                err = _set_reuse_proto()(obj.map(name)._p(), fd)
                if err < 0:
                    raise OSError(-err, f"cannot share the section's map {name}: {os.strerror(-err)}")
        socks = uses_socket_map(plan.compiled)
        obj.set_rodata("sens_cfg", plan.compiled.rodata())
        flags = plan.compiled.flags
        wanted = set(programs) | tracking_programs(flags)
        for name, prog in obj.programs.items():
            prog.set_autoload(name in wanted)
        # Maps a hook does not use are shrunk before load (hash maps are preallocated: the binary cache
        # alone is 2 MiB), so kernel memory follows what the policy needs. A scoped hook keeps its whole
        # scope map: the scope may grow live (pods arriving) without a reload.
        cfg = plan.compiled.cfg
        uses_rl = any(cfg.sel[i].rl_ns for i in range(cfg.nsel))
        for mname, needed in (("sens_bins", flags & (S.CFG_NEED_BINARY | S.CFG_FOLLOW)),
                              ("sens_follow", flags & S.CFG_FOLLOW), ("sens_ratelimit", uses_rl),
                              ("sens_inflight", inflight), ("sens_scope", flags & S.CFG_CGROUP_SCOPED),
                              ("sens_socks", socks), ("sens_execcaps", flags & S.CFG_CAP_CHANGES)):
            if not needed:
                obj.map(mname).set_max_entries(64)
        if not uses_stacks(plan.compiled):  # ~1 KiB per entry, preallocated
            obj.map("sens_stacks").set_max_entries(1)
        return wanted

    def start_object(self, plan: HookPlan, obj: Any, wanted: set[str]) -> None:
        """After load, nothing attached yet: the hook inert (``MODE_INACTIVE`` until `activate`), then its
        scope (so a scoped hook is never live unscoped)."""
        obj.map("sens_mode").update(struct.pack("<I", 0), struct.pack("<I", MODE_INACTIVE))
        for name in section_maps(plan.compiled):
            if name not in self._shared:
                self._shared[name] = os.dup(obj.map(name).fd)
                if name == "sens_stacks":
                    self.stack_map = StackMap(self._shared[name])
        if plan.compiled.flags & S.CFG_CGROUP_SCOPED:
            sm = ScopeMap(obj.map("sens_scope"))
            sm.set(self.scope if self.scope is not None else Scope())
            self._scope_maps.append(sm)

    def attach_tracking(self, plan: HookPlan, obj: Any, wanted: set[str]) -> None:
        """Just before the hook attaches: the followChildren seed, then the process tracking programs (so
        no fork slips between seed and hook)."""
        seed_follow(plan.compiled, obj)
        for name in ("sens_exec", "sens_exit", "sens_fork"):
            if name in wanted:
                obj.program(name).attach()

    def register(self, plan: HookPlan) -> None:
        """The hook is active: let the decoder render its records."""
        with self.ring.lock:
            hooks = dict(self.ring.hooks)
            for p in plan.members or (plan,):  # a syscall set's records name the member that ran
                hooks[(self.policy_id, p.compiled.cfg.hook_id)] = (p, self.policy_name, self)
            self.ring.hooks = hooks  # copy-on-write: the reader thread reads without the lock

    # -- PolicyHandle -----------------------------------------------------------------------------
    def set_scope(self, scope: Scope) -> None:
        """Replace the scope live in every hook object of the section (map updates, no reload; see
        `sensorium.bpf.scope.ScopeMap`). A section loaded host-wide has no check in its programs: it
        cannot be scoped later (ValueError; reload it with a scope)."""
        if not isinstance(scope, Scope):
            raise TypeError(f"set_scope expects a sensorium.hookspecs.Scope, got {type(scope).__name__}")
        if self._unloaded:
            raise ValueError(f"policy {self.policy_name!r}: the section is unloaded")
        if self.scope is None:
            raise ValueError(f"policy {self.policy_name!r} was loaded host-wide (no scope check in its programs): "
                             f"reload it with a scope")
        scope_entries(scope)  # ValueError before any map is touched
        for sm in self._scope_maps:
            sm.set(scope)
        self.scope = scope

    def set_mode(self, mode: str) -> None:
        if mode not in ("enforcement", "monitoring"):
            raise ValueError(f"unknown mode {mode!r}")
        if self.active:  # before `activate` the maps stay inert; activate writes the mode then
            for _plan, obj in self.objects:
                obj.map("sens_mode").update(struct.pack("<I", 0), struct.pack("<I", self._mode_value(mode)))
        self.mode = mode

    def counters(self) -> dict[str, int]:
        names = ("posted", "dropped", "filtered", "signals", "signal_errors", "rate_limited", "sock_owned",
                 "sock_track_errors")
        total = dict.fromkeys(names, 0)
        for _plan, obj in self.objects:
            try:
                m = obj.map("sens_counters")
                for i, n in enumerate(names):
                    raw = m.lookup(struct.pack("<I", i))
                    if raw:
                        total[n] += sum(struct.unpack(f"<{len(raw) // 8}Q", raw))
            except Exception:  # noqa: BLE001 - unreadable counters count as zero; status must not fail
                continue
        total.update(self.stack_lost)
        return total

    def status(self) -> Mapping[str, Any]:
        hooks = []
        for p, obj in self.objects:
            h: dict[str, Any] = {"hook": p.hook, "mechanism": p.mechanism, "note": p.note,
                                 "state": "loaded" if self.active else "prepared"}
            if self.pin_dir is not None:
                persistent, why = self._pins.get(id(obj), (False, "not attached yet"))
                h["persistent"], h["persistence"] = persistent, why
            hooks.append(h)
        hooks += self.skipped
        c = self.counters() if not self._unloaded else {}
        # the sensor's one ring is every policy's: not this section's memory
        mem = kernel_memory((obj for _p, obj in self.objects), skip_maps=("sens_events",))
        sc = self.scope
        scope = None if sc is None else {"cgroups": [r.path for r in sc.cgroups], "host": sc.host,
                                         "container_roots": [r.path for r in sc.container_roots]}
        return {"hooks": hooks, "events": c.get("posted", 0), "errors": c.get("dropped", 0) + c.get("signal_errors", 0),
                **mem.as_status(), "mode": self.mode, "counters": c, "scope": scope,
                "state": "unloaded" if self._unloaded else "loaded"}

    def unload(self) -> None:
        """Detach and free every hook object of the section, its pins first (`PolicyHandle.unload`)."""
        self._close(keep_pinned=False)

    def release(self) -> None:
        """The agent stops and enforcement persists: drop this process's hold, pinned hooks stay attached
        (`PolicyHandle.release`)."""
        self._close(keep_pinned=True)

    def _close(self, keep_pinned: bool) -> None:
        with self.ring.lock:
            hooks = {k: v for k, v in self.ring.hooks.items() if v[2] is not self}
            self.ring.hooks = hooks
        for _plan, obj in self.objects:
            if not keep_pinned:
                for link in obj.links:
                    try:
                        link.unpin()
                    except OSError:
                        pass
            try:
                obj.close(keep_pinned=keep_pinned)
            except Exception:  # noqa: BLE001 - closing goes on for the other objects whatever this one raised
                pass
            objs = getattr(self.ctx, "objects", None)
            if isinstance(objs, list):  # the agent's context keeps a list of what it opened
                try:
                    objs.remove(obj)
                except ValueError:
                    pass
        if not keep_pinned and self.pin_dir is not None:
            _remove_pins(self.pin_dir)
        self.objects = []
        self._attach = []
        self._scope_maps = []
        self.stack_map = None
        for fd in self._shared.values():
            os.close(fd)
        self._shared = {}
        self._unloaded = True
        self.active = False


def section_maps(compiled: S.CompiledHook) -> list[str]:
    """The maps of a hook that are its section's, one for all its objects: the socket map (TrackSock), the
    stack map, and the binary cache (pid -> executable). Sharing the binary cache is safe because every
    object that reads it attaches its own exec/exit programs, which drop a process's entry at exec and exit,
    before its hook: while any object of the section can look a process up, its entry is kept true. One
    cache per section instead of one per hook: 2.7 MiB less kernel memory for each further hook that
    matches binaries (benchmarks/policy_memory.py)."""
    out = []
    if uses_socket_map(compiled):
        out.append("sens_socks")
    if uses_stacks(compiled):
        out.append("sens_stacks")
    if compiled.flags & (S.CFG_NEED_BINARY | S.CFG_FOLLOW):
        out.append("sens_bins")
    return out


def uses_stacks(compiled: S.CompiledHook) -> bool:
    """Whether a selector of the hook takes stack traces (its objects then share the section's sens_stacks)."""
    cfg = compiled.cfg
    return any(cfg.sel[i].stacks for i in range(min(cfg.nsel, S.MAX_SELECTORS)))


def uses_socket_map(compiled: S.CompiledHook) -> bool:
    """Whether the hook reads or writes its section's socket map (TrackSock/UntrackSock, sock owners)."""
    cfg = compiled.cfg
    return bool(compiled.flags & (S.CFG_SOCK_OWNER | S.CFG_RET_TRACK | S.CFG_RET_UNTRACK)) or any(
        cfg.sel[i].sock_act for i in range(cfg.nsel))


def mark_socket_owners(plans: Sequence[HookPlan]) -> None:
    """Where some hook of the section tracks sockets (TrackSock/UntrackSock, or returnArgAction), every hook with a
    sock argument reports a tracked socket's owner as the event's process (Tetragon's socket tracking); a section
    that tracks none never looks its sockets up."""
    if not any(uses_socket_map(p.compiled) for p in plans):
        return
    for p in plans:
        if any(a.kind == S.ARG_SOCK and a.deref == S.DEREF_SOCK for a in p.args) or (
                p.return_plan is not None and p.return_plan.kind == S.ARG_SOCK):
            p.compiled.cfg.flags |= S.CFG_SOCK_OWNER
            p.compiled.flags |= S.CFG_SOCK_OWNER


def _remove_pins(pin_dir: str) -> None:
    """Remove what a section pinned under ``pin_dir`` (map pins, empty directories); the directory itself is
    the host's."""
    for root, _dirs, files in os.walk(pin_dir, topdown=False):
        for f in files:
            try:
                os.unlink(os.path.join(root, f))
            except OSError:
                pass
        if root != pin_dir:
            try:
                os.rmdir(root)
            except OSError:
                pass


def seed_follow(compiled: S.CompiledHook, obj: Any) -> None:
    """followChildren/followForks for processes that already run: mark descendants of matching ones in
    ``obj``'s ``sens_follow`` map (every object built on selectors.h has one), just before the hook attaches."""
    fb, fp = compiled.follow_binaries, compiled.follow_pids
    if not fb and not fp:
        return
    procs: dict[int, tuple[int, str, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            with open(f"/proc/{d}/status") as f:
                st = f.read()
            ppid = int(st.split("PPid:")[1].split()[0])
            nspid = int(st.split("NSpid:")[1].split()[-1]) if "NSpid:" in st else pid
            try:
                exe = os.readlink(f"/proc/{d}/exe")
            except OSError:
                exe = ""
            procs[pid] = (ppid, exe, nspid)
        except (OSError, IndexError, ValueError):
            continue
    own: dict[int, int] = {}
    for pid, (_ppid, exe, nspid) in procs.items():
        bits = 0
        for si, (op, values) in fb.items():
            if (op == "In" and exe in values) or (op == "Prefix" and any(exe.startswith(v) for v in values)) or (
                    op == "Postfix" and any(exe.endswith(v) for v in values)):
                bits |= 1 << si
        for si, (ns, pids) in fp.items():
            if (nspid if ns else pid) in pids:
                bits |= 1 << (8 + si)
        own[pid] = bits
    fmap = obj.map("sens_follow")
    for pid in procs:
        bits, cur, seen = 0, procs[pid][0], 0
        while cur > 0 and cur in procs and seen < 64:  # inherited from an ancestor
            bits |= own.get(cur, 0)
            cur, seen = procs[cur][0], seen + 1
        if bits:
            fmap.update(struct.pack("<I", pid), struct.pack("<I", bits))

"""Helpers for the tracepoint/kprobe sensor tests: drive a real sensor through a real context."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sensorium.hooks.testing import DirectContext, make_policy_view


class Rig:
    """A running sensor of class ``cls`` with its context; ``load(yaml)`` loads a section."""

    def __init__(self, cls: type, actions: Any = None) -> None:
        self.ctx = DirectContext(actions=actions)
        self.sensor = cls(self.ctx)
        self.sensor.start()
        self.handles: list[Any] = []

    def view(self, text: str, section: str, mode: str | None = None, policy_id: int = 7) -> Any:
        return make_policy_view(text, section, policy_id=policy_id, mode=mode)

    def load(self, text: str, section: str, mode: str | None = None, scope: Any = None,
             policy_id: int = 7) -> Any:
        """Check and load a section; ``scope`` (a `sensorium.hookspecs.Scope`, None = host-wide) goes
        into the `PolicyView` as the policy manager puts it."""
        view = self.view(text, section, mode, policy_id)
        if scope is not None:
            view = dataclasses.replace(view, scope=scope)
        self.sensor.check_policy(view)
        h = self.sensor.load_policy(view)
        self.handles.append(h)
        return h

    def events(self, pred: Callable[[dict], bool] = lambda e: True, wait: float = 0.3) -> list[dict]:
        """Bodies of the events so far that satisfy ``pred`` (polling for ``wait`` seconds at most,
        returning early once one matches)."""
        deadline = time.monotonic() + wait
        while True:
            self.ctx.poll(20)
            found = [next(iter(e.as_dict().values())) for e in self.ctx.events]
            found = [b for b in found if pred(b)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def close(self) -> None:
        for h in self.handles:
            h.unload()
        self.sensor.stop()
        self.ctx.close()

    def check_schema(self) -> None:
        """Every event of this rig, as exported, decodes as Tetragon's export (tests/tetragon_schema.py)."""
        from tetragon_schema import check_events

        check_events(self.ctx.events, f"the {type(self.sensor).__name__} rig")


def rig_fixture(cls: type) -> Callable[..., Iterator[Rig]]:
    @pytest.fixture
    def _rig() -> Iterator[Rig]:
        r = Rig(cls)
        try:
            yield r
        finally:
            r.close()
        r.check_schema()
    return _rig


def scope_of(*dirs: Any) -> Any:
    """The `Scope` of test cgroups (`Cgroup` objects or directories)."""
    from sensorium.scope import scope_of_directories

    return scope_of_directories([os.fspath(d) for d in dirs])


def string_args(body: dict) -> list[str]:
    return [a.get("string_arg") for a in body.get("args", []) if "string_arg" in a]


def our_program_ids() -> set[int]:
    """Ids of the hook object's BPF programs loaded in the kernel right now (any process: compare sets)."""
    import json
    import subprocess

    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, check=True).stdout
    return {p["id"] for p in json.loads(out) if p.get("name", "").startswith("sens_")}


def gone(ids: set[int], timeout: float = 5.0) -> bool:
    """Whether none of ``ids`` is loaded any more (the kernel frees detached programs after an RCU
    grace period, so this polls)."""
    deadline = time.monotonic() + timeout
    while ids & our_program_ids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def open_exit_available() -> bool:
    """Does this kernel load the exit-only program for the open family (tp_btf + the bpf_rdonly_cast kfunc,
    6.2 and later)? Where it does not (Debian's 6.1), the sys_enter + sys_exit pair serves those hooks."""
    from sensorium.bpf.probe import probe_kernel

    caps = probe_kernel()
    return caps.has("tp_btf") and caps.has("bpf_rdonly_cast")


def open_mechanism() -> str:
    """The mechanism the status must name for an openat hook on the opened file, on this kernel."""
    from sensorium.hooks import probes as engine

    return engine.OPEN_EXIT_MECHANISM if open_exit_available() else engine.PAIR_MECHANISM


class FakeCaps:
    """A kernel's capabilities as the planner sees them: only ``names`` (plan-level tests)."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)

    def has(self, name: str) -> bool:
        return name in self.names


def getpgid_policy(selectors: str, name: str = "pgid") -> str:
    """A kprobes policy on sys_getpgid (its int argument reported) with ``selectors`` (YAML, indented 4)."""
    return f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  kprobes:
  - call: sys_getpgid
    args:
    - {{index: 0, type: int}}
    selectors:
{selectors}
"""


def openat_tracepoint_policy(name: str, path: Any, extra_selector: str = "") -> str:
    """A tracepoints policy on syscalls/sys_enter_openat reporting the filename and matching ``path`` exactly;
    ``extra_selector``: more lines of its one selector (YAML, indented 6, e.g. matchActions)."""
    # sys_enter_openat's format: 4 common fields, then __syscall_nr, dfd, filename (index 6), flags, mode.
    return f"""\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
    args:
    - index: 6
      type: string
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values:
        - "{path}"
{extra_selector}"""

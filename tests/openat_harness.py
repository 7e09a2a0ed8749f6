"""The openat policy that the hook tests, the scope tests, the Kubernetes scope test and
benchmarks/openat_bench.py share: sys_openat hooked as a syscall, its path (argument 1) matched."""

from __future__ import annotations

import os

SIGKILL = """      matchActions:
      - action: Sigkill
"""
"""Selector keys for ``actions``: kill the opener."""


def openat_kprobes(path: str | os.PathLike[str], *, op: str = "Equal", flags: bool = True, actions: str = "") -> str:
    """A policy spec's ``kprobes:`` section: sys_openat with its dirfd, path and (``flags``) flags arguments, one
    selector matching the path with ``op``; ``actions``: more keys of that selector (e.g. `SIGKILL`). A caller
    may append further selector keys to the text."""
    flag_arg = "    - {index: 2, type: int}\n" if flags else ""
    return f"""  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - {{index: 0, type: int}}
    - {{index: 1, type: string}}
{flag_arg}    selectors:
    - matchArgs:
      - {{index: 1, operator: {op}, values: ["{os.fspath(path)}"]}}
{actions}"""


def openat_policy(path: str | os.PathLike[str], *, name: str = "openat-test", op: str = "Equal", flags: bool = True,
                  actions: str = "") -> str:
    """A whole TracingPolicy named ``name`` with `openat_kprobes` as its only section."""
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
""" + openat_kprobes(path, op=op, flags=flags, actions=actions)

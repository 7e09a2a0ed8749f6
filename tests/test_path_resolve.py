"""In-kernel path resolution (hook/path.h: sens_resolve_g) against the same rules in Python, on hundreds of
spellings: relative to the cwd and to a dirfd, "." and "..", empty components, ".." above the root, long
results cut at 255 bytes. A rule written for an absolute path must see the path the kernel will open, so a
mistake here is a bypass (e.g. "/a/b/c/../../d" reported as "/a/b/d")."""

from __future__ import annotations

import ctypes
import os
import random
from pathlib import Path

import pytest
from hook_helpers import rig_fixture

from sensorium_sensors.kprobe.sensor import KprobeSensor

pytestmark = [pytest.mark.kernel, pytest.mark.vm]

rig = rig_fixture(KprobeSensor)

NR_FACCESSAT2 = 439
MAGIC_MODE = 0x5E50  # an invalid mode: the call fails with EINVAL after sys_enter saw it
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def faccessat2(dirfd: int, path: bytes, tag: int) -> None:
    _libc.syscall(NR_FACCESSAT2, ctypes.c_int(dirfd), ctypes.c_char_p(path), ctypes.c_int(MAGIC_MODE),
                  ctypes.c_int(tag))


def expected(base: str, path: str) -> str:
    """The lexical resolution the kernel half implements: joined to `base` unless absolute, "." and empty
    components dropped, ".." removes the previous component and never climbs above "/"."""
    full = path if path.startswith("/") else base.rstrip("/") + "/" + path
    out: list[str] = []
    for c in full.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if out:
                out.pop()
            continue
        out.append(c)
    return "/" + "/".join(out)


POLICY = f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: resolve-diff}}
spec:
  kprobes:
  - call: sys_faccessat2
    syscall: true
    args:
    - {{index: 0, type: int}}
    - {{index: 1, type: string}}
    - {{index: 2, type: int}}
    - {{index: 3, type: int}}
    selectors:
    - matchArgs:
      - {{index: 2, operator: Equal, values: ["{MAGIC_MODE}"]}}
"""


def _spellings(rng: random.Random, n: int) -> list[str]:
    parts = ["a", "b", "c", ".", "..", "", "x.y", "...", ".hidden", "..a", "d" * 40]
    fixed = ["t", "./t", "../t", "sub/../t", "sub/./../sub/t", "a/b/c/../../d", "a/b/c/../../../../../../e",
             "/", "//", "/..", "/../../etc", "/a/b/c/../../d", "/a/./b/", "a//b//", ".", "..", "./", "../",
             "/tmp/./x/../y", "/" + "/".join(["z" * 50] * 6), "q/" * 100 + "end"]
    out = list(fixed)
    for _ in range(n - len(fixed)):
        k = rng.randint(1, 9)
        p = "/".join(rng.choice(parts) for _ in range(k))
        if rng.random() < 0.3:
            p = "/" + p
        out.append(p or ".")
    return out


def test_resolved_paths_match_the_lexical_rules(rig, tmp_path: Path) -> None:
    base = tmp_path / "base" / "dir1" / "dir2"
    base.mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    rig.load(POLICY, "kprobes")
    rng = random.Random(20261204)
    paths = _spellings(rng, 300)
    dirfd = os.open(other, os.O_RDONLY | os.O_DIRECTORY)
    old = os.getcwd()
    os.chdir(base)
    try:
        for i, p in enumerate(paths):
            # even tags: relative to the cwd (AT_FDCWD); odd: relative to an open directory
            faccessat2(-100 if i % 2 == 0 else dirfd, p.encode(), i)
    finally:
        os.chdir(old)
        os.close(dirfd)
    want = {i: expected(str(base) if i % 2 == 0 else str(other), p) for i, p in enumerate(paths)}
    got: dict[int, dict] = {}
    for _ in range(50):
        for b in rig.events(lambda b: True, wait=0.2):
            args = b["args"]
            got[args[3]["int_arg"]] = args[1]
        if len(got) >= len(paths):
            break
    assert len(got) == len(paths), f"{len(paths) - len(got)} calls were not reported"
    wrong = []
    for i, p in enumerate(paths):
        w = want[i]
        a = got[i]
        if len(w.encode()) > 255:  # cut at the string limit (Tetragon's string_arg carries no flag for it)
            if a.get("string_arg") != w.encode()[:255].decode():
                wrong.append((p, w[:60] + "...", a))
        elif a.get("string_arg") != w:
            wrong.append((p, w, a))
    assert not wrong, f"{len(wrong)} of {len(paths)} resolved differently, e.g. {wrong[:5]}"

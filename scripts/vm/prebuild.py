"""Build the sensors' eBPF objects for a VM-lane kernel on the host, before the guest boots.

    .venv/bin/python scripts/vm/prebuild.py BTF CACHE_DIR

Inside the lane's guests clang runs under QEMU's emulator, about ten times slower than here. The
build cache (sensorium.bpf.build) is keyed by the sources, the flags, clang's version and the hash of
the vmlinux.h generated from the BTF -- not by the machine -- so objects built here against the
guest kernel's BTF (extracted from its vmlinuz by prepare.sh) are cache hits in the guest, which uses
the same CACHE_DIR (run.sh sets SENSORIUM_CACHE_DIR to it).

Built: every ProbeSource that an installed sensor declares in SensorSpec.probes, plus the
parameterised ones listed in EXTRA below. Best effort: a probe that fails to build is reported and
skipped (the guest will then build it, and fail there with clang's message if it really is broken).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

# Probes made per policy at run time (not in SensorSpec.probes): (module, factory, arguments).
EXTRA: list[tuple[str, str, list[str]]] = [
    ("sensorium_sensors.lsm.bpflsm", "probe_for",
     ["file_open", "bprm_check_security", "socket_connect", "task_kill", "file_permission", "path_unlink"]),
    ("sensorium_sensors.kprobe.kfunc", "kfunc_probe",
     ["tcp_connect", "security_file_open", "do_sys_openat2", "commit_creds", "vfs_unlink", "security_socket_connect", "ip_output"]),
]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    btf, cache = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    if not btf.is_file():
        print(f"prebuild: no BTF file {btf}", file=sys.stderr)
        return 2
    os.environ["SENSORIUM_BTF"] = str(btf)
    os.environ["SENSORIUM_CACHE_DIR"] = str(cache)
    cache.mkdir(parents=True, exist_ok=True)

    from sensorium.bpf.build import build_object, vmlinux_h
    from sensorium.plugins import PluginRegistry

    started = time.monotonic()
    vmlinux_h(btf)
    probes = []
    for name, spec in sorted(PluginRegistry().discover().sensors.items()):
        probes.extend((name, p) for p in spec.probes)
    for module, factory, args in EXTRA:
        try:
            make = getattr(importlib.import_module(module), factory)
        except (ImportError, AttributeError) as e:
            print(f"prebuild: skipping {module}.{factory}: {e}", file=sys.stderr)
            continue
        probes.extend((module.rsplit(".", 2)[-2], make(a)) for a in args)

    built, failed = 0, 0
    for owner, probe in probes:
        t = time.monotonic()
        try:
            build_object(probe, btf=btf)
            built += 1
        except Exception as e:  # report and go on: the guest builds (and reports) what is missing
            failed += 1
            msg = str(e).strip().splitlines()
            print(f"prebuild: {owner}/{probe.name} failed: {msg[-1] if msg else e!r}", file=sys.stderr)
            continue
        took = time.monotonic() - t
        if took > 0.5:
            print(f"prebuild: {owner}/{probe.name} {took:.1f}s", file=sys.stderr)
    print(f"prebuild: {built} objects ready for {btf.parent.name} in {time.monotonic() - started:.1f}s"
          + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

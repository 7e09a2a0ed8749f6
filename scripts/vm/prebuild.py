"""Build the sensors' eBPF objects for a VM-lane kernel on the host, before the guest boots.

    .venv/bin/python scripts/vm/prebuild.py BTF CACHE_DIR

Inside the lane's guests clang runs under QEMU's emulator, about ten times slower than here. The
build cache (sensorium.bpf.build) is keyed by the sources, the flags, clang's version and the hash of
the vmlinux.h generated from the BTF -- not by the machine -- so objects built here against the
guest kernel's BTF (extracted from its vmlinuz by prepare.sh) are cache hits in the guest, which uses
the same CACHE_DIR (run.sh sets SENSORIUM_CACHE_DIR to it).

Built: every ProbeSource that an installed sensor declares in SensorSpec.probes or loads in its verifier
budget cases (SensorSpec.budget_cases); the kernel-function and LSM objects serve every function and hook
(their attach target is set at load), so nothing depends on the policies. Best effort: a probe that fails
to build is reported and skipped (the guest will then build it, and fail there with clang's message if it
really is broken).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


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
        if spec.budget_cases is not None:  # the objects the verifier budget test loads in the guest
            try:
                probes.extend((name, c.probe) for c in spec.budget_cases())
            except Exception as e:  # noqa: BLE001 - best effort, like every build here
                print(f"prebuild: {name}: budget cases unavailable: {e}", file=sys.stderr)

    built, failed = 0, 0
    seen: set[tuple] = set()
    for owner, probe in probes:
        key = (str(probe.source), tuple(sorted(probe.defines.items())))
        if key in seen:
            continue
        seen.add(key)
        t = time.monotonic()
        try:
            build_object(probe, btf=btf)
            built += 1
        except Exception as e:  # noqa: BLE001 - report and go on: the guest builds (and reports) what is missing
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

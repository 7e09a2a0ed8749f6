"""Every sensor's decoder structures match the C structs in its compiled object's BTF.

Generic over the plugin registry: each discovered sensor declares ``record_layouts`` ({C struct name:
ctypes.Structure}); its probes are built exactly as the agent builds them, the object's BTF is read with
``bpftool btf dump file X.o format raw -j``, and every ctypes field is compared with the BTF member of
the same name (offset and size), recursively for nested structures, plus the total size. A decoder whose
byte layout drifts from the C struct fails here instead of decoding garbage.
"""

from __future__ import annotations

import ctypes
import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sensorium.plugins import PluginRegistry


def _registry_sensors() -> list[tuple[str, Any]]:
    reg = PluginRegistry().discover()
    return sorted((name, spec) for name, spec in reg.sensors.items() if spec.record_layouts)


SENSORS = _registry_sensors()


@functools.cache
def _btf_types(obj: str) -> dict[int, dict[str, Any]]:
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    proc = subprocess.run([bpftool, "btf", "dump", "file", obj, "format", "raw", "-j"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, f"bpftool btf dump of {obj} failed: {proc.stderr.decode()}"
    return {t["id"]: t for t in json.loads(proc.stdout)["types"]}


def _resolve(types: dict[int, dict[str, Any]], tid: int) -> dict[str, Any]:
    """Skip typedef/const/volatile/restrict/type tags down to the type that has a size."""
    t = types[tid]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        t = types[t["type_id"]]
    return t


def _size(types: dict[int, dict[str, Any]], tid: int) -> int:
    t = _resolve(types, tid)
    if t["kind"] == "ARRAY":
        return _size(types, t["type_id"]) * t["nr_elems"]
    if t["kind"] == "PTR":
        return 8
    return t["size"]


def _compare(types: dict[int, dict[str, Any]], btf: dict[str, Any], cls: type, where: str) -> list[str]:
    errors = []
    if btf["size"] != ctypes.sizeof(cls):
        errors.append(f"{where}: size {ctypes.sizeof(cls)} in Python, {btf['size']} in BTF")
    members = {m["name"]: m for m in btf.get("members", [])}
    for fname, *_ in cls._fields_:
        desc = getattr(cls, fname)
        m = members.get(fname)
        if m is None:
            errors.append(f"{where}.{fname}: no such member in the C struct (has {sorted(members)})")
            continue
        if m["bits_offset"] % 8 or m.get("bitfield_size"):
            errors.append(f"{where}.{fname}: bitfield in C, cannot be a ctypes field")
            continue
        if desc.offset != m["bits_offset"] // 8:
            errors.append(f"{where}.{fname}: offset {desc.offset} in Python, {m['bits_offset'] // 8} in BTF")
        csize = _size(types, m["type_id"])
        if desc.size != csize:
            errors.append(f"{where}.{fname}: size {desc.size} in Python, {csize} in BTF")
        ftype = dict((f[0], f[1]) for f in cls._fields_)[fname]
        sub = _resolve(types, m["type_id"])
        if isinstance(ftype, type) and issubclass(ftype, ctypes.Structure) and sub["kind"] in ("STRUCT", "UNION"):
            errors.extend(_compare(types, sub, ftype, f"{where}.{fname}"))
    missing = set(members) - {f[0] for f in cls._fields_}
    for name in sorted(missing):
        if name and not name.startswith("_"):
            errors.append(f"{where}.{name}: C member not decoded in Python (add it, or name it _pad...)")
    return errors


@pytest.mark.parametrize("name,spec", SENSORS, ids=[n for n, _ in SENSORS])
def test_record_layouts_match_btf(name: str, spec: Any) -> None:
    from sensorium.bpf.build import BuildError, build_object

    try:
        objs = [build_object(p) for p in spec.probes]
    except BuildError as exc:
        if "not found" in str(exc):
            pytest.skip(f"cannot build sensor {name!r}: {exc}")
        raise
    errors: list[str] = []
    for struct_name, cls in spec.record_layouts.items():
        found = None
        for obj in objs:
            types = _btf_types(str(obj))
            for t in types.values():
                if t.get("name") == struct_name and t["kind"] == "STRUCT":
                    found = (types, t)
                    break
            if found:
                break
        if found is None:
            errors.append(f"struct {struct_name} is not in the BTF of {[Path(o).name for o in objs]} "
                          f"(the programs must reference it)")
            continue
        errors.extend(_compare(found[0], found[1], cls, f"{name}:{struct_name}"))
    assert not errors, "\n".join(errors)


def test_registry_has_sensors_with_layouts() -> None:
    """The check above must not pass vacuously: at least the exec sensor declares layouts."""
    assert "exec" in dict(SENSORS)

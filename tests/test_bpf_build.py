"""Building CO-RE objects: vmlinux.h from BTF, clang compile, content-hash cache, clear build errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sensorium.bpf import build
from sensorium.bpf.build import INCLUDE_DIR, BuildError, build_object, vmlinux_h
from sensorium.hookspecs import ProbeSource

needs_toolchain = pytest.mark.skipif(
    not (shutil.which("clang") and (shutil.which("bpftool") or Path("/usr/sbin/bpftool").exists())
         and Path("/sys/kernel/btf/vmlinux").exists()),
    reason="needs clang, bpftool and /sys/kernel/btf/vmlinux")

MINIMAL = '#include "vmlinux.h"\n#include <sensorium/common.h>\n#include "extra.h"\nSENSORIUM_LICENSE("GPL");\n' \
          'SEC("raw_tp/sys_enter") int prog(void *ctx) { return VALUE; }\n'


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("SENSORIUM_CACHE_DIR", str(d))
    return d


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    d = tmp_path / "probe"
    d.mkdir()
    (d / "p.bpf.c").write_text(MINIMAL)
    (d / "extra.h").write_text("#define VALUE 0\n")
    return d


def test_include_dir_holds_the_shared_headers() -> None:
    assert (INCLUDE_DIR / "sensorium" / "common.h").is_file()


@needs_toolchain
def test_vmlinux_h_is_generated_once_per_btf(cache: Path) -> None:
    first = vmlinux_h()
    assert first.is_relative_to(cache)
    assert "struct task_struct {" in first.read_text()
    mtime = first.stat().st_mtime_ns
    assert vmlinux_h() == first and first.stat().st_mtime_ns == mtime


def test_missing_btf_is_named(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"BTF file not found: .*nothing-here"):
        vmlinux_h(tmp_path / "nothing-here")


@needs_toolchain
def test_object_is_cached_by_content(cache: Path, probe_dir: Path) -> None:
    probe = ProbeSource(name="p", source=probe_dir / "p.bpf.c")
    first = build_object(probe)
    assert first.read_bytes()[:4] == b"\x7fELF" and first.name == "p.o"
    assert build_object(probe) == first  # cache hit
    # Any header next to the source, and any define, is part of the key.
    (probe_dir / "extra.h").write_text("#define VALUE 1\n")
    second = build_object(probe)
    assert second != first
    third = build_object(ProbeSource(name="p", source=probe_dir / "p.bpf.c", defines={"OTHER": "1"}))
    assert third not in (first, second)


@needs_toolchain
def test_compile_error_carries_clang_stderr(cache: Path, probe_dir: Path) -> None:
    (probe_dir / "p.bpf.c").write_text(MINIMAL.replace("return VALUE;", "return undeclared_thing;"))
    with pytest.raises(BuildError) as ei:
        build_object(ProbeSource(name="broken", source=probe_dir / "p.bpf.c"))
    assert "clang failed to compile probe 'broken'" in str(ei.value)
    assert "use of undeclared identifier 'undeclared_thing'" in str(ei.value)
    assert not list(cache.glob("objects/**/*.o"))  # nothing half-written left behind


def test_missing_clang_is_named_and_prebuilt_is_used(cache: Path, probe_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENSORIUM_CLANG", "/nonexistent/clang")
    with pytest.raises(BuildError, match=r"clang not found: install clang \(apt-get install clang\)"):
        build_object(ProbeSource(name="p", source=probe_dir / "p.bpf.c"))
    prebuilt = probe_dir / "p.o"
    prebuilt.write_bytes(b"\x7fELF")
    assert build_object(ProbeSource(name="p", source=probe_dir / "p.bpf.c", prebuilt=prebuilt)) == prebuilt


def test_bad_define_name_is_refused(cache: Path, probe_dir: Path) -> None:
    if build.clang_path() is None:
        pytest.skip("needs clang")
    with pytest.raises(BuildError, match="invalid define name"):
        build_object(ProbeSource(name="p", source=probe_dir / "p.bpf.c", defines={"A B": "1"}))

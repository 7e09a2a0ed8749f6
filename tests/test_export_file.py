"""The file exporter: JSON lines, 0600 files, size rotation with backups and gzip, disk full."""

from __future__ import annotations

import gzip
import os
import stat
import time
from pathlib import Path

import orjson
import pytest
from sensorium_testlib import tmpfs

from sensorium.events import Event
from sensorium.exporting import ExporterContextImpl
from sensorium.testing import make_event, run_exporter, runner_for, wait_until
from sensorium_exporters.file import FileExporter, FileOptions


def exporter(path: Path, **opts) -> FileExporter:
    return FileExporter(FileOptions(path=path, **opts), ExporterContextImpl("file", "test-node"))


def evs(n: int, start: int = 0, arg: str = "x" * 100) -> list[Event]:
    return [make_event(pid=i, arguments=arg) for i in range(start, start + n)]


def read_lines(p: Path) -> list[bytes]:
    data = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{p} ends with a partial line"
    return data.splitlines()


def all_pids(path: Path) -> list[int]:
    """Events of the rotated set, oldest file first."""
    backups = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.name.split(".")[2]))
    out = []
    for p in backups + [path]:
        out += [orjson.loads(line)["process_exec"]["process"]["pid"] for line in read_lines(p)]
    return out


def test_lines_are_the_events_json_in_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.log"
    events = evs(10)
    stats = run_exporter(exporter(path), events)
    assert stats["exported"] == 10
    assert path.read_bytes() == b"".join(e.json() + b"\n" for e in events)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_existing_file_is_appended_and_its_mode_tightened(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b'{"old":1}\n')
    path.chmod(0o644)
    run_exporter(exporter(path), evs(2))
    assert read_lines(path)[0] == b'{"old":1}' and len(read_lines(path)) == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rotation_loses_and_duplicates_nothing_and_respects_the_size(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    max_mb = 0.01  # 10485 bytes: about 40 events of ~250 bytes
    stats = run_exporter(exporter(path, max_size_mb=max_mb, max_backups=100), evs(1000), batch_size=64)
    assert stats["exported"] == 1000
    assert all_pids(path) == list(range(1000))
    files = list(tmp_path.iterdir())
    assert len(files) > 20
    assert all(f.stat().st_size <= max_mb * 1024 * 1024 for f in files)
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_max_backups_keeps_the_newest_and_compress_gzips_them(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    run_exporter(exporter(path, max_size_mb=0.01, max_backups=3, compress=True), evs(1000))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["events.log", "events.log.1.gz", "events.log.2.gz", "events.log.3.gz"]
    pids = all_pids(path)
    # The newest events survive, contiguous and in order, ending with the last one.
    assert pids == list(range(1000 - len(pids), 1000))
    assert all(stat.S_IMODE((tmp_path / n).stat().st_mode) == 0o600 for n in names)


def test_a_symlink_at_the_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("")
    (tmp_path / "events.log").symlink_to(target)
    r = runner_for(exporter(tmp_path / "events.log"))
    r.start()
    r.submit(evs(1))
    wait_until(lambda: r.stats()["failed"] >= 1, 5, "a failed open")
    r.stop(0.2)
    assert target.read_text() == ""
    assert r.stats()["last_error"].startswith("open:") and "symbolic links" in r.stats()["last_error"]


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    with tmpfs(tmp_path / "tmpfs", "size=256k,mode=0700") as mnt:
        yield mnt


def fill(dirpath: Path) -> Path:
    filler = dirpath / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_disk_full_keeps_events_and_delivers_them_in_order_once_space_returns(small_tmpfs: Path) -> None:
    path = small_tmpfs / "events.log"
    r = runner_for(exporter(path), batch_size=20, backoff_max_s=0.2)
    r.start()
    r.submit(evs(20))
    wait_until(lambda: r.stats()["exported"] == 20, 5, "the first events")
    filler = fill(small_tmpfs)
    r.submit(evs(200, 20))
    wait_until(lambda: r.stats()["failed"] >= 3, 10, "writes failing with ENOSPC")
    assert "No space left" in r.stats()["last_error"]
    # Nothing partial was left behind while the disk was full.
    assert all_pids(path)[:20] == list(range(20)) and path.read_bytes().endswith(b"\n")
    filler.unlink()
    wait_until(lambda: r.stats()["exported"] == 220, 10, "delivery after space returned")
    r.stop(5)
    assert all_pids(path) == list(range(220))
    assert r.stats()["dropped"] == 0


def test_a_file_moved_away_by_logrotate_is_reopened_at_the_path(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    r = runner_for(exporter(path), flush_interval_ms=20)
    r.start()
    r.submit(evs(5))
    wait_until(lambda: r.stats()["exported"] == 5, 5, "the first events")
    path.rename(tmp_path / "events.log.rotated")
    r.submit(evs(5, 5))
    r.stop(5)
    rotated = read_lines(tmp_path / "events.log.rotated")
    assert [orjson.loads(x)["process_exec"]["process"]["pid"] for x in rotated] == list(range(5))
    assert [orjson.loads(x)["process_exec"]["process"]["pid"] for x in read_lines(path)] == list(range(5, 10))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.fixture
def tmpfs_4m(tmp_path: Path):
    """A real 4 MiB tmpfs, mounted for this test and removed after it."""
    with tmpfs(tmp_path / "tmpfs4m", "size=4m,mode=0700") as mnt:
        yield mnt


def fill_in_pages(dirpath: Path) -> list[Path]:
    """Fill the file system with 4 KiB files (one page each), so that space can be freed a page at a time."""
    pages = []
    for i in range(100_000):
        p = dirpath / f"page{i}"
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                if os.write(fd, b"\0" * 4096) < 4096:
                    raise OSError(28, "short")
            finally:
                os.close(fd)
        except OSError:
            p.unlink(missing_ok=True)
            return pages
        pages.append(p)
    raise AssertionError("the file system never filled up")


def test_after_a_disk_full_the_first_freed_page_is_filled_with_whole_lines_in_order(tmpfs_4m: Path) -> None:
    from reliability_figures import record

    path = tmpfs_4m / "events.log"
    # A default-like backoff (10 s max): a full disk is still retried at least every second.
    r = runner_for(exporter(path), batch_size=4000, backoff_max_s=10.0)
    r.start()
    r.submit(evs(20))
    wait_until(lambda: r.stats()["exported"] == 20, 5, "the first events")
    pages = fill_in_pages(tmpfs_4m)
    pending = evs(3000, 20, arg="y" * 400)  # one batch of about 1.5 MB: far more than will be freed at once
    r.submit(pending)
    # Long enough for the backoff to have grown past a second (0.05 s doubled 6 times): a full disk is
    # still tried again four times a second.
    wait_until(lambda: r.stats()["failures_by_reason"].get("disk_full", 0) >= 7, 15, "writes failing with ENOSPC")
    stuck_at = r.stats()["exported"]
    pages.pop().unlink()  # one page: 4 KiB, less than a thousandth of the pending batch
    t0 = time.monotonic()
    wait_until(lambda: r.stats()["exported"] > stuck_at, 5, "lines written into the freed page")
    first_progress_s = time.monotonic() - t0
    assert first_progress_s < 0.5
    got = all_pids(path)  # read_lines asserts the file ends with a whole line
    assert got == list(range(len(got))), "lines out of order or repeated"
    written_in_page = r.stats()["exported"] - stuck_at
    assert 1 <= written_in_page <= 4096 // 500 + 1
    for p in pages:  # then everything: the rest follows, in order, once
        p.unlink()
    wait_until(lambda: r.stats()["exported"] == 3020, 15, "the whole batch")
    r.stop(5)
    assert all_pids(path) == list(range(3020))
    st = r.stats()
    assert st["dropped"] == 0 and st["delivered"] == 3020 and st["retried_by_reason"].get("disk_full", 0) > 0
    record("file_disk_full.first_page_freed_lines_written", written_in_page,
           note="lines (about 500 bytes each) written into one freed 4 KiB page of a full 4 MiB tmpfs")
    record("file_disk_full.first_page_freed_seconds_to_progress", round(first_progress_s, 2),
           note="after 7 failed attempts (the backoff alone would wait 3.2 s, the disk-full cap is 0.25 s)")
    record("file_disk_full.lines_lost", 3020 - len(set(all_pids(path))))
    record("file_disk_full.lines_duplicated", len(all_pids(path)) - len(set(all_pids(path))))
    record("file_disk_full.pending_batch_bytes", sum(len(e.json()) + 1 for e in pending))

"""The file exporter: JSON lines appended to a file, rotated by size, old files optionally gzipped.

``{type: file, path: /var/log/sensorium/events.log, max_size_mb: 10, max_backups: 5, compress: true}``

The file is reopened when something else moved or deleted it (checked before every batch, so an
external logrotate works too). Rotation renames ``events.log`` to ``events.log.1`` (``.1.gz`` when compressed),
shifting older ones up and deleting beyond ``max_backups``. Files are created with mode 0600 and never through a symlink
(the agent runs as root). A line lands whole or not at all: when the disk fills, the lines that fit stay,
the cut line is truncated away, and the write raises `PartialWrite` with the number of lines written,
so the runner resends only the rest. As soon as any space is freed the next attempt writes what fits
again: order is kept and no line is lost or written twice. A target that can never be written (a
directory, a path on /proc or /sys, a read-only mount) is refused at start (`check`).
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sensorium.events import Event, json_lines, line_parts
from sensorium.hookspecs import ExporterContext, ExporterSpec, PartialWrite
from sensorium.provide import provide
from sensorium.targets import check_file_target

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


class FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="The file written; its directory is created (mode 0700) if missing")
    max_size_mb: float = Field(default=10.0, gt=0, le=1_000_000, description="Rotate before the file would exceed this")
    max_backups: int = Field(default=5, ge=0, le=10_000, description="Rotated files kept (0: none)")
    compress: bool = Field(default=False, description="gzip rotated files")
    fsync: bool = Field(default=False, description="fsync on every flush (durability over speed)")


class FileExporter:
    def __init__(self, options: FileOptions, ctx: ExporterContext) -> None:
        self.options = options
        self.ctx = ctx
        self.path = Path(options.path)
        self.max_bytes = int(options.max_size_mb * 1024 * 1024)
        self._fd: int | None = None
        self._size = 0
        self._short: OSError | None = None  # why the last `_append` stopped early

    # ---- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, _FLAGS, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file may have been created with a wider mode
            self._size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def flush(self) -> None:
        # Writes go straight to the kernel (no user-space buffer); fsync only when asked.
        if self._fd is not None and self.options.fsync:
            os.fsync(self._fd)

    def _reopen_if_moved(self) -> None:
        """Someone else (logrotate, an operator) moved or deleted the file: start a new one at the
        configured path instead of writing on into a renamed or unlinked inode. One stat per batch."""
        assert self._fd is not None
        try:
            moved = os.stat(self.path, follow_symlinks=False).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            moved = True
        if moved:
            self.close()
            self.open()
            self.ctx.count("reopened")

    # ---- writing --------------------------------------------------------------------------------

    _IOV = 1024  # buffers per writev (IOV_MAX)

    def _append(self, bufs: Sequence[bytes], per_line: int) -> int:
        """Append the lines made of ``bufs`` (``per_line`` buffers each, the last ending in a newline).
        Returns the number of lines written: all of them, or, when a write fails (a full disk), the
        whole lines that fit; the cut line is truncated away so no partial line stays in the file. The
        caller raises with that count; the failure is kept in ``self._short``."""
        assert self._fd is not None
        start, written = self._size, 0
        view: memoryview | None = None
        i = 0
        try:
            while i < len(bufs):
                if view is not None:  # the rest of a short write, the plain way
                    n = os.write(self._fd, view)
                    if n <= 0:
                        raise OSError(errno.EIO, "short write")
                    written += n
                    view = view[n:] if n < len(view) else None
                    continue
                chunk = bufs[i:i + self._IOV]
                want = sum(map(len, chunk))
                n = os.writev(self._fd, chunk)
                written += n
                i += len(chunk)
                if n < want:
                    view = memoryview(b"".join(chunk))[n:]
            while view is not None:
                n = os.write(self._fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                written += n
                view = view[n:] if n < len(view) else None
        except OSError as exc:
            lines, kept = self._whole_lines(bufs, per_line, written)
            self._undo(start + kept)
            if self._fd is not None:
                self._size = start + kept
            self._short = exc
            return lines
        self._size = start + written
        self._short = None
        return len(bufs) // per_line

    @staticmethod
    def _whole_lines(bufs: Sequence[bytes], per_line: int, written: int) -> tuple[int, int]:
        """(lines, bytes) of the complete lines within the first ``written`` bytes."""
        lines = done = 0
        for j in range(0, len(bufs), per_line):
            size = sum(len(b) for b in bufs[j:j + per_line])
            if done + size > written:
                break
            done += size
            lines += 1
        return lines, done

    def _undo(self, keep: int) -> None:
        """Truncate back to ``keep`` bytes after a failed write, so no partial line stays in the file."""
        try:
            os.ftruncate(self._fd, keep)  # type: ignore[arg-type]
        except OSError:
            self.close()  # cannot undo: reopen on retry re-reads the real size

    def _raise_short(self, lines: int) -> None:
        exc = self._short
        assert exc is not None
        self._short = None
        if lines:
            raise PartialWrite(lines, f"{exc}") from exc
        raise exc

    def write_batch(self, events: Sequence[Event]) -> None:
        if self._fd is None:
            self.open()
        else:
            self._reopen_if_moved()
        parts = line_parts(events)
        if parts is not None:  # an EventBatch: gathered from its parts, no event object, no joined copy
            heads, rests = parts
            size = sum(map(len, heads)) + sum(map(len, rests))
            if self._size + size <= self.max_bytes:
                bufs: list[bytes] = [b""] * (2 * len(heads))
                bufs[0::2] = heads
                bufs[1::2] = rests
                n = self._append(bufs, 2)
                if n < len(heads):
                    self._raise_short(n)
                return
        lines = [line + b"\n" for line in json_lines(events)]
        if self._size + sum(map(len, lines)) <= self.max_bytes:
            # The common case: the batch fits before the rotation size: one gathered write for all of it.
            n = self._append(lines, 1)
            if n < len(lines):
                self._raise_short(n)
            return
        done = 0
        chunk: list[bytes] = []
        chunk_bytes = 0
        for line in lines:
            # Rotate on event boundaries, before the file would grow past the limit.
            if self._size + chunk_bytes + len(line) > self.max_bytes and (self._size + chunk_bytes) > 0:
                if chunk:
                    n = self._append(chunk, 1)
                    done += n
                    if n < len(chunk):
                        self._raise_short(done)
                    chunk, chunk_bytes = [], 0
                try:
                    self._rotate()
                except OSError as exc:
                    if done:
                        raise PartialWrite(done, f"rotate: {exc}") from exc
                    raise
            chunk.append(line)
            chunk_bytes += len(line)
        if chunk:
            n = self._append(chunk, 1)
            if n < len(chunk):
                self._raise_short(done + n)

    # ---- rotation -------------------------------------------------------------------------------

    def _backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def _existing(self, i: int) -> Path | None:
        for p in (self._backup(i), self._backup(i).with_name(self._backup(i).name + ".gz")):
            if p.exists():
                return p
        return None

    def _rotate(self) -> None:
        self.close()
        keep = self.options.max_backups
        if keep == 0:
            os.unlink(self.path)
        else:
            oldest = self._existing(keep)
            if oldest is not None:
                oldest.unlink()
            for i in range(keep - 1, 0, -1):
                src = self._existing(i)
                if src is not None:
                    suffix = ".gz" if src.name.endswith(".gz") else ""
                    os.rename(src, self._backup(i + 1).with_name(self._backup(i + 1).name + suffix))
            os.rename(self.path, self._backup(1))
        self.open()
        self.ctx.count("rotations")
        if keep and self.options.compress:
            self._compress(self._backup(1))

    def _compress(self, src: Path) -> None:
        dst = src.with_name(src.name + ".gz")
        tmp = src.with_name(src.name + ".gz.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            with (os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename=src.name, fileobj=raw, mode="wb") as gz,
                  open(src, "rb") as f):
                shutil.copyfileobj(f, gz, 1 << 20)
            os.rename(tmp, dst)
            os.unlink(src)
        except OSError as exc:
            # Keep the uncompressed backup (no event is lost); say why.
            self.ctx.log.warning("file exporter: cannot compress %s: %s", src, exc)
            self.ctx.count("compress_errors")
            try:
                os.unlink(tmp)
            except OSError:
                pass


sensorium_exporter = provide(ExporterSpec(
    name="file",
    description="JSON lines to a file with size-based rotation, backups and optional gzip",
    options=FileOptions, factory=FileExporter, check=lambda options: check_file_target(options.path),
))

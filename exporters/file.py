"""The file exporter: JSON lines appended to a file, rotated by size, old files optionally gzipped.

``{type: file, path: /var/log/sensorium/events.log, max_size_mb: 10, max_backups: 5, compress: true}``

The file is reopened when something else moved or deleted it (checked before every batch, so an
external logrotate works too). Rotation renames ``events.log`` to ``events.log.1`` (``.1.gz`` when compressed), shifting older ones
up and deleting beyond ``max_backups``. Files are created with mode 0600 and never through a symlink
(the agent runs as root). A write either lands whole or not at all: when the disk is full the partial
tail is truncated away and the write raises, so the runner's retry neither loses nor duplicates events.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from sensorium import hookimpl
from sensorium.events import Event, json_lines, line_parts
from sensorium.hookspecs import PartialWrite
from sensorium.hookspecs import ExporterContext, ExporterSpec

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

    def _write_all(self, data: bytes) -> None:
        """Append ``data`` whole, or truncate back and raise (no partial line stays in the file)."""
        assert self._fd is not None
        start = self._size
        try:
            self._write_view(memoryview(data))
        except OSError:
            self._undo(start)
            raise
        self._size = start + len(data)

    def _write_view(self, view: memoryview) -> None:
        assert self._fd is not None
        while view:
            n = os.write(self._fd, view)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            view = view[n:]

    def _undo(self, start: int) -> None:
        """Truncate back to ``start`` after a failed write, so no partial line stays in the file."""
        try:
            os.ftruncate(self._fd, start)  # type: ignore[arg-type]
        except OSError:
            self.close()  # cannot undo: reopen on retry re-reads the real size

    _IOV = 512  # events per writev (two buffers each; IOV_MAX is 1024)

    def _write_all_parts(self, heads: Sequence[bytes], rests: Sequence[bytes], size: int) -> None:
        """`_write_all` of the lines ``heads[i] + rests[i]``, gathered by writev (same all-or-nothing)."""
        assert self._fd is not None
        start = self._size
        step = self._IOV
        try:
            for i in range(0, len(heads), step):
                bufs: list[bytes] = [b""] * (2 * len(heads[i:i + step]))
                bufs[0::2] = heads[i:i + step]
                bufs[1::2] = rests[i:i + step]
                want = sum(map(len, bufs))
                n = os.writev(self._fd, bufs)
                if n < want:  # a short write (rare for a file): the remainder the plain way
                    self._write_view(memoryview(b"".join(bufs))[n:])
        except OSError:
            self._undo(start)
            raise
        self._size = start + size

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
                self._write_all_parts(heads, rests, size)
                return
        lines = json_lines(events)
        data = b"\n".join(lines) + b"\n" if lines else b""
        if self._size + len(data) <= self.max_bytes:
            # The common case: the batch fits before the rotation size: one write for all of it.
            if data:
                self._write_all(data)
            return
        done = 0
        chunk: list[bytes] = []
        chunk_bytes = 0
        try:
            for line in lines:
                line = line + b"\n"
                # Rotate on event boundaries, before the file would grow past the limit.
                if self._size + chunk_bytes + len(line) > self.max_bytes and (self._size + chunk_bytes) > 0:
                    if chunk:
                        self._write_all(b"".join(chunk))
                        done += len(chunk)
                        chunk, chunk_bytes = [], 0
                    self._rotate()
                chunk.append(line)
                chunk_bytes += len(line)
            if chunk:
                self._write_all(b"".join(chunk))
        except OSError as exc:
            if done:
                raise PartialWrite(done, f"{exc}") from exc
            raise

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
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename=src.name, fileobj=raw, mode="wb") as gz, open(src, "rb") as f:
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


@hookimpl
def sensorium_exporter() -> ExporterSpec:
    return ExporterSpec(
        name="file",
        description="JSON lines to a file with size-based rotation, backups and optional gzip",
        options=FileOptions,
        factory=FileExporter,
    )

"""Durability policy: when and how files and directories are flushed to stable storage.

Everything the storage layer writes goes through one :class:`Syncer`, so the
policy lives in one place and the number of flushes can be counted (tests and
benchmarks read the counters).

- Regular files are flushed with ``fdatasync`` where the platform has it: the
  WAL only appends, and Linux's ``fdatasync`` still flushes a size change, so
  the data is found again after a crash while the inode's timestamps are left
  to the next full flush.  Elsewhere ``fsync`` is used.  (macOS would need
  ``F_FULLFSYNC`` to reach the platter; we do not target it.)
- A rename or a new file is durable only once its *directory* is flushed too,
  so :meth:`Syncer.sync_dir` follows every create/rename/unlink that matters.
- ``enabled=False`` turns every flush into a no-op.  It exists only for
  benchmarks; :class:`raft.storage.Storage` exposes it as ``unsafe_no_fsync``
  and logs a warning when it is used.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Syncer", "atomic_write", "write_all"]


class Syncer:
    """Flushes files and directories, counting what it did."""

    __slots__ = ("dir_syncs", "enabled", "file_syncs")

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.file_syncs = 0  # file flushes actually issued
        self.dir_syncs = 0  # directory flushes actually issued

    def sync_file(self, fd: int, *, full: bool = False) -> None:
        """Make the data written to ``fd`` durable (no-op when disabled).

        ``full`` forces ``fsync``: after shrinking a file, so that the new
        size is certainly on disk before anything is written past it.
        """
        if not self.enabled:
            return
        fdatasync = getattr(os, "fdatasync", None)  # looked up per call: tests count calls
        if fdatasync is not None and not full:
            fdatasync(fd)
        else:
            os.fsync(fd)
        self.file_syncs += 1

    def sync_dir(self, path: Path) -> None:
        """Make creations, renames and removals inside directory ``path`` durable."""
        if not self.enabled:
            return
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.dir_syncs += 1


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: Path, data: bytes, syncer: Syncer, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    Writes ``<path>.tmp``, flushes it, renames it over ``path`` and flushes the
    directory.  A leftover ``.tmp`` from a crash is garbage its owner deletes.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
        syncer.sync_file(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    syncer.sync_dir(path.parent)

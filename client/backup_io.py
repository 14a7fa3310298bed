"""File-system driver for the backup format: back up a file or a directory, restore it.

A thin layer over the pure cores in :mod:`client.backup_format`. Promises:

* Memory stays bounded (a few chunk-sized buffers) whatever the size of the backup: files
  are read and written in :data:`IO_BLOCK`-sized pieces, and a directory is archived on the
  fly with :mod:`tarfile` in streaming mode (``'w|'``) straight into the encryptor.
* A backup appears in the store only when complete: it is written to a temporary file next
  to its destination, synced, then renamed.
* A restore never leaves partial output: the plaintext goes to a temporary file or
  directory next to the target, which is renamed to the target only after the final chunk
  has verified; on any failure the temporary output is deleted.
* Directory restores extract with tarfile's ``data`` filter (no absolute paths, no ``..``,
  no links leaving the target, no device files); a backup refuses up front the entries a
  restore would refuse, so every backup made is restorable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .backup_format import (
    DEFAULT_CHUNK_SIZE,
    BytesLike,
    ContentType,
    Decryptor,
    Encryptor,
)
from .backup_key import BackupKey
from .errors import RestoreError, TargetExists, UnsafeArchiveMember

__all__ = [
    "BACKUP_SUFFIX",
    "IO_BLOCK",
    "BackupInfo",
    "RestoreInfo",
    "backup",
    "backup_directory",
    "backup_file",
    "restore",
]

BACKUP_SUFFIX = ".vbk"
IO_BLOCK = 1024 * 1024
"""Bytes read from disk per step; a multiple of the default chunk size that fits in L2."""


@dataclasses.dataclass(frozen=True, slots=True)
class BackupInfo:
    """What :func:`backup_file` / :func:`backup_directory` wrote."""

    path: Path
    content: ContentType
    key_id: bytes
    file_id: bytes
    plaintext_bytes: int
    backup_bytes: int
    chunks: int


@dataclasses.dataclass(frozen=True, slots=True)
class RestoreInfo:
    """What :func:`restore` produced."""

    path: Path
    content: ContentType
    key_id: bytes
    file_id: bytes
    plaintext_bytes: int


def _write_all(fd: int, data: BytesLike) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(dest: Path, *, overwrite: bool) -> Iterator[int]:
    """Yield a descriptor on a temp file beside ``dest``; synced and renamed on success,
    deleted on failure."""
    if not overwrite and os.path.lexists(dest):
        raise TargetExists(f"{dest} already exists")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    try:
        yield fd
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if overwrite:
            os.replace(tmp, dest)
        else:
            # Checked again: the race left is only between this check and the rename.
            if os.path.lexists(dest):
                raise TargetExists(f"{dest} already exists")
            os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class _EncryptingSink:
    """A write-only file object for tarfile: everything written is encrypted to ``fd``."""

    def __init__(self, enc: Encryptor, fd: int) -> None:
        self._enc = enc
        self._fd = fd
        self.plaintext_bytes = 0
        self.backup_bytes = 0

    def write(self, data: BytesLike) -> int:
        out = self._enc.feed(data)
        _write_all(self._fd, out)
        n = len(memoryview(data))
        self.plaintext_bytes += n
        self.backup_bytes += len(out)
        return n

    def finish(self) -> None:
        out = self._enc.finish()
        _write_all(self._fd, out)
        self.backup_bytes += len(out)


def backup_file(
    key: BackupKey,
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: Callable[[int], bytes] = os.urandom,
    overwrite: bool = False,
) -> BackupInfo:
    """Encrypt the file ``source`` into the backup file ``dest``.

    Raises :class:`TargetExists` if ``dest`` exists (unless ``overwrite``), ``OSError``
    for I/O failures; ``dest`` is then left as it was.
    """
    src_path, dest_path = Path(source), Path(dest)
    enc = Encryptor(key, rng=rng, chunk_size=chunk_size, content=ContentType.FILE)
    buf = bytearray(max(IO_BLOCK // chunk_size, 1) * chunk_size)
    view = memoryview(buf)
    with (
        open(src_path, "rb", buffering=0) as src,
        _atomic_file(dest_path, overwrite=overwrite) as fd,
    ):
        sink = _EncryptingSink(enc, fd)
        while n := src.readinto(buf):
            sink.write(view[:n])
        sink.finish()
    return BackupInfo(
        dest_path, ContentType.FILE, key.key_id, enc.header.file_id,
        sink.plaintext_bytes, sink.backup_bytes, enc.chunks_sealed,
    )  # fmt: skip


def _restorable(scratch: str) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    """A tarfile ``add`` filter that refuses members the restore's data filter would."""

    def check(member: tarfile.TarInfo) -> tarfile.TarInfo:
        try:
            tarfile.data_filter(member, scratch)
        except tarfile.FilterError as exc:
            raise UnsafeArchiveMember(member.name, str(exc)) from exc
        return member

    return check


def backup_directory(
    key: BackupKey,
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: Callable[[int], bytes] = os.urandom,
    overwrite: bool = False,
) -> BackupInfo:
    """Archive the directory ``source`` on the fly (tar, streaming) and encrypt it to ``dest``.

    Symbolic links are stored as links (never followed). Raises
    :class:`UnsafeArchiveMember` for an entry a restore would refuse (a link pointing
    outside the directory, a device or FIFO), :class:`TargetExists`, or ``OSError``; then
    ``dest`` is left as it was.
    """
    src_path, dest_path = Path(source), Path(dest)
    if not src_path.is_dir():
        raise NotADirectoryError(f"{src_path} is not a directory")
    # A symbolic link given as the source means the directory it points to; links inside
    # the tree are kept as links.
    src_path = src_path.resolve()
    enc = Encryptor(key, rng=rng, chunk_size=chunk_size, content=ContentType.TAR)
    with (
        tempfile.TemporaryDirectory(prefix="vaultd-check-") as scratch,
        _atomic_file(dest_path, overwrite=overwrite) as fd,
    ):
        sink = _EncryptingSink(enc, fd)
        # The cast is only for typing: tarfile needs nothing but write() in 'w|' mode.
        fileobj: BinaryIO = sink  # type: ignore[assignment]
        with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(src_path, arcname=".", recursive=True, filter=_restorable(scratch))
        sink.finish()
    return BackupInfo(
        dest_path, ContentType.TAR, key.key_id, enc.header.file_id,
        sink.plaintext_bytes, sink.backup_bytes, enc.chunks_sealed,
    )  # fmt: skip


def backup(
    key: BackupKey,
    source: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    name: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: Callable[[int], bytes] = os.urandom,
    overwrite: bool = False,
) -> BackupInfo:
    """Back up a file or a directory into the cloud-store directory ``store``.

    The backup is named ``name`` (default: the source's name plus ``.vbk``).
    """
    src_path = Path(source)
    file_name = name if name is not None else src_path.name + BACKUP_SUFFIX
    if not file_name or os.sep in file_name or file_name in (".", ".."):
        raise ValueError(f"invalid backup name {file_name!r}")
    dest = Path(store) / file_name
    run = backup_directory if src_path.is_dir() else backup_file
    return run(key, src_path, dest, chunk_size=chunk_size, rng=rng, overwrite=overwrite)


class _PlaintextReader:
    """A read-only file object for tarfile, serving verified plaintext from a backup."""

    def __init__(self, dec: Decryptor, src: io.BufferedReader, first: bytes) -> None:
        self._dec = dec
        self._src = src
        self._buf = bytearray(IO_BLOCK)
        self._pending = first
        self._offset = 0
        self._eof = False
        self.plaintext_bytes = len(first)

    def read(self, size: int = -1) -> bytes:
        while self._offset >= len(self._pending):
            if self._eof:
                return b""
            self._refill()
        end = len(self._pending) if size < 0 else self._offset + size
        piece = self._pending[self._offset : end]
        self._offset += len(piece)
        return piece

    def drain(self) -> None:
        """Read (and verify) the rest of the stream, through the final chunk."""
        while not self._eof:
            self._refill()

    def _refill(self) -> None:
        n = self._src.readinto(self._buf)
        if n:
            plain = bytes(self._dec.feed(memoryview(self._buf)[:n]))
        else:
            plain = bytes(self._dec.finish())
            self._eof = True
        self.plaintext_bytes += len(plain)
        self._pending = plain
        self._offset = 0


def _open_backup(dec: Decryptor, src: io.BufferedReader) -> bytes:
    """Feed ``src`` until the header is verified; returns the plaintext already released."""
    while True:
        block = src.read(IO_BLOCK)
        # finish() raises here: the stream ended inside the header.
        plain = bytes(dec.feed(block)) if block else bytes(dec.finish())
        if dec.header is not None:
            return plain


def restore(
    key: BackupKey,
    backup_path: str | os.PathLike[str],
    target: str | os.PathLike[str],
) -> RestoreInfo:
    """Decrypt a backup to ``target`` (a file, or a directory for directory backups).

    ``target`` must not exist; it appears (by rename) only after the whole backup verified.
    Raises the :class:`~client.errors.BackupError` family for a damaged backup or a wrong
    key, :class:`UnsafeArchiveMember` for an archive member the data filter refuses,
    :class:`TargetExists`, :class:`RestoreError` or ``OSError``; in every failure case
    nothing is left at ``target`` or beside it.
    """
    target_path = Path(target)
    if os.path.lexists(target_path):
        raise TargetExists(f"{target_path} already exists; restore never overwrites")
    parent = target_path.parent
    if not parent.is_dir():
        raise RestoreError(f"{parent} is not a directory")
    dec = Decryptor(key)
    with open(backup_path, "rb") as src:
        first = _open_backup(dec, src)
        header = dec.header
        assert header is not None
        reader = _PlaintextReader(dec, src, first)
        if header.content == ContentType.FILE:
            _restore_file(reader, target_path)
        else:
            _restore_tree(reader, target_path)
    return RestoreInfo(
        target_path, header.content, header.key_id, header.file_id, reader.plaintext_bytes
    )


def _restore_file(reader: _PlaintextReader, target: Path) -> None:
    with _atomic_file(target, overwrite=False) as fd:
        while piece := reader.read(IO_BLOCK):
            _write_all(fd, piece)
        # read() returned b"" only after finish() verified the final chunk.


def _restore_tree(reader: _PlaintextReader, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        fileobj: BinaryIO = reader  # type: ignore[assignment]
        try:
            with tarfile.open(fileobj=fileobj, mode="r|") as tar:
                tar.extractall(tmp, filter="data")
        except tarfile.FilterError as exc:
            member = exc.tarinfo.name if exc.tarinfo is not None else "?"
            raise UnsafeArchiveMember(member, str(exc)) from exc
        except tarfile.TarError as exc:
            raise RestoreError(f"the backup decrypted but its archive is malformed: {exc}") from exc
        # tarfile stops at the end-of-archive marker; the final chunk must still verify.
        reader.drain()
        if os.path.lexists(target):
            raise TargetExists(f"{target} already exists; restore never overwrites")
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

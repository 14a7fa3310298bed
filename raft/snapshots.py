"""Snapshot files: one file per snapshot, checksummed, written atomically.

Name: ``snap/<index:016x>-<term:016x>.snap``.  Layout::

    0   magic    8  b"RAFTSNP1"
    8   length   8  payload length, little endian
    16  tag      8  keyed BLAKE2b-64 over bytes 0..16 and the payload
    24  payload     msgpack [format, incarnation, index, term, voters, learners, data]

The key is the directory's WAL key (see :mod:`raft.wal` for why a keyed
hash); the incarnation inside the payload rejects a file copied in from
another node.  A file is valid only if its size is exactly ``24 + length``,
its tag matches, and its payload agrees with its name.

Files are written as ``<name>.tmp``, flushed, renamed and the directory
flushed.  Leftover ``.tmp`` files are deleted when the store is opened;
files recovery found damaged are renamed ``<name>.corrupt`` and kept for
the operator; any other name is ignored with a warning.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import Final

import msgpack

from .errors import CorruptSnapshot, InvalidStorageInput, StorageError
from .fsync import Syncer, atomic_write
from .types import ConfState, NodeId, Snapshot, SnapshotMeta

__all__ = ["SnapshotFile", "SnapshotStore", "validate_conf"]

log = logging.getLogger("raft.snapshots")

FORMAT_VERSION: Final = 1
MAGIC: Final = b"RAFTSNP1"
_HEAD = struct.Struct("<8sQ")
_TAG_SIZE: Final = 8
PREFIX_SIZE: Final = _HEAD.size + _TAG_SIZE
_NAME_RE: Final = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_PERSON: Final = b"raft-snapshot"
_MAX_U64: Final = (1 << 64) - 1


def _is_uint(v: object) -> bool:
    return type(v) is int and 0 <= v <= _MAX_U64


def validate_conf(conf: object, what: str) -> None:
    """Raise InvalidStorageInput unless ``conf`` is a ConfState that can be stored."""
    if not isinstance(conf, ConfState):
        raise InvalidStorageInput(f"{what} must be a ConfState, got {type(conf).__name__}")
    seen: set[int] = set()
    for group in (conf.voters, conf.learners):
        if not isinstance(group, tuple):
            raise InvalidStorageInput(f"{what}: voters and learners must be tuples")
        for pair in group:
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and _is_uint(pair[0])
                and _is_uint(pair[1])
            ):
                raise InvalidStorageInput(f"{what}: members must be (node id, incarnation) pairs")
            if pair[0] in seen:
                raise InvalidStorageInput(f"{what}: node {pair[0]} listed twice")
            seen.add(pair[0])


def _pairs(v: object) -> tuple[tuple[NodeId, int], ...]:
    if not isinstance(v, list):
        raise ValueError("member list is not an array")
    out: list[tuple[NodeId, int]] = []
    for pair in v:
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_uint(x) for x in pair)):
            raise ValueError("member is not a [node, incarnation] pair")
        out.append((pair[0], pair[1]))
    return tuple(out)


@dataclass(slots=True, frozen=True)
class SnapshotFile:
    """A snapshot file found on disk (not yet verified)."""

    path: Path
    index: int
    term: int


class SnapshotStore:
    """The ``snap/`` directory of one storage directory."""

    __slots__ = ("_dir", "_incarnation", "_key", "_syncer")

    def __init__(self, directory: Path, *, key: bytes, incarnation: int, syncer: Syncer) -> None:
        self._dir = directory
        self._key = key
        self._incarnation = incarnation
        self._syncer = syncer

    @staticmethod
    def file_name(index: int, term: int) -> str:
        return f"{index:016x}-{term:016x}.snap"

    def clean(self) -> None:
        """Delete leftovers of interrupted writes; warn about names that are not ours."""
        for p in sorted(self._dir.iterdir()):
            if p.name.endswith(".snap.tmp") and p.is_file():
                log.warning("removing %s, left over from an interrupted snapshot write", p)
                p.unlink()
            elif p.name.endswith(".snap.corrupt"):
                log.warning("%s: a damaged snapshot kept for inspection; delete it at will", p)
            elif _NAME_RE.match(p.name) is None or not p.is_file():
                log.warning("ignoring %s: not a snapshot file name", p)

    def files(self) -> list[SnapshotFile]:
        """Snapshot files by name, newest (highest index) first."""
        out: list[SnapshotFile] = []
        for p in self._dir.iterdir():
            m = _NAME_RE.match(p.name)
            if m is not None and p.is_file():
                out.append(SnapshotFile(p, int(m.group(1), 16), int(m.group(2), 16)))
        out.sort(key=lambda f: (f.index, f.term), reverse=True)
        return out

    def _tag(self, head: bytes, payload: bytes | memoryview) -> bytes:
        h = blake2b(key=self._key, digest_size=_TAG_SIZE, person=_PERSON)
        h.update(head)
        h.update(payload)
        return h.digest()

    def save(self, snapshot: Snapshot) -> SnapshotFile:
        """Write ``snapshot`` durably (tmp, flush, rename, flush directory)."""
        meta = snapshot.meta
        payload: bytes = msgpack.packb(
            (
                FORMAT_VERSION,
                self._incarnation,
                meta.index,
                meta.term,
                meta.conf.voters,
                meta.conf.learners,
                snapshot.data,
            )
        )
        head = _HEAD.pack(MAGIC, len(payload))
        path = self._dir / self.file_name(meta.index, meta.term)
        atomic_write(path, head + self._tag(head, payload) + payload, self._syncer)
        return SnapshotFile(path, meta.index, meta.term)

    def load(self, f: SnapshotFile) -> Snapshot:
        """Read and verify one snapshot file; raise CorruptSnapshot if it is damaged."""
        p = str(f.path)
        try:
            data = f.path.read_bytes()
        except OSError as exc:
            raise StorageError(f"{p}: cannot read snapshot: {exc}") from exc
        if len(data) < PREFIX_SIZE:
            raise CorruptSnapshot(p, f"only {len(data)} bytes")
        magic, length = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise CorruptSnapshot(p, "bad magic")
        if len(data) != PREFIX_SIZE + length:
            raise CorruptSnapshot(p, f"size {len(data)} but the header says {PREFIX_SIZE + length}")
        view = memoryview(data)
        payload = view[PREFIX_SIZE:]
        if self._tag(data[: _HEAD.size], payload) != data[_HEAD.size : PREFIX_SIZE]:
            raise CorruptSnapshot(p, "checksum mismatch (damaged, or from another directory)")
        try:
            obj = msgpack.unpackb(payload)
            if not (isinstance(obj, list) and len(obj) == 7):
                raise ValueError("payload is not a 7-element array")
            version, inc, index, term, voters, learners, body = obj
            if version != FORMAT_VERSION:
                raise ValueError(f"unsupported format {version!r}")
            if not (_is_uint(index) and _is_uint(term) and type(body) is bytes):
                raise ValueError("bad index, term or data")
            conf = ConfState(_pairs(voters), _pairs(learners))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptSnapshot(p, f"undecodable payload: {exc}") from exc
        if inc != self._incarnation:
            raise CorruptSnapshot(p, "written by another storage incarnation")
        if (index, term) != (f.index, f.term):
            raise CorruptSnapshot(p, f"holds index {index} term {term}, unlike its name")
        return Snapshot(SnapshotMeta(index, term, conf), body)

    def quarantine(self, f: SnapshotFile) -> None:
        """Rename a damaged file out of the way (``.corrupt``), keeping it for inspection."""
        target = f.path.with_name(f.path.name + ".corrupt")
        f.path.replace(target)
        self._syncer.sync_dir(self._dir)
        log.error("renamed damaged snapshot %s to %s", f.path.name, target.name)

    def prune(self, retain: int) -> list[SnapshotFile]:
        """Delete all but the ``retain`` newest snapshot files; return what was deleted."""
        doomed = self.files()[retain:]
        for f in doomed:
            f.path.unlink()
            log.info("deleted old snapshot %s", f.path.name)
        if doomed:
            self._syncer.sync_dir(self._dir)
        return doomed

"""Durable storage for one Raft node: the facade the runtime persists Ready batches into.

Directory layout (see docs/storage.md for formats and the recovery rules)::

    <path>/LOCK     flock()ed while open: one Storage per directory
    <path>/META     incarnation, WAL key, bootstrap membership (written at creation,
                    or once by adopt_bootstrap for a directory created without one)
    <path>/wal/     segments, see raft.wal
    <path>/snap/    snapshot files, see raft.snapshots

Persisting a Ready, in the order its docstring demands::

    if rd.snapshot: storage.save_snapshot(rd.snapshot)   # durable on return
    storage.append(rd.entries)                           # buffered
    if rd.hard_state: storage.set_hard_state(rd.hard_state)  # buffered
    storage.sync()   # or: await group_committer.commit()
    # ... only now send rd.messages

Records reach the disk in the order they were given, and recovery keeps a
prefix of them, so a hard state is never recovered without the entries
queued before it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgpack

from .errors import (
    BootstrapMismatch,
    CorruptLog,
    CorruptSnapshot,
    InvalidStorageInput,
    StorageClosed,
    StorageError,
    StorageLocked,
)
from .fsync import Syncer, atomic_write
from .snapshots import SnapshotFile, SnapshotStore, validate_conf
from .types import ConfState, Entry, EntryKind, HardState, NodeId, Snapshot, SnapshotMeta
from .wal import (
    RecordCodec,
    RecordType,
    SegmentInfo,
    Wal,
    WalReplay,
    encode_entries,
    encode_hard_state,
    encode_snapshot_mark,
    parse_segment_name,
)

__all__ = ["DEFAULT_SEGMENT_BYTES", "Recovered", "Storage"]

log = logging.getLogger("raft.storage")

DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
MIN_SEGMENT_BYTES: Final = 4096
_META_MAGIC: Final = b"RAFTMETA"
_META_HEAD = struct.Struct("<8sII")  # magic, payload length, crc32 of payload
_META_FORMAT: Final = 1
_MAX_U64: Final = (1 << 64) - 1
_KINDS: Final = tuple(EntryKind)
_KIND_TYPES: Final = frozenset({int, EntryKind})
_DATA_TYPES: Final = frozenset({bytes, bytearray, memoryview})
# An interrupted first creation can leave segment 1 holding only its header
# record (20-byte frame + at most 22 bytes of msgpack); nothing bigger is ours to delete.
_MAX_HEADER_ONLY_SEGMENT: Final = 64


@dataclass(slots=True, frozen=True)
class Recovered:
    """What :meth:`Storage.open` found on disk.

    - ``incarnation``: random, nonzero, 64-bit; drawn when the directory was
      created and never changed.
    - ``bootstrap``: the initial membership given at creation, or None.
    - ``hard_state``: the last durable one (``HardState()`` if none).
    - ``snapshot``: the newest valid snapshot, or None.
    - ``entries``: the log after the snapshot, consecutive from
      ``snapshot.meta.index + 1`` (from 1 without a snapshot).
    """

    incarnation: int
    bootstrap: ConfState | None
    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]

    def initial_snapshot(self) -> Snapshot | None:
        """The snapshot to give ``RawNode``: the stored one, else an index-0 snapshot
        naming the bootstrap membership, else None (a node with no configuration)."""
        if self.snapshot is not None:
            return self.snapshot
        if self.bootstrap is not None:
            return Snapshot(SnapshotMeta(0, 0, self.bootstrap), b"")
        return None


@dataclass(slots=True, frozen=True)
class _Meta:
    incarnation: int
    key: bytes
    bootstrap: ConfState | None


def _encode_meta(meta: _Meta) -> bytes:
    boot = None
    if meta.bootstrap is not None:
        boot = (meta.bootstrap.voters, meta.bootstrap.learners)
    payload: bytes = msgpack.packb((_META_FORMAT, meta.incarnation, meta.key, boot))
    return _META_HEAD.pack(_META_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode_meta(path: Path, data: bytes) -> _Meta:
    # META cannot be keyed (it holds the key), so it carries a plain CRC-32.
    def bad(why: str) -> CorruptLog:
        return CorruptLog(f"{path}: META is damaged ({why}); see docs/storage.md, 'Corruption'")

    if len(data) < _META_HEAD.size:
        raise bad("too short")
    magic, length, crc = _META_HEAD.unpack_from(data)
    payload = data[_META_HEAD.size :]
    if magic != _META_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        raise bad("bad magic, size or checksum")
    try:
        obj = msgpack.unpackb(payload)
        if not (isinstance(obj, list) and len(obj) == 4):
            raise ValueError("not a 4-element array")
        version, inc, key, boot = obj
        if version != _META_FORMAT:
            raise ValueError(f"unsupported format {version!r}")
        if not (type(inc) is int and 0 < inc <= _MAX_U64 and type(key) is bytes and len(key) == 32):
            raise ValueError("bad incarnation or key")
        conf = None
        if boot is not None:
            if not (isinstance(boot, list) and len(boot) == 2):
                raise ValueError("bad bootstrap")
            conf = ConfState(_pairs(boot[0]), _pairs(boot[1]))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise bad(str(exc)) from exc
    return _Meta(inc, key, conf)


def _pairs(v: object) -> tuple[tuple[NodeId, int], ...]:
    if not isinstance(v, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(type(x) is int and x >= 0 for x in p) for p in v
    ):
        raise ValueError("member list is not [[node, incarnation], ...]")
    return tuple((p[0], p[1]) for p in v)


_MAX_INCARNATION = (1 << 63) - 1


def _new_incarnation() -> int:
    # 1..2**63-1: 0 means "unknown" to the core, which also refuses any
    # message field above 2**63-1 (a 64-bit draw made half of all nodes mute).
    while True:
        inc = int.from_bytes(os.urandom(8), "big") >> 1
        if inc:
            return inc


def _resolve(replay: WalReplay, snap_index: int, snap_term: int) -> tuple[int, bool]:
    """Where the recovered log starts in ``replay.rows`` given the chosen snapshot.

    Returns ``(k, discard)``: entries are ``rows[k:]``; ``discard`` says the
    log (if any) does not continue the snapshot and was dropped, as Raft
    requires when a snapshot's last entry is not in the log.  Raises
    CorruptLog if the WAL starts after the snapshot ends (a hole).
    """
    rows = replay.rows or []
    first = replay.first
    if first == 0 or not rows:
        return len(rows), snap_index > replay.last_index() or first == 0
    last = first + len(rows) - 1
    if snap_index < first - 1:
        raise CorruptLog(
            f"the WAL starts at index {first} but the snapshot ends at {snap_index}: "
            f"entries {snap_index + 1}..{first - 1} are missing"
        )
    if snap_index == first - 1:
        return 0, False
    if snap_index > last:
        return len(rows), True
    if rows[snap_index - first][0] == snap_term:
        return snap_index - first + 1, False
    log.warning(
        "the log's entry %d has term %d, not the snapshot's %d: discarding the log after it",
        snap_index,
        rows[snap_index - first][0],
        snap_term,
    )
    return len(rows), True


class Storage:
    """One node's durable Raft state.  Create with :meth:`open`.

    Thread safety: :meth:`append` and :meth:`set_hard_state` may run on the
    event loop while :meth:`sync` or :meth:`save_snapshot` run in worker
    threads (that is how :class:`raft.group_commit.GroupCommitter` uses it).
    The driver must still follow the Ready order: a snapshot that replaces
    the log must be saved before the entries that follow it are appended.
    """

    def __init__(
        self,
        path: Path,
        lock_fd: int,
        meta: _Meta,
        syncer: Syncer,
        wal: Wal,
        snaps: SnapshotStore,
        retain_snapshots: int,
    ) -> None:
        self._path = path
        self._lock_fd = lock_fd
        self._meta = meta
        self._syncer = syncer
        self._wal = wal
        self._snaps = snaps
        self._retain = retain_snapshots
        self._state_lock = threading.Lock()  # in-memory log state and record order
        self._snap_lock = threading.Lock()  # one snapshot save (or load) at a time
        self._closed = False
        self._snap_index = 0
        self._snap_term = 0
        self._snap_file: SnapshotFile | None = None
        self._last = 0
        self._run_starts: list[int] = []  # the log's terms, run-length encoded
        self._run_terms: list[int] = []
        self._hs = HardState()
        self.recovered: Recovered = Recovered(
            meta.incarnation, meta.bootstrap, HardState(), None, []
        )

    # ------------------------------------------------------------------ open

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        bootstrap: ConfState | None = None,
        incarnation: int | None = None,
        unsafe_no_fsync: bool = False,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        retain_snapshots: int = 3,
    ) -> Storage:
        """Open (creating if missing or empty) the storage directory at ``path`` and recover it.

        ``bootstrap`` is stored when the directory is created; reopening with
        a different non-None value raises BootstrapMismatch.  ``incarnation``
        exists for cluster initialization only, where a bootstrap membership
        must name every node's incarnation before the nodes' directories
        exist: it is used instead of a random draw when the directory is
        created, and checked (BootstrapMismatch) when it is reopened.  Never
        pass it when re-creating a wiped node: a wiped node must come back as
        a new incarnation.  ``unsafe_no_fsync``
        skips every flush (benchmarks only: a crash can lose or tear
        acknowledged data) and logs a warning.  Raises StorageLocked if the
        directory is open elsewhere, CorruptLog (or a subclass naming file and
        offset) for damage recovery must not paper over, StorageError for
        other unusable states.  What was found is in :attr:`recovered`.
        """
        p = Path(path)
        if bootstrap is not None:
            validate_conf(bootstrap, "bootstrap")
        if incarnation is not None and not (
            type(incarnation) is int and 0 < incarnation <= _MAX_INCARNATION
        ):
            raise InvalidStorageInput("incarnation must be an int in 1..2**63-1")
        if type(segment_bytes) is not int or segment_bytes < MIN_SEGMENT_BYTES:
            raise InvalidStorageInput(f"segment_bytes must be an int >= {MIN_SEGMENT_BYTES}")
        if type(retain_snapshots) is not int or retain_snapshots < 1:
            raise InvalidStorageInput("retain_snapshots must be an int >= 1")
        if unsafe_no_fsync:
            log.warning(
                "storage %s opened with unsafe_no_fsync=True: nothing is flushed to disk and a "
                "crash can lose acknowledged writes; use this for benchmarks only",
                p,
            )
        if p.exists() and not p.is_dir():
            raise StorageError(f"{p} exists and is not a directory")
        try:
            p.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(p / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create or lock {p}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            raise StorageLocked(f"{p} is already open (LOCK is held)") from exc
        try:
            return cls._open_locked(
                p,
                lock_fd,
                bootstrap,
                incarnation,
                Syncer(enabled=not unsafe_no_fsync),
                segment_bytes,
                retain_snapshots,
            )
        except BaseException:
            os.close(lock_fd)  # also releases the flock
            raise

    @classmethod
    def _open_locked(
        cls,
        p: Path,
        lock_fd: int,
        bootstrap: ConfState | None,
        incarnation: int | None,
        syncer: Syncer,
        segment_bytes: int,
        retain: int,
    ) -> Storage:
        wal_dir, snap_dir, meta_path = p / "wal", p / "snap", p / "META"
        if not meta_path.exists():
            return cls._create(p, lock_fd, bootstrap, incarnation, syncer, segment_bytes, retain)
        try:
            meta = _decode_meta(meta_path, meta_path.read_bytes())
        except OSError as exc:
            raise StorageError(f"cannot read {meta_path}: {exc}") from exc
        if bootstrap is not None and bootstrap != meta.bootstrap:
            raise BootstrapMismatch(
                f"{p} was created with bootstrap {meta.bootstrap}, not {bootstrap}"
            )
        if incarnation is not None and incarnation != meta.incarnation:
            raise BootstrapMismatch(
                f"{p} has incarnation {meta.incarnation:016x}, not {incarnation:016x}"
            )
        for d in (wal_dir, snap_dir):
            if not d.is_dir():
                raise CorruptLog(f"{d} is missing although {meta_path} exists")
        stale_meta_tmp = p / "META.tmp"
        if stale_meta_tmp.exists():
            stale_meta_tmp.unlink()
        codec = RecordCodec(meta.key)
        wal, replay = Wal.open(
            wal_dir,
            codec=codec,
            incarnation=meta.incarnation,
            segment_bytes=segment_bytes,
            syncer=syncer,
        )
        try:
            snaps = SnapshotStore(
                snap_dir, key=meta.key, incarnation=meta.incarnation, syncer=syncer
            )
            st = cls(p, lock_fd, meta, syncer, wal, snaps, retain)
            st._recover(replay)
            return st
        except BaseException:
            wal.close(sync=False)
            raise

    @classmethod
    def _create(
        cls,
        p: Path,
        lock_fd: int,
        bootstrap: ConfState | None,
        incarnation: int | None,
        syncer: Syncer,
        segment_bytes: int,
        retain: int,
    ) -> Storage:
        wal_dir, snap_dir = p / "wal", p / "snap"
        cls._clear_interrupted_creation(p)
        meta = _Meta(incarnation or _new_incarnation(), os.urandom(32), bootstrap)
        wal_dir.mkdir(mode=0o700, exist_ok=True)
        snap_dir.mkdir(mode=0o700, exist_ok=True)
        syncer.sync_dir(p)
        syncer.sync_dir(p.resolve().parent)  # in case ``p`` itself was just created
        # Segment 1 first, META last: META's presence is what says "created".
        wal = Wal.create(
            wal_dir,
            codec=RecordCodec(meta.key),
            incarnation=meta.incarnation,
            segment_bytes=segment_bytes,
            syncer=syncer,
        )
        try:
            atomic_write(p / "META", _encode_meta(meta), syncer)
        except BaseException:
            wal.close(sync=False)
            raise
        log.info("created storage %s with incarnation %016x", p, meta.incarnation)
        snaps = SnapshotStore(snap_dir, key=meta.key, incarnation=meta.incarnation, syncer=syncer)
        return cls(p, lock_fd, meta, syncer, wal, snaps, retain)

    @staticmethod
    def _clear_interrupted_creation(p: Path) -> None:
        """Without META, accept only what an interrupted creation leaves; refuse anything else."""
        doomed: list[Path] = []
        for sub, allowed in (("wal", "segment"), ("snap", "")):
            d = p / sub
            if not d.is_dir():
                continue
            for f in d.iterdir():
                parsed = parse_segment_name(f.name) if allowed == "segment" else None
                if f.name.endswith(".tmp") or (
                    parsed is not None
                    and parsed[0] == 1
                    and f.stat().st_size <= _MAX_HEADER_ONLY_SEGMENT
                ):
                    doomed.append(f)
                elif f.name.endswith((".wal", ".snap")):
                    raise StorageError(
                        f"{p} holds {f.relative_to(p)} but no META: it was not created by this "
                        "storage or lost its META; refusing to start over on top of it "
                        "(see docs/storage.md, 'Corruption')"
                    )
        if (p / "META.tmp").exists():
            doomed.append(p / "META.tmp")
        for f in doomed:
            log.warning("removing %s, left over from an interrupted creation", f)
            f.unlink()

    def _recover(self, replay: WalReplay) -> None:
        self._snaps.clean()
        chosen: Snapshot | None = None
        chosen_file: SnapshotFile | None = None
        bad: list[SnapshotFile] = []
        for f in self._snaps.files():
            try:
                chosen = self._snaps.load(f)
            except CorruptSnapshot as exc:
                log.error("%s", exc)
                bad.append(f)
                continue
            chosen_file = f
            break
        si = chosen.meta.index if chosen else 0
        st = chosen.meta.term if chosen else 0
        hs = replay.hard_state or HardState()
        try:
            k, discard = _resolve(replay, si, st)
        except CorruptLog as exc:
            damaged = ", ".join(f.path.name for f in bad) or "none"
            raise CorruptLog(
                f"{self._path}: {exc} (damaged snapshots: {damaged}); "
                "see docs/storage.md, 'Corruption'"
            ) from exc
        rows = (replay.rows or [])[k:]
        last = si + len(rows)
        needed = [(hs.commit, "the hard state's commit index")]
        if replay.last_mark is not None:
            needed.append((replay.last_mark[0], "the WAL's newest snapshot marker"))
        needed += [(f.index, f"damaged snapshot {f.path.name}") for f in bad]
        for index, what in needed:
            if index > last:
                raise CorruptLog(
                    f"{self._path}: {what} needs the log through index {index}, but the newest "
                    f"valid snapshot ({si}) and the WAL only reach {last}; "
                    "see docs/storage.md, 'Corruption'"
                )
        for f in bad:
            self._snaps.quarantine(f)  # the WAL covers the gap: fall back for good
        self._snap_index, self._snap_term, self._snap_file = si, st, chosen_file
        self._last = last
        entries = [
            Entry(term, si + 1 + n, _KINDS[kind], data) for n, (term, kind, data) in enumerate(rows)
        ]
        for e in entries:
            if not self._run_terms or self._run_terms[-1] != e.term:
                self._run_starts.append(e.index)
                self._run_terms.append(e.term)
        self._hs = HardState(hs.term, hs.vote, hs.commit)
        if chosen is not None and replay.last_mark != (si, st):
            # Record the decision so the next recovery replays the same log.
            self._wal.add(
                RecordType.SNAPSHOT, encode_snapshot_mark(si, st, discard), si + 1 if discard else 0
            )
            self._wal.sync()
        self.recovered = Recovered(
            self._meta.incarnation,
            self._meta.bootstrap,
            HardState(hs.term, hs.vote, hs.commit),
            chosen,
            entries,
        )

    # -------------------------------------------------------------- queries

    @property
    def path(self) -> Path:
        return self._path

    @property
    def incarnation(self) -> int:
        return self._meta.incarnation

    @property
    def bootstrap(self) -> ConfState | None:
        return self._meta.bootstrap

    @property
    def last_index(self) -> int:
        """Index of the last entry appended (durable or not); the snapshot's if none."""
        return self._last

    @property
    def snapshot_index(self) -> int:
        return self._snap_index

    @property
    def hard_state(self) -> HardState:
        """The last hard state given (durable or not)."""
        hs = self._hs
        return HardState(hs.term, hs.vote, hs.commit)

    @property
    def wal_syncs(self) -> int:
        """How many :meth:`sync` calls found records to write and flushed them."""
        return self._wal.flushes

    @property
    def fsyncs(self) -> int:
        """File flushes actually issued (WAL, segments, snapshots, META; 0 if unsafe_no_fsync)."""
        return self._syncer.file_syncs

    @property
    def segments(self) -> list[SegmentInfo]:
        return self._wal.segments

    def term_at(self, index: int) -> int | None:
        """Term of the stored entry at ``index`` (the snapshot's at its index), else None."""
        with self._state_lock:
            return self._term_at(index)

    def _term_at(self, index: int) -> int | None:
        if index == self._snap_index:
            return self._snap_term
        if index < self._snap_index or index > self._last:
            return None
        return self._run_terms[bisect_right(self._run_starts, index) - 1]

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosed(f"storage {self._path} is closed")

    # -------------------------------------------------------------- writing

    def append(self, entries: Sequence[Entry]) -> None:
        """Queue ``entries`` (consecutive indexes) for the next :meth:`sync`; nothing is flushed.

        They replace every stored entry at their first index and above (Raft's
        suffix truncation).  The batch becomes one WAL record and, at the next
        sync, part of one write.  Raises InvalidStorageInput, writing nothing,
        for a gap after the last index, an index at or below the snapshot or
        the commit index, terms that decrease, or values of the wrong type.
        """
        if not entries:
            return
        # Column lists double as validation input and as the record's payload:
        # a handful of C-speed passes instead of per-entry Python checks.
        try:
            indexes = [e.index for e in entries]
            terms = [e.term for e in entries]
            kinds = [e.kind for e in entries]
            datas = [e.data for e in entries]
        except AttributeError as exc:
            raise InvalidStorageInput(f"append() takes Entry objects: {exc}") from exc
        first, last = indexes[0], indexes[-1]
        if type(first) is not int or set(map(type, terms)) != {int}:
            raise InvalidStorageInput("entry indexes and terms must be ints")
        if indexes != list(range(first, first + len(indexes))):
            raise InvalidStorageInput(f"entries from {first} do not have consecutive indexes")
        if terms[0] < 1 or terms[-1] > _MAX_U64 or terms != sorted(terms):
            raise InvalidStorageInput("entry terms must be >= 1 and must not decrease")
        kind_set = set(kinds)
        if not all(type(k) in _KIND_TYPES and 0 <= k < len(_KINDS) for k in kind_set):
            raise InvalidStorageInput(f"unknown entry kind among {kind_set}")
        if not set(map(type, datas)) <= _DATA_TYPES:
            raise InvalidStorageInput("entry data must be bytes")
        payload = encode_entries(first, terms, kinds, datas)
        with self._state_lock:
            self._check_open()
            if first <= self._snap_index:
                raise InvalidStorageInput(
                    f"entries from {first} are at or below the snapshot ({self._snap_index})"
                )
            if first > self._last + 1:
                raise InvalidStorageInput(f"entries from {first} leave a gap after {self._last}")
            if first <= self._hs.commit:
                raise InvalidStorageInput(
                    f"entries from {first} would replace committed entries "
                    f"(commit {self._hs.commit})"
                )
            prev = self._term_at(first - 1)
            assert prev is not None  # first - 1 lies in [snapshot, last]
            if terms[0] < prev:
                raise InvalidStorageInput(
                    f"entry {first} has term {terms[0]}, below the previous entry's {prev}"
                )
            self._wal.add(RecordType.ENTRIES, payload, first, last)
            k = bisect_left(self._run_starts, first)
            del self._run_starts[k:]
            del self._run_terms[k:]
            if terms[0] == terms[-1]:
                changes: Sequence[tuple[int, int]] = ((first, terms[0]),)
            else:
                changes = [
                    (first + n, t) for n, t in enumerate(terms) if n == 0 or t != terms[n - 1]
                ]
            for start, term in changes:
                if not self._run_terms or self._run_terms[-1] != term:
                    self._run_starts.append(start)
                    self._run_terms.append(term)
            self._last = last

    def set_hard_state(self, hs: HardState) -> None:
        """Queue ``hs`` for the next :meth:`sync` (no-op if unchanged).

        Refuses (InvalidStorageInput) what Raft never does and what would be
        dangerous to persist: a lower term, a different vote in the same
        term, a lower commit index, or a commit index past the last entry.
        """
        if not isinstance(hs, HardState):
            raise InvalidStorageInput(f"set_hard_state() takes a HardState, got {type(hs)}")
        term, vote, commit = hs.term, hs.vote, hs.commit
        if not (
            type(term) is int
            and type(commit) is int
            and 0 <= term <= _MAX_U64
            and 0 <= commit <= _MAX_U64
            and (vote is None or (type(vote) is int and 0 <= vote <= _MAX_U64))
        ):
            raise InvalidStorageInput(f"bad hard state {hs}")
        with self._state_lock:
            self._check_open()
            cur = self._hs
            if (term, vote, commit) == (cur.term, cur.vote, cur.commit):
                return
            if term < cur.term:
                raise InvalidStorageInput(f"term would go back from {cur.term} to {term}")
            if term == cur.term and cur.vote is not None and vote != cur.vote:
                raise InvalidStorageInput(
                    f"term {term} already has a durable vote for {cur.vote}, not {vote}"
                )
            if commit < cur.commit:
                raise InvalidStorageInput(f"commit would go back from {cur.commit} to {commit}")
            if commit > self._last:
                raise InvalidStorageInput(f"commit {commit} is past the last entry {self._last}")
            self._wal.add(RecordType.HARD_STATE, encode_hard_state(hs))
            self._hs = HardState(term, vote, commit)

    def sync(self) -> None:
        """Write everything queued so far in one write and flush it once; durable on return.

        Blocking: from trio, call it in a worker thread (GroupCommitter does).
        After an I/O error the storage refuses further work (StorageClosed).
        """
        self._check_open()
        self._wal.sync()

    def adopt_bootstrap(self, conf: ConfState) -> None:
        """Record ``conf`` durably as the initial membership of a directory that
        was created without one: what a node joining with an empty directory
        learns from the leader's index-0 snapshot.  From the next
        :meth:`open` on, ``recovered.bootstrap`` (and so
        ``initial_snapshot()``) names it.

        META is rewritten atomically (temporary file, flush, rename, directory
        flush), so a crash leaves the old or the new one.  Adopting the
        membership already recorded does nothing; another one raises
        BootstrapMismatch.  Blocking (run it in a worker thread)."""
        validate_conf(conf, "bootstrap")
        with self._snap_lock:
            self._check_open()
            current = self._meta.bootstrap
            if current is not None:
                if current != conf:
                    raise BootstrapMismatch(
                        f"{self._path} already has bootstrap {current}, not {conf}"
                    )
                return
            meta = _Meta(self._meta.incarnation, self._meta.key, conf)
            atomic_write(self._path / "META", _encode_meta(meta), self._syncer)
            self._meta = meta

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` durably and compact behind it.

        The file is written atomically and flushed.  If the log holds the
        snapshot's last entry with the same term, the entries after it are
        kept; otherwise the whole log is discarded (Raft's InstallSnapshot
        rule).  A marker recording that choice is flushed to the WAL with any
        queued records.  Then all but the ``retain_snapshots`` newest snapshot
        files are deleted, and so are the oldest WAL segments whose entries
        the *oldest kept* snapshot covers, so that every kept snapshot stays
        a usable fallback.  Blocking (run it in a worker thread).

        Raises InvalidStorageInput for a snapshot not newer than the current
        one, or one that would discard committed entries.
        """
        if not isinstance(snapshot, Snapshot) or not isinstance(snapshot.meta, SnapshotMeta):
            raise InvalidStorageInput("save_snapshot() takes a Snapshot")
        meta = snapshot.meta
        index, term = meta.index, meta.term
        if not (type(index) is int and type(term) is int and index >= 1 and term >= 1):
            raise InvalidStorageInput(f"snapshot index and term must be ints >= 1: {meta}")
        if max(index, term) > _MAX_U64 or type(snapshot.data) is not bytes:
            raise InvalidStorageInput("snapshot index/term too large or data not bytes")
        validate_conf(meta.conf, "snapshot conf")
        with self._snap_lock:
            with self._state_lock:
                self._check_open()
                self._check_snapshot_fits(index, term)
            try:
                f = self._snaps.save(snapshot)
            except OSError as exc:
                raise StorageError(f"writing snapshot {index} failed: {exc}") from exc
            with self._state_lock:
                try:
                    self._check_open()
                    discard = self._check_snapshot_fits(index, term)
                except StorageError:
                    # The log changed under us (a driver bug): do not leave a file
                    # behind that recovery would take for the newest snapshot.
                    f.path.unlink(missing_ok=True)
                    raise
                self._wal.add(
                    RecordType.SNAPSHOT,
                    encode_snapshot_mark(index, term, discard),
                    index + 1 if discard else 0,
                )
                if discard:
                    self._run_starts, self._run_terms = [], []
                    self._last = index
                else:
                    k = bisect_right(self._run_starts, index + 1) - 1
                    del self._run_starts[: max(k, 0)]
                    del self._run_terms[: max(k, 0)]
                    if self._run_starts and self._last > index:
                        self._run_starts[0] = max(self._run_starts[0], index + 1)
                    elif self._last <= index:
                        self._run_starts, self._run_terms = [], []
                self._snap_index, self._snap_term, self._snap_file = index, term, f
            # The marker must be durable before any segment it supersedes is deleted.
            self._wal.sync()
            try:
                self._snaps.prune(self._retain)
                kept = self._snaps.files()
            except OSError as exc:
                raise StorageError(f"pruning old snapshots failed: {exc}") from exc
            self._wal.drop_covered(min(k.index for k in kept))

    def _check_snapshot_fits(self, index: int, term: int) -> bool:
        """Validate a snapshot against the log (state lock held); True if it discards the log."""
        if index <= self._snap_index:
            raise InvalidStorageInput(
                f"snapshot at {index} is not newer than the stored one at {self._snap_index}"
            )
        discard = self._term_at(index) != term
        if discard and self._hs.commit > index:
            raise InvalidStorageInput(
                f"snapshot ({index}, {term}) conflicts with the log, which is committed "
                f"through {self._hs.commit}"
            )
        return discard

    def load_snapshot(self) -> Snapshot | None:
        """Read back the current snapshot from disk (verified), or None if there is none."""
        with self._snap_lock:
            self._check_open()
            if self._snap_file is None:
                return None
            return self._snaps.load(self._snap_file)

    def close(self, *, sync: bool = True) -> None:
        """Release the directory, first writing and flushing queued records if ``sync``.

        ``sync=False`` drops queued records, as a crash would.  Idempotent.
        """
        with self._snap_lock:
            if self._closed:
                return
            with self._state_lock:
                self._closed = True
            try:
                self._wal.close(sync=sync)
            finally:
                os.close(self._lock_fd)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

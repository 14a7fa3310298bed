"""The segmented write-ahead log: record framing, segment files and crash recovery.

This module knows bytes, files and record types; the rules about what may be
appended (no gaps, never below the snapshot, never over committed entries)
live in :mod:`raft.storage`, which is the only intended caller.

Segments
    ``wal/<seq:016x>-<first:016x>.wal``.  ``seq`` numbers segments 1, 2, 3...
    with no holes (recovery refuses a missing one); ``first`` is the index of
    the next entry expected when the segment was opened (informational: after
    a truncation the segment may also hold lower indexes).  A segment is
    created complete with its first records (tmp file, flush, rename, flush
    the directory), filled up to ``segment_bytes`` and flushed once more before
    the next one is created, so only the *last* segment can ever end torn.

Records
    A 20-byte header then a msgpack payload::

        0  magic    2  b"\\xa7W"
        2  type     1  RecordType
        3  flags    1  0 (reserved)
        4  length   4  payload length, little endian
        8  tag      8  keyed BLAKE2b-64 of the payload
        16 htag     4  keyed BLAKE2b-32 of header bytes 0..16

    The key is a random 32-byte secret drawn when the directory is created
    (stored in META).  A keyed hash rather than a CRC because the payloads
    carry client-controlled bytes: with a public checksum a client could
    embed a well-formed record inside its command, and torn-tail recovery
    (which scans for "valid data after the damage") could be fooled by it.
    Keying also rejects a segment copied in from another node's directory.
    BLAKE2b is in the stdlib; 100 KB hashes in ~80 us here, far below the
    cost of the fsync that follows.  The header tag lets a scan reject a
    candidate position in O(1) before hashing a payload.

Record types
    SEGMENT (first record of every segment: format, incarnation, seq, first
    index), ENTRIES (a run of consecutive entries; it replaces every stored
    entry at its first index and above: this is how Raft's suffix truncation
    is made durable), HARD_STATE (the last one wins; every new segment starts
    with a copy so dropping old segments never loses it) and SNAPSHOT (a
    snapshot was installed: keep the log after it, or discard the whole log,
    as decided when it was saved).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from hashlib import blake2b
from pathlib import Path
from typing import Final

import msgpack

from .errors import CorruptLog, CorruptRecord, InvalidStorageInput, StorageClosed, StorageError
from .fsync import Syncer, write_all
from .types import EntryKind, HardState

__all__ = [
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "RecordCodec",
    "RecordType",
    "SegmentInfo",
    "TornTail",
    "Wal",
    "WalReplay",
    "encode_entries",
    "encode_hard_state",
    "encode_snapshot_mark",
    "scan_segment",
    "segment_name",
]

log = logging.getLogger("raft.wal")

FORMAT_VERSION: Final = 1
MAGIC: Final = b"\xa7W"
_HEAD = struct.Struct("<2sBBI8s")  # the 16 bytes the header tag covers
_HTAG_SIZE: Final = 4
HEADER_SIZE: Final = _HEAD.size + _HTAG_SIZE
MAX_PAYLOAD: Final = 1 << 30  # one record; a bigger batch must be split by the caller
_SEGMENT_RE: Final = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_PERSON_DATA: Final = b"raft-wal-data"
_PERSON_HEAD: Final = b"raft-wal-head"
_KINDS: Final = tuple(EntryKind)
_MAX_U64: Final = (1 << 64) - 1


class RecordType(IntEnum):
    SEGMENT = 1
    ENTRIES = 2
    HARD_STATE = 3
    SNAPSHOT = 4


_KNOWN_TYPES: Final = frozenset(int(t) for t in RecordType)


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(seq, first_index)`` for a segment file name, None for any other name."""
    m = _SEGMENT_RE.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


class RecordCodec:
    """Frames and checks records under one directory's key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise StorageError("the WAL key must be 32 bytes")
        self._key = key

    def header(self, rtype: int, payload: bytes) -> bytes:
        """The 20-byte header that must precede ``payload`` on disk."""
        tag = blake2b(payload, key=self._key, digest_size=8, person=_PERSON_DATA).digest()
        head = _HEAD.pack(MAGIC, rtype, 0, len(payload), tag)
        return head + blake2b(head, key=self._key, digest_size=4, person=_PERSON_HEAD).digest()

    def frame(self, rtype: int, payload: bytes) -> bytes:
        return self.header(rtype, payload) + payload

    def parse_header(self, buf: bytes, off: int) -> tuple[int, int, bytes] | None:
        """``(type, length, payload tag)`` if a genuine header starts at ``off``, else None.

        The caller guarantees ``HEADER_SIZE`` bytes are available.  A header
        with a valid tag but an unknown type is returned as is: it was
        written with this key, so it is a format question, not noise.
        """
        if buf[off : off + 2] != MAGIC:
            return None
        head = buf[off : off + _HEAD.size]
        htag = buf[off + _HEAD.size : off + HEADER_SIZE]
        if blake2b(head, key=self._key, digest_size=4, person=_PERSON_HEAD).digest() != htag:
            return None
        _, rtype, flags, length, tag = _HEAD.unpack(head)
        if flags != 0:
            return None
        return rtype, length, tag

    def payload_ok(self, payload: memoryview, tag: bytes) -> bool:
        return blake2b(payload, key=self._key, digest_size=8, person=_PERSON_DATA).digest() == tag


# ----------------------------------------------------------------- payloads


def encode_entries(
    first: int, terms: Sequence[int], kinds: Sequence[int], datas: Sequence[bytes]
) -> bytes:
    """Columnar payload ``[first_index, [terms], [kinds], [datas]]`` (indexes are implied).

    The caller has validated the batch (consecutive indexes, sane terms).
    """
    return msgpack.packb((first, terms, kinds, datas))  # type: ignore[no-any-return]


def encode_hard_state(hs: HardState) -> bytes:
    return msgpack.packb((hs.term, hs.vote, hs.commit))  # type: ignore[no-any-return]


def encode_snapshot_mark(index: int, term: int, discard: bool) -> bytes:
    return msgpack.packb((index, term, discard))  # type: ignore[no-any-return]


def _is_uint(v: object) -> bool:
    return type(v) is int and 0 <= v <= _MAX_U64


def _decode_entries(payload: memoryview) -> tuple[int, list[tuple[int, int, bytes]]]:
    obj = msgpack.unpackb(payload)
    if not (isinstance(obj, list) and len(obj) == 4):
        raise ValueError("entries payload is not a 4-element array")
    first, terms, kinds, datas = obj
    if not (_is_uint(first) and first >= 1):
        raise ValueError("bad first index")
    if not (
        isinstance(terms, list)
        and isinstance(kinds, list)
        and isinstance(datas, list)
        and 0 < len(terms) == len(kinds) == len(datas)
    ):
        raise ValueError("entry columns missing, empty or of different lengths")
    if not all(_is_uint(t) and t >= 1 for t in terms):
        raise ValueError("bad entry term")
    if not all(type(k) is int and 0 <= k < len(_KINDS) for k in kinds):
        raise ValueError("unknown entry kind")
    if not all(type(d) is bytes for d in datas):
        raise ValueError("entry data is not bytes")
    return first, list(zip(terms, kinds, datas, strict=True))


def _decode_hard_state(payload: memoryview) -> HardState:
    obj = msgpack.unpackb(payload)
    if not (isinstance(obj, list) and len(obj) == 3):
        raise ValueError("hard state payload is not a 3-element array")
    term, vote, commit = obj
    if not (_is_uint(term) and _is_uint(commit) and (vote is None or _is_uint(vote))):
        raise ValueError("bad hard state field")
    return HardState(term, vote, commit)


def _decode_mark(payload: memoryview) -> tuple[int, int, bool]:
    obj = msgpack.unpackb(payload)
    if not (isinstance(obj, list) and len(obj) == 3):
        raise ValueError("snapshot marker payload is not a 3-element array")
    index, term, discard = obj
    if not (_is_uint(index) and index >= 1 and _is_uint(term) and type(discard) is bool):
        raise ValueError("bad snapshot marker field")
    return index, term, discard


def _decode_segment_header(payload: memoryview) -> tuple[int, int, int, int]:
    obj = msgpack.unpackb(payload)
    if not (isinstance(obj, list) and len(obj) == 4 and all(_is_uint(v) for v in obj)):
        raise ValueError("segment header payload is not 4 unsigned integers")
    return obj[0], obj[1], obj[2], obj[3]


# ------------------------------------------------------------------ reading


@dataclass(slots=True, frozen=True)
class TornTail:
    """What recovery cut from the end of the last segment."""

    path: str
    offset: int  # where the cut was made (the new file size)
    cut_bytes: int
    reason: str


@dataclass(slots=True)
class RawRecord:
    rtype: int
    offset: int
    payload: memoryview


def _find_valid_record(codec: RecordCodec, data: bytes, start: int) -> int | None:
    """Offset of the first complete, genuine record at or after ``start``, if any."""
    view = memoryview(data)
    n = len(data)
    pos = data.find(MAGIC, start)
    while pos != -1 and pos + HEADER_SIZE <= n:
        parsed = codec.parse_header(data, pos)
        if parsed is not None:
            _, length, tag = parsed
            end = pos + HEADER_SIZE + length
            if end <= n and codec.payload_ok(view[pos + HEADER_SIZE : end], tag):
                return pos
        pos = data.find(MAGIC, pos + 1)
    return None


def scan_segment(
    path: str, data: bytes, codec: RecordCodec, *, last: bool
) -> tuple[list[RawRecord], TornTail | None]:
    """Split a segment's bytes into checked records.

    The first damaged position ends the scan.  It is a *torn tail* (returned,
    for the caller to cut) only if this is the last segment, the damage is
    not in the segment's first record (segments are created complete), and
    no genuine record follows it: a header cut short, a payload cut short, or
    a bad header or checksum with nothing valid behind it.  Anything else
    raises :class:`CorruptRecord` naming the file and offset.
    """
    view = memoryview(data)
    n = len(data)
    records: list[RawRecord] = []
    off = 0
    while off < n:
        reason: str
        if n - off < HEADER_SIZE:
            reason, may_hide_data = (
                f"record header cut short ({n - off} of {HEADER_SIZE} bytes)",
                False,
            )
        else:
            parsed = codec.parse_header(data, off)
            if parsed is None:
                reason, may_hide_data = "bad record header (magic or header checksum)", True
            else:
                rtype, length, tag = parsed
                end = off + HEADER_SIZE + length
                if rtype not in _KNOWN_TYPES:
                    # Written with our key, so not noise: a newer format or a bug.
                    raise CorruptRecord(path, off, f"unknown record type {rtype}")
                if end > n:
                    reason = f"payload cut short ({n - off - HEADER_SIZE} of {length} bytes)"
                    may_hide_data = False
                elif not codec.payload_ok(view[off + HEADER_SIZE : end], tag):
                    reason, may_hide_data = "payload checksum mismatch", True
                else:
                    records.append(RawRecord(rtype, off, view[off + HEADER_SIZE : end]))
                    off = end
                    continue
        if not last:
            raise CorruptRecord(path, off, f"{reason} in a segment that is not the last")
        if off == 0:
            raise CorruptRecord(path, off, f"{reason} in the segment's first record")
        if may_hide_data:
            later = _find_valid_record(codec, data, off + 1)
            if later is not None:
                raise CorruptRecord(
                    path, off, f"{reason}, yet a valid record follows at offset {later}"
                )
        return records, TornTail(path, off, n - off, reason)
    return records, None


# ------------------------------------------------------------------- replay


@dataclass(slots=True)
class SegmentInfo:
    seq: int
    first_index: int  # from the name: the next index expected when it was opened
    path: Path
    max_index: int = 0  # highest entry index stored in it (0: none)


@dataclass(slots=True)
class WalReplay:
    """The log as the WAL records describe it, before a snapshot is chosen.

    ``rows[k]`` is ``(term, kind, data)`` of the entry at index ``first + k``.
    ``first`` is 0 when nothing fixes it yet (no entries, no discarding
    snapshot marker).  ``last_mark`` is the newest snapshot marker seen.
    """

    hard_state: HardState | None = None
    first: int = 0
    rows: list[tuple[int, int, bytes]] | None = None
    last_mark: tuple[int, int] | None = None
    torn: TornTail | None = None

    def last_index(self) -> int:
        if self.first == 0:
            return 0
        return self.first + len(self.rows or ()) - 1


class _Replayer:
    """Applies records in log order, with the same truncation rules as the writer."""

    def __init__(self) -> None:
        self.r = WalReplay(rows=[])
        self.last_hs_frame = b""

    def apply(self, path: str, rec: RawRecord, codec: RecordCodec) -> int:
        """Apply one record; return the highest entry index it holds (0 if none)."""
        r = self.r
        rows = r.rows
        assert rows is not None
        try:
            if rec.rtype == RecordType.ENTRIES:
                first, new = _decode_entries(rec.payload)
                if r.first == 0:
                    r.first = first
                    rows.extend(new)
                else:
                    last = r.first + len(rows) - 1
                    if first > last + 1:
                        raise CorruptRecord(
                            path, rec.offset, f"entries start at {first} but the log ends at {last}"
                        )
                    if first < r.first:
                        raise CorruptRecord(
                            path, rec.offset, f"entries start at {first}, below the log ({r.first})"
                        )
                    del rows[first - r.first :]
                    rows.extend(new)
                return first + len(new) - 1
            if rec.rtype == RecordType.HARD_STATE:
                r.hard_state = _decode_hard_state(rec.payload)
                self.last_hs_frame = codec.frame(RecordType.HARD_STATE, bytes(rec.payload))
                return 0
            if rec.rtype == RecordType.SNAPSHOT:
                index, term, discard = _decode_mark(rec.payload)
                if discard:
                    rows.clear()
                    r.first = index + 1
                elif (
                    r.first != 0
                    and r.first <= index < r.first + len(rows)
                    and rows[index - r.first][0] != term
                ):
                    raise CorruptRecord(
                        path,
                        rec.offset,
                        f"snapshot marker ({index}, {term}) contradicts the log",
                    )
                r.last_mark = (index, term)
                return 0
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptRecord(path, rec.offset, f"undecodable payload: {exc}") from exc
        raise CorruptRecord(path, rec.offset, f"unexpected record type {rec.rtype}")


# ------------------------------------------------------------------ writing


# A pending record: (type, header, payload, first index, last index); indexes are
# those of an ENTRIES record, else 0.
_Pending = tuple[int, bytes, bytes, int, int]


class Wal:
    """An open WAL directory: buffered appends, one write and one flush per :meth:`sync`.

    Thread safety: :meth:`add` may be called from any thread while another
    thread runs :meth:`sync`; records keep the order in which :meth:`add`
    was called.  :meth:`sync`, :meth:`drop_covered` and :meth:`close`
    serialize on an internal lock.  After any I/O error the WAL refuses all
    further work (a failed flush leaves the page cache in an unknown state,
    so retrying could report durability that does not exist).
    """

    def __init__(
        self,
        directory: Path,
        codec: RecordCodec,
        incarnation: int,
        segment_bytes: int,
        syncer: Syncer,
    ) -> None:
        self._dir = directory
        self._codec = codec
        self._incarnation = incarnation
        self._segment_bytes = segment_bytes
        self._syncer = syncer
        self._pending: list[_Pending] = []
        self._pending_lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._segments: list[SegmentInfo] = []
        self._fd = -1
        self._size = 0  # bytes in the current segment
        self._head_size = 0  # bytes of the current segment's opening records
        self._next_index = 1
        self._last_hs_frame = b""
        self._failed: BaseException | None = None
        self._closed = False
        self.flushes = 0  # sync() calls that wrote and flushed something

    # -- construction --------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        codec: RecordCodec,
        incarnation: int,
        segment_bytes: int,
        syncer: Syncer,
    ) -> Wal:
        """Start a WAL in an empty ``directory`` with segment 1."""
        wal = cls(directory, codec, incarnation, segment_bytes, syncer)
        wal._open_new_segment(1)
        return wal

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        codec: RecordCodec,
        incarnation: int,
        segment_bytes: int,
        syncer: Syncer,
    ) -> tuple[Wal, WalReplay]:
        """Recover an existing WAL: check every segment, cut a torn tail, replay the records.

        Raises :class:`CorruptRecord` / :class:`CorruptLog` for damage that is
        not a torn tail, for a hole in the segment sequence, for segments
        written by another directory (incarnation) or when there is no
        segment at all.
        """
        wal = cls(directory, codec, incarnation, segment_bytes, syncer)
        found: list[tuple[int, int, Path]] = []
        for p in sorted(directory.iterdir()):
            parsed = parse_segment_name(p.name)
            if parsed is not None and p.is_file():
                found.append((parsed[0], parsed[1], p))
            elif p.name.endswith(".tmp") and p.is_file():
                log.warning("removing %s, left over from an interrupted segment creation", p)
                p.unlink()
            else:
                log.warning("ignoring %s: not a WAL segment name", p)
        if not found:
            raise CorruptLog(f"{directory}: no WAL segment (the WAL was lost or never created)")
        found.sort()
        for k, (seq, _, p) in enumerate(found):
            if seq != found[0][0] + k:
                raise CorruptLog(
                    f"{directory}: WAL segment {found[0][0] + k:016x} is missing (next is {p.name})"
                )
        rep = _Replayer()
        torn: TornTail | None = None
        for k, (seq, first_index, p) in enumerate(found):
            is_last = k == len(found) - 1
            data = p.read_bytes()
            records, torn = scan_segment(str(p), data, codec, last=is_last)
            if not records:  # segments are created holding their header record
                raise CorruptRecord(str(p), 0, "empty segment file")
            head = records[0]  # scan_segment refuses a damaged first record
            if head.rtype != RecordType.SEGMENT:
                raise CorruptRecord(str(p), 0, "the first record is not a segment header")
            try:
                version, inc, hseq, _ = _decode_segment_header(head.payload)
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise CorruptRecord(str(p), 0, f"undecodable segment header: {exc}") from exc
            if version != FORMAT_VERSION:
                raise CorruptRecord(str(p), 0, f"unsupported segment format {version}")
            if inc != incarnation:
                raise CorruptRecord(str(p), 0, "segment belongs to another storage incarnation")
            if hseq != seq:
                raise CorruptRecord(str(p), 0, f"header says segment {hseq:016x}")
            info = SegmentInfo(seq, first_index, p)
            for rec in records[1:]:
                if rec.rtype == RecordType.SEGMENT:
                    raise CorruptRecord(str(p), rec.offset, "segment header in mid-segment")
                info.max_index = max(info.max_index, rep.apply(str(p), rec, codec))
            wal._segments.append(info)
            if is_last:
                wal._reopen_last(p, records, torn)
        rep.r.torn = torn
        wal._last_hs_frame = rep.last_hs_frame
        wal._next_index = rep.r.last_index() + 1
        return wal, rep.r

    def _reopen_last(self, path: Path, records: list[RawRecord], torn: TornTail | None) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            if torn is not None:
                log.warning(
                    "%s: cut a torn tail of %d bytes at offset %d (%s); those writes were "
                    "never acknowledged",
                    torn.path,
                    torn.cut_bytes,
                    torn.offset,
                    torn.reason,
                )
                os.ftruncate(fd, torn.offset)
                # The cut must be durable before new records land past it, or a
                # later crash could resurrect the old tail behind them.
                self._syncer.sync_file(fd, full=True)
            self._size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        head_end = len(records) > 1 and records[1].rtype == RecordType.HARD_STATE
        last_head = records[1] if head_end else records[0]
        self._head_size = last_head.offset + HEADER_SIZE + len(last_head.payload)

    def _open_new_segment(self, seq: int) -> None:
        """Create segment ``seq`` durably, complete with its opening records; make it current."""
        path = self._dir / segment_name(seq, self._next_index)
        tmp = path.with_name(path.name + ".tmp")
        head = self._codec.frame(
            RecordType.SEGMENT,
            msgpack.packb((FORMAT_VERSION, self._incarnation, seq, self._next_index)),
        )
        data = head + self._last_hs_frame
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            write_all(fd, data)
            self._syncer.sync_file(fd)
            os.replace(tmp, path)
            self._syncer.sync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._size = self._head_size = len(data)
        self._segments.append(SegmentInfo(seq, self._next_index, path))

    # -- writing -------------------------------------------------------------

    def add(self, rtype: RecordType, payload: bytes, first: int = 0, last: int = 0) -> None:
        """Queue one record (framed now, written by the next :meth:`sync`)."""
        if len(payload) > MAX_PAYLOAD:
            raise InvalidStorageInput(
                f"a record of {len(payload)} bytes exceeds {MAX_PAYLOAD}: split the batch"
            )
        header = self._codec.header(rtype, payload)
        with self._pending_lock:
            self._check_usable()
            self._pending.append((rtype, header, payload, first, last))

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageClosed("the WAL is closed")
        if self._failed is not None:
            raise StorageClosed(f"the WAL failed earlier and refuses further work: {self._failed}")

    def sync(self) -> bool:
        """Write every queued record and flush it; True if there was anything to do.

        Records queued while this runs wait for the next call.
        """
        with self._io_lock:
            with self._pending_lock:
                self._check_usable()
                items, self._pending = self._pending, []
            if not items:
                return False
            try:
                self._write(items)
                self._syncer.sync_file(self._fd)
            except OSError as exc:
                self._failed = exc
                raise StorageError(f"WAL write or flush failed: {exc}") from exc
            self.flushes += 1
            return True

    def _write(self, items: list[_Pending]) -> None:
        chunks: list[bytes] = []
        size = self._size
        seg = self._segments[-1]
        for rtype, header, payload, first, last in items:
            n = HEADER_SIZE + len(payload)
            if size + n > self._segment_bytes and size > self._head_size:
                write_all(self._fd, b"".join(chunks))
                chunks = []
                self._size = size
                self._roll(first if rtype == RecordType.ENTRIES else self._next_index)
                size = self._size
                seg = self._segments[-1]
            chunks.append(header)
            chunks.append(payload)
            size += n
            if rtype == RecordType.ENTRIES:
                seg.max_index = max(seg.max_index, last)
                self._next_index = last + 1
            elif rtype == RecordType.HARD_STATE:
                self._last_hs_frame = header + payload
            elif rtype == RecordType.SNAPSHOT and first:
                self._next_index = first  # a discarding snapshot: the log restarts here
        write_all(self._fd, b"".join(chunks))
        self._size = size

    def _roll(self, next_index: int) -> None:
        # The outgoing segment must be complete on disk before a later one exists:
        # recovery treats damage in any segment but the last as corruption.
        self._syncer.sync_file(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._next_index = next_index
        self._open_new_segment(self._segments[-1].seq + 1)

    # -- maintenance ---------------------------------------------------------

    @property
    def segments(self) -> list[SegmentInfo]:
        """A copy of the segment list, oldest first (the last one is being written)."""
        with self._io_lock:
            return [SegmentInfo(s.seq, s.first_index, s.path, s.max_index) for s in self._segments]

    def drop_covered(self, index: int) -> list[Path]:
        """Delete the oldest segments whose entries all have indexes <= ``index``.

        Only a prefix of the sequence goes (recovery refuses holes), never the
        segment being written.  Returns the deleted paths.
        """
        removed: list[Path] = []
        with self._io_lock:
            self._check_usable()
            while len(self._segments) > 1 and self._segments[0].max_index <= index:
                seg = self._segments.pop(0)
                seg.path.unlink()
                removed.append(seg.path)
            if removed:
                try:
                    self._syncer.sync_dir(self._dir)
                except OSError as exc:
                    self._failed = exc
                    raise StorageError(f"flushing {self._dir} failed: {exc}") from exc
        for p in removed:
            log.info("dropped WAL segment %s (covered by a snapshot)", p.name)
        return removed

    def close(self, *, sync: bool = True) -> None:
        """Close the current segment, first writing and flushing queued records if ``sync``.

        With ``sync=False`` queued records are dropped, as a crash would drop them.
        """
        try:
            if sync and not self._closed and self._failed is None:
                self.sync()
        finally:
            with self._io_lock:
                with self._pending_lock:
                    self._closed = True
                    self._pending = []
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1

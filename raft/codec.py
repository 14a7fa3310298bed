"""Wire format of node-to-node Raft traffic: msgpack payloads in length-prefixed frames.

Pure: no sockets, no clock, no randomness.  See docs/transport.md for the layout.

A *frame* is ``length (4 bytes, big-endian, unsigned) | version (1 byte) | payload``
where ``length`` counts the payload bytes only.  A *payload* is one msgpack array
of messages; each message is a positional msgpack array of the 18 fields of
:class:`raft.types.Message`, in declaration order, with ``entries`` as an array
of ``[term, index, kind, data]`` arrays and ``snapshot`` as ``nil`` or
``[index, term, [[voter, incarnation]...], [[learner, incarnation]...]]``.

Decoding is strict: anything but exactly that shape, with non-negative integers
(booleans are not integers), known enum values, ``bin`` (never ``str``) byte
strings and no trailing bytes, raises :class:`raft.errors.MalformedMessage`;
broken framing raises :class:`raft.errors.FrameError`.  Encoding applies the
same rules, so whatever :func:`encode_message` accepts decodes back to an equal
message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, Final, NoReturn

import msgpack

from .errors import FrameError, FrameTooLarge, MalformedMessage
from .types import ConfState, Entry, EntryKind, Message, MessageType, SnapshotMeta

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "VERSION",
    "WIRE_FIELDS",
    "FrameDecoder",
    "decode_payload",
    "encode_frames",
    "encode_message",
    "encode_payload",
    "frame",
    "frames_from_packed",
    "payload_from_packed",
]

VERSION: Final = 1
"""The only wire version this module speaks."""

HEADER_SIZE: Final = 5
"""Bytes in front of every payload: 4 of length, 1 of version."""

DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
"""Default cap on one frame's payload.  It must exceed the largest single message
the core emits: a snapshot chunk or one APPEND's entry batch, plus a few hundred
bytes of fields."""

WIRE_FIELDS: Final = (
    "type",
    "src",
    "dst",
    "term",
    "incarnation",
    "index",
    "log_term",
    "entries",
    "commit",
    "reject",
    "hint_index",
    "hint_term",
    "context",
    "force",
    "snapshot",
    "offset",
    "chunk",
    "done",
)
"""Message fields in wire order (one array slot each)."""

_N_FIELDS: Final = len(WIRE_FIELDS)
_HEADER = struct.Struct(">IB")
_LENGTH = struct.Struct(">I")
_MAX_UINT64: Final = 2**64 - 1
_MSG_TYPES: Final[dict[int, MessageType]] = {int(t): t for t in MessageType}
_ENTRY_KINDS: Final[dict[int, EntryKind]] = {int(k): k for k in EntryKind}
# msgpack raises a zoo of exception types on bad input; these are all of them.
_UNPACK_ERRORS: Final = (
    msgpack.UnpackException,
    ValueError,
    TypeError,
    OverflowError,
)


# ---------------------------------------------------------------- encoding


def _bad(what: str) -> MalformedMessage:
    return MalformedMessage(what)


def _is_uint(v: object) -> bool:
    return type(v) is int and 0 <= v <= _MAX_UINT64


def _entries_to_wire(entries: object) -> list[tuple[int, int, int, bytes]]:
    if type(entries) is not list:
        raise _bad("entries must be a list")
    out: list[tuple[int, int, int, bytes]] = []
    append = out.append
    kinds = _ENTRY_KINDS
    for e in entries:
        if type(e) is not Entry:
            raise _bad(f"entries must hold Entry objects, not {type(e).__name__}")
        t = e.term
        i = e.index
        k = e.kind
        d = e.data
        if (
            type(t) is not int
            or t < 0
            or type(i) is not int
            or i < 0
            or type(d) is not bytes
            or (type(k) is not EntryKind and (type(k) is not int or k not in kinds))
        ):
            raise _bad(f"entry has a field of the wrong type or range: {e!r:.200}")
        append((t, i, k, d))
    return out


def _conf_members_to_wire(members: object, what: str) -> list[tuple[int, int]]:
    if type(members) is not tuple:
        raise _bad(f"{what} must be a tuple")
    out: list[tuple[int, int]] = []
    for pair in members:
        if type(pair) is not tuple or len(pair) != 2:
            raise _bad(f"{what} must hold (node, incarnation) pairs")
        node, inc = pair
        if not (_is_uint(node) and _is_uint(inc)):
            raise _bad(f"{what} must hold non-negative integers")
        out.append((node, inc))
    return out


def _snapshot_to_wire(meta: object) -> tuple[int, int, list[Any], list[Any]] | None:
    if meta is None:
        return None
    if type(meta) is not SnapshotMeta:
        raise _bad("snapshot must be a SnapshotMeta or None")
    if not (_is_uint(meta.index) and _is_uint(meta.term)):
        raise _bad("snapshot index and term must be non-negative integers")
    conf = meta.conf
    if type(conf) is not ConfState:
        raise _bad("snapshot conf must be a ConfState")
    return (
        meta.index,
        meta.term,
        _conf_members_to_wire(conf.voters, "voters"),
        _conf_members_to_wire(conf.learners, "learners"),
    )


def _message_to_wire(m: Message) -> tuple[Any, ...]:
    if type(m) is not Message:
        raise _bad(f"expected a Message, not {type(m).__name__}")
    mt = m.type
    if type(mt) is not MessageType and (type(mt) is not int or mt not in _MSG_TYPES):
        raise _bad(f"unknown message type {mt!r:.50}")
    src = m.src
    dst = m.dst
    term = m.term
    inc = m.incarnation
    index = m.index
    log_term = m.log_term
    commit = m.commit
    hint_index = m.hint_index
    hint_term = m.hint_term
    context = m.context
    offset = m.offset
    for v in (src, dst, term, inc, index, log_term, commit, hint_index, hint_term, context, offset):
        if type(v) is not int or v < 0:
            raise _bad(f"integer fields must be non-negative ints, got {v!r:.50}")
    reject = m.reject
    force = m.force
    done = m.done
    if type(reject) is not bool or type(force) is not bool or type(done) is not bool:
        raise _bad("reject, force and done must be bools")
    chunk = m.chunk
    if type(chunk) is not bytes:
        raise _bad("chunk must be bytes")
    return (
        mt,
        src,
        dst,
        term,
        inc,
        index,
        log_term,
        _entries_to_wire(m.entries),
        commit,
        reject,
        hint_index,
        hint_term,
        context,
        force,
        _snapshot_to_wire(m.snapshot),
        offset,
        chunk,
        done,
    )


def encode_message(message: Message) -> bytes:
    """Encode one message as a msgpack array (not yet a payload: see
    :func:`payload_from_packed`).  Raises MalformedMessage for a message the
    decoder would refuse (wrong types, negative or > 2**64-1 integers, unknown
    enum values)."""
    wire = _message_to_wire(message)
    try:
        packed: bytes = msgpack.packb(wire, use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as exc:
        raise MalformedMessage(f"cannot encode message: {exc}") from exc
    return packed


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _array_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 0x10000 else 5


def payload_from_packed(packed: Sequence[bytes]) -> bytes:
    """Join messages already encoded by :func:`encode_message` into one payload."""
    return _array_header(len(packed)) + b"".join(packed)


def encode_payload(messages: Sequence[Message]) -> bytes:
    """Encode a batch of messages as one payload (no frame header)."""
    return payload_from_packed([encode_message(m) for m in messages])


def frame(payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Prefix ``payload`` with the frame header.  Raises FrameTooLarge if the
    payload exceeds ``max_frame_size``."""
    if len(payload) > max_frame_size:
        raise FrameTooLarge(len(payload), max_frame_size)
    return _HEADER.pack(len(payload), VERSION) + payload


def frames_from_packed(
    packed: Iterable[bytes], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> list[bytes]:
    """Group encoded messages, in order, into as few frames as fit under
    ``max_frame_size`` (greedily).  Raises FrameTooLarge if one message alone
    cannot fit in a frame; nothing is returned then."""
    frames: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for p in packed:
        n = len(p)
        if n + 1 > max_frame_size:
            raise FrameTooLarge(n + 1, max_frame_size)
        if size + n + _array_header_size(len(group) + 1) > max_frame_size:
            frames.append(frame(payload_from_packed(group), max_frame_size))
            group = []
            size = 0
        group.append(p)
        size += n
    if group:
        frames.append(frame(payload_from_packed(group), max_frame_size))
    return frames


def encode_frames(
    messages: Sequence[Message], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> list[bytes]:
    """Encode messages into as few frames as fit under ``max_frame_size``."""
    return frames_from_packed([encode_message(m) for m in messages], max_frame_size)


# ---------------------------------------------------------------- decoding


def _uint_field(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise _bad(f"{what} must be a non-negative integer, got {v!r:.50}")
    return v


def _entries_from_wire(raw: object) -> list[Entry]:
    if type(raw) is not list:
        raise _bad("entries must be an array")
    out: list[Entry] = []
    append = out.append
    kinds = _ENTRY_KINDS
    for e in raw:
        if type(e) is not list or len(e) != 4:
            raise _bad("an entry must be an array of 4 fields")
        t, i, k, d = e
        if (
            type(t) is not int
            or t < 0
            or type(i) is not int
            or i < 0
            or type(d) is not bytes
            or type(k) is not int
        ):
            raise _bad("entry fields have the wrong type or range")
        kind = kinds.get(k)
        if kind is None:
            raise _bad(f"unknown entry kind {k}")
        append(Entry(t, i, kind, d))
    return out


def _conf_members_from_wire(raw: object, what: str) -> tuple[tuple[int, int], ...]:
    if type(raw) is not list:
        raise _bad(f"{what} must be an array")
    out: list[tuple[int, int]] = []
    for pair in raw:
        if type(pair) is not list or len(pair) != 2:
            raise _bad(f"{what} must hold [node, incarnation] pairs")
        out.append((_uint_field(pair[0], "node id"), _uint_field(pair[1], "incarnation")))
    return tuple(out)


def _snapshot_from_wire(raw: object) -> SnapshotMeta | None:
    if raw is None:
        return None
    if type(raw) is not list or len(raw) != 4:
        raise _bad("snapshot must be nil or an array of 4 fields")
    return SnapshotMeta(
        index=_uint_field(raw[0], "snapshot index"),
        term=_uint_field(raw[1], "snapshot term"),
        conf=ConfState(
            voters=_conf_members_from_wire(raw[2], "voters"),
            learners=_conf_members_from_wire(raw[3], "learners"),
        ),
    )


def _message_from_wire(raw: object) -> Message:
    if type(raw) is not list or len(raw) != _N_FIELDS:
        raise _bad(f"a message must be an array of {_N_FIELDS} fields")
    (
        t,
        src,
        dst,
        term,
        inc,
        index,
        log_term,
        entries,
        commit,
        reject,
        hint_index,
        hint_term,
        context,
        force,
        snapshot,
        offset,
        chunk,
        done,
    ) = raw
    mt = _MSG_TYPES.get(t) if type(t) is int else None
    if mt is None:
        raise _bad(f"unknown message type {t!r:.50}")
    for v in (src, dst, term, inc, index, log_term, commit, hint_index, hint_term, context, offset):
        if type(v) is not int or v < 0:
            raise _bad(f"integer fields must be non-negative integers, got {v!r:.50}")
    if type(reject) is not bool or type(force) is not bool or type(done) is not bool:
        raise _bad("reject, force and done must be booleans")
    if type(chunk) is not bytes:
        raise _bad("chunk must be bin")
    return Message(
        type=mt,
        src=src,
        dst=dst,
        term=term,
        incarnation=inc,
        index=index,
        log_term=log_term,
        entries=_entries_from_wire(entries),
        commit=commit,
        reject=reject,
        hint_index=hint_index,
        hint_term=hint_term,
        context=context,
        force=force,
        snapshot=_snapshot_from_wire(snapshot),
        offset=offset,
        chunk=chunk,
        done=done,
    )


def decode_payload(payload: bytes | bytearray | memoryview) -> list[Message]:
    """Decode one payload into its messages.  Raises MalformedMessage for
    anything that is not exactly what :func:`encode_payload` produces, and never
    any other exception."""
    try:
        top = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except _UNPACK_ERRORS as exc:
        raise MalformedMessage(f"payload is not valid msgpack: {exc}") from exc
    if type(top) is not list:
        raise _bad("a payload must be an array of messages")
    return [_message_from_wire(m) for m in top]


class FrameDecoder:
    """Incremental frame splitter: feed it bytes as they arrive, take out payloads.

    Sans-I/O in the h11 style: :meth:`receive_data` buffers (``b""`` means the
    peer closed its end), :meth:`next_payload` returns the next complete payload
    or ``None`` when more data is needed.  A bad header is reported as soon as
    it is buffered, before the payload it announces arrives, so a peer cannot
    make us buffer more than ``max_frame_size`` plus one header.  After a
    FrameError the decoder stays broken: every later call raises again.
    """

    __slots__ = ("_buf", "_eof", "_error", "_max", "_pos")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if type(max_frame_size) is not int or max_frame_size < 1:
            raise ValueError("max_frame_size must be a positive integer")
        self._max = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: str | None = None

    @property
    def max_frame_size(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as payloads."""
        return len(self._buf) - self._pos

    @property
    def at_eof(self) -> bool:
        """True once the end of the stream was fed and every frame was taken out."""
        return self._eof and self.buffered == 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data``; an empty ``data`` marks the end of the stream."""
        if self._eof:
            if data:
                self._fail(FrameError("data received after the end of the stream"))
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def _fail(self, exc: FrameError) -> NoReturn:
        self._error = str(exc)
        raise exc

    def next_payload(self) -> bytes | None:
        """Return the next complete payload, or None if more bytes are needed
        (or the stream ended cleanly between frames).  Raises FrameError on a
        wrong version byte, an oversized length, or a frame cut short by the end
        of the stream."""
        if self._error is not None:
            raise FrameError(self._error)
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail >= 4:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length > self._max:
                self._fail(FrameTooLarge(length, self._max))
            if avail >= HEADER_SIZE:
                version = buf[pos + 4]
                if version != VERSION:
                    self._fail(FrameError(f"unsupported wire version {version}"))
                end = pos + HEADER_SIZE + length
                if end <= len(buf):
                    with memoryview(buf) as view:
                        payload = bytes(view[pos + HEADER_SIZE : end])
                    self._consume(end)
                    return payload
        if self._eof and avail:
            self._fail(FrameError(f"stream ended inside a frame ({avail} bytes left)"))
        return None

    def _consume(self, end: int) -> None:
        buf = self._buf
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > 65536 and end * 2 > len(buf):
            # Drop the consumed prefix only when it is big: avoids a memmove per frame.
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end

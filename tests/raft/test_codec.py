"""raft.codec: round trips, framing, and strict rejection of every kind of bad input."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.codec import (
    HEADER_SIZE,
    VERSION,
    WIRE_FIELDS,
    FrameDecoder,
    decode_payload,
    encode_frames,
    encode_message,
    encode_payload,
    frame,
    frames_from_packed,
    payload_from_packed,
)
from raft.errors import CodecError, FrameError, FrameTooLarge, MalformedMessage, RaftError
from raft.types import (
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    SnapshotMeta,
)

U64 = st.integers(0, 2**64 - 1)
SMALL = st.integers(0, 1000)
UINT = st.one_of(SMALL, U64)

entries_st = st.lists(
    st.builds(Entry, UINT, UINT, st.sampled_from(EntryKind), st.binary(max_size=40)), max_size=6
)
members_st = st.lists(st.tuples(UINT, UINT), max_size=4).map(tuple)
snapshot_st = st.none() | st.builds(
    SnapshotMeta,
    index=UINT,
    term=UINT,
    conf=st.builds(ConfState, voters=members_st, learners=members_st),
)
message_st = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    src=UINT,
    dst=UINT,
    term=UINT,
    incarnation=UINT,
    index=UINT,
    log_term=UINT,
    entries=entries_st,
    commit=UINT,
    reject=st.booleans(),
    hint_index=UINT,
    hint_term=UINT,
    context=UINT,
    force=st.booleans(),
    snapshot=snapshot_st,
    offset=UINT,
    chunk=st.binary(max_size=40),
    done=st.booleans(),
)
# Any value msgpack can carry, including the ones the codec must refuse.
any_value_st = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)


def append_msg(n_entries: int = 3) -> Message:
    return Message(
        MessageType.APPEND,
        src=1,
        dst=2,
        term=7,
        incarnation=99,
        index=10,
        log_term=6,
        entries=[Entry(7, 11 + i, EntryKind.NORMAL, b"x" * 10) for i in range(n_entries)],
        commit=9,
    )


def wire(m: Message) -> list[Any]:
    """A message's wire array as plain Python values, to be tampered with."""
    value: list[Any] = msgpack.unpackb(encode_message(m), raw=False)
    return value


def pack_payload(*raw_messages: Any) -> bytes:
    packed: bytes = msgpack.packb(list(raw_messages), use_bin_type=True)
    return packed


def assert_valid(messages: list[Message]) -> None:
    """What the decoder returns must be well-typed and encodable again."""
    for m in messages:
        assert type(m.type) is MessageType
        assert all(type(e.kind) is EntryKind for e in m.entries)
    assert decode_payload(encode_payload(messages)) == messages


# ------------------------------------------------------------------ round trips


def test_wire_fields_cover_every_message_field() -> None:
    # A field added to Message must be added to the wire format, not silently dropped.
    assert tuple(f.name for f in dataclasses.fields(Message)) == WIRE_FIELDS


@given(st.lists(message_st, max_size=5))
def test_payload_round_trip(messages: list[Message]) -> None:
    decoded = decode_payload(encode_payload(messages))
    assert decoded == messages
    assert_valid(decoded)


@given(st.lists(message_st, min_size=1, max_size=8), st.data())
def test_frames_round_trip_through_any_chunking(
    messages: list[Message], data: st.DataObject
) -> None:
    stream = b"".join(encode_frames(messages))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder()
    out: list[Message] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        if cut > start:  # an empty chunk would mean end of stream
            decoder.receive_data(stream[start:cut])
        start = max(start, cut)
        while (payload := decoder.next_payload()) is not None:
            out += decode_payload(payload)
    decoder.receive_data(b"")
    assert decoder.next_payload() is None
    assert decoder.at_eof
    assert out == messages


def test_compact_positional_encoding() -> None:
    heartbeat = Message(MessageType.HEARTBEAT, src=1, dst=2, term=3, commit=4)
    packed = encode_message(heartbeat)
    assert msgpack.unpackb(packed)[:4] == [int(MessageType.HEARTBEAT), 1, 2, 3]
    # array16 header (18 fields > 15), then one byte per field, plus bin8 length for the chunk
    assert len(packed) == 3 + len(WIRE_FIELDS) + 1
    entry_wire = wire(append_msg(1))[WIRE_FIELDS.index("entries")]
    assert entry_wire == [[7, 11, int(EntryKind.NORMAL), b"x" * 10]]


def test_empty_batch_round_trips() -> None:
    assert decode_payload(encode_payload([])) == []


def test_frame_layout() -> None:
    payload = encode_payload([append_msg()])
    f = frame(payload)
    assert f[:4] == struct.pack(">I", len(payload))
    assert f[4] == VERSION
    assert f[HEADER_SIZE:] == payload


def test_frames_split_under_the_limit_and_keep_order() -> None:
    messages = [append_msg(5) for _ in range(40)]
    for i, m in enumerate(messages):
        m.commit = i
    one = len(encode_message(messages[0]))
    limit = one * 7 + 10
    frames = encode_frames(messages, max_frame_size=limit)
    assert len(frames) > 1
    decoder = FrameDecoder(max_frame_size=limit)
    out: list[Message] = []
    for f in frames:
        assert len(f) - HEADER_SIZE <= limit
        decoder.receive_data(f)
        payload = decoder.next_payload()
        assert payload is not None
        out += decode_payload(payload)
    assert out == messages


def test_array_headers_for_large_batches() -> None:
    heartbeat = encode_message(Message(MessageType.HEARTBEAT, 1, 2, 3))
    for n in (15, 16, 65535, 65536):
        messages = decode_payload(payload_from_packed([heartbeat] * n))
        assert len(messages) == n


# ------------------------------------------------------------------ encode errors


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("term", -1),
        ("term", True),
        ("term", 2**64),
        ("term", 1.0),
        ("src", "1"),
        ("commit", None),
        ("type", 99),
        ("type", True),
        ("type", [5]),
        ("reject", 1),
        ("chunk", "text"),
        ("chunk", bytearray(b"x")),
        ("entries", (Entry(1, 1, EntryKind.NORMAL, b""),)),
        ("entries", [(1, 1, 0, b"")]),
        ("snapshot", (1, 2)),
    ],
)
def test_encode_rejects_bad_fields(field: str, value: object) -> None:
    m = append_msg()
    setattr(m, field, value)
    with pytest.raises(MalformedMessage):
        encode_message(m)


@pytest.mark.parametrize(
    "entry",
    [
        Entry(-1, 1, EntryKind.NORMAL, b""),
        Entry(1, -1, EntryKind.NORMAL, b""),
        Entry(1, 2**64, EntryKind.NORMAL, b""),
        Entry(1, 1, 7, b""),  # type: ignore[arg-type]
        Entry(1, 1, True, b""),  # type: ignore[arg-type]
        Entry(1, 1, [0], b""),  # type: ignore[arg-type]
        Entry(1, 1, EntryKind.NORMAL, "data"),  # type: ignore[arg-type]
        Entry(False, 1, EntryKind.NORMAL, b""),
    ],
)
def test_encode_rejects_bad_entries(entry: Entry) -> None:
    m = append_msg()
    m.entries.append(entry)
    with pytest.raises(MalformedMessage):
        encode_message(m)


@pytest.mark.parametrize(
    "conf",
    [
        ConfState(voters=((1, -1),)),
        ConfState(voters=((1,),)),  # type: ignore[arg-type]
        ConfState(learners=[(1, 2)]),  # type: ignore[arg-type]
        ConfState(voters=((True, 1),)),
    ],
)
def test_encode_rejects_bad_snapshot_conf(conf: ConfState) -> None:
    m = Message(MessageType.SNAPSHOT, 1, 2, 3, snapshot=SnapshotMeta(1, 1, conf))
    with pytest.raises(MalformedMessage):
        encode_message(m)


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(MalformedMessage):
        encode_payload(["not a message"])  # type: ignore[list-item]


def test_a_message_larger_than_a_frame_is_refused() -> None:
    m = Message(MessageType.SNAPSHOT, 1, 2, 3, chunk=bytes(1000))
    with pytest.raises(FrameTooLarge) as info:
        encode_frames([m], max_frame_size=500)
    assert info.value.limit == 500
    with pytest.raises(FrameTooLarge):
        frame(bytes(501), max_frame_size=500)
    with pytest.raises(FrameTooLarge):
        frames_from_packed([encode_message(append_msg()), encode_message(m)], 500)


# ------------------------------------------------------------------ decode errors


def test_errors_are_raft_errors() -> None:
    assert issubclass(FrameError, CodecError)
    assert issubclass(MalformedMessage, CodecError)
    assert issubclass(CodecError, RaftError)


def tampered(index: int, value: Any) -> bytes:
    raw = wire(append_msg())
    raw[index] = value
    return pack_payload(raw)


F = WIRE_FIELDS.index


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x91", id="truncated-array"),
        pytest.param(pack_payload() + b"\x00", id="trailing-bytes"),
        pytest.param(msgpack.packb({"type": 5}), id="map-not-array"),
        pytest.param(msgpack.packb([{"type": 5}]), id="message-as-map"),
        pytest.param(msgpack.packb([[5, 1, 2]]), id="missing-fields"),
        pytest.param(pack_payload([*wire(append_msg()), 0]), id="extra-field"),
        pytest.param(tampered(F("term"), "7"), id="str-for-int"),
        pytest.param(tampered(F("term"), -7), id="negative-term"),
        pytest.param(tampered(F("index"), -1), id="negative-index"),
        pytest.param(tampered(F("term"), True), id="bool-for-int"),
        pytest.param(tampered(F("term"), 7.0), id="float-for-int"),
        pytest.param(tampered(F("reject"), 1), id="int-for-bool"),
        pytest.param(tampered(F("type"), 0), id="unknown-type-0"),
        pytest.param(tampered(F("type"), 12), id="unknown-type-12"),
        pytest.param(tampered(F("type"), True), id="bool-type"),
        pytest.param(tampered(F("chunk"), "abc"), id="str-for-bin"),
        pytest.param(tampered(F("entries"), None), id="entries-nil"),
        pytest.param(tampered(F("entries"), [[1, 2, 9, b""]]), id="unknown-entry-kind"),
        pytest.param(tampered(F("entries"), [[1, 2, True, b""]]), id="bool-entry-kind"),
        pytest.param(tampered(F("entries"), [[1, 2, 0]]), id="entry-missing-field"),
        pytest.param(tampered(F("entries"), [[1, 2, 0, b"", 5]]), id="entry-extra-field"),
        pytest.param(tampered(F("entries"), [[1, -2, 0, b""]]), id="entry-negative-index"),
        pytest.param(tampered(F("entries"), [[1, 2, 0, "s"]]), id="entry-str-data"),
        pytest.param(tampered(F("entries"), [{"a": 1}]), id="entry-as-map"),
        pytest.param(tampered(F("entries"), [b"\x01\x02\x03\x04"]), id="entry-as-bin"),
        pytest.param(tampered(F("snapshot"), [1, 2, []]), id="snapshot-short"),
        pytest.param(tampered(F("snapshot"), [1, 2, [[1]], []]), id="voter-short"),
        pytest.param(tampered(F("snapshot"), [1, 2, [[1, -1]], []]), id="voter-negative"),
        pytest.param(tampered(F("snapshot"), [1, 2, [], None]), id="learners-nil"),
        pytest.param(tampered(F("snapshot"), 0), id="snapshot-int"),
        pytest.param(tampered(F("src"), msgpack.ExtType(1, b"x")), id="ext-type"),
        pytest.param(b"\x91\xd6\xff\x00\x00\x00\x00", id="timestamp-ext"),
        pytest.param(b"\x91\x81\x91\x00\x00", id="unhashable-map-key"),
        pytest.param(b"\x91\xa2\xff\xfe", id="invalid-utf8-str"),
        pytest.param(b"\x91" * 100_000, id="deep-nesting"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="huge-array-claim"),
    ],
)
def test_decode_rejects(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_payload(payload)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_into_decode_payload(data: bytes) -> None:
    try:
        messages = decode_payload(data)
    except MalformedMessage:
        return
    assert_valid(messages)


@settings(max_examples=300)
@given(message_st, st.data())
def test_fuzz_one_tampered_field(message: Message, data: st.DataObject) -> None:
    raw = wire(message)
    raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(any_value_st)
    try:
        messages = decode_payload(pack_payload(raw))
    except MalformedMessage:
        return
    assert_valid(messages)


@settings(max_examples=300)
@given(st.lists(message_st, min_size=1, max_size=3), st.data())
def test_fuzz_bit_flips_in_frames(messages: list[Message], data: st.DataObject) -> None:
    stream = bytearray(b"".join(encode_frames(messages)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] ^= 1 << data.draw(st.integers(0, 7))
    decoder = FrameDecoder(max_frame_size=1 << 20)
    decoder.receive_data(bytes(stream))
    decoder.receive_data(b"")
    try:
        while (payload := decoder.next_payload()) is not None:
            assert_valid(decode_payload(payload))
    except (FrameError, MalformedMessage):
        pass


@settings(max_examples=500)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_fuzz_arbitrary_bytes_into_frame_decoder(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder(max_frame_size=256)
    try:
        for i in range(0, len(data), chunk):
            decoder.receive_data(data[i : i + chunk])
            while (payload := decoder.next_payload()) is not None:
                assert len(payload) <= 256
                assert_valid(decode_payload(payload))
        decoder.receive_data(b"")
        assert decoder.next_payload() is None
    except (FrameError, MalformedMessage):
        pass


# ------------------------------------------------------------------ framing errors


def test_wrong_version_is_a_frame_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">IB", 1, VERSION + 1) + b"\x90")
    with pytest.raises(FrameError, match="version"):
        decoder.next_payload()


def test_oversized_length_is_refused_before_the_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    decoder.receive_data(struct.pack(">I", 1025))  # only the length: nothing else is buffered
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_payload()
    assert (info.value.size, info.value.limit) == (1025, 1024)


def test_a_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    decoder.receive_data(struct.pack(">IB", 1024, VERSION) + bytes(1024))
    assert decoder.next_payload() == bytes(1024)


@pytest.mark.parametrize("keep", [1, 3, 4, 5, HEADER_SIZE + 3])
def test_truncated_frame_at_end_of_stream(keep: int) -> None:
    f = encode_frames([append_msg()])[0]
    decoder = FrameDecoder()
    decoder.receive_data(f[:keep])
    assert decoder.next_payload() is None  # still waiting for the rest
    decoder.receive_data(b"")
    with pytest.raises(FrameError, match="ended inside a frame"):
        decoder.next_payload()


def test_decoder_stays_broken_after_an_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00\x00\x01\x09\x90")
    with pytest.raises(FrameError):
        decoder.next_payload()
    decoder.receive_data(encode_frames([append_msg()])[0])
    with pytest.raises(FrameError):
        decoder.next_payload()


def test_data_after_end_of_stream_is_an_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    decoder.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(FrameError):
        decoder.receive_data(b"x")


def test_decoder_buffers_and_compacts() -> None:
    f = encode_frames([Message(MessageType.SNAPSHOT, 1, 2, 3, chunk=bytes(100_000))])[0]
    decoder = FrameDecoder()
    decoder.receive_data(f + f[:10])
    assert decoder.next_payload() is not None
    assert decoder.buffered == 10
    decoder.receive_data(f[10:])
    assert decoder.next_payload() is not None
    assert decoder.buffered == 0
    assert decoder.next_payload() is None
    assert not decoder.at_eof


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_decoder_needs_a_positive_limit(bad: Any) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=bad)

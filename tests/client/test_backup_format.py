"""The streaming backup format: round trips, framing, tamper detection, errors, memory."""

from __future__ import annotations

import array
import random
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.backup_format import (
    DEFAULT_CHUNK_SIZE,
    FILE_ID_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    MAX_CHUNK_SIZE,
    RECORD_OVERHEAD,
    ContentType,
    Decryptor,
    Encryptor,
    decrypt_bytes,
    encrypt_bytes,
    encrypted_size,
    read_header,
)
from client.backup_key import BackupKey
from client.errors import (
    BackupError,
    BackupIntegrityError,
    ChunkAuthenticationError,
    HeaderError,
    TrailingData,
    TruncatedBackup,
    UnsupportedVersion,
    UsageError,
    WrongKey,
)

CS = 64  # small chunks make every boundary cheap to reach
KEY = BackupKey(bytes(range(32)))
OTHER_KEY = BackupKey(bytes(range(1, 33)))


def rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def encrypt_in_pieces(
    key: BackupKey, data: bytes, cuts: list[int], *, chunk_size: int, seed: int = 1
) -> bytes:
    enc = Encryptor(key, rng=rng(seed), chunk_size=chunk_size)
    out = bytearray()
    pos = 0
    for cut in cuts:
        out += enc.feed(data[pos : pos + cut])
        pos += cut
    out += enc.feed(data[pos:])
    out += enc.finish()
    return bytes(out)


def decrypt_in_pieces(key: BackupKey, blob: bytes, cuts: list[int]) -> bytes:
    dec = Decryptor(key)
    out = bytearray()
    pos = 0
    for cut in cuts:
        out += dec.feed(blob[pos : pos + cut])
        pos += cut
    out += dec.feed(blob[pos:])
    out += dec.finish()
    assert dec.complete
    return bytes(out)


def records(blob: bytes, chunk_size: int = CS) -> list[bytes]:
    """Split a backup into its records (trusting the length fields)."""
    out = []
    pos = HEADER_SIZE
    while pos < len(blob):
        (length,) = struct.unpack_from(">I", blob, pos)
        out.append(blob[pos : pos + length + RECORD_OVERHEAD])
        pos += length + RECORD_OVERHEAD
    return out


def decrypt_collecting(key: BackupKey, pieces: list[bytes]) -> tuple[bytes, BackupError | None]:
    """Feed ``pieces`` one by one; returns the plaintext released and the error, if any."""
    dec = Decryptor(key)
    released = bytearray()
    try:
        for piece in pieces:
            released += dec.feed(piece)
        released += dec.finish()
    except BackupError as exc:
        return bytes(released), exc
    return bytes(released), None


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("chunk_size", [CS, DEFAULT_CHUNK_SIZE])
def test_round_trip_at_chunk_boundaries(chunks: int, delta: int, chunk_size: int) -> None:
    size = chunks * chunk_size + delta
    if size < 0:
        return
    data = data_of(size)
    blob = encrypt_bytes(KEY, data, rng=rng(3), chunk_size=chunk_size)
    assert len(blob) == encrypted_size(size, chunk_size)
    assert len(records(blob, chunk_size)) == size // chunk_size + 1
    assert decrypt_bytes(KEY, blob) == data


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 12 * CS + 3),
    chunk_size=st.sampled_from([1, 2, 3, 17, CS, 100]),
    enc_cuts=st.lists(st.integers(0, 3 * CS), max_size=12),
    dec_cuts=st.lists(st.integers(0, 3 * CS), max_size=12),
    seed=st.integers(0, 2**32),
)
def test_round_trip_any_size_any_feeding(
    size: int, chunk_size: int, enc_cuts: list[int], dec_cuts: list[int], seed: int
) -> None:
    data = data_of(size, seed)
    blob = encrypt_in_pieces(KEY, data, enc_cuts, chunk_size=chunk_size, seed=seed)
    # How the plaintext was cut does not change the ciphertext.
    assert blob == encrypt_bytes(KEY, data, rng=rng(seed), chunk_size=chunk_size)
    assert len(blob) == encrypted_size(size, chunk_size)
    assert decrypt_in_pieces(KEY, blob, dec_cuts) == data


@settings(max_examples=10, deadline=None)
@given(size=st.integers(0, 3 * DEFAULT_CHUNK_SIZE + 5), seed=st.integers(0, 2**32))
def test_round_trip_default_chunk_size(size: int, seed: int) -> None:
    data = data_of(size, seed)
    cuts = [DEFAULT_CHUNK_SIZE // 3, DEFAULT_CHUNK_SIZE, 5, 2 * DEFAULT_CHUNK_SIZE]
    blob = encrypt_in_pieces(KEY, data, cuts, chunk_size=DEFAULT_CHUNK_SIZE, seed=seed)
    assert decrypt_in_pieces(KEY, blob, [7, HEADER_SIZE, DEFAULT_CHUNK_SIZE + 1]) == data


def test_byte_at_a_time() -> None:
    data = data_of(5 * CS + 9)
    enc = Encryptor(KEY, rng=rng(1), chunk_size=CS)
    blob = b"".join(bytes(enc.feed(data[i : i + 1])) for i in range(len(data)))
    blob += bytes(enc.finish())
    assert blob == encrypt_bytes(KEY, data, rng=rng(1), chunk_size=CS)
    assert decrypt_in_pieces(KEY, blob, [1] * len(blob)) == data


def test_accepts_every_buffer_kind() -> None:
    data = data_of(4 * CS + 8)
    words = array.array("I", data)
    for buf in (data, bytearray(data), memoryview(data), memoryview(words)):
        enc = Encryptor(KEY, rng=rng(1), chunk_size=CS)
        blob = bytes(enc.feed(buf)) + bytes(enc.finish())
        assert decrypt_bytes(KEY, blob) == data
        dec = Decryptor(KEY)
        assert bytes(dec.feed(bytearray(blob))) == data
        dec.finish()


def test_empty_backup_layout() -> None:
    blob = encrypt_bytes(KEY, b"", rng=rng(1), chunk_size=CS)
    assert len(blob) == HEADER_SIZE + RECORD_OVERHEAD
    assert blob[HEADER_SIZE : HEADER_SIZE + 4] == bytes(4)  # final record of length 0
    assert decrypt_bytes(KEY, blob) == b""


def test_header_fields() -> None:
    enc = Encryptor(KEY, rng=rng(9), chunk_size=CS, content=ContentType.TAR)
    blob = bytes(enc.feed(b"abc")) + bytes(enc.finish())
    header = read_header(blob)
    assert blob.startswith(MAGIC)
    assert header == enc.header
    assert header.version == FORMAT_VERSION
    assert header.content is ContentType.TAR
    assert header.chunk_size == CS
    assert header.key_id == KEY.key_id
    assert header.file_id == rng(9)(FILE_ID_SIZE)
    assert header.encode() == blob[:HEADER_SIZE]
    dec = Decryptor(KEY)
    assert dec.header is None
    dec.feed(blob[:HEADER_SIZE])
    assert dec.header == header


def test_header_comes_out_even_with_no_data_fed() -> None:
    enc = Encryptor(KEY, rng=rng(1), chunk_size=CS)
    assert len(enc.feed(b"")) == HEADER_SIZE
    assert len(enc.finish()) == RECORD_OVERHEAD


def test_distinct_file_ids_give_unrelated_ciphertexts() -> None:
    data = data_of(3 * CS)
    a = encrypt_bytes(KEY, data, rng=rng(1), chunk_size=CS)
    b = encrypt_bytes(KEY, data, rng=rng(2), chunk_size=CS)
    assert read_header(a).file_id != read_header(b).file_id
    assert all(x != y for x, y in zip(records(a), records(b), strict=True))


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    data = b"secret chat message " * 20
    blob = encrypt_bytes(KEY, data, rng=rng(1), chunk_size=CS)
    assert b"secret" not in blob


# --- truncation, extension, reordering, swapping ------------------------------------------

PLAIN = data_of(5 * CS + 10)
BLOB = encrypt_bytes(KEY, PLAIN, rng=rng(11), chunk_size=CS)
RECORDS = records(BLOB)
HEAD = BLOB[:HEADER_SIZE]


def test_fixture_shape() -> None:
    assert len(RECORDS) == 6
    assert [len(r) for r in RECORDS] == [CS + RECORD_OVERHEAD] * 5 + [10 + RECORD_OVERHEAD]


def record_at(offset: int) -> int:
    """The index of the record holding byte ``offset`` of BLOB (offset >= HEADER_SIZE)."""
    return (offset - HEADER_SIZE) // (CS + RECORD_OVERHEAD)


@pytest.mark.parametrize("cut", range(len(BLOB)))
def test_truncation_anywhere_is_detected_and_named(cut: int) -> None:
    released, err = decrypt_collecting(KEY, [BLOB[:cut]])
    if cut < HEADER_SIZE:
        assert isinstance(err, HeaderError)
        assert released == b""
        return
    index = record_at(cut)
    assert isinstance(err, TruncatedBackup)
    assert err.index == index
    assert f"chunk {index}" in str(err)
    # Exactly the chunks before the cut were released, and they are genuine.
    assert released == PLAIN[: index * CS]


@pytest.mark.parametrize("boundary", range(len(RECORDS)))
def test_truncation_at_chunk_boundary_says_so(boundary: int) -> None:
    _, err = decrypt_collecting(KEY, [HEAD, *RECORDS[:boundary]])
    assert isinstance(err, TruncatedBackup)
    assert err.index == boundary
    assert "cut at a chunk boundary" in str(err)


@pytest.mark.parametrize(
    "extra",
    [b"\x00", b"x" * 19, b"x" * 20, b"x" * 200, RECORDS[-1], RECORDS[0], BLOB],
    ids=["1", "19", "20", "200", "final-again", "record0", "whole-backup"],
)
def test_extension_is_trailing_data(extra: bytes) -> None:
    released, err = decrypt_collecting(KEY, [BLOB + extra])
    assert isinstance(err, TrailingData)
    assert err.index == len(RECORDS) - 1
    assert err.extra == len(extra)
    assert released == b""  # the error came in the same feed: nothing from it is returned
    # Fed separately, the genuine stream comes out and the extension is still refused.
    released, err = decrypt_collecting(KEY, [BLOB, extra])
    assert released == PLAIN
    assert isinstance(err, TrailingData)


def test_extension_after_finish_is_a_usage_error() -> None:
    dec = Decryptor(KEY)
    dec.feed(BLOB)
    dec.finish()
    with pytest.raises(UsageError):
        dec.feed(b"x")


@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 2), (3, 4), (0, 4), (2, 5), (4, 5), (0, 5)])
def test_reordering_is_detected_at_the_first_moved_chunk(i: int, j: int) -> None:
    order = list(RECORDS)
    order[i], order[j] = order[j], order[i]
    released, err = decrypt_collecting(KEY, [HEAD, *order])
    assert isinstance(err, ChunkAuthenticationError)
    assert err.index == i
    assert released == PLAIN[: i * CS]


@pytest.mark.parametrize("dropped", range(5))
def test_dropping_a_chunk_is_detected(dropped: int) -> None:
    kept = RECORDS[:dropped] + RECORDS[dropped + 1 :]
    _, err = decrypt_collecting(KEY, [HEAD, *kept])
    assert isinstance(err, ChunkAuthenticationError)
    assert err.index == dropped


@pytest.mark.parametrize("dup", range(5))
def test_duplicating_a_chunk_is_detected(dup: int) -> None:
    doubled = RECORDS[: dup + 1] + RECORDS[dup:]
    _, err = decrypt_collecting(KEY, [HEAD, *doubled])
    assert isinstance(err, ChunkAuthenticationError)
    assert err.index == dup + 1


def test_final_chunk_moved_forward_is_detected_as_a_bad_final_chunk() -> None:
    order = [RECORDS[0], RECORDS[1], RECORDS[5], RECORDS[2]]
    _, err = decrypt_collecting(KEY, [HEAD, *order])
    assert isinstance(err, ChunkAuthenticationError)
    assert err.index == 2
    assert err.final


OTHER_PLAIN = data_of(5 * CS + 10, seed=99)
OTHER_BLOB = encrypt_bytes(KEY, OTHER_PLAIN, rng=rng(12), chunk_size=CS)
OTHER_RECORDS = records(OTHER_BLOB)


@pytest.mark.parametrize("index", range(6))
def test_swapping_a_chunk_with_another_backup_under_the_same_key(index: int) -> None:
    mixed = list(RECORDS)
    mixed[index] = OTHER_RECORDS[index]
    released, err = decrypt_collecting(KEY, [HEAD, *mixed])
    assert isinstance(err, ChunkAuthenticationError)
    assert err.index == index
    assert released == PLAIN[: index * CS]


def test_header_of_another_backup_under_the_same_key() -> None:
    _, err = decrypt_collecting(KEY, [OTHER_BLOB[:HEADER_SIZE], *RECORDS])
    assert isinstance(err, ChunkAuthenticationError)
    assert err.index == 0


# --- bit flips ------------------------------------------------------------------------------


def flipped(blob: bytes, bit: int) -> bytes:
    out = bytearray(blob)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("byte", range(HEADER_SIZE))
def test_every_header_bit_flip_is_a_header_error(byte: int) -> None:
    for bit in range(8):
        released, err = decrypt_collecting(KEY, [flipped(BLOB, 8 * byte + bit)])
        assert isinstance(err, HeaderError), (byte, bit, err)
        assert not isinstance(err, WrongKey)
        assert released == b""


def test_key_id_damage_is_not_mistaken_for_a_wrong_key() -> None:
    key_id_offset = len(MAGIC) + 1 + 1 + 4
    _, err = decrypt_collecting(KEY, [flipped(BLOB, 8 * key_id_offset)])
    assert isinstance(err, HeaderError)
    assert "key id field has been altered" in str(err)


@pytest.mark.parametrize("offset", range(HEADER_SIZE, len(BLOB)))
def test_every_chunk_bit_flip_is_detected_and_named(offset: int) -> None:
    index = record_at(offset)
    for bit in range(8):
        released, err = decrypt_collecting(KEY, [flipped(BLOB, 8 * offset + bit)])
        assert isinstance(err, ChunkAuthenticationError), (offset, bit, err)
        assert err.index == index
        assert f"chunk {index}" in str(err)
        assert PLAIN.startswith(released)
        assert len(released) <= index * CS


@settings(max_examples=200, deadline=None)
@given(
    bit=st.integers(0, 8 * len(BLOB) - 1),
    cuts=st.lists(st.integers(1, 3 * CS), max_size=10),
)
def test_released_plaintext_is_always_a_genuine_prefix(bit: int, cuts: list[int]) -> None:
    damaged = flipped(BLOB, bit)
    pieces = []
    pos = 0
    for cut in cuts:
        pieces.append(damaged[pos : pos + cut])
        pos += cut
    pieces.append(damaged[pos:])
    released, err = decrypt_collecting(KEY, pieces)
    assert isinstance(err, HeaderError | BackupIntegrityError)
    assert PLAIN.startswith(released)
    if isinstance(err, BackupIntegrityError):
        assert len(released) <= err.index * CS


def test_length_field_lie_on_the_final_chunk_is_an_alteration_not_a_truncation() -> None:
    last = bytearray(RECORDS[-1])
    struct.pack_into(">I", last, 0, CS)  # claims to be a full chunk
    _, err = decrypt_collecting(KEY, [HEAD, *RECORDS[:-1], bytes(last)])
    assert isinstance(err, ChunkAuthenticationError)
    assert err.index == 5
    assert "length field has been altered" in str(err)


def test_length_field_larger_than_chunk_size() -> None:
    bad = bytearray(RECORDS[2])
    struct.pack_into(">I", bad, 0, CS + 1)
    _, err = decrypt_collecting(KEY, [HEAD, *RECORDS[:2], bytes(bad)])
    assert isinstance(err, ChunkAuthenticationError)
    assert err.index == 2
    assert "more than the chunk size" in str(err)


# --- keys and headers -------------------------------------------------------------------------


def test_wrong_key_is_reported_as_such_from_the_header_alone() -> None:
    dec = Decryptor(OTHER_KEY)
    with pytest.raises(WrongKey) as info:
        dec.feed(HEAD)
    assert info.value.expected_key_id == OTHER_KEY.key_id
    assert info.value.found_key_id == KEY.key_id
    assert "wrong backup key" in str(info.value)
    assert KEY.key_id.hex() in str(info.value)


def test_wrong_key_whatever_the_feeding() -> None:
    released, err = decrypt_collecting(OTHER_KEY, [BLOB[i : i + 7] for i in range(0, len(BLOB), 7)])
    assert isinstance(err, WrongKey)
    assert released == b""


def test_not_a_backup_is_refused_from_its_first_bytes() -> None:
    dec = Decryptor(KEY)
    with pytest.raises(HeaderError, match="not a vaultd backup"):
        dec.feed(b"PK\x03\x04")


@pytest.mark.parametrize("blob", [b"", MAGIC, HEAD[:50], HEAD[:-1]])
def test_stream_ending_in_the_header(blob: bytes) -> None:
    dec = Decryptor(KEY)
    dec.feed(blob)
    with pytest.raises(HeaderError, match=r"empty|inside its"):
        dec.finish()


def test_header_only_is_a_truncation_before_chunk_zero() -> None:
    _, err = decrypt_collecting(KEY, [HEAD])
    assert isinstance(err, TruncatedBackup)
    assert err.index == 0


def forged_header(**fields: int) -> bytes:
    values = {"version": FORMAT_VERSION, "content": 0, "chunk_size": CS}
    values.update(fields)
    head = struct.pack(
        ">8sBBI16s32s",
        MAGIC,
        values["version"],
        values["content"],
        values["chunk_size"],
        KEY.key_id,
        bytes(32),
    )
    return head + bytes(32)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        read_header(forged_header(version=version))
    assert info.value.version == version
    dec = Decryptor(KEY)
    with pytest.raises(UnsupportedVersion):
        dec.feed(forged_header(version=version)[:9])  # noticed from the 9th byte


@pytest.mark.parametrize("chunk_size", [0, MAX_CHUNK_SIZE + 1, 2**32 - 1])
def test_chunk_size_out_of_range(chunk_size: int) -> None:
    with pytest.raises(HeaderError, match="chunk size"):
        read_header(forged_header(chunk_size=chunk_size))


def test_unknown_content_type() -> None:
    with pytest.raises(HeaderError, match="content type"):
        read_header(forged_header(content=7))


def test_forged_header_without_the_key_fails_authentication() -> None:
    dec = Decryptor(KEY)
    with pytest.raises(HeaderError, match="failed authentication"):
        dec.feed(forged_header())


def test_read_header_of_garbage() -> None:
    with pytest.raises(HeaderError, match="not a vaultd backup"):
        read_header(bytes(200))
    with pytest.raises(HeaderError, match="inside its"):
        read_header(HEAD[:20])


# --- API misuse -------------------------------------------------------------------------------


def test_encryptor_usage_errors() -> None:
    enc = Encryptor(KEY, rng=rng(1), chunk_size=CS)
    enc.finish()
    with pytest.raises(UsageError):
        enc.feed(b"x")
    with pytest.raises(UsageError):
        enc.finish()


def test_decryptor_unusable_after_an_error() -> None:
    dec = Decryptor(OTHER_KEY)
    with pytest.raises(WrongKey):
        dec.feed(BLOB)
    with pytest.raises(UsageError):
        dec.feed(b"")
    with pytest.raises(UsageError):
        dec.finish()


@pytest.mark.parametrize("chunk_size", [0, -1, MAX_CHUNK_SIZE + 1])
def test_encryptor_refuses_bad_chunk_size(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        Encryptor(KEY, rng=rng(1), chunk_size=chunk_size)


def test_encryptor_refuses_a_short_rng() -> None:
    with pytest.raises(ValueError, match="rng"):
        Encryptor(KEY, rng=lambda n: bytes(n - 1))


def test_cores_refuse_raw_bytes_as_key() -> None:
    with pytest.raises(TypeError):
        Encryptor(bytes(32), rng=rng(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Decryptor(bytes(32))  # type: ignore[arg-type]


def test_chunks_sealed_counts_records() -> None:
    enc = Encryptor(KEY, rng=rng(1), chunk_size=CS)
    enc.feed(bytes(3 * CS + 1))
    assert enc.chunks_sealed == 3
    enc.finish()
    assert enc.chunks_sealed == 4


# --- bounded memory ---------------------------------------------------------------------------


def test_memory_does_not_grow_with_the_stream() -> None:
    """16 MiB through both cores in 64 KiB pieces: Python-side peak stays a few chunks."""
    piece = data_of(DEFAULT_CHUNK_SIZE)
    tracemalloc.start()
    try:
        enc = Encryptor(KEY, rng=rng(1))
        dec = Decryptor(KEY)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(256):
            dec.feed(enc.feed(piece))
        dec.feed(enc.finish())
        dec.finish()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 8 * DEFAULT_CHUNK_SIZE

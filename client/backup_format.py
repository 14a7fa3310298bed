"""The end-to-end encrypted backup format: pure, streaming encoder and decoder cores.

Nothing here touches files, sockets, clocks or global randomness: an :class:`Encryptor`
takes plaintext bytes and hands back ciphertext bytes, a :class:`Decryptor` takes
ciphertext bytes and hands back plaintext that has been verified, both in bounded memory
whatever the stream length (in the style of h11). ``client.backup_io`` drives them over
files and directories. The byte layout and the reasons behind it are in
docs/backup-format.md; in short::

    header  = magic "VAULTDBK" | version u8 = 1 | content u8 | chunk_size u32
              | key_id[16] | file_id[32] | header_mac[32]                    (94 bytes)
    record  = length u32 | AES-256-GCM(chunk) with its 16-byte tag
    stream  = header | record 0 | record 1 | ... | final record

Every record but the last carries exactly ``chunk_size`` plaintext bytes; the final record
carries fewer (possibly none), which is how it is recognised. Per file, HKDF-SHA256 turns
the backup key and the random ``file_id`` into an AES key and a header MAC key; the nonce
of chunk ``i`` is ``final_flag u32 | i u64`` and every chunk's associated data is the
header MAC, which commits to the whole header.

Buffers returned by ``feed``/``finish`` are views into memory the object reuses: they stay
valid until the next call on the same object. Copy them (``bytes(view)``) to keep them.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import struct
from collections.abc import Callable
from hashlib import sha256
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .backup_key import KEY_ID_SIZE, BackupKey
from .errors import (
    ChunkAuthenticationError,
    HeaderError,
    TrailingData,
    TruncatedBackup,
    UnsupportedVersion,
    UsageError,
    WrongKey,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FILE_ID_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "RECORD_OVERHEAD",
    "BackupHeader",
    "BytesLike",
    "ContentType",
    "Decryptor",
    "Encryptor",
    "decrypt_bytes",
    "encrypt_bytes",
    "encrypted_size",
    "read_header",
]

BytesLike = bytes | bytearray | memoryview

MAGIC: Final = b"VAULTDBK"
FORMAT_VERSION: Final = 1
FILE_ID_SIZE: Final = 32
MAC_SIZE: Final = 32
TAG_SIZE: Final = 16
DEFAULT_CHUNK_SIZE: Final = 64 * 1024
MIN_CHUNK_SIZE: Final = 1
# Bounds what a (possibly hostile) header can make a decryptor allocate.
MAX_CHUNK_SIZE: Final = 8 * 1024 * 1024

_FIELDS = struct.Struct(f">8sBBI{KEY_ID_SIZE}s{FILE_ID_SIZE}s")
HEADER_SIZE: Final = _FIELDS.size + MAC_SIZE
_LEN = struct.Struct(">I")
RECORD_OVERHEAD: Final = _LEN.size + TAG_SIZE
"""Bytes a record adds to its chunk: the length field and the GCM tag."""
_NONCE = struct.Struct(">IQ")

_FILE_KEYS_INFO = b"vaultd backup v1: file keys"


class ContentType(enum.IntEnum):
    """What the plaintext is, so that a restore knows what to do with it."""

    FILE = 0
    """The bytes of one file."""
    TAR = 1
    """A tar archive of a directory, to be extracted."""


@dataclasses.dataclass(frozen=True, slots=True)
class BackupHeader:
    """The parsed, not yet verified, header of a backup stream."""

    version: int
    content: ContentType
    chunk_size: int
    key_id: bytes
    file_id: bytes
    mac: bytes

    def fields(self) -> bytes:
        """The header bytes the MAC covers (everything before the MAC)."""
        return _FIELDS.pack(
            MAGIC, self.version, self.content, self.chunk_size, self.key_id, self.file_id
        )

    def encode(self) -> bytes:
        """The full header as it appears at the start of a backup."""
        return self.fields() + self.mac


def _short_header_error(data: memoryview) -> HeaderError:
    """The most precise error for a stream that stops (or goes wrong) within its header."""
    head = bytes(data[: len(MAGIC)])
    if not MAGIC.startswith(head):
        return HeaderError("not a vaultd backup (the stream does not start with VAULTDBK)")
    if len(data) > len(MAGIC) and data[len(MAGIC)] != FORMAT_VERSION:
        return UnsupportedVersion(data[len(MAGIC)])
    if not data:
        return HeaderError("the stream is empty: no backup header")
    return HeaderError(
        f"the stream ends after {len(data)} bytes, inside its {HEADER_SIZE}-byte header"
    )


def read_header(data: BytesLike) -> BackupHeader:
    """Parse the first :data:`HEADER_SIZE` bytes of a backup, without a key.

    Useful to learn which key a backup needs (``key_id``). The header MAC is checked only
    when a :class:`Decryptor` with the key opens the stream. Raises :class:`HeaderError`
    (or :class:`UnsupportedVersion`) if the bytes are not a well-formed header.
    """
    view = _byte_view(data)
    if len(view) < HEADER_SIZE or bytes(view[: len(MAGIC)]) != MAGIC:
        raise _short_header_error(view[:HEADER_SIZE])
    _, version, content, chunk_size, key_id, file_id = _FIELDS.unpack_from(view)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(version)
    if content not in ContentType._value2member_map_:
        raise HeaderError(f"unknown content type {content} in the header")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise HeaderError(
            f"chunk size {chunk_size} in the header is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
        )
    mac = bytes(view[_FIELDS.size : HEADER_SIZE])
    return BackupHeader(version, ContentType(content), chunk_size, key_id, file_id, mac)


class _FileKeys:
    """The per-file AEAD and header MAC key derived from the backup key and file id."""

    __slots__ = ("aead", "mac_key")

    def __init__(self, key: BackupKey, file_id: bytes) -> None:
        okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=file_id, info=_FILE_KEYS_INFO).derive(
            key.to_bytes()
        )
        self.aead = AESGCM(okm[:32])
        self.mac_key = okm[32:]

    def header_mac(self, fields: bytes) -> bytes:
        return hmac.new(self.mac_key, fields, sha256).digest()


def encrypted_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """The exact size of the backup of ``plaintext_size`` bytes."""
    records = plaintext_size // chunk_size + 1
    return HEADER_SIZE + plaintext_size + records * RECORD_OVERHEAD


def _byte_view(data: BytesLike) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class _Output:
    """A reusable output buffer: grows on demand, replaced (never resized) when too
    small so that views handed out earlier are never invalidated under their holders."""

    __slots__ = ("buf", "view")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)

    def reserve(self, need: int) -> memoryview:
        size = len(self.buf)
        # Shrink again after one huge feed, so memory follows the caller's working size.
        if need > size or (size > 4 * need and size > 16 * 1024 * 1024):
            self.buf = bytearray(need)
            self.view = memoryview(self.buf)
        return self.view


class Encryptor:
    """Turns a plaintext stream into a backup stream under ``key``.

    ``rng(32)`` supplies the random file id (the OS CSPRNG in production; it must never
    repeat under one key). The concatenation of everything :meth:`feed` and :meth:`finish`
    return is the backup, header included. Memory use is about two chunks plus the size of
    the largest input fed at once.
    """

    __slots__ = (
        "_aad",
        "_aead",
        "_chunk_size",
        "_full_prefix",
        "_header",
        "_header_pending",
        "_index",
        "_out",
        "_pend",
        "_pend_len",
        "_pend_view",
        "_state",
    )

    def __init__(
        self,
        key: BackupKey,
        *,
        rng: Callable[[int], bytes],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        content: ContentType = ContentType.FILE,
    ) -> None:
        if not isinstance(key, BackupKey):
            raise TypeError(f"key must be a BackupKey, not {type(key).__name__}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        file_id = bytes(rng(FILE_ID_SIZE))
        if len(file_id) != FILE_ID_SIZE:
            raise ValueError(f"rng({FILE_ID_SIZE}) returned {len(file_id)} bytes")
        keys = _FileKeys(key, file_id)
        fields = _FIELDS.pack(
            MAGIC, FORMAT_VERSION, ContentType(content), chunk_size, key.key_id, file_id
        )
        mac = keys.header_mac(fields)
        self._header = BackupHeader(
            FORMAT_VERSION, ContentType(content), chunk_size, key.key_id, file_id, mac
        )
        self._header_pending = True
        self._aead = keys.aead
        self._aad = mac
        self._chunk_size = chunk_size
        self._full_prefix = _LEN.pack(chunk_size)
        self._pend = bytearray(chunk_size)
        self._pend_view = memoryview(self._pend)
        self._pend_len = 0
        self._index = 0
        self._out = _Output(HEADER_SIZE + chunk_size + RECORD_OVERHEAD)
        self._state = "open"

    @property
    def header(self) -> BackupHeader:
        """The header this encryptor writes (its ``file_id`` identifies the backup)."""
        return self._header

    @property
    def chunks_sealed(self) -> int:
        """How many records have been produced so far."""
        return self._index

    def feed(self, data: BytesLike) -> memoryview:
        """Encrypt more plaintext; returns the ciphertext bytes now ready (maybe none).

        The returned view is valid until the next call on this encryptor. Raises
        :class:`UsageError` after :meth:`finish`.
        """
        if self._state != "open":
            raise UsageError("feed() after finish(): this backup stream is closed")
        mv = _byte_view(data)
        n = len(mv)
        cs = self._chunk_size
        rec = cs + RECORD_OVERHEAD
        pend_len = self._pend_len
        out = self._out.reserve(
            (HEADER_SIZE if self._header_pending else 0) + (pend_len + n) // cs * rec
        )
        o = self._put_header(out)
        pos = 0
        if pend_len:
            take = min(cs - pend_len, n)
            self._pend_view[pend_len : pend_len + take] = mv[:take]
            pos = take
            pend_len += take
            if pend_len < cs:
                self._pend_len = pend_len
                return out[:o]
            self._seal(self._pend_view, out, o, final=False)
            o += rec
            self._pend_len = 0
        # The hot loop: whole chunks straight from the caller's buffer into ours.
        aead = self._aead
        encrypt_into = aead.encrypt_into
        aad = self._aad
        prefix = self._full_prefix
        pack_nonce = _NONCE.pack
        index = self._index
        stop = pos + (n - pos) // cs * cs
        while pos < stop:
            out[o : o + 4] = prefix
            encrypt_into(pack_nonce(0, index), mv[pos : pos + cs], aad, out[o + 4 : o + rec])
            index += 1
            pos += cs
            o += rec
        self._index = index
        if pos < n:
            self._pend_view[: n - pos] = mv[pos:]
            self._pend_len = n - pos
        return out[:o]

    def finish(self) -> memoryview:
        """Seal the final chunk; returns the last ciphertext bytes of the backup.

        The view is valid until the next call. Raises :class:`UsageError` if called twice.
        """
        if self._state != "open":
            raise UsageError("finish() called twice")
        self._state = "finished"
        rest = self._pend_len
        out = self._out.reserve(
            (HEADER_SIZE if self._header_pending else 0) + rest + RECORD_OVERHEAD
        )
        o = self._put_header(out)
        self._seal(self._pend_view[:rest], out, o, final=True)
        self._pend_len = 0
        return out[: o + rest + RECORD_OVERHEAD]

    def _put_header(self, out: memoryview) -> int:
        if not self._header_pending:
            return 0
        out[:HEADER_SIZE] = self._header.encode()
        self._header_pending = False
        return HEADER_SIZE

    def _seal(self, chunk: memoryview, out: memoryview, o: int, *, final: bool) -> None:
        size = len(chunk)
        _LEN.pack_into(out, o, size)
        self._aead.encrypt_into(
            _NONCE.pack(int(final), self._index),
            chunk,
            self._aad,
            out[o + _LEN.size : o + size + RECORD_OVERHEAD],
        )
        self._index += 1


class Decryptor:
    """Turns a backup stream back into plaintext, releasing only verified chunks.

    The header is read from the stream itself; it is checked (key id, then MAC) as soon as
    its 94 bytes have arrived, so a wrong key is reported before any chunk. Each chunk is
    released only after its tag verified; :meth:`finish` must be called at the end of the
    stream and raises if the final chunk never came. Errors name the chunk (0-based) where
    the damage was noticed; after an error the decryptor is unusable.
    """

    __slots__ = (
        "_aad",
        "_aead",
        "_chunk_size",
        "_final_index",
        "_header",
        "_header_buf",
        "_index",
        "_key",
        "_out",
        "_pend",
        "_pend_len",
        "_pend_need",
        "_pend_view",
        "_state",
    )

    def __init__(self, key: BackupKey) -> None:
        if not isinstance(key, BackupKey):
            raise TypeError(f"key must be a BackupKey, not {type(key).__name__}")
        self._key = key
        self._header_buf = bytearray()
        self._header: BackupHeader | None = None
        self._aead: AESGCM | None = None
        self._aad = b""
        self._chunk_size = 0
        self._index = 0
        self._final_index = -1
        self._pend = bytearray()
        self._pend_view = memoryview(self._pend)
        self._pend_len = 0
        self._pend_need = 0
        self._out = _Output(0)
        # "header" -> "chunks" -> "done" (final chunk verified) -> "finished"; "failed".
        self._state = "header"

    @property
    def header(self) -> BackupHeader | None:
        """The verified header, once it has arrived (``None`` before)."""
        return self._header

    @property
    def complete(self) -> bool:
        """True once the final chunk has been verified."""
        return self._state in ("done", "finished")

    def feed(self, data: BytesLike) -> memoryview:
        """Take more of the backup stream; returns the plaintext verified so far (maybe none).

        Plaintext of a chunk is returned only once its whole record arrived and verified.
        The returned view is valid until the next call. Raises :class:`HeaderError`,
        :class:`WrongKey`, :class:`ChunkAuthenticationError` or :class:`TrailingData`; on
        error nothing from this call is returned.
        """
        state = self._state
        if state in ("finished", "failed"):
            raise UsageError(f"feed() on a decryptor that has {state}")
        mv = _byte_view(data)
        n = len(mv)
        pos = 0
        if state == "header":
            take = min(HEADER_SIZE - len(self._header_buf), n)
            self._header_buf += mv[:take]
            pos = take
            if len(self._header_buf) < HEADER_SIZE:
                self._check_magic_prefix()
                return memoryview(b"")
            self._open_header()
        if self._state == "done":
            if pos < n:
                self._fail()
                raise TrailingData(index=self._final_index, extra=n - pos)
            return memoryview(b"")
        try:
            return self._chunks(mv, pos, n)
        except BaseException:
            self._fail()
            raise

    def finish(self) -> memoryview:
        """Declare the end of the stream; raises unless the final chunk was verified.

        Raises :class:`HeaderError` if the stream ended inside the header, and
        :class:`TruncatedBackup` (or :class:`ChunkAuthenticationError` if the last
        record's length field was altered) if it ended before the final chunk. Returns an
        empty view: all plaintext has already been returned by :meth:`feed`.
        """
        state = self._state
        if state in ("finished", "failed"):
            raise UsageError(f"finish() on a decryptor that has {state}")
        self._fail()
        if state == "header":
            raise _short_header_error(memoryview(self._header_buf))
        if state == "chunks":
            raise self._truncation()
        self._state = "finished"
        return memoryview(b"")

    # --- internals ---------------------------------------------------------------------

    def _fail(self) -> None:
        self._state = "failed"

    def _check_magic_prefix(self) -> None:
        """Reject a stream that is not a backup as soon as its first bytes show it."""
        buf = self._header_buf
        if not MAGIC.startswith(bytes(buf[: len(MAGIC)])) or (
            len(buf) > len(MAGIC) and buf[len(MAGIC)] != FORMAT_VERSION
        ):
            self._fail()
            raise _short_header_error(memoryview(buf))

    def _open_header(self) -> None:
        try:
            header = read_header(self._header_buf)
        except HeaderError:
            self._fail()
            raise
        key = self._key
        keys = _FileKeys(key, header.file_id)
        if not hmac.compare_digest(header.key_id, key.key_id):
            self._fail()
            # If the MAC verifies once our key id is put back, only the key id field was
            # damaged: report an altered header, not a wrong key.
            fixed = dataclasses.replace(header, key_id=key.key_id)
            if hmac.compare_digest(keys.header_mac(fixed.fields()), header.mac):
                raise HeaderError("the header's key id field has been altered")
            raise WrongKey(expected_key_id=key.key_id, found_key_id=header.key_id)
        if not hmac.compare_digest(keys.header_mac(header.fields()), header.mac):
            self._fail()
            raise HeaderError("the header failed authentication: it has been altered")
        self._header = header
        self._aead = keys.aead
        self._aad = header.mac
        cs = header.chunk_size
        self._chunk_size = cs
        self._pend = bytearray(cs + RECORD_OVERHEAD)
        self._pend_view = memoryview(self._pend)
        self._out = _Output(cs)
        self._header_buf = bytearray()
        self._state = "chunks"

    def _chunks(self, mv: memoryview, pos: int, n: int) -> memoryview:
        cs = self._chunk_size
        rec = cs + RECORD_OVERHEAD
        # Whole records fit in (pending + input) / rec; at most one final record more.
        out = self._out.reserve((self._pend_len + n - pos) // rec * cs + cs)
        o = 0
        if self._pend_len:
            pos, o = self._fill_pending(mv, pos, n, out)
            if self._pend_len or self._state == "done":
                return self._after_final(out, o, pos, n)
        aead = self._aead
        assert aead is not None
        decrypt_into = aead.decrypt_into
        aad = self._aad
        pack_nonce = _NONCE.pack
        unpack_len = _LEN.unpack_from
        index = self._index
        # The hot loop: whole full-size records straight from the caller's buffer.
        while n - pos >= rec:
            if unpack_len(mv, pos)[0] != cs:
                break
            try:
                decrypt_into(pack_nonce(0, index), mv[pos + 4 : pos + rec], aad, out[o : o + cs])
            except InvalidTag:
                out[o : o + cs] = bytes(cs)
                raise ChunkAuthenticationError(index=index, final=False) from None
            index += 1
            pos += rec
            o += cs
        self._index = index
        if pos < n:
            pos, o = self._slow_record(mv, pos, n, out, o)
        return self._after_final(out, o, pos, n)

    def _after_final(self, out: memoryview, o: int, pos: int, n: int) -> memoryview:
        if self._state == "done" and pos < n:
            raise TrailingData(index=self._final_index, extra=n - pos)
        return out[:o]

    def _slow_record(
        self, mv: memoryview, pos: int, n: int, out: memoryview, o: int
    ) -> tuple[int, int]:
        """Handle what the hot loop leaves: a final record, a bad length, a partial tail."""
        cs = self._chunk_size
        if n - pos >= _LEN.size:
            length = _LEN.unpack_from(mv, pos)[0]
            self._check_length(length)
            size = length + RECORD_OVERHEAD
            if length < cs and n - pos >= size:
                self._open_record(mv[pos : pos + size], out, o)
                return pos + size, o + length
        # Incomplete record: keep it (at most one record) until more bytes arrive.
        return self._fill_pending(mv, pos, n, out, o)

    def _fill_pending(
        self, mv: memoryview, pos: int, n: int, out: memoryview, o: int = 0
    ) -> tuple[int, int]:
        pend = self._pend_view
        have = self._pend_len
        if have < _LEN.size:
            take = min(_LEN.size - have, n - pos)
            pend[have : have + take] = mv[pos : pos + take]
            have += take
            pos += take
            if have < _LEN.size:
                self._pend_len = have
                return pos, o
            length = _LEN.unpack_from(pend, 0)[0]
            self._pend_len = have
            self._check_length(length)
            self._pend_need = length + RECORD_OVERHEAD
        need = self._pend_need
        take = min(need - have, n - pos)
        pend[have : have + take] = mv[pos : pos + take]
        have += take
        pos += take
        if have < need:
            self._pend_len = have
            return pos, o
        self._pend_len = 0
        self._open_record(pend[:need], out, o)
        return pos, o + need - RECORD_OVERHEAD

    def _check_length(self, length: int) -> None:
        if length > self._chunk_size:
            raise ChunkAuthenticationError(
                index=self._index,
                final=False,
                detail=f"its length field says {length} bytes, more than the chunk size "
                f"{self._chunk_size}: it was altered",
            )

    def _open_record(self, record: memoryview, out: memoryview, o: int) -> None:
        """Verify and decrypt one complete record into ``out[o:]``."""
        aead = self._aead
        assert aead is not None
        length = len(record) - RECORD_OVERHEAD
        final = length < self._chunk_size
        index = self._index
        try:
            aead.decrypt_into(
                _NONCE.pack(int(final), index),
                record[_LEN.size :],
                self._aad,
                out[o : o + length],
            )
        except InvalidTag:
            out[o : o + length] = bytes(length)
            raise ChunkAuthenticationError(index=index, final=final) from None
        self._index = index + 1
        if final:
            self._final_index = index
            self._state = "done"

    def _truncation(self) -> Exception:
        index = self._index
        have = self._pend_len
        if have == 0:
            return TruncatedBackup(
                f"the backup ends before chunk {index}, its final chunk is missing: "
                "it was cut at a chunk boundary",
                index=index,
            )
        if have < _LEN.size:
            return TruncatedBackup(
                f"the backup ends inside the length field of chunk {index}", index=index
            )
        # If what did arrive verifies as a final chunk, the length field lied, not the end.
        length = have - RECORD_OVERHEAD
        if 0 <= length < self._chunk_size:
            aead = self._aead
            assert aead is not None
            try:
                aead.decrypt(_NONCE.pack(1, index), self._pend_view[_LEN.size : have], self._aad)
            except InvalidTag:
                pass
            else:
                return ChunkAuthenticationError(
                    index=index, final=True, detail="its length field has been altered"
                )
        return TruncatedBackup(
            f"chunk {index} is cut short: the backup ends after {have} of its "
            f"{self._pend_need} bytes",
            index=index,
        )


def encrypt_bytes(
    key: BackupKey,
    data: BytesLike,
    *,
    rng: Callable[[int], bytes],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    content: ContentType = ContentType.FILE,
) -> bytes:
    """One-shot: the whole backup of ``data`` (for small payloads and tests)."""
    enc = Encryptor(key, rng=rng, chunk_size=chunk_size, content=content)
    return bytes(enc.feed(data)) + bytes(enc.finish())


def decrypt_bytes(key: BackupKey, backup: BytesLike) -> bytes:
    """One-shot: the verified plaintext of a whole backup (raises like :class:`Decryptor`)."""
    dec = Decryptor(key)
    plain = bytes(dec.feed(backup))
    dec.finish()
    return plain

"""Wrapping the backup key under OPAQUE's export_key."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from client.backup_key import BackupKey
from client.errors import (
    ClientError,
    InvalidExportKey,
    KeyUnwrapError,
    KeyWrapError,
    WrappedKeyFormatError,
)
from client.keywrap import (
    EXPORT_KEY_SIZE,
    WRAP_VERSION,
    WRAPPED_KEY_SIZE,
    unwrap_backup_key,
    wrap_backup_key,
)

KEY = BackupKey(bytes(range(32)))
EXPORT_KEY = bytes(range(64, 128))
OTHER_EXPORT_KEY = bytes(range(65, 129))


def rng(seed: int) -> random.Random:
    return random.Random(seed)


@settings(deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=64, max_size=64),
    st.binary(max_size=64),
)
def test_round_trip(raw: bytes, export_key: bytes, context: bytes) -> None:
    key = BackupKey(raw)
    blob = wrap_backup_key(key, export_key, context=context)
    assert len(blob) == WRAPPED_KEY_SIZE
    assert unwrap_backup_key(blob, export_key, context=context) == key
    assert raw not in blob


def test_bytes_like_inputs() -> None:
    blob = wrap_backup_key(KEY, bytearray(EXPORT_KEY), context=memoryview(b"alice"))
    assert unwrap_backup_key(memoryview(blob), memoryview(EXPORT_KEY), context=b"alice") == KEY


def test_layout_matches_the_documented_derivation() -> None:
    blob = wrap_backup_key(KEY, EXPORT_KEY, context=b"alice", rng=rng(5).randbytes)
    salt = rng(5).randbytes(32)
    assert blob[:4] == b"VDKW"
    assert blob[4] == WRAP_VERSION
    assert blob[5:37] == salt
    wrapping_key = HKDF(
        algorithm=hashes.SHA512(), length=32, salt=salt, info=b"vaultd backup-key wrap v1"
    ).derive(EXPORT_KEY)
    opened = AESGCM(wrapping_key).decrypt(bytes(12), blob[37:], blob[:37] + b"alice")
    assert opened == KEY.to_bytes()


def test_each_wrap_uses_a_fresh_salt() -> None:
    a = wrap_backup_key(KEY, EXPORT_KEY)
    b = wrap_backup_key(KEY, EXPORT_KEY)
    assert a != b
    assert a[5:37] != b[5:37]
    assert unwrap_backup_key(a, EXPORT_KEY) == unwrap_backup_key(b, EXPORT_KEY) == KEY


def test_injected_rng_makes_it_deterministic() -> None:
    a = wrap_backup_key(KEY, EXPORT_KEY, rng=rng(1).randbytes)
    assert a == wrap_backup_key(KEY, EXPORT_KEY, rng=rng(1).randbytes)


def test_wrong_export_key() -> None:
    blob = wrap_backup_key(KEY, EXPORT_KEY)
    with pytest.raises(KeyUnwrapError, match="wrong export_key"):
        unwrap_backup_key(blob, OTHER_EXPORT_KEY)


def test_wrong_context() -> None:
    blob = wrap_backup_key(KEY, EXPORT_KEY, context=b"alice")
    with pytest.raises(KeyUnwrapError):
        unwrap_backup_key(blob, EXPORT_KEY, context=b"bob")
    with pytest.raises(KeyUnwrapError):
        unwrap_backup_key(blob, EXPORT_KEY)


@pytest.mark.parametrize("byte", range(WRAPPED_KEY_SIZE))
def test_every_bit_flip_is_refused(byte: int) -> None:
    blob = wrap_backup_key(KEY, EXPORT_KEY)
    for bit in range(8):
        damaged = bytearray(blob)
        damaged[byte] ^= 1 << bit
        expected = WrappedKeyFormatError if byte < 5 else KeyUnwrapError
        with pytest.raises(expected):
            unwrap_backup_key(bytes(damaged), EXPORT_KEY)


@pytest.mark.parametrize("size", [0, 1, 4, 5, 36, 37, WRAPPED_KEY_SIZE - 1, WRAPPED_KEY_SIZE + 1])
def test_wrong_blob_size(size: int) -> None:
    blob = wrap_backup_key(KEY, EXPORT_KEY)
    cut = (blob + b"\x00")[:size]
    with pytest.raises(WrappedKeyFormatError, match=f"got {size}"):
        unwrap_backup_key(cut, EXPORT_KEY)


def test_bad_magic_and_version() -> None:
    blob = wrap_backup_key(KEY, EXPORT_KEY)
    with pytest.raises(WrappedKeyFormatError, match="bad magic"):
        unwrap_backup_key(b"XXXX" + blob[4:], EXPORT_KEY)
    with pytest.raises(WrappedKeyFormatError, match="version 2"):
        unwrap_backup_key(blob[:4] + b"\x02" + blob[5:], EXPORT_KEY)


@pytest.mark.parametrize("size", [0, 32, EXPORT_KEY_SIZE - 1, EXPORT_KEY_SIZE + 1])
def test_export_key_must_be_64_bytes(size: int) -> None:
    with pytest.raises(InvalidExportKey, match=f"got {size}"):
        wrap_backup_key(KEY, bytes(size))
    blob = wrap_backup_key(KEY, EXPORT_KEY)
    with pytest.raises(InvalidExportKey):
        unwrap_backup_key(blob, bytes(size))


def test_refuses_raw_bytes_as_key_and_a_short_rng() -> None:
    with pytest.raises(TypeError):
        wrap_backup_key(KEY.to_bytes(), EXPORT_KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rng"):
        wrap_backup_key(KEY, EXPORT_KEY, rng=lambda n: bytes(n - 1))


def test_error_hierarchy() -> None:
    for cls in (InvalidExportKey, KeyUnwrapError, WrappedKeyFormatError):
        assert issubclass(cls, KeyWrapError)
        assert issubclass(cls, ClientError)

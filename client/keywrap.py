"""Wrap the backup key under OPAQUE's ``export_key``, for storage in the vault record.

The vault keeps, per user, a sealed record holding this wrapped key. Only a client that
ran OPAQUE with the right password obtains the 64-byte ``export_key`` and can unwrap it, so
neither the vault's realm key nor the operator ever sees the backup key in clear. This
module takes the ``export_key`` as plain bytes and does not depend on the OPAQUE code.

Blob layout (85 bytes, version 1)::

    magic "VDKW" | version u8 = 1 | salt[32] | AES-256-GCM(backup key)[32] | tag[16]

The wrapping key is HKDF-SHA512(ikm=export_key, salt=salt, info="vaultd backup-key wrap
v1"), 32 bytes. A fresh random salt per wrap gives a fresh wrapping key, so the all-zero
GCM nonce is never used twice under one key even when the same ``export_key`` wraps several
times (key rotation without re-registration). The associated data is the blob header
(magic, version, salt) followed by the caller's ``context`` (for instance the user id),
so a blob only opens for the context it was made for.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .backup_key import KEY_SIZE, BackupKey
from .errors import InvalidExportKey, KeyUnwrapError, WrappedKeyFormatError

__all__ = [
    "EXPORT_KEY_SIZE",
    "WRAPPED_KEY_SIZE",
    "WRAP_VERSION",
    "unwrap_backup_key",
    "wrap_backup_key",
]

WRAP_MAGIC: Final = b"VDKW"
WRAP_VERSION: Final = 1
EXPORT_KEY_SIZE: Final = 64
SALT_SIZE: Final = 32
_HEADER = struct.Struct(f">4sB{SALT_SIZE}s")
WRAPPED_KEY_SIZE: Final = _HEADER.size + KEY_SIZE + 16
_INFO = b"vaultd backup-key wrap v1"
_NONCE = bytes(12)

BytesLike = bytes | bytearray | memoryview


def _wrapping_aead(export_key: BytesLike, salt: bytes) -> AESGCM:
    ek = bytes(export_key)
    if len(ek) != EXPORT_KEY_SIZE:
        raise InvalidExportKey(
            f"export_key must be the {EXPORT_KEY_SIZE} bytes OPAQUE outputs, got {len(ek)}"
        )
    wrapping_key = HKDF(algorithm=hashes.SHA512(), length=32, salt=salt, info=_INFO).derive(ek)
    return AESGCM(wrapping_key)


def wrap_backup_key(
    key: BackupKey,
    export_key: BytesLike,
    *,
    context: BytesLike = b"",
    rng: Callable[[int], bytes] = secrets.token_bytes,
) -> bytes:
    """Seal ``key`` under ``export_key``; returns a :data:`WRAPPED_KEY_SIZE`-byte blob.

    ``context`` (optional, e.g. the user id) must be given again to unwrap. ``rng(32)``
    supplies the salt. Raises :class:`InvalidExportKey` for an export_key that is not 64
    bytes.
    """
    if not isinstance(key, BackupKey):
        raise TypeError(f"key must be a BackupKey, not {type(key).__name__}")
    salt = bytes(rng(SALT_SIZE))
    if len(salt) != SALT_SIZE:
        raise ValueError(f"rng({SALT_SIZE}) returned {len(salt)} bytes")
    aead = _wrapping_aead(export_key, salt)
    header = _HEADER.pack(WRAP_MAGIC, WRAP_VERSION, salt)
    return header + aead.encrypt(_NONCE, key.to_bytes(), header + bytes(context))


def unwrap_backup_key(
    blob: BytesLike, export_key: BytesLike, *, context: BytesLike = b""
) -> BackupKey:
    """Open a blob made by :func:`wrap_backup_key`.

    Raises :class:`WrappedKeyFormatError` for a blob of the wrong size, magic or version,
    :class:`InvalidExportKey` for an export_key that is not 64 bytes, and
    :class:`KeyUnwrapError` if it does not authenticate (wrong export_key, i.e. wrong
    password; other context; altered blob).
    """
    data = bytes(blob)
    if len(data) < _HEADER.size:
        raise WrappedKeyFormatError(f"a wrapped key is {WRAPPED_KEY_SIZE} bytes, got {len(data)}")
    magic, version, salt = _HEADER.unpack_from(data)
    if magic != WRAP_MAGIC:
        raise WrappedKeyFormatError("not a vaultd wrapped key (bad magic)")
    if version != WRAP_VERSION:
        raise WrappedKeyFormatError(
            f"wrapped-key version {version} is not supported (this build reads {WRAP_VERSION})"
        )
    if len(data) != WRAPPED_KEY_SIZE:
        raise WrappedKeyFormatError(f"a wrapped key is {WRAPPED_KEY_SIZE} bytes, got {len(data)}")
    aead = _wrapping_aead(export_key, salt)
    header = data[: _HEADER.size]
    try:
        raw = aead.decrypt(_NONCE, data[_HEADER.size :], header + bytes(context))
    except InvalidTag:
        raise KeyUnwrapError(
            "the wrapped backup key did not authenticate: wrong export_key (wrong "
            "password), a different context, or an altered blob"
        ) from None
    return BackupKey(raw)

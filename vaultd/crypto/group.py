"""The ristretto255 prime-order group, and hashing onto it (RFC 9496, RFC 9380).

This is the only module that talks to libsodium. It goes through ``pysodium``, a ctypes
binding over the system ``libsodium.so.23`` (Debian package ``libsodium23``): no shared
object is unpacked to a temporary directory, so it works in a hardened systemd sandbox
with a read-only or noexec ``/tmp``. To swap the backend, reimplement the functions below.

Values are passed around as ``bytes`` in their canonical 32-byte encodings:

* an *element* is a canonical ristretto255 encoding of a point other than the identity;
* a *scalar* is a little-endian integer strictly below the group order ``ORDER``.

Everything from outside the process goes through :func:`deserialize_element` or
:func:`deserialize_scalar`, which raise :class:`~vaultd.crypto.errors.InvalidEncoding`.
The arithmetic functions also refuse bad operands with a typed error rather than a bare
``ValueError`` from the binding.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib
import secrets
from collections.abc import Callable
from types import ModuleType
from typing import Final

from vaultd.crypto.errors import BackendUnavailable, InvalidEncoding, InvalidInput

# Sonames to try: Debian 12 ships .23 (1.0.18); later releases renamed the package
# (libsodium26, 1.0.19+). The unversioned name exists only with the -dev package.
_SONAMES: Final = ("libsodium.so.23", "libsodium.so.26", "libsodium.so")


def _import_pysodium() -> ModuleType:
    """Import pysodium without letting it run ``/sbin/ldconfig -p``.

    pysodium locates libsodium with ctypes.util.find_library, which on Linux forks and execs
    ldconfig. Under a systemd unit that restricts exec (NoExecPaths=, SystemCallFilter=
    without @process) that fails and pysodium reports libsodium missing. dlopen() by soname
    needs no helper process, so answer pysodium's lookup from it during the import.
    """
    real_find_library = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        if name in ("sodium", "libsodium"):
            for soname in _SONAMES:
                try:
                    ctypes.CDLL(soname)
                except OSError:
                    continue
                return soname
        return real_find_library(name)

    ctypes.util.find_library = find_library
    try:
        return importlib.import_module("pysodium")
    except (OSError, ValueError) as exc:  # pysodium raises ValueError without libsodium
        raise BackendUnavailable(
            "cannot load the system libsodium through pysodium; install libsodium23 "
            f"(libsodium >= 1.0.18): {exc}"
        ) from exc
    finally:
        ctypes.util.find_library = real_find_library


pysodium = _import_pysodium()

# ristretto255 arrived in libsodium 1.0.18. Check both the version and the symbols, since
# a distribution may build libsodium with --enable-minimal, which drops some of them.
_REQUIRED_SYMBOLS: Final = (
    "crypto_core_ristretto255_is_valid_point",
    "crypto_core_ristretto255_from_hash",
    "crypto_core_ristretto255_scalar_reduce",
    "crypto_core_ristretto255_scalar_invert",
    "crypto_scalarmult_ristretto255",
    "crypto_scalarmult_ristretto255_base",
)


def _check_backend() -> str:
    version: str = pysodium.sodium.sodium_version_string().decode("ascii", "replace")
    if not pysodium.sodium_version_check(1, 0, 18):
        raise BackendUnavailable(
            f"libsodium {version} is too old: ristretto255 needs libsodium >= 1.0.18"
        )
    for name in _REQUIRED_SYMBOLS:
        try:
            getattr(pysodium.sodium, name)
        except AttributeError as exc:
            raise BackendUnavailable(f"libsodium {version} lacks {name}") from exc
    # pysodium never calls sodium_init(); libsodium requires it before first use (it picks
    # the implementations and makes the library thread-safe). -1 means it failed.
    if pysodium.sodium_init() < 0:
        raise BackendUnavailable(f"sodium_init() failed for libsodium {version}")
    return version


LIBSODIUM_VERSION: Final[str] = _check_backend()
"""Version string of the libsodium this process loaded."""

ELEMENT_BYTES: Final = 32
"""Size of a serialised group element (Noe, Npk)."""
SCALAR_BYTES: Final = 32
"""Size of a serialised scalar (Nok, Nsk)."""
UNIFORM_BYTES: Final = 64
"""Bytes of uniform input consumed by hash_to_group / hash_to_scalar (L in RFC 9380)."""
ORDER: Final = 2**252 + 27742317777372353535851937790883648493
"""The prime order of ristretto255."""
IDENTITY_ENCODING: Final = bytes(ELEMENT_BYTES)
"""The identity element's encoding; valid for libsodium, refused by this module."""

Rng = Callable[[int], bytes]
"""A source of randomness: called with n, returns n uniformly random bytes."""

default_rng: Final[Rng] = secrets.token_bytes
"""The randomness used when a caller does not inject its own."""

# SHA-512 parameters for expand_message_xmd: output size b and input block size r, in bytes.
_B_IN_BYTES: Final = 64
_R_IN_BYTES: Final = 128


def deserialize_element(data: bytes) -> bytes:
    """Validate ``data`` as a group element and return it as ``bytes``.

    Raises InvalidEncoding for a wrong length, a non-canonical or invalid encoding, and for
    the identity element (which libsodium's validity check accepts).
    """
    data = bytes(data)
    if len(data) != ELEMENT_BYTES:
        raise InvalidEncoding(f"group element must be {ELEMENT_BYTES} bytes, got {len(data)}")
    if data == IDENTITY_ENCODING:
        raise InvalidEncoding("group element is the identity")
    if data[31] & 0x80:
        # RFC 9496 §4.3.1 makes the top bit part of the canonical check; libsodium 1.0.18
        # (Debian 12's) ignores it, so two encodings of each point would otherwise pass.
        raise InvalidEncoding("not a canonical ristretto255 encoding (top bit set)")
    # The length check above is load-bearing: pysodium passes the buffer straight to C,
    # which reads 32 bytes whatever its size.
    if not pysodium.crypto_core_ristretto255_is_valid_point(data):
        raise InvalidEncoding("not a canonical ristretto255 encoding")
    return data


def deserialize_scalar(data: bytes, *, allow_zero: bool = False) -> bytes:
    """Validate ``data`` as a canonical scalar (below ORDER; non-zero unless allowed)."""
    data = bytes(data)
    if len(data) != SCALAR_BYTES:
        raise InvalidEncoding(f"scalar must be {SCALAR_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= ORDER:
        raise InvalidEncoding("scalar is not reduced modulo the group order")
    if value == 0 and not allow_zero:
        raise InvalidEncoding("scalar is zero")
    return data


def scalar_mult(scalar: bytes, element: bytes) -> bytes:
    """Return ``scalar * element``.

    Raises InvalidEncoding if either operand is malformed or the product is the identity
    (which, in a prime-order group, only a zero scalar or the identity can cause).
    """
    if len(scalar) != SCALAR_BYTES or len(element) != ELEMENT_BYTES:
        raise InvalidEncoding("scalar_mult operands must be 32 bytes each")
    if element[31] & 0x80:
        raise InvalidEncoding("not a canonical ristretto255 encoding (top bit set)")
    try:
        product: bytes = pysodium.crypto_scalarmult_ristretto255(scalar, element)
    except ValueError as exc:
        raise InvalidEncoding("invalid element, or scalar multiplication gave identity") from exc
    return product


def scalar_mult_base(scalar: bytes) -> bytes:
    """Return ``scalar * G`` for the ristretto255 generator G; a zero scalar is refused."""
    if len(scalar) != SCALAR_BYTES:
        raise InvalidInput(f"scalar must be {SCALAR_BYTES} bytes, got {len(scalar)}")
    try:
        product: bytes = pysodium.crypto_scalarmult_ristretto255_base(scalar)
    except ValueError as exc:
        raise InvalidInput("scalar is zero") from exc
    return product


def scalar_invert(scalar: bytes) -> bytes:
    """Return the multiplicative inverse of ``scalar`` modulo ORDER; zero is refused."""
    if len(scalar) != SCALAR_BYTES:
        raise InvalidInput(f"scalar must be {SCALAR_BYTES} bytes, got {len(scalar)}")
    try:
        inverse: bytes = pysodium.crypto_core_ristretto255_scalar_invert(scalar)
    except ValueError as exc:
        raise InvalidInput("cannot invert the zero scalar") from exc
    return inverse


def scalar_reduce(wide: bytes) -> bytes:
    """Reduce 64 bytes, read as a little-endian integer, modulo ORDER."""
    if len(wide) != UNIFORM_BYTES:
        raise InvalidInput(f"scalar_reduce needs {UNIFORM_BYTES} bytes, got {len(wide)}")
    reduced: bytes = pysodium.crypto_core_ristretto255_scalar_reduce(wide)
    return reduced


def random_scalar(rng: Rng = default_rng) -> bytes:
    """Return a uniformly random non-zero scalar, drawing 64 bytes at a time from ``rng``.

    Reducing 512 bits modulo a 253-bit order leaves a bias below 2**-250.
    """
    while True:
        wide = rng(UNIFORM_BYTES)
        if len(wide) != UNIFORM_BYTES:
            raise InvalidInput("rng returned the wrong number of bytes")
        scalar = scalar_reduce(wide)
        if scalar != bytes(SCALAR_BYTES):
            return scalar


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """expand_message_xmd with SHA-512 (RFC 9380 §5.3.1), including §5.3.3's long-DST rule."""
    if len(dst) > 255:
        dst = hashlib.sha512(b"H2C-OVERSIZE-DST-" + dst).digest()
    ell = -(-length // _B_IN_BYTES)
    if length <= 0 or ell > 255 or length > 65535:
        raise InvalidInput(f"expand_message_xmd cannot produce {length} bytes")
    dst_prime = dst + len(dst).to_bytes(1, "big")
    msg_prime = bytes(_R_IN_BYTES) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime
    b_0 = hashlib.sha512(msg_prime).digest()
    b_i = hashlib.sha512(b_0 + b"\x01" + dst_prime).digest()
    blocks = [b_i]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b_0, b_i, strict=True))
        b_i = hashlib.sha512(mixed + i.to_bytes(1, "big") + dst_prime).digest()
        blocks.append(b_i)
    return b"".join(blocks)[:length]


def hash_to_group(msg: bytes, dst: bytes) -> bytes:
    """Hash ``msg`` to a ristretto255 element (RFC 9380 ristretto255_XMD:SHA-512_R255MAP_RO_).

    The result can in principle be the identity; callers that must refuse it check.
    """
    return element_from_uniform_bytes(expand_message_xmd(msg, dst, UNIFORM_BYTES))


def element_from_uniform_bytes(uniform: bytes) -> bytes:
    """The one-way map of RFC 9496 §4.3.4 from 64 uniform bytes to an element."""
    if len(uniform) != UNIFORM_BYTES:
        raise InvalidInput(f"the one-way map needs {UNIFORM_BYTES} bytes, got {len(uniform)}")
    element: bytes = pysodium.crypto_core_ristretto255_from_hash(uniform)
    return element


def hash_to_scalar(msg: bytes, dst: bytes) -> bytes:
    """Hash ``msg`` to a scalar: 64 uniform bytes reduced modulo ORDER (RFC 9497 §4.1)."""
    return scalar_reduce(expand_message_xmd(msg, dst, UNIFORM_BYTES))

"""The backup key: 32 random bytes, shown to people as 64 hex digits plus 4 check digits.

A :class:`BackupKey` is the root secret of a user's encrypted backups. It is written out
for manual safekeeping as 64 hexadecimal digits in 16 groups of four, followed by a group
of four *check digits*::

    3f9a 0c4e 7d21 b8e6 5a0f 91c3 2e7b 6d48 c1f0 9b3a 47e2 d5a8 0e6c 73b1 f29d 846a - 5e0b

Parsing (:func:`parse_key`) accepts any grouping, upper or lower case, spaces and dashes,
and uses the check digits to catch typos before the key is ever used.

Why these check digits (see docs/backup-format.md for the full argument)
------------------------------------------------------------------------
The two check bytes are a distance-3 linear code over GF(2^8) on the 32 key bytes:
``c0 = XOR of all bytes`` and ``c1 = XOR of alpha^(i+1) * byte_i``. Any error that touches
at most two of the 34 bytes is detected *with certainty*: every single-digit typo, every
swap of two adjacent digits (also across groups and into the check digits), every swap of
any two digits, any two wrong digits. Anything else is missed with probability 2^-16. A
truncated hash would miss each single typo with probability 2^-16, i.e. about one key in
70 would have some undetectable single-digit typo. When a single byte is wrong, the two
syndromes also locate it, so the error message can point at the group to re-read.

The check digits are a function of the key and so carry 16 bits about it, but only ever
next to the key itself; for anyone who saw the check digits alone, 240 unknown bits remain,
and every backup header already carries a 128-bit key id that is a (one-way) function of
the key. No key material is revealed that makes the key guessable.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import InvalidKeyMaterial, KeyCheckMismatch, KeyParseError

__all__ = [
    "CHECK_DIGITS",
    "KEY_DIGITS",
    "KEY_ID_SIZE",
    "KEY_SIZE",
    "BackupKey",
    "parse_key",
]

KEY_SIZE = 32
"""Bytes in a backup key."""
KEY_DIGITS = 2 * KEY_SIZE
"""Hex digits in the written-out key."""
CHECK_DIGITS = 4
"""Hex digits in the check group written beside the key."""
KEY_ID_SIZE = 16
"""Bytes in a key id (a one-way function of the key, stored in backup headers)."""

_KEY_ID_INFO = b"vaultd backup v1: key id"

# GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d), in which 2 generates the
# multiplicative group; exp/log tables make multiplication two lookups.
_GF_EXP = [0] * 512
_GF_LOG = [0] * 256
_x = 1
for _i in range(255):
    _GF_EXP[_i] = _x
    _GF_LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D
for _i in range(255, 512):
    _GF_EXP[_i] = _GF_EXP[_i - 255]
del _x, _i


def _syndromes(data: bytes) -> tuple[int, int]:
    """The two check bytes of ``data``: plain XOR, and XOR of alpha^(i+1) * data[i]."""
    s0 = 0
    s1 = 0
    for i, b in enumerate(data):
        s0 ^= b
        if b:
            s1 ^= _GF_EXP[_GF_LOG[b] + i + 1]
    return s0, s1


_HEX = frozenset("0123456789abcdefABCDEF")
# Typed or pasted separators: every kind of white space and the common dash characters.
_DASHES = frozenset("-\u2010\u2011\u2012\u2013\u2014\u2015\u2212")
_LOOKALIKES = {"o": "0", "O": "0", "l": "1", "I": "1", "i": "1"}


def _hex_digits(text: object, what: str) -> str:
    """The hex digits of ``text`` in lower case, separators dropped; typed errors otherwise."""
    if not isinstance(text, str):
        raise KeyParseError(f"the {what} must be text (str), not {type(text).__name__}")
    digits: list[str] = []
    for pos, ch in enumerate(text):
        if ch in _HEX:
            digits.append(ch)
        elif ch.isspace() or ch in _DASHES:
            continue
        else:
            hint = ""
            if ch in _LOOKALIKES:
                hint = f" (did you mean the digit {_LOOKALIKES[ch]}?)"
            raise KeyParseError(
                f"{ch!r} at position {pos} of the {what} is not a hex digit "
                f"(only 0-9 and a-f are used){hint}",
                position=pos,
            )
    return "".join(digits).lower()


class BackupKey:
    """A 256-bit backup key. Immutable; ``repr``/``str`` show only its key id.

    Equality is constant-time; keys hash by key id so they can be dict keys.
    """

    __slots__ = ("_key_id", "_raw")

    _raw: bytes
    _key_id: bytes

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        """Wrap raw key bytes; raises :class:`InvalidKeyMaterial` unless exactly 32."""
        data = bytes(raw)
        if len(data) != KEY_SIZE:
            raise InvalidKeyMaterial(f"a backup key is {KEY_SIZE} bytes, got {len(data)}")
        self._raw = data
        self._key_id = HKDF(
            algorithm=hashes.SHA256(), length=KEY_ID_SIZE, salt=None, info=_KEY_ID_INFO
        ).derive(data)

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = secrets.token_bytes) -> BackupKey:
        """A fresh key from ``rng(32)`` (the OS CSPRNG unless another is injected)."""
        return cls(rng(KEY_SIZE))

    @classmethod
    def from_digits(cls, text: str, check: str | None = None) -> BackupKey:
        """Same as :func:`parse_key`."""
        return parse_key(text, check)

    def to_bytes(self) -> bytes:
        """The 32 raw key bytes. Handle with care: this is the secret."""
        return self._raw

    @property
    def key_id(self) -> bytes:
        """16 bytes identifying the key (HKDF-SHA256 of it); reveals nothing about it."""
        return self._key_id

    def to_digits(self) -> str:
        """The key as 64 lower-case hex digits in 16 space-separated groups of four."""
        h = self._raw.hex()
        return " ".join(h[i : i + 4] for i in range(0, KEY_DIGITS, 4))

    def check_digits(self) -> str:
        """The four check digits to show beside :meth:`to_digits`."""
        s0, s1 = _syndromes(self._raw)
        return f"{s0:02x}{s1:02x}"

    def to_text(self) -> str:
        """Digits and check digits in one line that :func:`parse_key` reads back."""
        return f"{self.to_digits()} - {self.check_digits()}"

    def __repr__(self) -> str:
        return f"BackupKey(key_id={self._key_id.hex()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BackupKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._key_id)


def _locate(s0: int, s1: int) -> int | None:
    """The 1-based group a single wrong byte would be in, from the syndromes' ratio."""
    if s0 and s1:
        pos = (_GF_LOG[s1] - _GF_LOG[s0] - 1) % 255
        return pos // 2 + 1 if pos < KEY_SIZE else None
    # Only one syndrome off: exactly what one wrong check byte produces.
    return KEY_DIGITS // 4 + 1


def parse_key(text: str, check: str | None = None) -> BackupKey:
    """Read a key typed or pasted by a person, verifying it against its check digits.

    ``text`` holds the 64 key digits followed by the 4 check digits (68 digits), or only the
    64 key digits when ``check`` is given separately. Digits may be grouped any way and in
    any case; white space and dashes are ignored. Raises :class:`KeyParseError` for a
    character that is not a hex digit (with its position) or a wrong number of digits, and
    :class:`KeyCheckMismatch` when the digits contain a typo.
    """
    digits = _hex_digits(text, "key")
    if check is None:
        if len(digits) == KEY_DIGITS:
            raise KeyParseError(
                f"found the {KEY_DIGITS} key digits but not the {CHECK_DIGITS} check digits: "
                "type the check digits shown beside the key after it"
            )
        if len(digits) != KEY_DIGITS + CHECK_DIGITS:
            raise KeyParseError(
                f"found {len(digits)} hex digits; expected the {KEY_DIGITS} key digits "
                f"followed by the {CHECK_DIGITS} check digits ({KEY_DIGITS + CHECK_DIGITS} "
                "in all)"
            )
        key_digits, check_digits = digits[:KEY_DIGITS], digits[KEY_DIGITS:]
    else:
        if len(digits) != KEY_DIGITS:
            raise KeyParseError(f"found {len(digits)} hex digits in the key; expected {KEY_DIGITS}")
        key_digits = digits
        check_digits = _hex_digits(check, "check digits")
        if len(check_digits) != CHECK_DIGITS:
            raise KeyParseError(f"found {len(check_digits)} check digits; expected {CHECK_DIGITS}")
    raw = bytes.fromhex(key_digits)
    c0, c1 = _syndromes(raw)
    s0 = c0 ^ int(check_digits[:2], 16)
    s1 = c1 ^ int(check_digits[2:], 16)
    if s0 or s1:
        group = _locate(s0, s1)
        if group is None:
            where = "; re-read all of it"
        elif group == KEY_DIGITS // 4 + 1:
            where = "; the check digits themselves may be the mistyped ones"
        else:
            first = 4 * (group - 1) + 1
            where = f"; most likely in group {group} (digits {first}-{first + 3})"
        raise KeyCheckMismatch(
            f"the key does not match its check digits: there is a typo{where}",
            suspect_group=group,
        )
    return BackupKey(raw)

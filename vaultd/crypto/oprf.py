"""The OPRF of RFC 9497 in its base mode (mode 0, "OPRF"), suite ristretto255-SHA512.

The client blinds its input, the server multiplies the blinded element by its key, and the
client unblinds and hashes. The server learns nothing about the input; the client learns
only the PRF output for its own input.

Randomness (the blind) is an argument, so the RFC's test vectors can be reproduced; by
default it comes from :data:`~vaultd.crypto.group.default_rng`. There is no other state.
"""

from __future__ import annotations

import hashlib
from typing import Final

from vaultd.crypto import group
from vaultd.crypto.errors import InvalidEncoding, InvalidInput

MODE_OPRF: Final = 0
SUITE_IDENTIFIER: Final = b"ristretto255-SHA512"
CONTEXT_STRING: Final = b"OPRFV1-" + MODE_OPRF.to_bytes(1, "big") + b"-" + SUITE_IDENTIFIER
"""contextString of RFC 9497 §3.1 for this suite and mode."""
HASH_TO_GROUP_DST: Final = b"HashToGroup-" + CONTEXT_STRING
HASH_TO_SCALAR_DST: Final = b"HashToScalar-" + CONTEXT_STRING
DERIVE_KEY_PAIR_DST: Final = b"DeriveKeyPair" + CONTEXT_STRING
OUTPUT_BYTES: Final = 64
"""Size of an OPRF output (Nh for SHA-512)."""
SEED_BYTES: Final = 32
"""Size of the seed DeriveKeyPair expects (Nseed)."""

_MAX_LEN: Final = 0xFFFF  # inputs and infos are length-prefixed with two bytes


def _i2osp2(value: int, what: str) -> bytes:
    if value > _MAX_LEN:
        raise InvalidInput(f"{what} is {value} bytes; at most {_MAX_LEN} are allowed")
    return value.to_bytes(2, "big")


def derive_key_pair(seed: bytes, info: bytes) -> tuple[bytes, bytes]:
    """DeriveKeyPair (RFC 9497 §3.2.1): a deterministic (private scalar, public element).

    ``seed`` must be SEED_BYTES long. Raises InvalidInput if no valid key results after 256
    tries (probability about 2**-2000, i.e. never in practice).
    """
    if len(seed) != SEED_BYTES:
        raise InvalidInput(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    derive_input = seed + _i2osp2(len(info), "info") + info
    zero = bytes(group.SCALAR_BYTES)
    for counter in range(256):
        secret = group.hash_to_scalar(
            derive_input + counter.to_bytes(1, "big"), DERIVE_KEY_PAIR_DST
        )
        if secret != zero:
            return secret, group.scalar_mult_base(secret)
    raise InvalidInput("DeriveKeyPair found no valid key")


def blind(
    oprf_input: bytes, *, blind: bytes | None = None, rng: group.Rng = group.default_rng
) -> tuple[bytes, bytes]:
    """Blind (RFC 9497 §3.3.1): return ``(blind, blinded_element)``.

    ``blind`` may be injected (a canonical non-zero scalar); otherwise it is drawn from
    ``rng``. Raises InvalidInput if ``oprf_input`` hashes to the identity or is too long.
    """
    _i2osp2(len(oprf_input), "OPRF input")
    blind = group.random_scalar(rng) if blind is None else _check_blind(blind)
    input_element = group.hash_to_group(oprf_input, HASH_TO_GROUP_DST)
    if input_element == group.IDENTITY_ENCODING:
        raise InvalidInput("OPRF input hashes to the identity element")
    return blind, group.scalar_mult(blind, input_element)


def blind_evaluate(private_key: bytes, blinded_element: bytes) -> bytes:
    """BlindEvaluate (RFC 9497 §3.3.1): the server's ``private_key * blinded_element``.

    The element must already be validated (group.deserialize_element); a malformed one
    raises InvalidEncoding.
    """
    return group.scalar_mult(private_key, blinded_element)


def finalize(oprf_input: bytes, blind: bytes, evaluated_element: bytes) -> bytes:
    """Finalize (RFC 9497 §3.3.1): unblind the server's answer and hash it to the output."""
    inverse = group.scalar_invert(blind)
    unblinded = group.scalar_mult(inverse, evaluated_element)
    return _output_hash(oprf_input, unblinded)


def evaluate(private_key: bytes, oprf_input: bytes) -> bytes:
    """Evaluate (RFC 9497 §3.3.1): the PRF output computed directly by the key holder."""
    input_element = group.hash_to_group(oprf_input, HASH_TO_GROUP_DST)
    if input_element == group.IDENTITY_ENCODING:
        raise InvalidInput("OPRF input hashes to the identity element")
    return _output_hash(oprf_input, group.scalar_mult(private_key, input_element))


def _output_hash(oprf_input: bytes, element: bytes) -> bytes:
    hash_input = (
        _i2osp2(len(oprf_input), "OPRF input")
        + oprf_input
        + _i2osp2(len(element), "element")
        + element
        + b"Finalize"
    )
    return hashlib.sha512(hash_input).digest()


def _check_blind(value: bytes) -> bytes:
    try:
        return group.deserialize_scalar(value)
    except InvalidEncoding as exc:
        raise InvalidInput(f"injected blind is not a valid scalar: {exc}") from exc

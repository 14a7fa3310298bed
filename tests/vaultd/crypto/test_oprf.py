"""RFC 9497 OPRF, mode 0, ristretto255-SHA512: official vectors and properties."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultd.crypto import group, oprf
from vaultd.crypto.errors import InvalidEncoding, InvalidInput

VECTORS_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "vectors"
VECTOR_FILE = "oprf_ristretto255_sha512.json"


def _load_mode0() -> dict[str, Any]:
    path = VECTORS_DIR / VECTOR_FILE
    if not path.is_file():
        pytest.fail(f"official vectors not found at {path} (shared/ must sit beside the repo)")
    sums = {}
    for line in (VECTORS_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[VECTOR_FILE]
    suites = json.loads(path.read_text())
    (suite,) = [s for s in suites if s["mode"] == 0]
    assert isinstance(suite, dict)
    return suite


SUITE = _load_mode0()


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def test_suite_constants_match_the_vectors() -> None:
    assert SUITE["identifier"] == oprf.SUITE_IDENTIFIER.decode()
    assert SUITE["hash"] == "SHA512"
    assert h(SUITE["groupDST"]) == oprf.HASH_TO_GROUP_DST
    assert oprf.CONTEXT_STRING == b"OPRFV1-\x00-ristretto255-SHA512"


def test_derive_key_pair_matches_the_vectors() -> None:
    private_key, public_key = oprf.derive_key_pair(h(SUITE["seed"]), h(SUITE["keyInfo"]))
    assert private_key == h(SUITE["skSm"])
    assert public_key == group.scalar_mult_base(private_key)


@pytest.mark.parametrize("index", range(2))
def test_blind_evaluate_finalize_match_the_vectors(index: int) -> None:
    vector = SUITE["vectors"][index]
    assert vector["Batch"] == 1
    private_key = h(SUITE["skSm"])
    oprf_input = h(vector["Input"])

    blind, blinded = oprf.blind(oprf_input, blind=h(vector["Blind"]))
    assert blind == h(vector["Blind"])
    assert blinded == h(vector["BlindedElement"])

    evaluated = oprf.blind_evaluate(private_key, blinded)
    assert evaluated == h(vector["EvaluationElement"])

    assert oprf.finalize(oprf_input, blind, evaluated) == h(vector["Output"])
    assert oprf.evaluate(private_key, oprf_input) == h(vector["Output"])


def test_the_vector_file_holds_exactly_the_two_mode0_vectors() -> None:
    assert len(SUITE["vectors"]) == 2


@given(st.binary(max_size=300), st.binary(min_size=32, max_size=32), st.binary(max_size=20))
def test_blinded_protocol_equals_direct_evaluation(
    oprf_input: bytes, seed: bytes, info: bytes
) -> None:
    private_key, _ = oprf.derive_key_pair(seed, info)
    blind, blinded = oprf.blind(oprf_input)
    evaluated = oprf.blind_evaluate(private_key, blinded)
    output = oprf.finalize(oprf_input, blind, evaluated)
    assert output == oprf.evaluate(private_key, oprf_input)
    assert len(output) == oprf.OUTPUT_BYTES


def test_blind_draws_from_the_injected_rng() -> None:
    stream = iter([bytes(64), b"\x05" + bytes(63)])
    blind, _ = oprf.blind(b"pw", rng=lambda n: next(stream))
    assert blind == b"\x05" + bytes(31)


def test_different_keys_give_different_outputs() -> None:
    key_a, _ = oprf.derive_key_pair(bytes(32), b"a")
    key_b, _ = oprf.derive_key_pair(bytes(32), b"b")
    assert oprf.evaluate(key_a, b"x") != oprf.evaluate(key_b, b"x")


@pytest.mark.parametrize(
    "bad_blind",
    [bytes(32), group.ORDER.to_bytes(32, "little"), bytes(31), b"\xff" * 32],
)
def test_an_invalid_injected_blind_is_refused(bad_blind: bytes) -> None:
    with pytest.raises(InvalidInput):
        oprf.blind(b"pw", blind=bad_blind)


def test_over_long_input_and_info_are_refused() -> None:
    with pytest.raises(InvalidInput):
        oprf.blind(bytes(65536))
    with pytest.raises(InvalidInput):
        oprf.derive_key_pair(bytes(32), bytes(65536))
    with pytest.raises(InvalidInput):
        oprf.derive_key_pair(bytes(31), b"")


def test_finalize_refuses_a_malformed_evaluation() -> None:
    blind, _ = oprf.blind(b"pw")
    with pytest.raises(InvalidEncoding):
        oprf.finalize(b"pw", blind, bytes(32))
    with pytest.raises(InvalidEncoding):
        oprf.finalize(b"pw", blind, b"\xff" * 32)


def test_blind_evaluate_refuses_the_identity() -> None:
    private_key, _ = oprf.derive_key_pair(bytes(32), b"")
    with pytest.raises(InvalidEncoding):
        oprf.blind_evaluate(private_key, bytes(32))

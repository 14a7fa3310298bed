"""KSF profiles: parameters, registry, validation and the Argon2id they run."""

from __future__ import annotations

import dataclasses

import nacl.pwhash
import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultd.crypto import ksf
from vaultd.crypto.errors import InvalidInput, UnknownProfile

# Argon2id's minimum memory: cheap enough to run in property tests.
TINY = ksf.KsfProfile(
    name="test-tiny",
    version=1,
    algorithm="argon2id",
    context=b"t",
    memory_kib=8,
    iterations=1,
    lanes=1,
)


def test_default_profile_is_rfc9106_second_recommendation() -> None:
    profile = ksf.DEFAULT
    assert (profile.algorithm, profile.iterations, profile.memory_kib, profile.lanes) == (
        "argon2id",
        3,
        64 * 1024,
        4,
    )
    assert profile.output_bytes == 64
    assert not profile.insecure


def test_default_profile_runs_argon2id_with_its_parameters() -> None:
    # The one test that pays for the real 64 MiB Argon2id (about 0.1 s).
    oprf_output = bytes(range(64))
    expected = Argon2id(salt=bytes(16), length=64, iterations=3, lanes=4, memory_cost=65536).derive(
        oprf_output
    )
    assert ksf.DEFAULT.stretch(oprf_output) == expected


def test_opaque_ke_profile_matches_opaque_ke_defaults() -> None:
    profile = ksf.OPAQUE_KE_COMPAT
    assert (profile.memory_kib, profile.iterations, profile.lanes) == (19456, 2, 1)
    assert profile.salt == bytes(16)
    assert profile.output_bytes == 64
    assert profile.context == b""


def test_opaque_ke_profile_agrees_with_libsodium_argon2id() -> None:
    # An independent Argon2id (libsodium via PyNaCl; lanes fixed at 1, like opaque-ke).
    oprf_output = b"\x42" * 64
    expected = nacl.pwhash.argon2id.kdf(
        64, oprf_output, bytes(16), opslimit=2, memlimit=19456 * 1024
    )
    assert ksf.OPAQUE_KE_COMPAT.stretch(oprf_output) == expected


def test_identity_profile_is_the_vector_configuration() -> None:
    assert ksf.IDENTITY.context == b"OPAQUE-POC"
    assert ksf.IDENTITY.stretch(b"abc") == b"abc"
    assert ksf.IDENTITY.insecure


def test_registry_finds_profiles_by_ref() -> None:
    assert ksf.get_profile("vaultd-argon2id@1") is ksf.DEFAULT
    assert ksf.get_profile(ksf.OPAQUE_KE_COMPAT.ref) is ksf.OPAQUE_KE_COMPAT
    assert set(ksf.PROFILES) == {p.ref for p in (ksf.DEFAULT, ksf.OPAQUE_KE_COMPAT, ksf.IDENTITY)}


def test_registry_refuses_unknown_and_insecure_profiles() -> None:
    with pytest.raises(UnknownProfile):
        ksf.get_profile("vaultd-argon2id@2")
    with pytest.raises(UnknownProfile):
        ksf.get_profile("")
    with pytest.raises(UnknownProfile, match="test vectors"):
        ksf.get_profile(ksf.IDENTITY.ref)
    assert ksf.get_profile(ksf.IDENTITY.ref, allow_insecure=True) is ksf.IDENTITY


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        ksf.PROFILES["x@1"] = TINY  # type: ignore[index]


def test_profiles_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ksf.DEFAULT.iterations = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"name": ""},
        {"name": "a@b"},
        {"version": 0},
        {"lanes": 0},
        {"iterations": 0},
        {"memory_kib": 7},
        {"lanes": 2, "memory_kib": 15},
        {"salt": bytes(7)},
        {"output_bytes": 3},
        {"context": bytes(65536)},
        {"algorithm": "scrypt"},
    ],
)
def test_invalid_profiles_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        dataclasses.replace(TINY, **changes)  # type: ignore[arg-type]


@settings(max_examples=25)
@given(st.binary(max_size=128), st.binary(max_size=128))
def test_stretch_is_deterministic_and_input_sensitive(a: bytes, b: bytes) -> None:
    assert TINY.stretch(a) == TINY.stretch(a)
    assert len(TINY.stretch(a)) == 64
    if a != b:
        assert TINY.stretch(a) != TINY.stretch(b)


def test_every_parameter_changes_the_output() -> None:
    data = b"oprf output"
    variants = [
        TINY,
        dataclasses.replace(TINY, memory_kib=16),
        dataclasses.replace(TINY, iterations=2),
        dataclasses.replace(TINY, lanes=2, memory_kib=16),
        dataclasses.replace(TINY, salt=b"\x01" * 16),
        dataclasses.replace(TINY, output_bytes=32),
    ]
    outputs = {profile.stretch(data) for profile in variants}
    assert len(outputs) == len(variants)

"""OPAQUE-3DH behaviour: round trips, failures, unknown users, determinism, malformed input."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultd.crypto import group, ksf, opaque
from vaultd.crypto.errors import (
    AuthenticationFailed,
    ClientAuthenticationError,
    CryptoError,
    EnvelopeRecoveryError,
    InvalidEncoding,
    InvalidInput,
    ServerAuthenticationError,
)

IDENTITY = ksf.IDENTITY
TINY = ksf.KsfProfile(
    name="test-tiny",
    version=1,
    algorithm="argon2id",
    context=b"vaultd-test",
    memory_kib=8,
    iterations=1,
    lanes=1,
)
PASSWORD = b"correct horse battery staple"
USER = b"user-42"
SETUP = opaque.ServerSetup.generate(rng=random.Random(1).randbytes)
OTHER_SETUP = opaque.ServerSetup.generate(rng=random.Random(2).randbytes)
NON_CANONICAL_ELEMENT = bytes.fromhex(
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
)
GENERATOR = group.scalar_mult_base((1).to_bytes(32, "little"))


@dataclass
class Login:
    ke1: opaque.KE1
    client_state: opaque.ClientState
    ke2: opaque.KE2
    server_state: opaque.ServerState


def register(
    password: bytes = PASSWORD,
    *,
    profile: ksf.KsfProfile = IDENTITY,
    setup: opaque.ServerSetup = SETUP,
    credential_identifier: bytes = USER,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> tuple[opaque.RegistrationRecord, bytes]:
    request, blind = opaque.create_registration_request(password)
    request = opaque.RegistrationRequest.deserialize(request.serialize())
    response = opaque.create_registration_response(request, setup, credential_identifier)
    response = opaque.RegistrationResponse.deserialize(response.serialize())
    record, export_key = opaque.finalize_registration_request(
        password,
        blind,
        response,
        server_identity=server_identity,
        client_identity=client_identity,
        profile=profile,
    )
    return opaque.RegistrationRecord.deserialize(record.serialize()), export_key


def start_login(
    record: opaque.RegistrationRecord,
    password: bytes = PASSWORD,
    *,
    profile: ksf.KsfProfile = IDENTITY,
    setup: opaque.ServerSetup = SETUP,
    credential_identifier: bytes = USER,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> Login:
    ke1, client_state = opaque.generate_ke1(password)
    ke2, server_state = opaque.generate_ke2(
        opaque.KE1.deserialize(ke1.serialize()),
        record,
        setup=setup,
        credential_identifier=credential_identifier,
        server_identity=server_identity,
        client_identity=client_identity,
        profile=profile,
    )
    return Login(ke1, client_state, opaque.KE2.deserialize(ke2.serialize()), server_state)


RECORD, EXPORT_KEY = register()


# --------------------------------------------------------------------------- round trips


def test_message_sizes_are_the_rfc_sizes() -> None:
    login = start_login(RECORD)
    ke3, _, _ = opaque.generate_ke3(login.client_state, login.ke2, profile=IDENTITY)
    request, _ = opaque.create_registration_request(PASSWORD)
    response = opaque.create_registration_response(request, SETUP, USER)
    sizes = [
        len(request.serialize()),
        len(response.serialize()),
        len(RECORD.serialize()),
        len(login.ke1.serialize()),
        len(login.ke2.serialize()),
        len(ke3.serialize()),
    ]
    assert sizes == [32, 64, 192, 96, 320, 64]
    assert (
        opaque.REGISTRATION_REQUEST_BYTES,
        opaque.REGISTRATION_RESPONSE_BYTES,
        opaque.REGISTRATION_RECORD_BYTES,
        opaque.KE1_BYTES,
        opaque.KE2_BYTES,
        opaque.KE3_BYTES,
    ) == (32, 64, 192, 96, 320, 64)


@pytest.mark.parametrize("profile", [IDENTITY, TINY, ksf.OPAQUE_KE_COMPAT], ids=lambda p: p.ref)
@pytest.mark.parametrize(
    ("server_identity", "client_identity"),
    [(None, None), (b"vault.example", b"alice@example"), (b"", b""), (None, b"alice")],
)
def test_registration_then_login_agrees_on_keys(
    profile: ksf.KsfProfile, server_identity: bytes | None, client_identity: bytes | None
) -> None:
    ids: dict[str, Any] = {"server_identity": server_identity, "client_identity": client_identity}
    record, export_key = register(profile=profile, **ids)
    login = start_login(record, profile=profile, **ids)
    ke3, session_key, login_export_key = opaque.generate_ke3(
        login.client_state, login.ke2, profile=profile, **ids
    )
    assert opaque.server_finish(login.server_state, opaque.KE3.deserialize(ke3.serialize())) == (
        session_key
    )
    assert login_export_key == export_key
    assert len(session_key) == len(export_key) == 64


def test_each_login_has_a_fresh_session_key_but_the_same_export_key() -> None:
    keys = set()
    for _ in range(3):
        login = start_login(RECORD)
        _, session_key, export_key = opaque.generate_ke3(
            login.client_state, login.ke2, profile=IDENTITY
        )
        assert export_key == EXPORT_KEY
        keys.add(session_key)
    assert len(keys) == 3


@settings(max_examples=40, deadline=None)
@given(
    password=st.binary(max_size=100),
    credential_identifier=st.binary(max_size=40),
    server_identity=st.none() | st.binary(max_size=40),
    client_identity=st.none() | st.binary(max_size=40),
)
def test_round_trip_for_arbitrary_passwords_and_identities(
    password: bytes,
    credential_identifier: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> None:
    ids: dict[str, Any] = {"server_identity": server_identity, "client_identity": client_identity}
    record, export_key = register(password, credential_identifier=credential_identifier, **ids)
    login = start_login(record, password, credential_identifier=credential_identifier, **ids)
    ke3, session_key, login_export_key = opaque.generate_ke3(
        login.client_state, login.ke2, profile=IDENTITY, **ids
    )
    assert opaque.server_finish(login.server_state, ke3) == session_key
    assert login_export_key == export_key


def test_seeded_rng_makes_every_step_reproducible() -> None:
    def run() -> list[bytes]:
        rng = random.Random(7).randbytes
        setup = opaque.ServerSetup.generate(rng=rng)
        request, blind = opaque.create_registration_request(PASSWORD, rng=rng)
        response = opaque.create_registration_response(request, setup, USER)
        record, export_key = opaque.finalize_registration_request(
            PASSWORD, blind, response, profile=IDENTITY, rng=rng
        )
        ke1, state = opaque.generate_ke1(PASSWORD, rng=rng)
        ke2, _ = opaque.generate_ke2(
            ke1, record, setup=setup, credential_identifier=USER, profile=IDENTITY, rng=rng
        )
        ke3, session_key, _ = opaque.generate_ke3(state, ke2, profile=IDENTITY)
        return [
            setup.serialize(),
            record.serialize(),
            export_key,
            ke1.serialize(),
            ke2.serialize(),
            ke3.serialize(),
            session_key,
        ]

    assert run() == run()


def test_the_server_never_runs_the_ksf(monkeypatch: pytest.MonkeyPatch) -> None:
    login_ke1, _ = opaque.generate_ke1(PASSWORD)

    def forbidden(self: ksf.KsfProfile, data: bytes) -> bytes:
        raise AssertionError("server-side code ran the KSF")

    monkeypatch.setattr(ksf.KsfProfile, "stretch", forbidden)
    request, _ = opaque.create_registration_request(PASSWORD)
    opaque.create_registration_response(request, SETUP, USER)
    ke2, state = opaque.generate_ke2(
        login_ke1, RECORD, setup=SETUP, credential_identifier=USER, profile=ksf.DEFAULT
    )
    opaque.generate_fake_ke2(
        login_ke1, setup=SETUP, credential_identifier=b"nobody", profile=ksf.DEFAULT
    )
    with pytest.raises(ClientAuthenticationError):
        opaque.server_finish(state, opaque.KE3(bytes(64)))
    assert len(ke2.serialize()) == opaque.KE2_BYTES


# --------------------------------------------------------------------------- failures


def test_wrong_password_fails_on_the_client() -> None:
    login = start_login(RECORD, b"Tr0ub4dor&3")
    with pytest.raises(EnvelopeRecoveryError):
        opaque.generate_ke3(login.client_state, login.ke2, profile=IDENTITY)


def test_server_refuses_a_ke3_without_the_password() -> None:
    login = start_login(RECORD, b"Tr0ub4dor&3")
    with pytest.raises(ClientAuthenticationError):
        opaque.server_finish(login.server_state, opaque.KE3(bytes(64)))
    # A KE3 that was valid in another session is refused too (no replay).
    other = start_login(RECORD)
    ke3, _, _ = opaque.generate_ke3(other.client_state, other.ke2, profile=IDENTITY)
    fresh = start_login(RECORD)
    with pytest.raises(ClientAuthenticationError):
        opaque.server_finish(fresh.server_state, ke3)


def with_context(context: bytes) -> ksf.KsfProfile:
    return ksf.KsfProfile(name="ctx", version=1, algorithm="identity", context=context)


MISMATCHES: list[tuple[str, dict[str, Any], type[AuthenticationFailed]]] = [
    ("ksf", {"client_profile": TINY}, EnvelopeRecoveryError),
    ("server identity", {"client_server_identity": b"evil.example"}, EnvelopeRecoveryError),
    ("client identity", {"server_client_identity": b"mallory"}, ServerAuthenticationError),
    ("context", {"server_profile": with_context(b"other")}, ServerAuthenticationError),
    ("server setup", {"setup": OTHER_SETUP}, EnvelopeRecoveryError),
    ("credential id", {"credential_identifier": b"user-43"}, EnvelopeRecoveryError),
]


@pytest.mark.parametrize(
    ("changes", "error"), [m[1:] for m in MISMATCHES], ids=[m[0] for m in MISMATCHES]
)
def test_any_disagreement_between_the_parties_fails_authentication(
    changes: dict[str, Any], error: type[AuthenticationFailed]
) -> None:
    ke1, state = opaque.generate_ke1(PASSWORD)
    ke2, _ = opaque.generate_ke2(
        ke1,
        RECORD,
        setup=changes.get("setup", SETUP),
        credential_identifier=changes.get("credential_identifier", USER),
        client_identity=changes.get("server_client_identity"),
        profile=changes.get("server_profile", IDENTITY),
    )
    with pytest.raises(error):
        opaque.generate_ke3(
            state,
            ke2,
            server_identity=changes.get("client_server_identity"),
            profile=changes.get("client_profile", IDENTITY),
        )


# --------------------------------------------------------------------------- unknown users


def test_fake_ke2_is_well_formed_and_login_fails() -> None:
    ke1, state = opaque.generate_ke1(PASSWORD)
    ke2, server_state = opaque.generate_fake_ke2(
        ke1, setup=SETUP, credential_identifier=b"nobody", profile=IDENTITY
    )
    wire = ke2.serialize()
    assert len(wire) == opaque.KE2_BYTES
    assert opaque.KE2.deserialize(wire) == ke2
    with pytest.raises(EnvelopeRecoveryError):
        opaque.generate_ke3(state, opaque.KE2.deserialize(wire), profile=IDENTITY)
    with pytest.raises(ClientAuthenticationError):
        opaque.server_finish(server_state, opaque.KE3(bytes(64)))


def test_unknown_user_sees_a_stable_oprf_but_fresh_masking_like_a_real_user() -> None:
    ke1, _ = opaque.generate_ke1(PASSWORD)
    fake_a, _ = opaque.generate_fake_ke2(ke1, setup=SETUP, credential_identifier=b"nobody")
    fake_b, _ = opaque.generate_fake_ke2(ke1, setup=SETUP, credential_identifier=b"nobody")
    real_a, _ = opaque.generate_ke2(ke1, RECORD, setup=SETUP, credential_identifier=USER)
    real_b, _ = opaque.generate_ke2(ke1, RECORD, setup=SETUP, credential_identifier=USER)
    # Same OPRF answer for the same identifier, as for a registered user...
    assert fake_a.evaluated_message == fake_b.evaluated_message
    assert real_a.evaluated_message == real_b.evaluated_message
    # ...and fresh nonces, keyshares and masked envelopes every time, in both cases.
    for first, second in ((fake_a, fake_b), (real_a, real_b)):
        assert first.masking_nonce != second.masking_nonce
        assert first.masked_response != second.masked_response
        assert first.server_public_keyshare != second.server_public_keyshare


def test_fake_client_key_is_a_secret_function_of_the_setup() -> None:
    fake_key = SETUP.fake_client_public_key
    assert group.deserialize_element(fake_key) == fake_key
    assert fake_key not in (SETUP.public_key, OTHER_SETUP.fake_client_public_key)
    assert opaque.ServerSetup.deserialize(SETUP.serialize()).fake_client_public_key == fake_key
    # Derived from oprf_seed alone: a new server key pair with the same seed keeps it.
    rekeyed = opaque.ServerSetup.generate(oprf_seed=SETUP.oprf_seed)
    assert rekeyed.fake_client_public_key == fake_key
    assert fake_key.hex() not in repr(SETUP)


def test_fake_ke2_refuses_two_sources_of_fake_record() -> None:
    ke1, _ = opaque.generate_ke1(PASSWORD)
    with pytest.raises(InvalidInput):
        opaque.generate_fake_ke2(
            ke1,
            setup=SETUP,
            credential_identifier=b"nobody",
            fake_record=opaque.create_fake_record(),
            fake_masking_key=bytes(64),
        )


def test_fake_record_has_a_valid_key_and_a_zero_envelope() -> None:
    record = opaque.create_fake_record()
    assert opaque.RegistrationRecord.deserialize(record.serialize()) == record
    assert record.envelope.serialize() == bytes(opaque.ENVELOPE_BYTES)
    assert opaque.create_fake_record().client_public_key != record.client_public_key


# --------------------------------------------------------------------------- determinism


def test_derived_randomness_regenerates_an_identical_ke2() -> None:
    secret = bytes(range(32))
    ke1, state = opaque.generate_ke1(PASSWORD)
    parts = (USER, b"generation-1", b"attempt-0001", ke1.serialize())

    def answer() -> tuple[opaque.KE2, opaque.ServerState]:
        randomness = opaque.derive_server_randomness(secret, *parts)
        return opaque.generate_ke2(
            ke1,
            RECORD,
            setup=SETUP,
            credential_identifier=USER,
            profile=IDENTITY,
            masking_nonce=randomness.masking_nonce,
            server_nonce=randomness.server_nonce,
            server_keyshare_seed=randomness.server_keyshare_seed,
        )

    (ke2_first, state_first), (ke2_again, state_again) = answer(), answer()
    assert ke2_first.serialize() == ke2_again.serialize()
    assert state_first == state_again
    ke3, session_key, _ = opaque.generate_ke3(state, ke2_again, profile=IDENTITY)
    assert opaque.server_finish(state_first, ke3) == session_key


def test_derived_fake_ke2_is_reproducible_too() -> None:
    ke1, _ = opaque.generate_ke1(PASSWORD)
    randomness = opaque.derive_server_randomness(b"s" * 32, b"nobody", ke1.serialize())

    def answer(setup: opaque.ServerSetup) -> bytes:
        ke2, _ = opaque.generate_fake_ke2(
            ke1,
            setup=setup,
            credential_identifier=b"nobody",
            fake_masking_key=randomness.fake_masking_key,
            masking_nonce=randomness.masking_nonce,
            server_nonce=randomness.server_nonce,
            server_keyshare_seed=randomness.server_keyshare_seed,
        )
        return ke2.serialize()

    # Same answer from a setup reloaded elsewhere (another leader), different under another.
    assert answer(SETUP) == answer(opaque.ServerSetup.deserialize(SETUP.serialize()))
    assert answer(SETUP) != answer(OTHER_SETUP)


def test_derived_randomness_separates_inputs() -> None:
    secret = b"k" * 32
    base = opaque.derive_server_randomness(secret, b"ab", b"c")
    assert base == opaque.derive_server_randomness(secret, b"ab", b"c")
    others = [
        opaque.derive_server_randomness(secret, b"a", b"bc"),  # same concatenation
        opaque.derive_server_randomness(secret, b"abc"),
        opaque.derive_server_randomness(secret, b"ab", b"c", b""),
        opaque.derive_server_randomness(b"K" * 32, b"ab", b"c"),
    ]
    for other in others:
        assert other.server_nonce != base.server_nonce
    fields = [
        base.masking_nonce,
        base.server_nonce,
        base.server_keyshare_seed,
        base.fake_masking_key,
    ]
    assert [len(f) for f in fields] == [32, 32, 32, 64]
    assert len(set(fields)) == len(fields)


def test_derived_randomness_needs_a_real_secret() -> None:
    with pytest.raises(InvalidInput):
        opaque.derive_server_randomness(bytes(31), b"x")


def test_secrets_are_kept_out_of_reprs() -> None:
    login = start_login(RECORD)
    texts = [repr(login.client_state), repr(login.server_state), repr(SETUP), repr(RECORD)]
    secrets = [
        PASSWORD.hex(),
        login.client_state.blind.hex(),
        login.server_state.session_key.hex(),
        SETUP.oprf_seed.hex(),
        SETUP.private_key.hex(),
        RECORD.masking_key.hex(),
    ]
    for text in texts:
        assert PASSWORD.decode() not in text
        for secret in secrets:
            assert secret not in text and repr(bytes.fromhex(secret)) not in text


# --------------------------------------------------------------------------- serialisation


def test_every_message_round_trips_through_bytes() -> None:
    login = start_login(RECORD)
    ke3, _, _ = opaque.generate_ke3(login.client_state, login.ke2, profile=IDENTITY)
    request, _ = opaque.create_registration_request(PASSWORD)
    response = opaque.create_registration_response(request, SETUP, USER)
    messages: list[Any] = [
        request,
        response,
        RECORD,
        RECORD.envelope,
        login.ke1,
        login.ke2,
        ke3,
        login.client_state,
        login.server_state,
        SETUP,
    ]
    for message in messages:
        assert type(message).deserialize(message.serialize()) == message
    assert len(login.server_state.serialize()) == opaque.SERVER_STATE_BYTES
    assert len(SETUP.serialize()) == opaque.SERVER_SETUP_BYTES


def test_a_restored_client_state_finishes_the_login() -> None:
    login = start_login(RECORD)
    restored = opaque.ClientState.deserialize(login.client_state.serialize())
    ke3, session_key, _ = opaque.generate_ke3(restored, login.ke2, profile=IDENTITY)
    assert opaque.server_finish(login.server_state, ke3) == session_key


def _sample_messages() -> dict[str, tuple[Callable[[bytes], Any], bytes]]:
    login = start_login(RECORD)
    ke3, _, _ = opaque.generate_ke3(login.client_state, login.ke2, profile=IDENTITY)
    request, _ = opaque.create_registration_request(PASSWORD)
    response = opaque.create_registration_response(request, SETUP, USER)
    return {
        "RegistrationRequest": (opaque.RegistrationRequest.deserialize, request.serialize()),
        "RegistrationResponse": (opaque.RegistrationResponse.deserialize, response.serialize()),
        "RegistrationRecord": (opaque.RegistrationRecord.deserialize, RECORD.serialize()),
        "Envelope": (opaque.Envelope.deserialize, RECORD.envelope.serialize()),
        "KE1": (opaque.KE1.deserialize, login.ke1.serialize()),
        "KE2": (opaque.KE2.deserialize, login.ke2.serialize()),
        "KE3": (opaque.KE3.deserialize, ke3.serialize()),
        "ServerState": (opaque.ServerState.deserialize, login.server_state.serialize()),
        "ServerSetup": (opaque.ServerSetup.deserialize, SETUP.serialize()),
        "ClientState": (opaque.ClientState.deserialize, login.client_state.serialize()),
    }


SAMPLES = _sample_messages()

# Where each message carries group elements (offset of each 32-byte field).
ELEMENT_FIELDS = {
    "RegistrationRequest": [0],
    "RegistrationResponse": [0, 32],
    "RegistrationRecord": [0],
    "KE1": [0, 64],
    "KE2": [0, 224],
    "ServerSetup": [32],
    "ClientState": [64, 128],  # inside the embedded KE1
}
SCALAR_FIELDS = {"ServerSetup": [0], "ClientState": [0, 32]}


def _element_cases() -> list[tuple[str, int]]:
    return [(name, offset) for name, offsets in ELEMENT_FIELDS.items() for offset in offsets]


def _scalar_cases() -> list[tuple[str, int]]:
    return [(name, offset) for name, offsets in SCALAR_FIELDS.items() for offset in offsets]


def _splice(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize("name", sorted(set(SAMPLES) - {"ClientState"}))
def test_wrong_lengths_are_refused(name: str) -> None:
    parse, good = SAMPLES[name]
    for bad in (b"", good[:-1], good + b"\x00", good + good, good[:1]):
        with pytest.raises(InvalidEncoding):
            parse(bad)


def test_truncated_client_state_is_refused() -> None:
    parse, good = SAMPLES["ClientState"]
    for bad in (b"", good[:100], good[:159]):
        with pytest.raises(InvalidEncoding):
            parse(bad)


@pytest.mark.parametrize(("name", "offset"), _element_cases())
@pytest.mark.parametrize(
    "element",
    [
        bytes(32),
        NON_CANONICAL_ELEMENT,
        GENERATOR[:31] + bytes([GENERATOR[31] | 0x80]),
        b"\x01" + bytes(31),
    ],
    ids=["identity", "non-canonical", "top-bit", "negative"],
)
def test_bad_elements_are_refused_in_every_field(name: str, offset: int, element: bytes) -> None:
    parse, good = SAMPLES[name]
    with pytest.raises(InvalidEncoding):
        parse(_splice(good, offset, element))


@pytest.mark.parametrize(("name", "offset"), _scalar_cases())
@pytest.mark.parametrize(
    "scalar",
    [bytes(32), group.ORDER.to_bytes(32, "little"), b"\xff" * 32],
    ids=["zero", "order", "all-ones"],
)
def test_bad_scalars_are_refused_in_every_field(name: str, offset: int, scalar: bytes) -> None:
    parse, good = SAMPLES[name]
    with pytest.raises(InvalidEncoding):
        parse(_splice(good, offset, scalar))


def test_server_setup_with_a_mismatched_public_key_is_refused() -> None:
    with pytest.raises(InvalidEncoding, match="does not match"):
        opaque.ServerSetup(SETUP.private_key, OTHER_SETUP.public_key, SETUP.oprf_seed)


@pytest.mark.parametrize("name", sorted(SAMPLES))
@settings(max_examples=60)
@given(data=st.data())
def test_arbitrary_bytes_parse_or_raise_invalid_encoding(name: str, data: st.DataObject) -> None:
    parse, good = SAMPLES[name]
    blob = data.draw(st.binary(min_size=len(good), max_size=len(good)) | st.binary(max_size=400))
    try:
        parsed = parse(blob)
    except CryptoError as exc:
        assert isinstance(exc, InvalidEncoding)
    else:
        assert parsed.serialize() == blob


# --------------------------------------------------------------------------- tampering


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def _client_outcome(login: Login, ke2_bytes: bytes) -> type[CryptoError] | None:
    try:
        ke2 = opaque.KE2.deserialize(ke2_bytes)
        opaque.generate_ke3(login.client_state, ke2, profile=IDENTITY)
    except CryptoError as exc:
        return type(exc)
    return None


def test_every_single_bit_flip_in_ke2_is_caught_by_the_client() -> None:
    login = start_login(RECORD)
    wire = login.ke2.serialize()
    outcomes = {}
    for index in range(len(wire)):
        for mask in (0x01, 0x80):
            outcomes[index, mask] = _client_outcome(login, _flip(wire, index, mask))
    assert None not in outcomes.values()
    # The checks that fire are the ones the regions call for.
    for (index, mask), outcome in outcomes.items():
        if 32 <= index < 192:  # masking nonce, masked response: the envelope breaks
            assert outcome is EnvelopeRecoveryError
        elif 192 <= index < 224 or index >= 256:  # server nonce, server MAC
            assert outcome is ServerAuthenticationError
        else:  # elements: undecodable, or decodable but wrong
            assert outcome in (InvalidEncoding, EnvelopeRecoveryError, ServerAuthenticationError)
        if mask == 0x80 and index in (31, 255):
            assert outcome is InvalidEncoding  # top bit of an element


def test_every_byte_flip_in_ke3_is_caught_by_the_server() -> None:
    login = start_login(RECORD)
    ke3, _, _ = opaque.generate_ke3(login.client_state, login.ke2, profile=IDENTITY)
    wire = ke3.serialize()
    for index in range(len(wire)):
        with pytest.raises(ClientAuthenticationError):
            opaque.server_finish(login.server_state, opaque.KE3.deserialize(_flip(wire, index)))


def test_every_byte_flip_in_ke1_breaks_the_login() -> None:
    wire_ke1, state = opaque.generate_ke1(PASSWORD)
    wire = wire_ke1.serialize()
    for index in range(len(wire)):
        with pytest.raises(CryptoError) as caught:
            ke1 = opaque.KE1.deserialize(_flip(wire, index))
            ke2, _ = opaque.generate_ke2(
                ke1, RECORD, setup=SETUP, credential_identifier=USER, profile=IDENTITY
            )
            opaque.generate_ke3(state, ke2, profile=IDENTITY)
        assert isinstance(caught.value, (InvalidEncoding, AuthenticationFailed))


def test_every_byte_flip_in_the_stored_record_breaks_the_login() -> None:
    wire = RECORD.serialize()
    for index in range(len(wire)):
        with pytest.raises(CryptoError) as caught:
            record = opaque.RegistrationRecord.deserialize(_flip(wire, index))
            login = start_login(record)
            opaque.generate_ke3(login.client_state, login.ke2, profile=IDENTITY)
        if index >= 32:  # masking key or envelope: the client cannot open its envelope
            assert caught.type is EnvelopeRecoveryError
        else:  # client public key: undecodable, or the server's 3DH no longer matches
            assert caught.type in (InvalidEncoding, ServerAuthenticationError)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs",
    [{"blind": bytes(32)}, {"client_nonce": bytes(31)}, {"client_keyshare_seed": bytes(33)}],
)
def test_generate_ke1_refuses_bad_injected_randomness(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        opaque.generate_ke1(PASSWORD, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"masking_nonce": bytes(31)}, {"server_nonce": b""}, {"server_keyshare_seed": bytes(64)}],
)
def test_generate_ke2_refuses_bad_injected_randomness(kwargs: dict[str, Any]) -> None:
    ke1, _ = opaque.generate_ke1(PASSWORD)
    with pytest.raises(InvalidInput):
        opaque.generate_ke2(ke1, RECORD, setup=SETUP, credential_identifier=USER, **kwargs)


def test_bad_envelope_nonce_and_fake_material_are_refused() -> None:
    request, blind = opaque.create_registration_request(PASSWORD)
    response = opaque.create_registration_response(request, SETUP, USER)
    with pytest.raises(InvalidInput):
        opaque.finalize_registration_request(
            PASSWORD, blind, response, profile=IDENTITY, envelope_nonce=bytes(16)
        )
    with pytest.raises(InvalidInput):
        opaque.create_fake_record(masking_key=bytes(32))
    with pytest.raises(InvalidEncoding):
        opaque.create_fake_record(client_public_key=bytes(32))


def test_a_short_rng_is_refused() -> None:
    with pytest.raises(InvalidInput):
        opaque.generate_ke1(PASSWORD, blind=(1).to_bytes(32, "little"), rng=lambda n: bytes(1))


def test_over_long_password_and_identities_are_refused() -> None:
    with pytest.raises(InvalidInput):
        opaque.generate_ke1(bytes(65536))
    with pytest.raises(InvalidInput):
        opaque.create_registration_request(bytes(65536))
    ke1, _ = opaque.generate_ke1(PASSWORD)
    with pytest.raises(InvalidInput):
        opaque.generate_ke2(
            ke1, RECORD, setup=SETUP, credential_identifier=USER, client_identity=bytes(65536)
        )
    with pytest.raises(InvalidInput):
        opaque.generate_ke2(
            ke1, RECORD, setup=SETUP, credential_identifier=USER, server_identity=bytes(65536)
        )

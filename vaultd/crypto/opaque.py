"""OPAQUE-3DH (RFC 9807) over ristretto255-SHA512, as pure functions.

The functions are named after the RFC's operations and run in this order::

    client                                     server (ServerSetup: keys and oprf_seed)
    create_registration_request  --request-->  create_registration_response
    finalize_registration_request <-response-
                                 --record--->  (stores the RegistrationRecord)

    generate_ke1                 --KE1------>  generate_ke2   (or generate_fake_ke2 for an
    generate_ke3                 <--KE2------                  unknown user)
                                 --KE3------>  server_finish
    both ends now share session_key; only the client learns export_key

Every random value (blind, nonces, keyshare seeds, envelope nonce, masking nonce, fake
record material) is a keyword argument; left out, it is drawn from ``rng``
(:data:`~vaultd.crypto.group.default_rng` unless injected). Apart from that the functions
have no I/O, clock or global state, so the RFC test vectors are reproduced exactly.

Deterministic KE2: the vault must be able to regenerate the *identical* KE2 after a leader
failover without counting a new guess. :func:`derive_server_randomness` derives the masking
nonce, server nonce and server keyshare seed (and the fake masking key) from a server
secret and the attempt's identifying bytes; pass its fields to :func:`generate_ke2` (or
:func:`generate_fake_ke2`).

Messages are frozen, slotted dataclasses. Building one checks lengths and, for group
elements, validity (canonical, not the identity), so an instance is always well-formed;
``deserialize`` raises :class:`~vaultd.crypto.errors.InvalidEncoding` on bad bytes.

The context string comes from the :class:`~vaultd.crypto.ksf.KsfProfile`; the KSF itself
is run only by the client. Identities are optional: ``None`` means "use the public key"
(RFC 9807 §4.1.2), which is not the same as an empty identity ``b""``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Final, Self

from vaultd.crypto import group, oprf
from vaultd.crypto.errors import (
    ClientAuthenticationError,
    EnvelopeRecoveryError,
    InvalidEncoding,
    InvalidInput,
    ServerAuthenticationError,
)
from vaultd.crypto.ksf import DEFAULT, KsfProfile

NN: Final = 32
"""Nonce size (Nn)."""
NSEED: Final = 32
"""Key-derivation seed size (Nseed)."""
NPK: Final = group.ELEMENT_BYTES
"""Public key size (Npk)."""
NSK: Final = group.SCALAR_BYTES
"""Private key size (Nsk)."""
NOE: Final = group.ELEMENT_BYTES
"""Serialised OPRF element size (Noe)."""
NOK: Final = group.SCALAR_BYTES
"""OPRF key size (Nok)."""
NH: Final = 64
"""Hash output size (Nh); also the size of oprf_seed and masking_key."""
NM: Final = 64
"""MAC size (Nm)."""
NX: Final = 64
"""KDF output size (Nx); session keys and export keys are Nh = 64 bytes."""
ENVELOPE_BYTES: Final = NN + NM
MASKED_RESPONSE_BYTES: Final = NPK + ENVELOPE_BYTES

REGISTRATION_REQUEST_BYTES: Final = NOE
REGISTRATION_RESPONSE_BYTES: Final = NOE + NPK
REGISTRATION_RECORD_BYTES: Final = NPK + NH + ENVELOPE_BYTES
KE1_BYTES: Final = NOE + NN + NPK
CREDENTIAL_RESPONSE_BYTES: Final = NOE + NN + MASKED_RESPONSE_BYTES
KE2_BYTES: Final = CREDENTIAL_RESPONSE_BYTES + NN + NPK + NM
KE3_BYTES: Final = NM
SERVER_STATE_BYTES: Final = NM + NH
SERVER_SETUP_BYTES: Final = NSK + NPK + NH

_OPRF_KEY_INFO: Final = b"OPAQUE-DeriveKeyPair"
_DH_KEY_INFO: Final = b"OPAQUE-DeriveDiffieHellmanKeyPair"
_PREAMBLE_LABEL: Final = b"OPAQUEv1-"
# Expand info for the fake client key seed; OPRF key seeds use info ending in "OprfKey",
# so no credential identifier can make the two derivations meet.
_FAKE_CLIENT_KEY_INFO: Final = b"vaultd-FakeClientKeySeed"
_MAX_FIELD: Final = 0xFFFF


# --------------------------------------------------------------------------- validation


def _require_len(what: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise InvalidEncoding(f"{what} must be {size} bytes, got {len(value)}")


def _require_element(what: str, value: bytes) -> None:
    try:
        group.deserialize_element(value)
    except InvalidEncoding as exc:
        raise InvalidEncoding(f"{what}: {exc}") from exc


def _require_scalar(what: str, value: bytes) -> None:
    try:
        group.deserialize_scalar(value)
    except InvalidEncoding as exc:
        raise InvalidEncoding(f"{what}: {exc}") from exc


def _random_or_given(what: str, given: bytes | None, size: int, rng: group.Rng) -> bytes:
    value = rng(size) if given is None else bytes(given)
    if len(value) != size:
        source = "rng output" if given is None else f"injected {what}"
        raise InvalidInput(f"{source} must be {size} bytes, got {len(value)}")
    return value


def _split(data: bytes, total: int, *sizes: int) -> list[bytes]:
    data = bytes(data)
    if len(data) != total:
        raise InvalidEncoding(f"message must be {total} bytes, got {len(data)}")
    parts = []
    offset = 0
    for size in sizes:
        parts.append(data[offset : offset + size])
        offset += size
    return parts


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class ServerSetup:
    """The server's long-term material: its AKE key pair and the seed of all OPRF keys.

    One ServerSetup serves every user; each user's OPRF key is derived from ``oprf_seed``
    and the credential identifier. Keep it secret (it lives in the HSM layer).

    ``fake_client_public_key`` is derived, not stored: the client key that fake records for
    unknown users carry. Its private half is derived from ``oprf_seed`` and never used, so
    only the holder of the setup could tell a fake KE2 by it. Computing it once here, rather
    than per request, keeps the unknown-user path exactly as costly as the real one.
    """

    private_key: bytes = field(repr=False)
    public_key: bytes
    oprf_seed: bytes = field(repr=False)
    fake_client_public_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_scalar("server private key", self.private_key)
        _require_element("server public key", self.public_key)
        _require_len("oprf_seed", self.oprf_seed, NH)
        if group.scalar_mult_base(self.private_key) != self.public_key:
            raise InvalidEncoding("server public key does not match the private key")
        fake_seed = _expand(self.oprf_seed, _FAKE_CLIENT_KEY_INFO, NSEED)
        _, fake_public_key = derive_diffie_hellman_key_pair(fake_seed)
        object.__setattr__(self, "fake_client_public_key", fake_public_key)

    @classmethod
    def generate(
        cls,
        *,
        keypair_seed: bytes | None = None,
        oprf_seed: bytes | None = None,
        rng: group.Rng = group.default_rng,
    ) -> Self:
        """Create fresh server material (RFC 9807 §6.1 set-up), optionally from given seeds."""
        seed = _random_or_given("keypair_seed", keypair_seed, NSEED, rng)
        private_key, public_key = derive_diffie_hellman_key_pair(seed)
        return cls(private_key, public_key, _random_or_given("oprf_seed", oprf_seed, NH, rng))

    def serialize(self) -> bytes:
        """private_key || public_key || oprf_seed (SERVER_SETUP_BYTES)."""
        return self.private_key + self.public_key + self.oprf_seed

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse :meth:`serialize` output; raises InvalidEncoding on any defect."""
        return cls(*_split(data, SERVER_SETUP_BYTES, NSK, NPK, NH))


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """Client to server, registration step 1: the blinded password (32 bytes)."""

    blinded_message: bytes

    def __post_init__(self) -> None:
        _require_element("blinded_message", self.blinded_message)

    def serialize(self) -> bytes:
        """The 32-byte wire encoding."""
        return self.blinded_message

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse 32 bytes; raises InvalidEncoding on any defect."""
        return cls(*_split(data, REGISTRATION_REQUEST_BYTES, NOE))


@dataclass(frozen=True, slots=True)
class RegistrationResponse:
    """Server to client, registration step 2: OPRF evaluation and server public key."""

    evaluated_message: bytes
    server_public_key: bytes

    def __post_init__(self) -> None:
        _require_element("evaluated_message", self.evaluated_message)
        _require_element("server_public_key", self.server_public_key)

    def serialize(self) -> bytes:
        """The 64-byte wire encoding."""
        return self.evaluated_message + self.server_public_key

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse 64 bytes; raises InvalidEncoding on any defect."""
        return cls(*_split(data, REGISTRATION_RESPONSE_BYTES, NOE, NPK))


@dataclass(frozen=True, slots=True)
class Envelope:
    """The client's envelope: a nonce and a MAC binding the client's credentials."""

    nonce: bytes
    auth_tag: bytes

    def __post_init__(self) -> None:
        _require_len("envelope nonce", self.nonce, NN)
        _require_len("envelope auth_tag", self.auth_tag, NM)

    def serialize(self) -> bytes:
        """nonce || auth_tag (96 bytes)."""
        return self.nonce + self.auth_tag

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse 96 bytes; raises InvalidEncoding on a wrong length."""
        return cls(*_split(data, ENVELOPE_BYTES, NN, NM))


@dataclass(frozen=True, slots=True)
class RegistrationRecord:
    """What the server stores per user (192 bytes). The masking key is secret."""

    client_public_key: bytes
    masking_key: bytes = field(repr=False)
    envelope: Envelope

    def __post_init__(self) -> None:
        _require_element("client_public_key", self.client_public_key)
        _require_len("masking_key", self.masking_key, NH)

    def serialize(self) -> bytes:
        """client_public_key || masking_key || envelope (192 bytes)."""
        return self.client_public_key + self.masking_key + self.envelope.serialize()

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse 192 bytes; raises InvalidEncoding on any defect."""
        public_key, masking_key, envelope = _split(
            data, REGISTRATION_RECORD_BYTES, NPK, NH, ENVELOPE_BYTES
        )
        return cls(public_key, masking_key, Envelope.deserialize(envelope))


@dataclass(frozen=True, slots=True)
class KE1:
    """Client to server, login step 1 (96 bytes): credential request and AKE start."""

    blinded_message: bytes
    client_nonce: bytes
    client_public_keyshare: bytes

    def __post_init__(self) -> None:
        _require_element("blinded_message", self.blinded_message)
        _require_len("client_nonce", self.client_nonce, NN)
        _require_element("client_public_keyshare", self.client_public_keyshare)

    def serialize(self) -> bytes:
        """blinded_message || client_nonce || client_public_keyshare."""
        return self.blinded_message + self.client_nonce + self.client_public_keyshare

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse 96 bytes; raises InvalidEncoding on any defect."""
        return cls(*_split(data, KE1_BYTES, NOE, NN, NPK))


@dataclass(frozen=True, slots=True)
class KE2:
    """Server to client, login step 2 (320 bytes): credential response and AKE response."""

    evaluated_message: bytes
    masking_nonce: bytes
    masked_response: bytes
    server_nonce: bytes
    server_public_keyshare: bytes
    server_mac: bytes

    def __post_init__(self) -> None:
        _require_element("evaluated_message", self.evaluated_message)
        _require_len("masking_nonce", self.masking_nonce, NN)
        _require_len("masked_response", self.masked_response, MASKED_RESPONSE_BYTES)
        _require_len("server_nonce", self.server_nonce, NN)
        _require_element("server_public_keyshare", self.server_public_keyshare)
        _require_len("server_mac", self.server_mac, NM)

    def credential_response(self) -> bytes:
        """The first 192 bytes: evaluated_message || masking_nonce || masked_response."""
        return self.evaluated_message + self.masking_nonce + self.masked_response

    def serialize(self) -> bytes:
        """credential_response || server_nonce || server_public_keyshare || server_mac."""
        return (
            self.credential_response()
            + self.server_nonce
            + self.server_public_keyshare
            + self.server_mac
        )

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse 320 bytes; raises InvalidEncoding on any defect."""
        return cls(*_split(data, KE2_BYTES, NOE, NN, MASKED_RESPONSE_BYTES, NN, NPK, NM))


@dataclass(frozen=True, slots=True)
class KE3:
    """Client to server, login step 3 (64 bytes): the client's key-confirmation MAC."""

    client_mac: bytes

    def __post_init__(self) -> None:
        _require_len("client_mac", self.client_mac, NM)

    def serialize(self) -> bytes:
        """The 64-byte MAC."""
        return self.client_mac

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse 64 bytes; raises InvalidEncoding on a wrong length."""
        return cls(*_split(data, KE3_BYTES, NM))


@dataclass(frozen=True, slots=True)
class ClientState:
    """What the client keeps between generate_ke1 and generate_ke3. Secret."""

    password: bytes = field(repr=False)
    blind: bytes = field(repr=False)
    client_secret: bytes = field(repr=False)
    ke1: KE1

    def __post_init__(self) -> None:
        if len(self.password) > _MAX_FIELD:
            raise InvalidEncoding(f"password is longer than {_MAX_FIELD} bytes")
        _require_scalar("blind", self.blind)
        _require_scalar("client_secret", self.client_secret)

    def serialize(self) -> bytes:
        """blind || client_secret || ke1 || password (password takes the remainder)."""
        return self.blind + self.client_secret + self.ke1.serialize() + self.password

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse :meth:`serialize` output; raises InvalidEncoding on any defect."""
        data = bytes(data)
        fixed = NSK + NSK + KE1_BYTES
        if len(data) < fixed:
            raise InvalidEncoding(f"client state must be at least {fixed} bytes")
        blind, secret, ke1 = _split(data[:fixed], fixed, NSK, NSK, KE1_BYTES)
        return cls(data[fixed:], blind, secret, KE1.deserialize(ke1))


@dataclass(frozen=True, slots=True)
class ServerState:
    """What the server keeps between generate_ke2 and server_finish (128 bytes). Secret."""

    expected_client_mac: bytes = field(repr=False)
    session_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _require_len("expected_client_mac", self.expected_client_mac, NM)
        _require_len("session_key", self.session_key, NH)

    def serialize(self) -> bytes:
        """expected_client_mac || session_key."""
        return self.expected_client_mac + self.session_key

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        """Parse 128 bytes; raises InvalidEncoding on a wrong length."""
        return cls(*_split(data, SERVER_STATE_BYTES, NM, NH))


# --------------------------------------------------------------------------- KDF, MAC


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha512")


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return _hmac(salt, ikm)


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    blocks = []
    previous = b""
    for counter in range(1, -(-length // NH) + 1):
        previous = _hmac(prk, previous + info + counter.to_bytes(1, "big"))
        blocks.append(previous)
    return b"".join(blocks)[:length]


def _expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full_label = b"OPAQUE-" + label
    custom_label = (
        length.to_bytes(2, "big")
        + len(full_label).to_bytes(1, "big")
        + full_label
        + len(context).to_bytes(1, "big")
        + context
    )
    return _expand(secret, custom_label, length)


def _i2osp2(what: str, value: bytes) -> bytes:
    if len(value) > _MAX_FIELD:
        raise InvalidInput(f"{what} is longer than {_MAX_FIELD} bytes")
    return len(value).to_bytes(2, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# --------------------------------------------------------------------------- key helpers


def derive_diffie_hellman_key_pair(seed: bytes) -> tuple[bytes, bytes]:
    """DeriveDiffieHellmanKeyPair (RFC 9807 §6.4.1): (private scalar, public element)."""
    return oprf.derive_key_pair(seed, _DH_KEY_INFO)


def _oprf_private_key(oprf_seed: bytes, credential_identifier: bytes) -> bytes:
    seed = _expand(oprf_seed, credential_identifier + b"OprfKey", NOK)
    private_key, _ = oprf.derive_key_pair(seed, _OPRF_KEY_INFO)
    return private_key


def _cleartext_credentials(
    server_public_key: bytes,
    client_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> tuple[bytes, bytes, bytes]:
    """Serialised CleartextCredentials plus the resolved (server, client) identities."""
    server_id = server_public_key if server_identity is None else server_identity
    client_id = client_public_key if client_identity is None else client_identity
    serialized = (
        server_public_key
        + _i2osp2("server identity", server_id)
        + server_id
        + _i2osp2("client identity", client_id)
        + client_id
    )
    return serialized, server_id, client_id


def _randomized_password(password: bytes, blind: bytes, evaluated: bytes, ksf: KsfProfile) -> bytes:
    oprf_output = oprf.finalize(password, blind, evaluated)
    return _extract(b"", oprf_output + ksf.stretch(oprf_output))


def _envelope_keys(randomized_password: bytes, nonce: bytes) -> tuple[bytes, bytes, bytes]:
    """(auth_key, export_key, private-key seed) for one envelope nonce."""
    return (
        _expand(randomized_password, nonce + b"AuthKey", NH),
        _expand(randomized_password, nonce + b"ExportKey", NH),
        _expand(randomized_password, nonce + b"PrivateKey", NSEED),
    )


def _masking_pad(masking_key: bytes, masking_nonce: bytes) -> bytes:
    return _expand(masking_key, masking_nonce + b"CredentialResponsePad", MASKED_RESPONSE_BYTES)


def _preamble(
    context: bytes,
    client_identity: bytes,
    ke1: KE1,
    server_identity: bytes,
    credential_response: bytes,
    server_nonce: bytes,
    server_public_keyshare: bytes,
) -> bytes:
    return b"".join(
        (
            _PREAMBLE_LABEL,
            _i2osp2("context", context),
            context,
            _i2osp2("client identity", client_identity),
            client_identity,
            ke1.serialize(),
            _i2osp2("server identity", server_identity),
            server_identity,
            credential_response,
            server_nonce,
            server_public_keyshare,
        )
    )


def _derive_keys(ikm: bytes, preamble: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(handshake secret, server MAC key Km2, client MAC key Km3, session key), §6.4.2."""
    prk = _extract(b"", ikm)
    transcript = hashlib.sha512(preamble).digest()
    handshake_secret = _expand_label(prk, b"HandshakeSecret", transcript, NX)
    session_key = _expand_label(prk, b"SessionKey", transcript, NX)
    km2 = _expand_label(handshake_secret, b"ServerMAC", b"", NX)
    km3 = _expand_label(handshake_secret, b"ClientMAC", b"", NX)
    return handshake_secret, km2, km3, session_key


# --------------------------------------------------------------------------- registration


def create_registration_request(
    password: bytes, *, blind: bytes | None = None, rng: group.Rng = group.default_rng
) -> tuple[RegistrationRequest, bytes]:
    """CreateRegistrationRequest: return (request to send, blind to keep for finalize)."""
    blind, blinded = oprf.blind(password, blind=blind, rng=rng)
    return RegistrationRequest(blinded), blind


def create_registration_response(
    request: RegistrationRequest, setup: ServerSetup, credential_identifier: bytes
) -> RegistrationResponse:
    """CreateRegistrationResponse: evaluate the user's OPRF on the blinded password.

    ``credential_identifier`` is the server's stable name for this user's record; the same
    value must be used at login.
    """
    oprf_key = _oprf_private_key(setup.oprf_seed, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, request.blinded_message)
    return RegistrationResponse(evaluated, setup.public_key)


def finalize_registration_request(
    password: bytes,
    blind: bytes,
    response: RegistrationResponse,
    *,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
    profile: KsfProfile = DEFAULT,
    envelope_nonce: bytes | None = None,
    rng: group.Rng = group.default_rng,
) -> tuple[RegistrationRecord, bytes]:
    """FinalizeRegistrationRequest: return (record to upload, export_key to keep).

    Runs the profile's KSF (the slow step). ``export_key`` (64 bytes) is a client-only
    secret, reproduced by every successful login, for encrypting application data.
    """
    nonce = _random_or_given("envelope_nonce", envelope_nonce, NN, rng)
    randomized_password = _randomized_password(password, blind, response.evaluated_message, profile)
    masking_key = _expand(randomized_password, b"MaskingKey", NH)
    auth_key, export_key, seed = _envelope_keys(randomized_password, nonce)
    _, client_public_key = derive_diffie_hellman_key_pair(seed)
    cleartext, _, _ = _cleartext_credentials(
        response.server_public_key, client_public_key, server_identity, client_identity
    )
    auth_tag = _hmac(auth_key, nonce + cleartext)
    record = RegistrationRecord(client_public_key, masking_key, Envelope(nonce, auth_tag))
    return record, export_key


# --------------------------------------------------------------------------- login


def generate_ke1(
    password: bytes,
    *,
    blind: bytes | None = None,
    client_nonce: bytes | None = None,
    client_keyshare_seed: bytes | None = None,
    rng: group.Rng = group.default_rng,
) -> tuple[KE1, ClientState]:
    """GenerateKE1: return (KE1 to send, state to keep for generate_ke3)."""
    blind, blinded = oprf.blind(password, blind=blind, rng=rng)
    nonce = _random_or_given("client_nonce", client_nonce, NN, rng)
    seed = _random_or_given("client_keyshare_seed", client_keyshare_seed, NSEED, rng)
    client_secret, client_keyshare = derive_diffie_hellman_key_pair(seed)
    ke1 = KE1(blinded, nonce, client_keyshare)
    return ke1, ClientState(password, blind, client_secret, ke1)


def generate_ke2(
    ke1: KE1,
    record: RegistrationRecord,
    *,
    setup: ServerSetup,
    credential_identifier: bytes,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
    profile: KsfProfile = DEFAULT,
    masking_nonce: bytes | None = None,
    server_nonce: bytes | None = None,
    server_keyshare_seed: bytes | None = None,
    rng: group.Rng = group.default_rng,
) -> tuple[KE2, ServerState]:
    """GenerateKE2: return (KE2 to send, state to keep for server_finish).

    The three random inputs can be injected; with the same inputs (and the same ke1,
    record and setup) the KE2 is byte-for-byte identical, which is how the vault
    regenerates an answer after a failover (see :func:`derive_server_randomness`).
    Only the context is taken from ``profile``; the server never runs the KSF.
    """
    masking_nonce = _random_or_given("masking_nonce", masking_nonce, NN, rng)
    server_nonce = _random_or_given("server_nonce", server_nonce, NN, rng)
    seed = _random_or_given("server_keyshare_seed", server_keyshare_seed, NSEED, rng)

    oprf_key = _oprf_private_key(setup.oprf_seed, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, ke1.blinded_message)
    masked_response = _xor(
        _masking_pad(record.masking_key, masking_nonce),
        setup.public_key + record.envelope.serialize(),
    )
    credential_response = evaluated + masking_nonce + masked_response

    _, server_id, client_id = _cleartext_credentials(
        setup.public_key, record.client_public_key, server_identity, client_identity
    )
    server_secret, server_keyshare = derive_diffie_hellman_key_pair(seed)
    preamble = _preamble(
        profile.context,
        client_id,
        ke1,
        server_id,
        credential_response,
        server_nonce,
        server_keyshare,
    )
    ikm = (
        group.scalar_mult(server_secret, ke1.client_public_keyshare)
        + group.scalar_mult(setup.private_key, ke1.client_public_keyshare)
        + group.scalar_mult(server_secret, record.client_public_key)
    )
    _, km2, km3, session_key = _derive_keys(ikm, preamble)
    server_mac = _hmac(km2, hashlib.sha512(preamble).digest())
    expected_client_mac = _hmac(km3, hashlib.sha512(preamble + server_mac).digest())
    ke2 = KE2(evaluated, masking_nonce, masked_response, server_nonce, server_keyshare, server_mac)
    return ke2, ServerState(expected_client_mac, session_key)


def generate_ke3(
    state: ClientState,
    ke2: KE2,
    *,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
    profile: KsfProfile = DEFAULT,
) -> tuple[KE3, bytes, bytes]:
    """GenerateKE3: return (KE3 to send, session_key, export_key).

    Runs the profile's KSF. Raises EnvelopeRecoveryError for a wrong password (or an
    altered credential response), ServerAuthenticationError if the server's MAC fails.
    """
    randomized_password = _randomized_password(
        state.password, state.blind, ke2.evaluated_message, profile
    )
    masking_key = _expand(randomized_password, b"MaskingKey", NH)
    unmasked = _xor(_masking_pad(masking_key, ke2.masking_nonce), ke2.masked_response)
    server_public_key = unmasked[:NPK]
    envelope_nonce = unmasked[NPK : NPK + NN]
    auth_tag = unmasked[NPK + NN :]

    auth_key, export_key, seed = _envelope_keys(randomized_password, envelope_nonce)
    client_private_key, client_public_key = derive_diffie_hellman_key_pair(seed)
    cleartext, server_id, client_id = _cleartext_credentials(
        server_public_key, client_public_key, server_identity, client_identity
    )
    expected_tag = _hmac(auth_key, envelope_nonce + cleartext)
    if not hmac.compare_digest(expected_tag, auth_tag):
        raise EnvelopeRecoveryError("envelope does not verify: wrong password or altered KE2")
    # Authenticated by the envelope tag, but the key was the server's to choose: validate it.
    group.deserialize_element(server_public_key)

    preamble = _preamble(
        profile.context,
        client_id,
        state.ke1,
        server_id,
        ke2.credential_response(),
        ke2.server_nonce,
        ke2.server_public_keyshare,
    )
    ikm = (
        group.scalar_mult(state.client_secret, ke2.server_public_keyshare)
        + group.scalar_mult(state.client_secret, server_public_key)
        + group.scalar_mult(client_private_key, ke2.server_public_keyshare)
    )
    _, km2, km3, session_key = _derive_keys(ikm, preamble)
    expected_server_mac = _hmac(km2, hashlib.sha512(preamble).digest())
    if not hmac.compare_digest(expected_server_mac, ke2.server_mac):
        raise ServerAuthenticationError("server MAC does not verify")
    client_mac = _hmac(km3, hashlib.sha512(preamble + expected_server_mac).digest())
    return KE3(client_mac), session_key, export_key


def server_finish(state: ServerState, ke3: KE3) -> bytes:
    """ServerFinish: return the session key, or raise ClientAuthenticationError.

    A failure means the client did not know the password (or KE3 was altered).
    """
    if not hmac.compare_digest(state.expected_client_mac, ke3.client_mac):
        raise ClientAuthenticationError("client MAC does not verify")
    return state.session_key


# --------------------------------------------------------------------------- unknown users


def create_fake_record(
    *,
    client_public_key: bytes | None = None,
    masking_key: bytes | None = None,
    rng: group.Rng = group.default_rng,
) -> RegistrationRecord:
    """A stand-in record for a user who is not registered (RFC 9807 §6.3.2.2, §10.9).

    It has a valid client public key whose private half nobody uses (by default from a
    fresh random key pair; generate_fake_ke2 passes ``setup.fake_client_public_key``), a
    random masking key and an all-zero envelope, so the KE2 built from it is
    indistinguishable from a real one to anyone without the password, and no KE3 verifies.
    """
    if client_public_key is None:
        _, client_public_key = derive_diffie_hellman_key_pair(
            _random_or_given("fake key seed", None, NSEED, rng)
        )
    key = _random_or_given("masking_key", masking_key, NH, rng)
    return RegistrationRecord(client_public_key, key, Envelope(bytes(NN), bytes(NM)))


def generate_fake_ke2(
    ke1: KE1,
    *,
    setup: ServerSetup,
    credential_identifier: bytes,
    fake_masking_key: bytes | None = None,
    fake_record: RegistrationRecord | None = None,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
    profile: KsfProfile = DEFAULT,
    masking_nonce: bytes | None = None,
    server_nonce: bytes | None = None,
    server_keyshare_seed: bytes | None = None,
    rng: group.Rng = group.default_rng,
) -> tuple[KE2, ServerState]:
    """GenerateKE2 for an unknown user: same work, same shape, and server_finish fails.

    Use the real ``setup`` and the identifier the client asked for, so that repeated
    queries for the same unknown user see a consistent OPRF evaluation, exactly as for a
    registered user. The fake record carries ``setup.fake_client_public_key`` and
    ``fake_masking_key`` (random unless given); alternatively pass a whole ``fake_record``
    (as the RFC's fake test vector does), but not both.
    """
    if fake_record is None:
        record = create_fake_record(
            client_public_key=setup.fake_client_public_key, masking_key=fake_masking_key, rng=rng
        )
    elif fake_masking_key is not None:
        raise InvalidInput("pass fake_masking_key or fake_record, not both")
    else:
        record = fake_record
    return generate_ke2(
        ke1,
        record,
        setup=setup,
        credential_identifier=credential_identifier,
        server_identity=server_identity,
        client_identity=client_identity,
        profile=profile,
        masking_nonce=masking_nonce,
        server_nonce=server_nonce,
        server_keyshare_seed=server_keyshare_seed,
        rng=rng,
    )


# --------------------------------------------------------------------------- determinism


_RANDOMNESS_SALT: Final = b"vaultd/opaque/server-randomness/v1"


@dataclass(frozen=True, slots=True)
class ServerRandomness:
    """Server-side KE2 inputs derived from a secret; see :func:`derive_server_randomness`."""

    masking_nonce: bytes = field(repr=False)
    server_nonce: bytes = field(repr=False)
    server_keyshare_seed: bytes = field(repr=False)
    fake_masking_key: bytes = field(repr=False)
    """Used only by generate_fake_ke2, for an unknown user."""


def derive_server_randomness(secret: bytes, *parts: bytes) -> ServerRandomness:
    """Derive generate_ke2's random inputs from ``secret`` and the attempt's ``parts``.

    HKDF-SHA512: Extract with a fixed label as salt and ``secret`` as key material, then one
    Expand whose info is the length-prefixed ``parts`` (so distinct tuples never collide).
    The same arguments always give the same values, hence the same KE2.

    ``secret`` must be at least 32 bytes and never leave the HSM layer. ``parts`` must pin
    down the attempt *and* the record: the vault passes (user, record generation,
    attempt_id, KE1). Reusing a server keyshare with a different KE1 or record would hand
    an observer two transcripts under one ephemeral key, which the protocol never intends.
    """
    if len(secret) < 32:
        raise InvalidInput("derive_server_randomness needs a secret of at least 32 bytes")
    info = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    sizes = (NN, NN, NSEED, NH)
    okm = _expand(_extract(_RANDOMNESS_SALT, secret), info, sum(sizes))
    return ServerRandomness(*_split(okm, sum(sizes), *sizes))

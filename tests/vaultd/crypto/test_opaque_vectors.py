"""RFC 9807 official vectors (ristretto255-SHA512, KSF = Identity), every value byte for byte.

Intermediate values the API does not return (OPRF key, randomized password, auth key,
handshake secret, MAC keys) are observed by wrapping the module's own helpers while the
public functions run, so what is checked is the code path callers use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vaultd.crypto import group, ksf, opaque

VECTORS_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "vectors"
VECTOR_FILE = "opaque_ristretto255_sha512.json"


def _load() -> list[dict[str, Any]]:
    path = VECTORS_DIR / VECTOR_FILE
    if not path.is_file():
        pytest.fail(f"official vectors not found at {path} (shared/ must sit beside the repo)")
    sums = {}
    for line in (VECTORS_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[VECTOR_FILE]
    vectors = json.loads(path.read_text())
    assert isinstance(vectors, list)
    return vectors


VECTORS = _load()
REAL = [v for v in VECTORS if v["config"]["Fake"] == "False"]
FAKE = [v for v in VECTORS if v["config"]["Fake"] == "True"]


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def optional(inputs: dict[str, str], key: str) -> bytes | None:
    return h(inputs[key]) if key in inputs else None


class Spy:
    """Wraps module-level helpers of ``opaque`` and records what they return."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        self.seen: dict[str, list[Any]] = {name: [] for name in names}
        for name in names:
            monkeypatch.setattr(opaque, name, self._wrap(name, getattr(opaque, name)))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            self.seen[name].append(result)
            return result

        return wrapper


def test_vector_set_is_complete() -> None:
    assert len(REAL) == 2
    assert len(FAKE) == 1


@pytest.mark.parametrize("vector", VECTORS, ids=["real1", "real2", "fake1"])
def test_configuration_matches_this_implementation(vector: dict[str, Any]) -> None:
    config = vector["config"]
    assert config["OPRF"] == "ristretto255-SHA512"
    assert config["Group"] == "ristretto255"
    assert (config["Hash"], config["KDF"], config["MAC"]) == (
        "SHA512",
        "HKDF-SHA512",
        "HMAC-SHA512",
    )
    assert config["Name"] == "3DH"
    assert config["KSF"] == "Identity"
    assert h(config["Context"]) == ksf.IDENTITY.context
    sizes = {k: int(config[k]) for k in ("Nh", "Nm", "Nok", "Npk", "Nsk", "Nx")}
    assert sizes == {
        "Nh": opaque.NH,
        "Nm": opaque.NM,
        "Nok": opaque.NOK,
        "Npk": opaque.NPK,
        "Nsk": opaque.NSK,
        "Nx": opaque.NX,
    }


@pytest.mark.parametrize("vector", REAL, ids=["real1", "real2"])
def test_real_vector(vector: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, mid, out = vector["inputs"], vector["intermediates"], vector["outputs"]
    spy = Spy(
        monkeypatch, "_oprf_private_key", "_randomized_password", "_envelope_keys", "_derive_keys"
    )
    profile = ksf.IDENTITY
    client_identity = optional(inputs, "client_identity")
    server_identity = optional(inputs, "server_identity")
    credential_identifier = h(inputs["credential_identifier"])
    password = h(inputs["password"])
    setup = opaque.ServerSetup(
        h(inputs["server_private_key"]), h(inputs["server_public_key"]), h(inputs["oprf_seed"])
    )

    # Registration.
    request, blind = opaque.create_registration_request(
        password, blind=h(inputs["blind_registration"])
    )
    assert request.serialize() == h(out["registration_request"])
    response = opaque.create_registration_response(request, setup, credential_identifier)
    assert response.serialize() == h(out["registration_response"])
    record, export_key = opaque.finalize_registration_request(
        password,
        blind,
        response,
        server_identity=server_identity,
        client_identity=client_identity,
        profile=profile,
        envelope_nonce=h(inputs["envelope_nonce"]),
    )
    assert record.serialize() == h(out["registration_upload"])
    assert record.client_public_key == h(mid["client_public_key"])
    assert record.masking_key == h(mid["masking_key"])
    assert record.envelope.serialize() == h(mid["envelope"])
    assert export_key == h(out["export_key"])

    # Login.
    ke1, client_state = opaque.generate_ke1(
        password,
        blind=h(inputs["blind_login"]),
        client_nonce=h(inputs["client_nonce"]),
        client_keyshare_seed=h(inputs["client_keyshare_seed"]),
    )
    assert ke1.serialize() == h(out["KE1"])
    ke2, server_state = opaque.generate_ke2(
        opaque.KE1.deserialize(ke1.serialize()),
        opaque.RegistrationRecord.deserialize(record.serialize()),
        setup=setup,
        credential_identifier=credential_identifier,
        server_identity=server_identity,
        client_identity=client_identity,
        profile=profile,
        masking_nonce=h(inputs["masking_nonce"]),
        server_nonce=h(inputs["server_nonce"]),
        server_keyshare_seed=h(inputs["server_keyshare_seed"]),
    )
    assert ke2.serialize() == h(out["KE2"])
    ke3, session_key, login_export_key = opaque.generate_ke3(
        client_state,
        opaque.KE2.deserialize(ke2.serialize()),
        server_identity=server_identity,
        client_identity=client_identity,
        profile=profile,
    )
    assert ke3.serialize() == h(out["KE3"])
    assert session_key == h(out["session_key"])
    assert login_export_key == h(out["export_key"])
    assert opaque.server_finish(server_state, opaque.KE3.deserialize(ke3.serialize())) == (
        h(out["session_key"])
    )

    # Intermediates, as computed inside the calls above.
    assert set(spy.seen["_oprf_private_key"]) == {h(mid["oprf_key"])}
    assert set(spy.seen["_randomized_password"]) == {h(mid["randomized_password"])}
    auth_keys = {keys[0] for keys in spy.seen["_envelope_keys"]}
    assert auth_keys == {h(mid["auth_key"])}
    schedules = spy.seen["_derive_keys"]
    assert len(schedules) == 2  # once on the server, once on the client
    for handshake_secret, server_mac_key, client_mac_key, derived_session_key in schedules:
        assert handshake_secret == h(mid["handshake_secret"])
        assert server_mac_key == h(mid["server_mac_key"])
        assert client_mac_key == h(mid["client_mac_key"])
        assert derived_session_key == h(out["session_key"])


@pytest.mark.parametrize("vector", FAKE, ids=["fake1"])
def test_fake_vector(vector: dict[str, Any]) -> None:
    inputs = vector["inputs"]
    setup = opaque.ServerSetup(
        h(inputs["server_private_key"]), h(inputs["server_public_key"]), h(inputs["oprf_seed"])
    )
    # The vector states the fake key pair; the server only needs its public half.
    assert group.scalar_mult_base(h(inputs["client_private_key"])) == h(inputs["client_public_key"])
    fake_record = opaque.create_fake_record(
        client_public_key=h(inputs["client_public_key"]), masking_key=h(inputs["masking_key"])
    )
    ke2, _ = opaque.generate_fake_ke2(
        opaque.KE1.deserialize(h(inputs["KE1"])),
        setup=setup,
        credential_identifier=h(inputs["credential_identifier"]),
        fake_record=fake_record,
        server_identity=optional(inputs, "server_identity"),
        client_identity=optional(inputs, "client_identity"),
        profile=ksf.IDENTITY,
        masking_nonce=h(inputs["masking_nonce"]),
        server_nonce=h(inputs["server_nonce"]),
        server_keyshare_seed=h(inputs["server_keyshare_seed"]),
    )
    assert ke2.serialize() == h(vector["outputs"]["KE2"])
    # The one client input the vector lists: its keyshare seed, which KE1 must carry.
    _, client_keyshare = opaque.derive_diffie_hellman_key_pair(h(inputs["client_keyshare_seed"]))
    assert opaque.KE1.deserialize(h(inputs["KE1"])).client_public_keyshare == client_keyshare

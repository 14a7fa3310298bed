"""vaultd.pki: certificates, key files, node identity, and the mutual-TLS contexts."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vaultd.pki import (
    CertificateRejected,
    CertifiedKey,
    InsecureKeyFile,
    KeyAlgorithm,
    NotANodeCertificate,
    PemFileError,
    PkiError,
    TlsFiles,
    client_ssl_context,
    create_ca,
    issue_client_cert,
    issue_node_cert,
    load_certificate,
    load_certified_key,
    load_private_key,
    node_id_from_cert,
    node_id_from_der,
    node_uri,
    peer_node_id,
    server_ssl_context,
    verify_node_certificate,
    write_pem,
    write_tls_files,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module", params=list(KeyAlgorithm), ids=lambda a: a.value)
def ca(request: pytest.FixtureRequest) -> CertifiedKey:
    algorithm: KeyAlgorithm = request.param
    return create_ca(algorithm=algorithm)


@pytest.fixture(scope="module")
def other_ca() -> CertifiedKey:
    return create_ca("an unrelated CA")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def files_for(directory: Path, ca_cert: x509.Certificate, creds: CertifiedKey) -> TlsFiles:
    directory.mkdir()
    return write_tls_files(directory, ca_cert, creds)


# ------------------------------------------------------------------ issuing


def test_ca_is_a_self_signed_leaf_only_ca(ca: CertifiedKey) -> None:
    cert = ca.certificate
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert.verify_directly_issued_by(cert)


def test_node_certificate_names_node_and_hosts(ca: CertifiedKey) -> None:
    node = issue_node_cert(ca, 42, ["127.0.0.1", "::1", "Node42.Example.org."])
    cert = node.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["vaultd://node/42"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["node42.example.org"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-42"
    assert node_id_from_cert(cert) == 42
    assert node_id_from_der(cert.public_bytes(serialization.Encoding.DER)) == 42
    assert verify_node_certificate(cert, ca.certificate) == 42
    assert type(node.private_key) is type(ca.private_key)  # the CA's algorithm by default


def test_node_key_algorithm_can_differ_from_the_ca(ca: CertifiedKey) -> None:
    node = issue_node_cert(ca, 1, [], algorithm=KeyAlgorithm.ECDSA_P256)
    assert isinstance(node.private_key, ec.EllipticCurvePrivateKey)
    assert verify_node_certificate(node.certificate, ca.certificate) == 1


def test_leaf_never_outlives_its_ca() -> None:
    short_ca = create_ca(valid_for=dt.timedelta(days=10))
    node = issue_node_cert(short_ca, 1, [], valid_for=dt.timedelta(days=100))
    assert node.certificate.not_valid_after_utc == short_ca.certificate.not_valid_after_utc


@pytest.mark.parametrize("node_id", [-1, 2**64, True, "1", 1.0])
def test_bad_node_ids_are_refused(ca: CertifiedKey, node_id: object) -> None:
    with pytest.raises(PkiError):
        issue_node_cert(ca, node_id, [])  # type: ignore[arg-type]
    with pytest.raises(PkiError):
        node_uri(node_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "hosts",
    [["bad host"], [""], ["-leading.example"], ["a" * 64 + ".example"], [None], "127.0.0.1"],
)
def test_bad_hosts_are_refused(ca: CertifiedKey, hosts: object) -> None:
    with pytest.raises(PkiError):
        issue_node_cert(ca, 1, hosts)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "has space", "x" * 64, "-dash", "ünïcode"])
def test_bad_client_names_are_refused(ca: CertifiedKey, name: str) -> None:
    with pytest.raises(PkiError):
        issue_client_cert(ca, name)


def test_bad_issuing_parameters_are_refused(ca: CertifiedKey) -> None:
    with pytest.raises(PkiError, match="timezone"):
        create_ca(now=dt.datetime(2030, 1, 1))  # naive on purpose
    with pytest.raises(PkiError, match="positive"):
        create_ca(valid_for=dt.timedelta(0))
    with pytest.raises(PkiError, match="positive"):
        issue_node_cert(ca, 1, [], valid_for=-dt.timedelta(days=1))
    with pytest.raises(PkiError):
        create_ca("")


# ------------------------------------------------------------------ identity


def test_client_certificate_is_no_node(ca: CertifiedKey) -> None:
    client = issue_client_cert(ca, "ops-tool")
    with pytest.raises(NotANodeCertificate):
        node_id_from_cert(client.certificate)
    with pytest.raises(NotANodeCertificate):
        verify_node_certificate(client.certificate, ca.certificate)


def _custom_cert(ca: CertifiedKey, san: list[x509.GeneralName] | None) -> x509.Certificate:
    key = ed25519.Ed25519PrivateKey.generate()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "custom")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    digest = None if isinstance(ca.private_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(ca.private_key, digest)


URI = x509.UniformResourceIdentifier


@pytest.mark.parametrize(
    "san",
    [
        None,
        [x509.DNSName("node1.example")],
        [URI("vaultd://node/1"), URI("vaultd://node/2")],
        [URI("vaultd://node/01")],
        [URI("vaultd://node/-1")],
        [URI("vaultd://node/1x")],
        [URI("vaultd://node/")],
        [URI("vaultd://node/18446744073709551616")],
        [URI("https://node/1")],
    ],
    ids=str,
)
def test_certificates_not_naming_exactly_one_node(
    ca: CertifiedKey, san: list[x509.GeneralName] | None
) -> None:
    with pytest.raises(NotANodeCertificate):
        node_id_from_cert(_custom_cert(ca, san))


def test_largest_node_id_is_accepted(ca: CertifiedKey) -> None:
    cert = _custom_cert(ca, [URI("vaultd://node/18446744073709551615")])
    assert node_id_from_cert(cert) == 2**64 - 1


def test_garbage_der_is_no_node() -> None:
    with pytest.raises(NotANodeCertificate):
        node_id_from_der(b"\x30\x03garbage")


def test_wrong_ca_is_rejected(ca: CertifiedKey, other_ca: CertifiedKey) -> None:
    node = issue_node_cert(other_ca, 1, [])
    with pytest.raises(CertificateRejected):
        verify_node_certificate(node.certificate, ca.certificate)


def test_expired_and_not_yet_valid_are_rejected(ca: CertifiedKey) -> None:
    node = issue_node_cert(ca, 1, [], valid_for=dt.timedelta(days=1))
    with pytest.raises(CertificateRejected, match="not valid"):
        verify_node_certificate(node.certificate, ca.certificate, now=NOW + dt.timedelta(days=2))
    with pytest.raises(CertificateRejected, match="not valid"):
        verify_node_certificate(node.certificate, ca.certificate, now=NOW - dt.timedelta(days=1))


def test_ca_certificate_is_no_node_certificate(ca: CertifiedKey) -> None:
    with pytest.raises(CertificateRejected):
        verify_node_certificate(ca.certificate, ca.certificate)


def test_a_leaf_cannot_act_as_issuer(ca: CertifiedKey) -> None:
    node = issue_node_cert(ca, 1, [])
    with pytest.raises(CertificateRejected, match="not a CA"):
        verify_node_certificate(node.certificate, node.certificate)


# ------------------------------------------------------------------ files


def test_key_files_are_0600_and_certs_0644(
    ca: CertifiedKey, tmp_path: Path, umask_022: None
) -> None:
    files = files_for(tmp_path / "n1", ca.certificate, issue_node_cert(ca, 1, ["127.0.0.1"]))
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.cert.stat().st_mode) == 0o644
    assert stat.S_IMODE(files.ca_cert.stat().st_mode) == 0o644
    loaded = load_certified_key(files.cert, files.key)
    assert node_id_from_cert(loaded.certificate) == 1
    assert load_certificate(files.ca_cert) == ca.certificate


def test_key_file_is_0600_even_with_a_permissive_umask(ca: CertifiedKey, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_pem(tmp_path / "k.pem", ca.private_key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_files_and_symlinks_are_never_overwritten(
    ca: CertifiedKey, tmp_path: Path
) -> None:
    existing = tmp_path / "existing.key"
    existing.write_bytes(b"keep me")
    with pytest.raises(PemFileError):
        write_pem(existing, ca.private_key)
    assert existing.read_bytes() == b"keep me"
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "link.key"
    link.symlink_to(victim)
    with pytest.raises(PemFileError):
        write_pem(link, ca.private_key)
    assert victim.read_bytes() == b"untouched"
    with pytest.raises(PemFileError):
        write_pem(tmp_path / "missing-dir" / "x.key", ca.private_key)


def test_encrypted_key_round_trip(ca: CertifiedKey, tmp_path: Path) -> None:
    path = write_pem(tmp_path / "ca.key", ca.private_key, password=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    key = load_private_key(path, password=b"correct horse")
    assert key.public_key() == ca.private_key.public_key()
    with pytest.raises(PemFileError):
        load_private_key(path, password=b"wrong")
    with pytest.raises(PemFileError):
        load_private_key(path)
    with pytest.raises(PkiError):
        write_pem(tmp_path / "c.pem", ca.certificate, password=b"x")


def test_world_readable_key_is_refused(ca: CertifiedKey, tmp_path: Path) -> None:
    key_pem = ca.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "loose.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(path, 0o644)  # whatever the umask: the test needs a loose file
    with pytest.raises(InsecureKeyFile):
        load_private_key(path)
    assert (
        load_private_key(path, require_private_mode=False).public_key()
        == ca.private_key.public_key()
    )
    files = TlsFiles(ca_cert=path, cert=path, key=path)
    with pytest.raises(InsecureKeyFile):
        server_ssl_context(files)
    with pytest.raises(InsecureKeyFile):
        client_ssl_context(files)


def test_unreadable_and_wrong_files(ca: CertifiedKey, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN NOTHING-----\n")
    garbage.chmod(0o600)
    with pytest.raises(PemFileError):
        load_certificate(garbage)
    with pytest.raises(PemFileError):
        load_private_key(garbage)
    with pytest.raises(PemFileError):
        load_certificate(tmp_path / "missing.pem")
    with pytest.raises(PemFileError):
        load_private_key(tmp_path / "missing.key")
    p384 = write_pem(tmp_path / "p384.key", ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(PemFileError, match="only Ed25519"):
        load_private_key(p384)
    one = files_for(tmp_path / "one", ca.certificate, issue_node_cert(ca, 1, []))
    two = files_for(tmp_path / "two", ca.certificate, issue_node_cert(ca, 2, []))
    with pytest.raises(PemFileError, match="not the key"):
        load_certified_key(one.cert, two.key)
    with pytest.raises(PemFileError):
        server_ssl_context(TlsFiles(ca_cert=tmp_path / "nope.pem", cert=one.cert, key=one.key))


# ------------------------------------------------------------------ TLS


def test_contexts_are_strict(ca: CertifiedKey, tmp_path: Path) -> None:
    files = files_for(tmp_path / "n1", ca.certificate, issue_node_cert(ca, 1, []))
    for ctx in (server_ssl_context(files), client_ssl_context(files)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname
        assert len(ctx.get_ca_certs()) == 1  # the cluster CA only, no system roots


class Outcome:
    def __init__(self) -> None:
        self.server_peer: int | None = None
        self.client_peer: int | None = None
        self.server_error: BaseException | None = None
        self.client_error: BaseException | None = None


async def tls_exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Outcome:
    """Handshake over an in-memory stream pair; the server then sends one byte."""
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_ctx, server_side=True)
    client = trio.SSLStream(right, client_ctx, server_hostname="127.0.0.1")
    out = Outcome()

    async def serve() -> None:
        try:
            await server.do_handshake()
            out.server_peer = peer_node_id(server)
            await server.send_all(b"!")
        except (trio.BrokenResourceError, NotANodeCertificate) as exc:
            out.server_error = exc
        finally:
            await trio.aclose_forcefully(server)

    async def connect() -> None:
        try:
            await client.do_handshake()
            out.client_peer = peer_node_id(client)
            # TLS 1.3 clients learn that the server refused their certificate only here.
            if await client.receive_some() != b"!":
                raise trio.BrokenResourceError("no data")
        except (trio.BrokenResourceError, NotANodeCertificate) as exc:
            out.client_error = exc
        finally:
            await trio.aclose_forcefully(client)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(connect)
    return out


async def test_mutual_tls_identifies_both_ends(ca: CertifiedKey, tmp_path: Path) -> None:
    one = files_for(tmp_path / "n1", ca.certificate, issue_node_cert(ca, 1, ["127.0.0.1"]))
    two = files_for(tmp_path / "n2", ca.certificate, issue_node_cert(ca, 2, ["127.0.0.1"]))
    out = await tls_exchange(server_ssl_context(one), client_ssl_context(two))
    assert (out.server_error, out.client_error) == (None, None)
    assert (out.server_peer, out.client_peer) == (2, 1)


async def test_client_from_another_ca_fails_the_handshake(
    ca: CertifiedKey, other_ca: CertifiedKey, tmp_path: Path
) -> None:
    one = files_for(tmp_path / "n1", ca.certificate, issue_node_cert(ca, 1, []))
    # The intruder trusts our CA (so it accepts our server) but its own cert is foreign.
    intruder_dir = tmp_path / "intruder"
    intruder_dir.mkdir()
    intruder = write_tls_files(intruder_dir, ca.certificate, issue_node_cert(other_ca, 2, []))
    out = await tls_exchange(server_ssl_context(one), client_ssl_context(intruder))
    assert isinstance(out.server_error, trio.BrokenResourceError)
    assert isinstance(out.server_error.__cause__, ssl.SSLError)
    assert out.server_peer is None
    assert out.client_error is not None


async def test_server_from_another_ca_is_refused(
    ca: CertifiedKey, other_ca: CertifiedKey, tmp_path: Path
) -> None:
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    rogue = write_tls_files(rogue_dir, ca.certificate, issue_node_cert(other_ca, 1, []))
    two = files_for(tmp_path / "n2", ca.certificate, issue_node_cert(ca, 2, []))
    out = await tls_exchange(server_ssl_context(rogue), client_ssl_context(two))
    assert isinstance(out.client_error, trio.BrokenResourceError)
    assert out.client_peer is None


async def test_expired_certificate_fails_the_handshake(ca: CertifiedKey, tmp_path: Path) -> None:
    one = files_for(tmp_path / "n1", ca.certificate, issue_node_cert(ca, 1, []))
    expired = issue_node_cert(
        ca, 2, [], valid_for=dt.timedelta(days=1), now=NOW - dt.timedelta(days=30)
    )
    two = files_for(tmp_path / "n2", ca.certificate, expired)
    out = await tls_exchange(server_ssl_context(one), client_ssl_context(two))
    assert isinstance(out.server_error, trio.BrokenResourceError)
    assert "expired" in str(out.server_error.__cause__)


async def test_client_certificate_cannot_serve_or_pose_as_a_node(
    ca: CertifiedKey, tmp_path: Path
) -> None:
    tool = files_for(tmp_path / "tool", ca.certificate, issue_client_cert(ca, "ops"))
    one = files_for(tmp_path / "n1", ca.certificate, issue_node_cert(ca, 1, []))
    # As a server: its certificate lacks serverAuth, so clients refuse it.
    out = await tls_exchange(server_ssl_context(tool), client_ssl_context(one))
    assert isinstance(out.client_error, trio.BrokenResourceError)
    # As a client: TLS accepts it, but it names no node.
    out = await tls_exchange(server_ssl_context(one), client_ssl_context(tool))
    assert isinstance(out.server_error, NotANodeCertificate)
    assert out.client_peer == 1


async def test_tls_1_2_is_refused(ca: CertifiedKey, tmp_path: Path) -> None:
    one = files_for(tmp_path / "n1", ca.certificate, issue_node_cert(ca, 1, []))
    two = files_for(tmp_path / "n2", ca.certificate, issue_node_cert(ca, 2, []))
    old_client = client_ssl_context(two)
    old_client.minimum_version = ssl.TLSVersion.TLSv1_2
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    out = await tls_exchange(server_ssl_context(one), old_client)
    assert isinstance(out.server_error, trio.BrokenResourceError)


def test_peer_node_id_needs_a_verifying_context(ca: CertifiedKey, tmp_path: Path) -> None:
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    conn = lax.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    with pytest.raises(NotANodeCertificate, match="does not verify"):
        peer_node_id(conn)

"""The cluster PKI: a private CA, node and client certificates, and TLS contexts.

Every node holds a certificate from the cluster CA whose subjectAltName carries
the URI ``vaultd://node/<id>`` (plus the IP addresses and DNS names it listens
on); the node id in that URI is the node's identity on the wire.  Operator
tools get client certificates (``vaultd://client/<name>``, client auth only),
which can never pass as a node.

Keys are Ed25519 by default; ECDSA P-256 is available for deployments whose
tooling or HSMs need it.  Why Ed25519: signatures are deterministic (no
per-signature nonce to get wrong), there is a single encoding with no curve or
point-format options, keys and signatures are small, and OpenSSL >= 1.1.1
accepts Ed25519 certificates in TLS 1.3, the only TLS version the cluster
speaks.  What Ed25519 gives up (TLS 1.2 clients, browsers, FIPS validation) does
not matter between our own nodes.  See docs/transport.md.

Private key files are created with ``O_CREAT | O_EXCL`` and mode 0600 in the
same system call, so they are never readable by others, not even for an
instant, and an existing file is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CLIENT_URI_PREFIX",
    "NODE_URI_PREFIX",
    "CertificateRejected",
    "CertifiedKey",
    "InsecureKeyFile",
    "KeyAlgorithm",
    "NotANodeCertificate",
    "PemFileError",
    "PkiError",
    "PrivateKey",
    "TlsConnection",
    "TlsFiles",
    "client_ssl_context",
    "create_ca",
    "issue_client_cert",
    "issue_node_cert",
    "load_certificate",
    "load_certified_key",
    "load_private_key",
    "node_id_from_cert",
    "node_id_from_der",
    "node_uri",
    "peer_node_id",
    "server_ssl_context",
    "verify_node_certificate",
    "write_pem",
    "write_tls_files",
]

NODE_URI_PREFIX: Final = "vaultd://node/"
CLIENT_URI_PREFIX: Final = "vaultd://client/"
_MAX_NODE_ID: Final = 2**64 - 1
_NODE_URI_RE: Final = re.compile(r"vaultd://node/(0|[1-9][0-9]{0,19})\Z")
_CLIENT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_DNS_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
# Certificates start a little in the past so a peer whose clock lags ours
# accepts a certificate issued a moment ago.
_BACKDATE: Final = dt.timedelta(minutes=5)
DEFAULT_CA_VALIDITY: Final = dt.timedelta(days=3650)
DEFAULT_LEAF_VALIDITY: Final = dt.timedelta(days=825)

PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class PkiError(Exception):
    """Base of every error vaultd.pki raises."""


class PemFileError(PkiError):
    """A PEM file could not be written or read, or does not hold what it should."""


class InsecureKeyFile(PemFileError):
    """A private key file is accessible to users other than its owner."""


class CertificateRejected(PkiError):
    """A certificate does not verify against the cluster CA (wrong CA, expired, misused)."""


class NotANodeCertificate(PkiError, ValueError):
    """A certificate does not name exactly one node (``vaultd://node/<id>``)."""


class KeyAlgorithm(enum.Enum):
    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"


@dataclass(frozen=True, slots=True)
class CertifiedKey:
    """A certificate together with its private key."""

    certificate: x509.Certificate
    private_key: PrivateKey


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a node's (or client's) TLS material lives on disk."""

    ca_cert: Path
    cert: Path
    key: Path


# ------------------------------------------------------------ issuing


def _generate_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    raise PkiError(f"unsupported key algorithm {algorithm!r}")


def _algorithm_of(key: PrivateKey) -> KeyAlgorithm:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return KeyAlgorithm.ED25519
    if isinstance(key.curve, ec.SECP256R1):
        return KeyAlgorithm.ECDSA_P256
    raise PkiError(f"unsupported elliptic curve {key.curve.name}")


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    # Ed25519 hashes internally and takes no digest; ECDSA signs a SHA-256 digest.
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, digest)


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise PkiError("'now' must be timezone-aware")
    return now


def _check_validity(valid_for: dt.timedelta) -> None:
    if valid_for <= dt.timedelta(0):
        raise PkiError("valid_for must be positive")


def create_ca(
    common_name: str = "vaultd cluster CA",
    *,
    algorithm: KeyAlgorithm = KeyAlgorithm.ED25519,
    valid_for: dt.timedelta = DEFAULT_CA_VALIDITY,
    now: dt.datetime | None = None,
) -> CertifiedKey:
    """Create a self-signed cluster CA that may sign leaf certificates only
    (path length 0).  ``now`` (timezone-aware) sets the start of validity."""
    if not common_name:
        raise PkiError("the CA needs a non-empty common name")
    _check_validity(valid_for)
    start = _now(now)
    key = _generate_key(algorithm)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vaultd"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return CertifiedKey(_sign(builder, key), key)


def node_uri(node_id: int) -> str:
    """The SAN URI that names ``node_id``."""
    _check_node_id(node_id)
    return f"{NODE_URI_PREFIX}{node_id}"


def _check_node_id(node_id: object) -> None:
    if type(node_id) is not int or not 0 <= node_id <= _MAX_NODE_ID:
        raise PkiError(f"a node id must be an integer in [0, 2**64), got {node_id!r}")


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):
        raise PkiError("hosts must be a sequence of host names, not one string")
    names: list[x509.GeneralName] = []
    for host in hosts:
        if type(host) is not str or not host:
            raise PkiError(f"a host must be a non-empty string, got {host!r}")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_DNS_LABEL_RE.match(label) for label in labels):
            raise PkiError(f"{host!r} is neither an IP address nor a valid DNS name")
        names.append(x509.DNSName(host.rstrip(".").lower()))
    return names


def _issue_leaf(
    ca: CertifiedKey,
    common_name: str,
    san: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    algorithm: KeyAlgorithm | None,
    valid_for: dt.timedelta,
    now: dt.datetime | None,
) -> CertifiedKey:
    _check_validity(valid_for)
    start = _now(now)
    ca_cert = ca.certificate
    key = _generate_key(algorithm or _algorithm_of(ca.private_key))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vaultd"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        # A leaf never outlives the CA that vouches for it.
        .not_valid_after(min(start + valid_for, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    return CertifiedKey(_sign(builder, ca.private_key), key)


def issue_node_cert(
    ca: CertifiedKey,
    node_id: int,
    hosts: Sequence[str],
    *,
    algorithm: KeyAlgorithm | None = None,
    valid_for: dt.timedelta = DEFAULT_LEAF_VALIDITY,
    now: dt.datetime | None = None,
) -> CertifiedKey:
    """Issue a certificate for node ``node_id``, good for both ends of a TLS
    connection (server and client auth).  ``hosts`` are IP addresses or DNS
    names the node is reached at; they go into the subjectAltName next to the
    node URI.  The key algorithm defaults to the CA's."""
    _check_node_id(node_id)
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(node_id))]
    san += _host_names(hosts)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue_leaf(ca, f"node-{node_id}", san, usages, algorithm, valid_for, now)


def issue_client_cert(
    ca: CertifiedKey,
    name: str,
    *,
    algorithm: KeyAlgorithm | None = None,
    valid_for: dt.timedelta = DEFAULT_LEAF_VALIDITY,
    now: dt.datetime | None = None,
) -> CertifiedKey:
    """Issue a client-only certificate (``vaultd://client/<name>``) for an
    operator tool.  It cannot act as a TLS server and names no node, so no node
    accepts it as a peer."""
    if type(name) is not str or not _CLIENT_NAME_RE.match(name):
        raise PkiError(f"a client name must match {_CLIENT_NAME_RE.pattern}, got {name!r}")
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + name)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue_leaf(ca, f"client-{name}", san, usages, algorithm, valid_for, now)


# ------------------------------------------------------------ identity


def node_id_from_cert(cert: x509.Certificate) -> int:
    """The node id a certificate names.  Raises NotANodeCertificate unless the
    subjectAltName holds exactly one well-formed ``vaultd://node/<id>`` URI.

    This reads the certificate only: call it on a certificate that was
    verified (by the TLS handshake or :func:`verify_node_certificate`)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise NotANodeCertificate("the certificate has no subjectAltName") from None
    except ValueError as exc:  # cryptography refuses to parse a malformed extension
        raise NotANodeCertificate(f"unreadable certificate extensions: {exc}") from exc
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(NODE_URI_PREFIX)
    ]
    if len(uris) != 1:
        raise NotANodeCertificate(f"expected exactly one node URI, found {len(uris)}")
    match = _NODE_URI_RE.match(uris[0])
    if match is None:
        raise NotANodeCertificate(f"malformed node URI {uris[0]!r}")
    node_id = int(match.group(1))
    if node_id > _MAX_NODE_ID:
        raise NotANodeCertificate(f"node id {node_id} is out of range")
    return node_id


def node_id_from_der(der: bytes) -> int:
    """:func:`node_id_from_cert` for a DER certificate (what
    ``SSLObject.getpeercert(binary_form=True)`` returns)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise NotANodeCertificate(f"not a DER certificate: {exc}") from exc
    return node_id_from_cert(cert)


class TlsConnection(Protocol):
    """What :func:`peer_node_id` needs of a connection: ``ssl.SSLSocket``,
    ``ssl.SSLObject`` and ``trio.SSLStream`` all qualify."""

    @property
    def context(self) -> ssl.SSLContext: ...

    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...


def peer_node_id(conn: TlsConnection) -> int:
    """The node id of the peer of an established TLS connection.

    Refuses (NotANodeCertificate) unless the connection's context required and
    therefore verified the peer's certificate, so the id returned is vouched
    for by the CA the context trusts."""
    if conn.context.verify_mode != ssl.CERT_REQUIRED:
        raise NotANodeCertificate("the TLS context does not verify peer certificates")
    der = conn.getpeercert(binary_form=True)
    if der is None:
        raise NotANodeCertificate("the peer presented no certificate")
    return node_id_from_der(der)


def verify_node_certificate(
    cert: x509.Certificate, ca_cert: x509.Certificate, *, now: dt.datetime | None = None
) -> int:
    """Check that ``cert`` is a node certificate signed by ``ca_cert`` and that
    both are valid at ``now``; return its node id.  Raises CertificateRejected
    or NotANodeCertificate.

    This is the cluster's one-level chain checked by hand: cryptography's
    verifier implements the Web PKI profile, which forbids Ed25519."""
    at = _now(now)
    try:
        ca_bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise CertificateRejected(f"missing extension: {exc}") from exc
    except ValueError as exc:
        raise CertificateRejected(f"unreadable extension: {exc}") from exc
    if not ca_bc.ca:
        raise CertificateRejected("the issuer is not a CA certificate")
    if bc.ca:
        raise CertificateRejected("a CA certificate cannot identify a node")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateRejected(f"not issued by the cluster CA: {exc}") from exc
    for c, what in ((ca_cert, "CA"), (cert, "node")):
        if not c.not_valid_before_utc <= at <= c.not_valid_after_utc:
            raise CertificateRejected(f"the {what} certificate is not valid at {at.isoformat()}")
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages):
        raise NotANodeCertificate("a node certificate must allow server and client auth")
    return node_id_from_cert(cert)


# ------------------------------------------------------------ files


def _pem_bytes(obj: x509.Certificate | PrivateKey, password: bytes | None) -> tuple[bytes, int]:
    if isinstance(obj, x509.Certificate):
        if password is not None:
            raise PkiError("certificates are public: they take no password")
        return obj.public_bytes(serialization.Encoding.PEM), 0o644
    if isinstance(obj, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        encryption: serialization.KeySerializationEncryption = (
            serialization.NoEncryption()
            if password is None
            else serialization.BestAvailableEncryption(password)
        )
        data = obj.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        return data, 0o600
    raise PkiError(f"cannot write a {type(obj).__name__} as PEM")


def write_pem(
    path: str | os.PathLike[str],
    obj: x509.Certificate | PrivateKey,
    *,
    password: bytes | None = None,
) -> Path:
    """Write a certificate (mode 0644) or a private key (mode 0600, PKCS#8,
    encrypted when ``password`` is given) to a new file.

    The file is created with its final mode in the same call that creates it
    and must not exist yet (PemFileError otherwise).  Data is fsynced before
    returning; a partly written file is removed."""
    data, mode = _pem_bytes(obj, password)
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, mode)
    except OSError as exc:
        raise PemFileError(f"cannot create {target}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise PemFileError(f"cannot write {target}: {exc.strerror}") from exc
    return target


def write_tls_files(
    directory: str | os.PathLike[str],
    ca_cert: x509.Certificate,
    credentials: CertifiedKey,
    *,
    name: str = "node",
    password: bytes | None = None,
) -> TlsFiles:
    """Write ``ca.pem``, ``<name>.pem`` and ``<name>.key`` (0600) into an
    existing directory; none of them may exist yet."""
    d = Path(directory)
    files = TlsFiles(ca_cert=d / "ca.pem", cert=d / f"{name}.pem", key=d / f"{name}.key")
    write_pem(files.ca_cert, ca_cert)
    write_pem(files.cert, credentials.certificate)
    write_pem(files.key, credentials.private_key, password=password)
    return files


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise PemFileError(f"cannot read {path}: {exc.strerror}") from exc


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load the first certificate of a PEM file."""
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as exc:
        raise PemFileError(f"{path} holds no PEM certificate: {exc}") from exc


def load_private_key(
    path: str | os.PathLike[str],
    *,
    password: bytes | None = None,
    require_private_mode: bool = True,
) -> PrivateKey:
    """Load an Ed25519 or ECDSA P-256 private key from a PEM file.

    With ``require_private_mode`` (the default) a file that group or others may
    access raises InsecureKeyFile, as ssh does, so a key copied carelessly is
    noticed before it is used."""
    if require_private_mode:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise PemFileError(f"cannot read {path}: {exc.strerror}") from exc
        if mode & 0o077:
            raise InsecureKeyFile(f"{path} has mode {mode & 0o777:o}; it must be 0600 or stricter")
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PemFileError(f"{path}: cannot load the private key: {exc}") from exc
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise PemFileError(f"{path}: only Ed25519 and ECDSA P-256 keys are supported")


def load_certified_key(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    password: bytes | None = None,
) -> CertifiedKey:
    """Load a certificate and its private key; PemFileError if they do not belong together."""
    cert = load_certificate(cert_path)
    key = load_private_key(key_path, password=password)
    if cert.public_key() != key.public_key():
        raise PemFileError(f"{key_path} is not the key of the certificate in {cert_path}")
    return CertifiedKey(cert, key)


# ------------------------------------------------------------ TLS


def _context(server_side: bool, files: TlsFiles, password: bytes | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        # Only the cluster CA: never the system trust store.
        ctx.load_verify_locations(cafile=os.fspath(files.ca_cert))
        ctx.load_cert_chain(os.fspath(files.cert), os.fspath(files.key), password=password)
    except (OSError, ssl.SSLError) as exc:
        raise PemFileError(f"cannot load TLS material {files}: {exc}") from exc
    return ctx


def server_ssl_context(files: TlsFiles, *, password: bytes | None = None) -> ssl.SSLContext:
    """A TLS 1.3 server context that demands a client certificate from the
    cluster CA (mutual TLS).  The caller learns who connected with
    :func:`peer_node_id`."""
    load_private_key(files.key, password=password)  # refuse a world-readable key early
    ctx = _context(True, files, password)
    # Nodes never resume sessions; tickets would only cost bytes and CPU.
    ctx.num_tickets = 0
    return ctx


def client_ssl_context(files: TlsFiles, *, password: bytes | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context that presents our certificate and verifies the
    server's against the cluster CA.

    Host name checking is off: a node is identified by the node id in its
    certificate, not by the address it was reached at, so the caller must check
    :func:`peer_node_id` against the node it meant to reach (raft.transport
    does)."""
    load_private_key(files.key, password=password)
    ctx = _context(False, files, password)
    ctx.check_hostname = False
    return ctx

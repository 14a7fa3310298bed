"""Node and client configuration: TOML files read with :mod:`tomllib`, checked strictly.

Every key is known: an unknown section or key, a value of the wrong type or
out of range, a malformed address or a duplicate node raises
:class:`vaultd.errors.ConfigError` naming the file and the dotted key.
Relative paths are resolved against the directory holding the file, so a
cluster directory written by ``vaultd init`` can be moved as a whole.

A TLS path of the form ``credential:NAME`` names a systemd credential
(``LoadCredential=NAME:...``) and resolves to ``$CREDENTIALS_DIRECTORY/NAME``.

Node file layout (see docs/operations.md for every key)::

    [node]
    id = 1
    data_dir = "data/node-1"
    peer_listen = "127.0.0.1:7001"
    client_listen = "127.0.0.1:7002"

    [tls]
    ca = "tls/ca.pem"
    cert = "tls/node-1.pem"
    key = "tls/node-1.key"

    [[peers]]
    id = 2
    peer = "127.0.0.1:7003"
    client = "127.0.0.1:7004"

    [raft]      # optional: timing and durability
    [service]   # optional: client-port limits
    [log]       # optional: level
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from .errors import ConfigError

__all__ = [
    "LOG_LEVELS",
    "Address",
    "ClientConfig",
    "NodeConfig",
    "NodeEntry",
    "RaftSettings",
    "ServiceSettings",
    "TlsPaths",
    "format_address",
    "load_client_config",
    "load_node_config",
    "parse_address",
    "parse_client_config",
    "parse_node_config",
    "render_client_config",
    "render_node_config",
]

Address = tuple[str, int]
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_MAX_NODE_ID: Final = 2**63 - 1
_CREDENTIAL_PREFIX: Final = "credential:"
T = TypeVar("T")


def parse_address(text: str) -> Address:
    """Parse ``host:port`` (IPv6 hosts in brackets: ``[::1]:7001``).  Raises ValueError."""
    if not isinstance(text, str) or not text:
        raise ValueError("expected 'host:port'")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"{text!r} is not '[ipv6]:port'")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not 'host:port'")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 hosts in brackets, e.g. '[::1]:7001'")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not in 1..65535")
    if any(c.isspace() for c in host):
        raise ValueError(f"host {host!r} contains whitespace")
    return host, int(port_text)


def format_address(address: Address) -> str:
    """The inverse of :func:`parse_address`."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class TlsPaths:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """Another member of the cluster: its id, peer address and client address."""

    id: int
    peer: Address
    client: Address


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """Timing and durability.  Ticks are ``tick_ms`` long; an election starts after
    ``election_ticks`` to ``2 * election_ticks`` ticks without a leader."""

    tick_ms: int = 20
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    fsync: bool = True
    snapshot_entries: int = 10000
    proposal_timeout_ms: int = 5000


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Client-port limits."""

    max_request_bytes: int = 1 << 20
    max_inflight_per_connection: int = 1024
    max_connections: int = 1024
    request_timeout_ms: int = 5000
    idle_timeout_ms: int = 300_000


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node needs to run; see the module docstring for the file layout."""

    id: int
    data_dir: Path
    peer_listen: Address
    client_listen: Address
    tls: TlsPaths
    peers: tuple[NodeEntry, ...] = ()
    raft: RaftSettings = field(default_factory=RaftSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    log_level: str = "info"
    source: Path | None = None

    def peer_addresses(self) -> dict[int, Address]:
        """Peer addresses of the other nodes, by node id."""
        return {p.id: p.peer for p in self.peers}

    def client_addresses(self) -> dict[int, Address]:
        """Client addresses of every node named in the file, this one included."""
        out = {p.id: p.client for p in self.peers}
        out[self.id] = self.client_listen
        return out


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What the admin client needs: TLS material and where the nodes' client ports are."""

    tls: TlsPaths
    nodes: tuple[tuple[int, Address], ...]
    timeout_ms: int = 5000
    source: Path | None = None


# ---------------------------------------------------------------- checking


class _Section:
    """Typed, tracked access to one TOML table: every key read is remembered so that
    :meth:`done` can reject the ones nobody asked for."""

    def __init__(self, table: Mapping[str, Any], prefix: str, path: str | None) -> None:
        self._table = table
        self._prefix = prefix
        self._path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, key=self.key(name), path=self._path)

    def _get(self, name: str, required: bool) -> Any:
        self._seen.add(name)
        if name not in self._table:
            if required:
                raise self.error(name, "is required")
            return None
        return self._table[name]

    def integer(
        self, name: str, default: int | None = None, *, lo: int = 0, hi: int = _MAX_NODE_ID
    ) -> int:
        v = self._get(name, default is None)
        if v is None:
            assert default is not None
            return default
        if type(v) is not int:
            raise self.error(name, f"must be an integer, not {_kind(v)}")
        if not lo <= v <= hi:
            raise self.error(name, f"must be in {lo}..{hi}, got {v}")
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self._get(name, False)
        if v is None:
            return default
        if type(v) is not bool:
            raise self.error(name, f"must be true or false, not {_kind(v)}")
        return v

    def string(self, name: str, default: str | None = None) -> str:
        v = self._get(name, default is None)
        if v is None:
            assert default is not None
            return default
        if type(v) is not str:
            raise self.error(name, f"must be a string, not {_kind(v)}")
        if not v:
            raise self.error(name, "must not be empty")
        return v

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.string(name, default)
        if v not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}; got {v!r}")
        return v

    def address(self, name: str) -> Address:
        text = self.string(name)
        try:
            return parse_address(text)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def path(self, name: str, base: Path, *, credential_ok: bool = False) -> Path:
        text = self.string(name)
        if "\x00" in text:
            raise self.error(name, "must not contain NUL")
        if text.startswith(_CREDENTIAL_PREFIX):
            if not credential_ok:
                raise self.error(name, "systemd credentials are allowed for TLS files only")
            cred = text[len(_CREDENTIAL_PREFIX) :]
            if not cred or "/" in cred or cred in (".", ".."):
                raise self.error(name, f"bad credential name {cred!r}")
            cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
            if not cred_dir:
                raise self.error(
                    name,
                    f"names credential {cred!r} but $CREDENTIALS_DIRECTORY is not set "
                    "(use LoadCredential= in the unit)",
                )
            return Path(cred_dir) / cred
        p = Path(text).expanduser()
        return p if p.is_absolute() else base / p

    def table(self, name: str, *, required: bool) -> _Section | None:
        v = self._get(name, required)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.error(name, f"must be a table, not {_kind(v)}")
        return _Section(v, f"{self.key(name)}.", self._path)

    def tables(self, name: str) -> list[_Section]:
        v = self._get(name, False)
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
            raise self.error(name, f"must be an array of tables ([[{name}]]), not {_kind(v)}")
        return [_Section(t, f"{self.key(name)}[{i}].", self._path) for i, t in enumerate(v)]

    def done(self) -> None:
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind(v: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _optional(section: _Section | None, read: Callable[[_Section], T], default: T) -> T:
    if section is None:
        return default
    value = read(section)
    section.done()
    return value


def _read_toml(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(p)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 at byte {exc.start}", path=str(p)) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(p)) from None
    return doc, p.resolve().parent


def _tls(s: _Section, base: Path) -> TlsPaths:
    return TlsPaths(
        ca=s.path("ca", base, credential_ok=True),
        cert=s.path("cert", base, credential_ok=True),
        key=s.path("key", base, credential_ok=True),
    )


def _raft(s: _Section) -> RaftSettings:
    d = RaftSettings()
    r = RaftSettings(
        tick_ms=s.integer("tick_ms", d.tick_ms, lo=1, hi=10_000),
        election_ticks=s.integer("election_ticks", d.election_ticks, lo=2, hi=10_000),
        heartbeat_ticks=s.integer("heartbeat_ticks", d.heartbeat_ticks, lo=1, hi=10_000),
        fsync=s.boolean("fsync", d.fsync),
        snapshot_entries=s.integer("snapshot_entries", d.snapshot_entries, lo=1, hi=1 << 40),
        proposal_timeout_ms=s.integer(
            "proposal_timeout_ms", d.proposal_timeout_ms, lo=1, hi=3_600_000
        ),
    )
    if r.heartbeat_ticks >= r.election_ticks:
        raise s.error("heartbeat_ticks", "must be smaller than raft.election_ticks")
    return r


def _service(s: _Section) -> ServiceSettings:
    d = ServiceSettings()
    return ServiceSettings(
        max_request_bytes=s.integer("max_request_bytes", d.max_request_bytes, lo=1024, hi=64 << 20),
        max_inflight_per_connection=s.integer(
            "max_inflight_per_connection", d.max_inflight_per_connection, lo=1, hi=1 << 16
        ),
        max_connections=s.integer("max_connections", d.max_connections, lo=1, hi=1 << 20),
        request_timeout_ms=s.integer(
            "request_timeout_ms", d.request_timeout_ms, lo=1, hi=3_600_000
        ),
        idle_timeout_ms=s.integer("idle_timeout_ms", d.idle_timeout_ms, lo=1, hi=86_400_000),
    )


def parse_node_config(
    doc: Mapping[str, Any], base: Path, *, source: Path | None = None
) -> NodeConfig:
    """Check a parsed TOML document; relative paths resolve against ``base``."""
    path = str(source) if source else None
    top = _Section(doc, "", path)
    node = top.table("node", required=True)
    assert node is not None
    node_id = node.integer("id", lo=1)
    data_dir = node.path("data_dir", base)
    peer_listen = node.address("peer_listen")
    client_listen = node.address("client_listen")
    node.done()
    if peer_listen == client_listen:
        raise ConfigError("must differ from node.peer_listen", key="node.client_listen", path=path)
    tls_section = top.table("tls", required=True)
    assert tls_section is not None
    tls = _tls(tls_section, base)
    tls_section.done()
    peers: list[NodeEntry] = []
    seen_ids = {node_id}
    for p in top.tables("peers"):
        entry = NodeEntry(
            id=p.integer("id", lo=1), peer=p.address("peer"), client=p.address("client")
        )
        p.done()
        if entry.id in seen_ids:
            raise p.error("id", f"node {entry.id} is listed twice (or is this node)")
        seen_ids.add(entry.id)
        peers.append(entry)
    raft = _optional(top.table("raft", required=False), _raft, RaftSettings())
    service = _optional(top.table("service", required=False), _service, ServiceSettings())
    log_level = _optional(
        top.table("log", required=False), lambda s: s.choice("level", "info", LOG_LEVELS), "info"
    )
    top.done()
    return NodeConfig(
        id=node_id,
        data_dir=data_dir,
        peer_listen=peer_listen,
        client_listen=client_listen,
        tls=tls,
        peers=tuple(peers),
        raft=raft,
        service=service,
        log_level=log_level,
        source=source,
    )


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and check a node's configuration file.  Raises ConfigError."""
    doc, base = _read_toml(path)
    return parse_node_config(doc, base, source=Path(path))


def parse_client_config(
    doc: Mapping[str, Any], base: Path, *, source: Path | None = None
) -> ClientConfig:
    """Check a parsed client TOML document (``[tls]``, ``[[nodes]]`` with ``id`` and
    ``address``, optional ``timeout_ms``)."""
    path = str(source) if source else None
    top = _Section(doc, "", path)
    tls_section = top.table("tls", required=True)
    assert tls_section is not None
    tls = _tls(tls_section, base)
    tls_section.done()
    nodes: list[tuple[int, Address]] = []
    for n in top.tables("nodes"):
        entry = (n.integer("id", lo=1), n.address("address"))
        n.done()
        if any(entry[0] == other for other, _ in nodes):
            raise n.error("id", f"node {entry[0]} is listed twice")
        nodes.append(entry)
    if not nodes:
        raise ConfigError("at least one [[nodes]] entry is required", key="nodes", path=path)
    timeout_ms = top.integer("timeout_ms", 5000, lo=1, hi=3_600_000)
    top.done()
    return ClientConfig(tls=tls, nodes=tuple(nodes), timeout_ms=timeout_ms, source=source)


def load_client_config(path: str | os.PathLike[str]) -> ClientConfig:
    """Read and check a client configuration file.  Raises ConfigError."""
    doc, base = _read_toml(path)
    return parse_client_config(doc, base, source=Path(path))


# ---------------------------------------------------------------- writing


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def render_node_config(cfg: NodeConfig, base: Path) -> str:
    """TOML text that :func:`load_node_config` reads back as ``cfg`` (paths under
    ``base`` are written relative to it)."""
    r, s = cfg.raft, cfg.service
    lines = [
        f"# vaultd node {cfg.id}.  Relative paths are relative to this file.",
        "[node]",
        f"id = {cfg.id}",
        f"data_dir = {_toml_str(_rel(cfg.data_dir, base))}",
        f"peer_listen = {_toml_str(format_address(cfg.peer_listen))}",
        f"client_listen = {_toml_str(format_address(cfg.client_listen))}",
        "",
        "[tls]",
        f"ca = {_toml_str(_rel(cfg.tls.ca, base))}",
        f"cert = {_toml_str(_rel(cfg.tls.cert, base))}",
        f"key = {_toml_str(_rel(cfg.tls.key, base))}",
        "",
    ]
    for p in cfg.peers:
        lines += [
            "[[peers]]",
            f"id = {p.id}",
            f"peer = {_toml_str(format_address(p.peer))}",
            f"client = {_toml_str(format_address(p.client))}",
            "",
        ]
    lines += [
        "[raft]",
        f"tick_ms = {r.tick_ms}",
        f"election_ticks = {r.election_ticks}",
        f"heartbeat_ticks = {r.heartbeat_ticks}",
        f"fsync = {'true' if r.fsync else 'false'}",
        f"snapshot_entries = {r.snapshot_entries}",
        f"proposal_timeout_ms = {r.proposal_timeout_ms}",
        "",
        "[service]",
        f"max_request_bytes = {s.max_request_bytes}",
        f"max_inflight_per_connection = {s.max_inflight_per_connection}",
        f"max_connections = {s.max_connections}",
        f"request_timeout_ms = {s.request_timeout_ms}",
        f"idle_timeout_ms = {s.idle_timeout_ms}",
        "",
        "[log]",
        f"level = {_toml_str(cfg.log_level)}",
        "",
    ]
    return "\n".join(lines)


def render_client_config(cfg: ClientConfig, base: Path) -> str:
    """TOML text that :func:`load_client_config` reads back as ``cfg``."""
    lines = [
        "# vaultd admin client.  Relative paths are relative to this file.",
        f"timeout_ms = {cfg.timeout_ms}",
        "",
        "[tls]",
        f"ca = {_toml_str(_rel(cfg.tls.ca, base))}",
        f"cert = {_toml_str(_rel(cfg.tls.cert, base))}",
        f"key = {_toml_str(_rel(cfg.tls.key, base))}",
        "",
    ]
    for node_id, address in cfg.nodes:
        lines += [
            "[[nodes]]",
            f"id = {node_id}",
            f"address = {_toml_str(format_address(address))}",
            "",
        ]
    return "\n".join(lines)

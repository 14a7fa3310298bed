"""vaultd.config: every kind of bad configuration is a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultd.config import (
    ClientConfig,
    NodeConfig,
    NodeEntry,
    RaftSettings,
    ServiceSettings,
    TlsPaths,
    format_address,
    load_client_config,
    load_node_config,
    parse_address,
    parse_client_config,
    parse_node_config,
    render_client_config,
    render_node_config,
)
from vaultd.errors import ConfigError

BASE = Path("/etc/vaultd")


def node_doc() -> dict[str, Any]:
    return {
        "node": {
            "id": 1,
            "data_dir": "data/node-1",
            "peer_listen": "127.0.0.1:7001",
            "client_listen": "127.0.0.1:7002",
        },
        "tls": {"ca": "tls/ca.pem", "cert": "tls/node-1.pem", "key": "tls/node-1.key"},
        "peers": [
            {"id": 2, "peer": "127.0.0.1:7003", "client": "127.0.0.1:7004"},
            {"id": 3, "peer": "[::1]:7005", "client": "host-3.example:7006"},
        ],
    }


def client_doc() -> dict[str, Any]:
    return {
        "tls": {"ca": "tls/ca.pem", "cert": "tls/admin.pem", "key": "tls/admin.key"},
        "nodes": [{"id": 1, "address": "127.0.0.1:7002"}, {"id": 2, "address": "127.0.0.1:7004"}],
    }


def test_minimal_node_config_gets_defaults_and_resolves_paths() -> None:
    cfg = parse_node_config(node_doc(), BASE)
    assert cfg.id == 1
    assert cfg.data_dir == BASE / "data/node-1"
    assert cfg.tls.key == BASE / "tls/node-1.key"
    assert cfg.peer_listen == ("127.0.0.1", 7001)
    assert cfg.peers[1] == NodeEntry(3, ("::1", 7005), ("host-3.example", 7006))
    assert cfg.raft == RaftSettings()
    assert cfg.service == ServiceSettings()
    assert cfg.log_level == "info"
    assert cfg.peer_addresses() == {2: ("127.0.0.1", 7003), 3: ("::1", 7005)}
    assert cfg.client_addresses()[1] == ("127.0.0.1", 7002)


def test_absolute_paths_are_kept() -> None:
    doc = node_doc()
    doc["node"]["data_dir"] = "/var/lib/vaultd/1"
    assert parse_node_config(doc, BASE).data_dir == Path("/var/lib/vaultd/1")


def test_optional_sections_are_read() -> None:
    doc = node_doc()
    doc["raft"] = {"tick_ms": 5, "election_ticks": 20, "heartbeat_ticks": 2, "fsync": False}
    doc["service"] = {"max_request_bytes": 4096, "request_timeout_ms": 100}
    doc["log"] = {"level": "debug"}
    cfg = parse_node_config(doc, BASE)
    assert cfg.raft.tick_ms == 5 and cfg.raft.election_ticks == 20 and not cfg.raft.fsync
    assert cfg.service.max_request_bytes == 4096 and cfg.service.request_timeout_ms == 100
    assert cfg.log_level == "debug"


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target: Any = doc
    for p in parts[:-1]:
        target = target[int(p)] if isinstance(target, list) else target.setdefault(p, {})
    if isinstance(target, list):
        target[int(parts[-1])] = value
    else:
        target[parts[-1]] = value


def _del(doc: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    target: Any = doc
    for p in parts[:-1]:
        target = target[p]
    del target[parts[-1]]


@pytest.mark.parametrize(
    ("key", "value", "named", "fragment"),
    [
        # unknown keys, at every level
        ("colour", "blue", "colour", "unknown key"),
        ("node.colour", 1, "node.colour", "unknown key"),
        ("tls.password", "x", "tls.password", "unknown key"),
        ("peers.0.weight", 1, "peers[0].weight", "unknown key"),
        ("raft.tick", 1, "raft.tick", "unknown key"),
        ("service.max_bytes", 1, "service.max_bytes", "unknown key"),
        ("log.file", "x", "log.file", "unknown key"),
        # wrong types
        ("node.id", "1", "node.id", "must be an integer, not a string"),
        ("node.id", True, "node.id", "must be an integer, not a boolean"),
        ("node.id", 1.0, "node.id", "must be an integer, not a float"),
        ("node.data_dir", 3, "node.data_dir", "must be a string"),
        ("node.peer_listen", ["127.0.0.1", 1], "node.peer_listen", "must be a string"),
        ("raft.fsync", "yes", "raft.fsync", "must be true or false"),
        ("raft", 5, "raft", "must be a table"),
        ("node", [], "node", "must be a table"),
        ("peers", {"id": 2}, "peers", "array of tables"),
        ("peers", [1, 2], "peers", "array of tables"),
        # out of range
        ("node.id", 0, "node.id", "must be in 1.."),
        ("node.id", -4, "node.id", "must be in 1.."),
        ("node.id", 2**63, "node.id", "must be in 1.."),
        ("raft.tick_ms", 0, "raft.tick_ms", "must be in 1.."),
        ("raft.election_ticks", 1, "raft.election_ticks", "must be in 2.."),
        ("service.max_request_bytes", 10, "service.max_request_bytes", "must be in 1024.."),
        ("service.max_inflight_per_connection", 0, "service.max_inflight_per_connection", "in 1"),
        # bad values
        ("node.data_dir", "", "node.data_dir", "must not be empty"),
        ("node.data_dir", "a\x00b", "node.data_dir", "NUL"),
        ("log.level", "loud", "log.level", "must be one of"),
        ("node.peer_listen", "127.0.0.1", "node.peer_listen", "not 'host:port'"),
        ("node.peer_listen", "127.0.0.1:0", "node.peer_listen", "not in 1..65535"),
        ("node.peer_listen", "127.0.0.1:70000", "node.peer_listen", "not in 1..65535"),
        ("node.peer_listen", "127.0.0.1:http", "node.peer_listen", "not in 1..65535"),
        ("node.peer_listen", "::1:7001", "node.peer_listen", "in brackets"),
        ("node.peer_listen", "[zz]:7001", "node.peer_listen", "not an IPv6 address"),
        ("node.peer_listen", ":7001", "node.peer_listen", "not 'host:port'"),
        ("node.client_listen", "127.0.0.1:7001", "node.client_listen", "must differ"),
        ("raft.heartbeat_ticks", 10, "raft.heartbeat_ticks", "smaller than raft.election_ticks"),
        ("peers.0.id", 1, "peers[0].id", "listed twice"),
        ("peers.1.id", 2, "peers[1].id", "listed twice"),
        ("tls.key", "credential:", "tls.key", "bad credential name"),
        ("tls.key", "credential:a/b", "tls.key", "bad credential name"),
        ("node.data_dir", "credential:x", "node.data_dir", "TLS files only"),
    ],
)
def test_bad_node_config_names_the_key(key: str, value: Any, named: str, fragment: str) -> None:
    doc = node_doc()
    _set(doc, key, value)
    with pytest.raises(ConfigError) as info:
        parse_node_config(doc, BASE, source=Path("/etc/vaultd/node.toml"))
    assert info.value.key == named
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"/etc/vaultd/node.toml: {named}: ")


@pytest.mark.parametrize(
    "key",
    ["node", "tls", "node.id", "node.data_dir", "node.peer_listen", "node.client_listen",
     "tls.ca", "tls.cert", "tls.key", "peers.0.id", "peers.0.peer", "peers.0.client"],
)  # fmt: skip
def test_missing_required_key(key: str) -> None:
    doc = node_doc()
    if key.startswith("peers.0."):
        del doc["peers"][0][key.rsplit(".", 1)[1]]
        named = "peers[0]." + key.rsplit(".", 1)[1]
    else:
        _del(doc, key)
        named = key
    with pytest.raises(ConfigError, match="is required") as info:
        parse_node_config(doc, BASE)
    assert info.value.key == named


def test_credential_paths_need_the_credentials_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = node_doc()
    doc["tls"]["key"] = "credential:node.key"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY") as info:
        parse_node_config(doc, BASE)
    assert info.value.key == "tls.key"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/vaultd@1.service")
    cfg = parse_node_config(doc, BASE)
    assert cfg.tls.key == Path("/run/credentials/vaultd@1.service/node.key")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_node_config(tmp_path / "missing.toml")
    assert info.value.key == ""
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_node_config(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[node]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8 at byte"):
        load_node_config(latin)
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path)


def test_node_config_round_trips_through_render(tmp_path: Path) -> None:
    cfg = NodeConfig(
        id=7,
        data_dir=tmp_path / "data" / "n7",
        peer_listen=("127.0.0.1", 9001),
        client_listen=("::1", 9002),
        tls=TlsPaths(tmp_path / "ca.pem", tmp_path / "n7.pem", Path("/abs/n7.key")),
        peers=(NodeEntry(8, ("h8", 9003), ("h8", 9004)),),
        raft=RaftSettings(tick_ms=7, election_ticks=9, heartbeat_ticks=2, fsync=False),
        service=ServiceSettings(max_request_bytes=2048),
        log_level="warning",
    )
    path = tmp_path / "n7.toml"
    path.write_text(render_node_config(cfg, tmp_path))
    back = load_node_config(path)
    assert back == NodeConfig(**{**_fields(cfg), "source": path})
    assert 'data_dir = "data/n7"' in path.read_text()


def _fields(cfg: NodeConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in NodeConfig.__slots__}


def test_client_config(tmp_path: Path) -> None:
    cfg = parse_client_config(client_doc(), BASE)
    assert cfg.nodes == ((1, ("127.0.0.1", 7002)), (2, ("127.0.0.1", 7004)))
    assert cfg.timeout_ms == 5000
    assert cfg.tls.cert == BASE / "tls/admin.pem"
    rendered = ClientConfig(tls=cfg.tls, nodes=cfg.nodes, timeout_ms=250)
    path = tmp_path / "client.toml"
    path.write_text(render_client_config(rendered, tmp_path))
    back = load_client_config(path)
    assert (back.tls, back.nodes, back.timeout_ms) == (cfg.tls, cfg.nodes, 250)


@pytest.mark.parametrize(
    ("key", "value", "named", "fragment"),
    [
        ("nodes", [], "nodes", "at least one"),
        ("nodes.0.id", 2, "nodes[1].id", "listed twice"),
        ("nodes.0.address", "nowhere", "nodes[0].address", "host:port"),
        ("nodes.0.extra", 1, "nodes[0].extra", "unknown key"),
        ("timeout_ms", 0, "timeout_ms", "must be in 1.."),
        ("timeout_ms", "5s", "timeout_ms", "must be an integer"),
        ("server", "x", "server", "unknown key"),
        ("tls.ca", 1, "tls.ca", "must be a string"),
    ],
)
def test_bad_client_config_names_the_key(key: str, value: Any, named: str, fragment: str) -> None:
    doc = client_doc()
    _set(doc, key, value)
    with pytest.raises(ConfigError) as info:
        parse_client_config(doc, BASE)
    assert info.value.key == named
    assert fragment in str(info.value)


def test_client_config_needs_tls() -> None:
    doc = client_doc()
    del doc["tls"]
    with pytest.raises(ConfigError, match="is required") as info:
        parse_client_config(doc, BASE)
    assert info.value.key == "tls"


@given(
    host=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    ),
    port=st.integers(1, 65535),
)
def test_addresses_round_trip(host: str, port: int) -> None:
    assert parse_address(format_address((host, port))) == (host, port)


@given(st.text(max_size=30))
def test_parse_address_only_raises_value_error(text: str) -> None:
    try:
        host, port = parse_address(text)
    except ValueError:
        return
    assert host and 0 < port < 65536

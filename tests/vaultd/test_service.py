"""vaultd.service and vaultd.admin_client over real TLS on loopback, with an in-memory backend."""

from __future__ import annotations

import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultd import pki
from vaultd.admin_client import AdminClient, open_connection
from vaultd.config import ClientConfig, TlsPaths
from vaultd.errors import (
    BadRequest,
    ConnectionFailed,
    NotLeader,
    ProtocolError,
    Rejected,
    RequestTooLarge,
)
from vaultd.kvstore import KVStore, Put, Result, encode_command
from vaultd.service import (
    FrameReader,
    Service,
    decode_request,
    decode_response,
    encode_frame,
    encode_request,
    encode_result,
)


@dataclass
class Pki:
    ca: pki.CertifiedKey
    server: pki.TlsFiles
    admin: TlsPaths
    other_ca_admin: TlsPaths


def _write(d: Path, name: str, ca: pki.CertifiedKey, cred: pki.CertifiedKey) -> TlsPaths:
    d.mkdir(exist_ok=True)
    if not (d / "ca.pem").exists():
        pki.write_pem(d / "ca.pem", ca.certificate)
    pki.write_pem(d / f"{name}.pem", cred.certificate)
    pki.write_pem(d / f"{name}.key", cred.private_key)
    return TlsPaths(d / "ca.pem", d / f"{name}.pem", d / f"{name}.key")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = pki.create_ca()
    server = _write(d / "a", "node-1", ca, pki.issue_node_cert(ca, 1, ["127.0.0.1"]))
    admin = _write(d / "a", "admin", ca, pki.issue_client_cert(ca, "admin"))
    other = pki.create_ca()
    other_admin = _write(d / "b", "admin", other, pki.issue_client_cert(other, "admin"))
    return Pki(ca, pki.TlsFiles(server.ca, server.cert, server.key), admin, other_admin)


class FakeBackend:
    """A single-node 'cluster': commands apply at once to a KVStore."""

    def __init__(self, leader_hint: tuple[int, str] | None = None) -> None:
        self.kv = KVStore()
        self.index = 0
        self.leader_hint = leader_hint
        self.members: list[tuple[str, int, Any]] = []
        self.groups: list[int] = []

    def _check_leader(self) -> None:
        if self.leader_hint is not None:
            raise NotLeader("not the leader", *self.leader_hint)

    async def propose(self, command: bytes) -> Result:
        self._check_leader()
        await trio.lowlevel.checkpoint()
        self.index += 1
        return self.kv.apply(self.index, command)

    max_group = 16

    def group_limits(self) -> tuple[int, int]:
        return self.max_group, 1 << 20

    def submit_many(self, commands: list[bytes], done: Any) -> None:
        assert 0 < len(commands) <= self.max_group
        self.groups.append(len(commands))
        if self.leader_hint is not None:
            done(None, NotLeader("not the leader", *self.leader_hint))
            return
        results = []
        for command in commands:
            self.index += 1
            results.append(self.kv.apply(self.index, command))
        done(results, None)

    async def read(self, query: bytes) -> Result:
        self._check_leader()
        return self.kv.query(query)

    def status(self) -> dict[str, Any]:
        return {"id": 1, "role": "leader", "term": 1, "commit": self.index}

    async def add_member(self, node: int, peer: tuple[str, int], client: tuple[str, int]) -> Any:
        self.members.append(("add", node, (peer, client)))
        return {"index": 7}

    async def promote_member(self, node: int) -> Any:
        raise Rejected(f"learner {node} has not caught up yet")

    async def remove_member(self, node: int) -> Any:
        self.members.append(("remove", node, None))
        return {"index": 8}

    async def transfer_leadership(self, target: int | None) -> Any:
        return {"leader": target}


async def _start(
    nursery: trio.Nursery, backend: FakeBackend, material: Pki, **kw: Any
) -> tuple[Service, int]:
    svc = Service(backend, pki.server_ssl_context(material.server), ("127.0.0.1", 0), **kw)
    port = await nursery.start(svc.run)
    return svc, port


def _client_cfg(material: Pki, *ports: int, tls: TlsPaths | None = None) -> ClientConfig:
    return ClientConfig(
        tls=tls or material.admin,
        nodes=tuple((i + 1, ("127.0.0.1", p)) for i, p in enumerate(ports)),
        timeout_ms=3000,
    )


@pytest.fixture
async def served(material: Pki) -> AsyncIterator[tuple[Service, int, FakeBackend]]:
    backend = FakeBackend()
    async with trio.open_nursery() as nursery:
        svc, port = await _start(nursery, backend, material, max_request_bytes=4096)
        yield svc, port, backend
        nursery.cancel_scope.cancel()


def _ctx(material: Pki) -> ssl.SSLContext:
    a = material.admin
    return pki.client_ssl_context(pki.TlsFiles(a.ca, a.cert, a.key))


async def test_kv_operations_and_status(
    served: tuple[Service, int, FakeBackend], material: Pki
) -> None:
    _, port, backend = served
    async with AdminClient(_client_cfg(material, port)) as c:
        assert await c.call("kv.put", {"key": b"a", "value": b"1"}) is None
        assert await c.call("kv.get", {"key": b"a"}) == b"1"
        assert await c.call("kv.incr", {"key": b"n", "delta": 5}) == 5
        assert await c.call("kv.incr", {"key": b"n"}) == 6
        cas = await c.call("kv.cas", {"key": b"a", "expected": b"1", "new": None})
        assert cas == {"swapped": True, "current": None}
        assert (await c.call("status"))["commit"] == backend.index
        assert await c.call("members.add", {"node": 4, "peer": "h:1", "client": "h:2"}) == {
            "index": 7
        }
        assert backend.members[-1] == ("add", 4, (("h", 1), ("h", 2)))
        with pytest.raises(Rejected, match="caught up"):
            await c.call("members.promote", {"node": 4})
        assert await c.call("transfer", {"target": None}) == {"leader": None}
        statuses = await c.status_all()
        assert statuses[0].status is not None and statuses[0].status["role"] == "leader"


@pytest.mark.parametrize(
    ("op", "args", "fragment"),
    [
        ("kv.put", {"key": b"a"}, "missing argument 'value'"),
        ("kv.put", {"key": "a", "value": b""}, "'key' must be bytes"),
        ("kv.put", {"key": b"a", "value": b"", "ttl": 1}, "unknown argument 'ttl'"),
        ("kv.incr", {"key": b"a", "delta": "1"}, "'delta' must be int"),
        ("kv.incr", {"key": b"a", "delta": 2**63}, "64-bit"),
        ("kv.put", {"key": b"", "value": b""}, "1..4096 bytes"),
        ("members.add", {"node": 0, "peer": "h:1", "client": "h:2"}, "node must be"),
        ("members.add", {"node": 4, "peer": "h", "client": "h:2"}, "peer:"),
        ("members.remove", {}, "missing argument 'node'"),
        ("status", {"verbose": True}, "unknown argument"),
    ],
)
async def test_bad_arguments_are_typed_errors(
    served: tuple[Service, int, FakeBackend], material: Pki, op: str, args: Any, fragment: str
) -> None:
    _, port, _ = served
    async with open_connection(("127.0.0.1", port), _ctx(material)) as conn:
        with pytest.raises(BadRequest, match=fragment):
            await conn.call(op, args)
        # The connection survives a bad request.
        assert (await conn.call("status"))["role"] == "leader"


async def test_incr_of_text_is_a_typed_error(
    served: tuple[Service, int, FakeBackend], material: Pki
) -> None:
    _, port, _ = served
    async with open_connection(("127.0.0.1", port), _ctx(material)) as conn:
        await conn.call("kv.put", {"key": b"t", "value": b"text"})
        with pytest.raises(BadRequest, match="does not hold an integer"):
            await conn.call("kv.incr", {"key": b"t", "delta": 1})


async def test_pipelined_requests_on_one_connection(
    served: tuple[Service, int, FakeBackend], material: Pki
) -> None:
    _, port, _ = served
    results: list[int] = []
    async with open_connection(("127.0.0.1", port), _ctx(material)) as conn:

        async def one() -> None:
            results.append(await conn.call("kv.incr", {"key": b"c", "delta": 1}))

        async with trio.open_nursery() as n:
            for _ in range(300):
                n.start_soon(one)
        assert sorted(results) == list(range(1, 301))
        assert await conn.call("kv.get", {"key": b"c"}) == b"300"


async def test_pipelined_writes_go_to_the_backend_in_groups_and_each_is_answered(
    material: Pki,
) -> None:
    backend = FakeBackend()
    backend.kv.apply(1, encode_command(Put(b"text", b"abc")))
    backend.index = 1
    async with trio.open_nursery() as nursery:
        # Few slots per connection: the reader must stop, wait and resume.
        _, port = await _start(nursery, backend, material, max_inflight_per_connection=7)
        stream = await _raw(port, material)
        requests = []
        expected: dict[int, Any] = {}
        for i in range(200):
            if i % 50 == 17:
                requests.append(encode_request(i, "kv.incr", {"key": b"text", "delta": 1}))
                expected[i] = "bad_request"  # fails in the state machine
            elif i % 50 == 31:
                requests.append(encode_request(i, "kv.put", {"key": b"k", "value": 5}))
                expected[i] = "bad_request"  # refused before the backend
            elif i % 50 == 44:
                requests.append(encode_request(i, "kv.get", {"key": b"k%d" % (i - 1)}))
                expected[i] = "get"
            else:
                requests.append(encode_request(i, "kv.put", {"key": b"k%d" % i, "value": b"v"}))
                expected[i] = None
        await stream.send_all(b"".join(requests))
        answers = {}
        reader = FrameReader(1 << 20)
        with trio.fail_after(10):
            while len(answers) < len(requests):
                reader.feed(await stream.receive_some(65536))
                while (p := reader.next()) is not None:
                    rid, ok, body = decode_response(p)
                    assert rid not in answers
                    answers[rid] = (ok, body)
        for rid, want in expected.items():
            ok, body = answers[rid]
            if want == "bad_request":
                assert not ok and body["code"] == "bad_request", (rid, body)
            elif want == "get":
                assert ok and body in (None, b"v")
            else:
                assert ok and body is None
        assert max(backend.groups) > 1 and max(backend.groups) <= backend.max_group
        assert sum(backend.groups) == 200 - 4 - 4  # every write but the refused and the gets
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def _raw(port: int, material: Pki) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, _ctx(material), server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def _read_answers(stream: trio.SSLStream[trio.SocketStream]) -> list[tuple[int, bool, Any]]:
    reader = FrameReader(1 << 20)
    out = []
    with trio.move_on_after(5):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            reader.feed(data)
            while (p := reader.next()) is not None:
                out.append(decode_response(p))
    return out


async def test_malformed_frames_get_answers_and_keep_the_connection(
    served: tuple[Service, int, FakeBackend], material: Pki
) -> None:
    _, port, _ = served
    stream = await _raw(port, material)
    junk = [
        b"\xc1",  # not msgpack
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb({"id": -1, "op": "status", "args": {}}),  # bad id
        msgpack.packb({"id": 5, "op": "drop.tables", "args": {}}),  # unknown op, usable id
        msgpack.packb({"id": 6, "op": "status", "args": []}),  # args not a map
        msgpack.packb({"id": 7, "op": "status", "args": {}, "x": 1}),  # extra key
    ]
    data = b"".join(struct.pack(">I", len(j)) + j for j in junk)
    await stream.send_all(data + encode_request(9, "status", {}))
    answers: list[tuple[int, bool, Any]] = []
    reader = FrameReader(1 << 20)
    with trio.fail_after(5):
        while len(answers) < len(junk) + 1:
            reader.feed(await stream.receive_some(65536))
            while (p := reader.next()) is not None:
                answers.append(decode_response(p))
    by_id = {}
    for rid, ok, body in answers:
        by_id.setdefault(rid, []).append((ok, body))
    assert [ok for ok, _ in by_id[0]] == [False, False, False]
    assert all(body["code"] == "bad_request" for _, body in by_id[0])
    assert (
        by_id[5][0][1]["code"] == "bad_request" and "unknown operation" in by_id[5][0][1]["message"]
    )
    assert by_id[6][0][1]["code"] == "bad_request"
    assert by_id[7][0][1]["code"] == "bad_request"
    assert by_id[9] == [(True, {"id": 1, "role": "leader", "term": 1, "commit": 0})]
    await stream.aclose()


async def test_oversized_frame_is_answered_then_closed(
    served: tuple[Service, int, FakeBackend], material: Pki
) -> None:
    svc, port, _ = served
    stream = await _raw(port, material)
    await stream.send_all(struct.pack(">I", 1 << 30) + b"x" * 100)
    answers = await _read_answers(stream)
    assert len(answers) == 1
    rid, ok, body = answers[0]
    assert (rid, ok, body["code"]) == (0, False, "too_large")
    # The client library reports it as a typed error on the call that triggered it.
    async with open_connection(("127.0.0.1", port), _ctx(material)) as conn:
        with pytest.raises((RequestTooLarge, ConnectionFailed)):
            await conn.call("kv.put", {"key": b"k", "value": b"v" * 8192})
    async with AdminClient(_client_cfg(material, port)) as c:
        assert (await c.call("status"))["role"] == "leader"
    assert svc.stats.bad_frames >= 1


async def test_garbage_and_bad_handshakes_leave_the_service_up(
    served: tuple[Service, int, FakeBackend], material: Pki
) -> None:
    svc, port, _ = served
    # Plain TCP garbage where a TLS handshake should be.
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    await tcp.send_all(b"GET / HTTP/1.1\r\n\r\n" * 10)
    with trio.fail_after(5):
        while await tcp.receive_some(1024):
            pass
    await tcp.aclose()
    # A client certificate from another CA is refused during the handshake.
    with pytest.raises(ConnectionFailed):
        async with AdminClient(_client_cfg(material, port, tls=material.other_ca_admin)) as c:
            await c.call_node(("127.0.0.1", port), "status")
    # No client certificate at all.
    ctx = ssl.create_default_context(cafile=str(material.admin.ca))
    ctx.check_hostname = False
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1")
    with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
        await stream.do_handshake()
        await stream.send_all(encode_request(1, "status", {}))
        assert await stream.receive_some(100) == b""
        raise trio.BrokenResourceError("closed without an answer")
    await trio.aclose_forcefully(stream)
    async with AdminClient(_client_cfg(material, port)) as c:
        assert (await c.call("status"))["role"] == "leader"
    assert svc.stats.handshake_failures >= 2


async def test_client_follows_not_leader_to_the_leader(material: Pki) -> None:
    leader = FakeBackend()
    async with trio.open_nursery() as nursery:
        _, leader_port = await _start(nursery, leader, material)
        follower = FakeBackend(leader_hint=(2, f"127.0.0.1:{leader_port}"))
        _, follower_port = await _start(nursery, follower, material)
        async with AdminClient(_client_cfg(material, follower_port, leader_port)) as c:
            assert await c.call("kv.incr", {"key": b"x", "delta": 2}) == 2
        async with open_connection(("127.0.0.1", follower_port), _ctx(material)) as conn:
            with pytest.raises(NotLeader) as info:
                await conn.call("kv.get", {"key": b"x"})
            assert info.value.leader_id == 2
            assert info.value.leader_address == f"127.0.0.1:{leader_port}"
        nursery.cancel_scope.cancel()


async def test_shutting_down_service_answers_unavailable(
    served: tuple[Service, int, FakeBackend], material: Pki
) -> None:
    svc, port, _ = served
    svc.stop_accepting()
    async with open_connection(("127.0.0.1", port), _ctx(material)) as conn:
        with pytest.raises(Exception, match="shutting down") as info:
            await conn.call("status")
        assert type(info.value).__name__ == "Unavailable"


def test_service_refuses_a_context_without_client_auth(material: Pki) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ValueError, match="client certificates"):
        Service(FakeBackend(), ctx, ("127.0.0.1", 0))


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_decode_request_raises_only_protocol_error(data: bytes) -> None:
    try:
        req = decode_request(data)
    except ProtocolError:
        return
    assert decode_request(encode_frame({"id": req.id, "op": req.op, "args": req.args})[4:]) == req


@given(st.binary(max_size=200))
def test_decode_response_raises_only_protocol_error(data: bytes) -> None:
    try:
        rid, ok, _ = decode_response(data)
    except ProtocolError:
        return
    assert rid >= 0 and isinstance(ok, bool)


def test_frame_reader_splits_and_limits() -> None:
    r = FrameReader(16)
    frames = encode_frame({"a": 1}) + encode_frame({"b": 2})
    for byte in frames:
        r.feed(bytes([byte]))
    assert msgpack.unpackb(r.next()) == {"a": 1}
    assert msgpack.unpackb(r.next()) == {"b": 2}
    assert r.next() is None and r.buffered == 0
    r.feed(struct.pack(">I", 17))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        r.next()


@pytest.mark.parametrize("rid", [0, 1, 127, 128, 255, 256, 2**16, 2**32 - 1, 2**32, 2**64 - 1])
def test_the_shortcut_for_empty_results_encodes_what_the_general_encoder_does(rid: int) -> None:
    assert encode_result(rid, None) == encode_frame({"id": rid, "ok": True, "result": None})
    assert decode_response(encode_result(rid, None)[4:]) == (rid, True, None)

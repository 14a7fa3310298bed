"""raft.transport over real loopback sockets and mutual TLS.

Every wait is on an event (a memory channel or ``Transport.wait_stats``) under
``trio.fail_after``; nothing sleeps to let things happen.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from raft.codec import VERSION, encode_frames
from raft.errors import FrameTooLarge, MalformedMessage, TransportError
from raft.transport import Backoff, Transport, TransportStats
from raft.types import Entry, EntryKind, Message, MessageType
from vaultd.pki import (
    TlsFiles,
    client_ssl_context,
    create_ca,
    issue_node_cert,
    node_id_from_der,
    server_ssl_context,
    write_tls_files,
)

TIMEOUT = 15
FAST_BACKOFF = Backoff(base=0.01, cap=0.05)


@dataclass
class Contexts:
    files: TlsFiles
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Contexts]:
    """TLS material: nodes 1-5 from the cluster CA, an 'intruder' node 3 from
    another CA (which trusts the cluster CA), and an expired node 2."""
    root = tmp_path_factory.mktemp("pki")
    ca = create_ca()
    other = create_ca("another cluster")
    made: dict[str, Contexts] = {}

    def make(name: str, issuer: Any, node_id: int, **kw: Any) -> None:
        d = root / name
        d.mkdir()
        files = write_tls_files(
            d, ca.certificate, issue_node_cert(issuer, node_id, ["127.0.0.1"], **kw)
        )
        made[name] = Contexts(files, server_ssl_context(files), client_ssl_context(files))

    for i in range(1, 6):
        make(str(i), ca, i)
    make("intruder3", other, 3)
    make(
        "expired2",
        ca,
        2,
        valid_for=dt.timedelta(days=1),
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=10),
    )
    return made


class Node:
    """A transport plus what it received, stoppable and restartable."""

    def __init__(self, node_id: int, ctx: Contexts, **options: Any) -> None:
        self.id = node_id
        self.ctx = ctx
        self.options: dict[str, Any] = {
            "backoff": FAST_BACKOFF,
            "rng": random.Random(node_id),
            **options,
        }
        self.inbox_send, self.inbox = trio.open_memory_channel[list[Message]](math.inf)
        self.port = 0
        self.transport = self._make(0, {})
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    def _make(self, port: int, peers: dict[int, tuple[str, int]]) -> Transport:
        return Transport(
            self.id,
            peers,
            self.ctx.server,
            self.ctx.client,
            self.inbox_send.send,
            peer_identity=node_id_from_der,
            listen_port=port,
            **self.options,
        )

    @property
    def stats(self) -> TransportStats:
        return self.transport.stats

    async def start(self, nursery: trio.Nursery, *, port: int | None = None) -> None:
        if port is not None:  # a restart: a new transport, as a new process would have
            self.transport = self._make(port, self.transport.peers)
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self.port = await nursery.start(self._run)

    async def _run(self, task_status: trio.TaskStatus[int]) -> None:
        try:
            with self._scope:
                await self.transport.run(task_status=task_status)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        self._scope.cancel()
        await self._stopped.wait()

    async def receive(self, count: int) -> list[Message]:
        got: list[Message] = []
        while len(got) < count:
            got += await self.inbox.receive()
        assert len(got) == count, "received more messages than expected"
        return got

    async def wait(self, predicate: Callable[[TransportStats], bool]) -> None:
        await self.transport.wait_stats(predicate)


@asynccontextmanager
async def cluster(
    pki: dict[str, Contexts], ids: list[int], **options: Any
) -> AsyncIterator[tuple[trio.Nursery, dict[int, Node]]]:
    async with trio.open_nursery() as nursery:
        nodes = {i: Node(i, pki[str(i)], **options) for i in ids}
        for node in nodes.values():
            await node.start(nursery)
        table = {i: ("127.0.0.1", n.port) for i, n in nodes.items()}
        for node in nodes.values():
            node.transport.update_peers(table)
        yield nursery, nodes
        nursery.cancel_scope.cancel()


def msg(src: int, dst: int, n: int = 0, **kw: Any) -> Message:
    return Message(MessageType.HEARTBEAT, src=src, dst=dst, term=1, context=n, **kw)


def append(src: int, dst: int, n_entries: int, size: int = 100) -> Message:
    entries = [Entry(1, i + 1, EntryKind.NORMAL, bytes(size)) for i in range(n_entries)]
    return Message(MessageType.APPEND, src=src, dst=dst, term=1, entries=entries)


async def dead_port() -> int:
    """A loopback port nobody listens on (free at the time of the call)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    return port


async def raw_tls(port: int, ctx: Contexts) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    return trio.SSLStream(tcp, ctx.client, server_hostname="127.0.0.1")


async def closed_by_peer(stream: trio.abc.Stream) -> None:
    """Return once the other end has closed the connection; then close ours."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)


# ------------------------------------------------------------------ delivery


async def test_two_nodes_exchange_both_ways(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one, two = nodes[1], nodes[2]
            big = append(1, 2, 64)
            one.transport.send([big, msg(1, 2, 7)])
            assert await two.receive(2) == [big, msg(1, 2, 7)]
            reply = Message(MessageType.APPEND_RESP, src=2, dst=1, term=1, index=64)
            two.transport.send([reply])
            assert await one.receive(1) == [reply]
            assert one.transport.is_connected(2) and two.transport.is_connected(1)
            assert one.stats.messages_sent == 2 and two.stats.messages_received == 2
            assert two.stats.messages_sent == 1 and one.stats.messages_received == 1
            assert two.stats.connections_accepted == 1
            assert one.stats.bytes_sent == two.stats.bytes_received > 64 * 100
            assert one.stats.connections_rejected == two.stats.connections_rejected == 0


async def test_three_nodes_all_pairs(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2, 3]) as (_, nodes):
            for src in nodes.values():
                src.transport.send(
                    [msg(src.id, dst, src.id * 10 + dst) for dst in nodes if dst != src.id]
                )
            for dst in nodes.values():
                got = await dst.receive(2)
                assert sorted(m.src for m in got) == [s for s in nodes if s != dst.id]
                assert all(m.context == m.src * 10 + dst.id for m in got)


async def test_messages_waiting_for_a_peer_are_coalesced_into_one_write(
    pki: dict[str, Contexts],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one, two = nodes[1], nodes[2]
            one.transport.send([msg(1, 2, 0)])
            await two.receive(1)
            before = one.stats.frames_sent
            batch = [msg(1, 2, n) for n in range(1, 201)]
            for m in batch:  # one call each, all before the sender gets to run
                one.transport.send([m])
            assert await two.receive(200) == batch
            assert one.stats.frames_sent == before + 1


async def test_large_batches_are_split_into_frames_in_order(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2], max_frame_size=8192, queue_bytes_limit=1 << 20) as (
            _,
            nodes,
        ):
            one, two = nodes[1], nodes[2]
            batch = [append(1, 2, 10, size=200) for _ in range(30)]
            for i, m in enumerate(batch):
                m.commit = i
            one.transport.send(batch)
            assert await two.receive(30) == batch
            assert one.stats.frames_sent > 1
            assert two.stats.frames_received == one.stats.frames_sent


# ------------------------------------------------------------------ authentication


async def test_node_with_foreign_ca_cannot_connect(
    pki: dict[str, Contexts], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="raft.transport")
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (nursery, nodes):
            one, two = nodes[1], nodes[2]
            one.transport.add_peer(3, ("127.0.0.1", await dead_port()))
            intruder = Node(3, pki["intruder3"])
            await intruder.start(nursery)
            intruder.transport.add_peer(1, ("127.0.0.1", one.port))
            intruder.transport.send([msg(3, 1, 666)])
            await one.wait(lambda s: s.handshake_failures >= 1)
            assert one.stats.connections_rejected >= 1
            assert any("handshake" in r.getMessage() for r in caplog.records)
            # The server keeps serving the legitimate peer.
            two.transport.send([msg(2, 1, 5)])
            assert await one.receive(1) == [msg(2, 1, 5)]
            assert one.stats.messages_received == 1
            assert one.stats.connections_accepted == 1


async def test_expired_certificate_cannot_connect(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1]) as (_, nodes):
            one = nodes[1]
            one.transport.add_peer(2, ("127.0.0.1", await dead_port()))
            stream = await raw_tls(one.port, pki["expired2"])
            try:
                with pytest.raises(trio.BrokenResourceError):
                    await stream.do_handshake()
                    # TLS 1.3: the client hears of the refusal on its first read.
                    await stream.receive_some()
            finally:
                await trio.aclose_forcefully(stream)
            await one.wait(lambda s: s.handshake_failures >= 1)


async def test_certificate_of_node_2_claiming_src_3_is_rejected(
    pki: dict[str, Contexts], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="raft.transport")
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2, 3]) as (_, nodes):
            one = nodes[1]
            await nodes[2].stop()  # the impostor uses node 2's own certificate
            stream = await raw_tls(one.port, pki["2"])
            await stream.send_all(b"".join(encode_frames([msg(3, 1, 1)])))
            await closed_by_peer(stream)
            await one.wait(lambda s: s.identity_rejections >= 1)
            assert one.stats.messages_received == 0
            assert any("3->1" in r.getMessage() for r in caplog.records)
            nodes[3].transport.send([msg(3, 1, 2)])
            assert await one.receive(1) == [msg(3, 1, 2)]


async def test_misrouted_messages_are_rejected(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one = nodes[1]
            one.transport.add_peer(3, ("127.0.0.1", await dead_port()))
            stream = await raw_tls(one.port, pki["3"])
            await stream.send_all(b"".join(encode_frames([msg(3, 2, 1)])))
            await closed_by_peer(stream)
            await one.wait(lambda s: s.identity_rejections >= 1)
            assert one.stats.messages_received == 0


async def test_node_outside_the_peer_table_is_rejected(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one = nodes[1]
            stream = await raw_tls(one.port, pki["4"])
            await stream.send_all(b"".join(encode_frames([msg(4, 1, 1)])))
            await closed_by_peer(stream)
            await one.wait(lambda s: s.identity_rejections >= 1)
            assert one.stats.messages_received == 0
            assert one.stats.connections_accepted == 1  # node 2 only


async def test_dialling_the_wrong_node_is_refused(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 3]) as (_, nodes):
            one, three = nodes[1], nodes[3]
            # Misconfigured: node 2's address actually reaches node 3.
            one.transport.add_peer(2, ("127.0.0.1", three.port))
            one.transport.send([msg(1, 2, 1)])
            await one.wait(lambda s: s.connect_failures >= 1)
            assert not one.transport.is_connected(2)
            assert one.transport.queued(2) == 1  # kept for the real node 2
            assert three.stats.messages_received == 0


# ------------------------------------------------------------------ bad bytes


def frame_header(length: int, version: int = VERSION) -> bytes:
    return struct.pack(">IB", length, version)


GARBAGE = {
    "junk": b"this is not a frame at all, just text" * 3,
    "wrong-version": frame_header(1, VERSION + 1) + b"\x90",
    "oversized": frame_header(2**31) + bytes(100),
    "bad-msgpack": frame_header(4) + b"\xc1\xc1\xc1\xc1",
    "wrong-shape": frame_header(3) + b"\x91\x91\x01",
    "truncated": frame_header(1000) + bytes(10),
}


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_garbage_over_tls_closes_only_that_connection(
    pki: dict[str, Contexts], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="raft.transport")
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one, two = nodes[1], nodes[2]
            one.transport.add_peer(3, ("127.0.0.1", await dead_port()))
            two.transport.send([msg(2, 1, 1)])
            assert await one.receive(1) == [msg(2, 1, 1)]
            stream = await raw_tls(one.port, pki["3"])
            await stream.send_all(GARBAGE[name])
            if name == "truncated":
                await stream.aclose()  # end of stream inside the frame
            else:
                await closed_by_peer(stream)
            await one.wait(lambda s: s.protocol_errors >= 1)
            assert one.stats.connections_rejected == 1
            assert any("bad frame" in r.getMessage() for r in caplog.records)
            # The node's existing connection still delivers.
            two.transport.send([msg(2, 1, 2)])
            assert await one.receive(1) == [msg(2, 1, 2)]
            assert one.stats.messages_received == 2


async def test_junk_connections_in_a_peers_name_do_not_cut_its_working_one(
    pki: dict[str, Contexts],
) -> None:
    # Found by the e2e bad-frames test: connections made with a member's own
    # certificate used to replace that member's working connection at once, so
    # a burst of junk cut a leader off from its followers long enough to lose
    # its leadership.
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one, two = nodes[1], nodes[2]
            two.transport.send([msg(2, 1, 1)])
            assert await one.receive(1) == [msg(2, 1, 1)]
            for name in ("junk", "bad-msgpack", "oversized"):
                stream = await raw_tls(one.port, pki["2"])
                await stream.send_all(GARBAGE[name])
                await closed_by_peer(stream)
            await one.wait(lambda s: s.protocol_errors >= 3)
            two.transport.send([msg(2, 1, 2)])
            assert await one.receive(1) == [msg(2, 1, 2)]
            assert two.stats.disconnects == 0 and two.stats.connects == 1


async def test_idle_connections_in_a_peers_name_are_bounded_and_harmless(
    pki: dict[str, Contexts],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one, two = nodes[1], nodes[2]
            two.transport.send([msg(2, 1, 1)])
            assert await one.receive(1) == [msg(2, 1, 1)]
            idle = []
            for _ in range(3):
                stream = await raw_tls(one.port, pki["2"])
                await stream.do_handshake()
                idle.append(stream)
            await one.wait(lambda s: s.connections_accepted >= 4)
            # Two may wait unproven; the third pushed the oldest out.
            await closed_by_peer(idle[0])
            two.transport.send([msg(2, 1, 2)])
            assert await one.receive(1) == [msg(2, 1, 2)]
            assert two.stats.disconnects == 0
            for stream in idle[1:]:
                await stream.aclose()


async def test_a_new_connection_takes_over_once_it_delivers_a_message(
    pki: dict[str, Contexts],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one, two = nodes[1], nodes[2]
            two.transport.send([msg(2, 1, 1)])
            assert await one.receive(1) == [msg(2, 1, 1)]
            # Node 2 "restarted" and dials again: its first valid message makes
            # the new connection the one in use and closes the old one.
            stream = await raw_tls(one.port, pki["2"])
            await stream.send_all(b"".join(encode_frames([msg(2, 1, 2)])))
            assert await one.receive(1) == [msg(2, 1, 2)]
            two.transport.send([msg(2, 1, 3)])  # goes out on the old connection, now closed
            await two.wait(lambda s: s.disconnects >= 1)
            await stream.aclose()
            two.transport.send([msg(2, 1, 4)])
            got = await one.receive(1)
            if got == [msg(2, 1, 3)]:  # written before the close reached node 2
                got = await one.receive(1)
            assert got == [msg(2, 1, 4)]
            assert two.stats.connects == 2


async def test_plain_tcp_garbage_fails_the_handshake(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (_, nodes):
            one, two = nodes[1], nodes[2]
            tcp = await trio.open_tcp_stream("127.0.0.1", one.port)
            await tcp.send_all(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
            await closed_by_peer(tcp)
            await one.wait(lambda s: s.handshake_failures >= 1)
            two.transport.send([msg(2, 1, 1)])
            assert await one.receive(1) == [msg(2, 1, 1)]


async def test_silent_connection_times_out_in_the_handshake(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1], handshake_timeout=0.2) as (_, nodes):
            one = nodes[1]
            tcp = await trio.open_tcp_stream("127.0.0.1", one.port)
            await closed_by_peer(tcp)
            await one.wait(lambda s: s.handshake_failures >= 1)


async def test_pending_handshakes_are_bounded(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1], max_pending_handshakes=2) as (_, nodes):
            one = nodes[1]
            idle = [await trio.open_tcp_stream("127.0.0.1", one.port) for _ in range(2)]
            third = await trio.open_tcp_stream("127.0.0.1", one.port)
            await closed_by_peer(third)  # refused at once, while the first two still wait
            assert one.stats.handshake_failures == 1
            for tcp in idle:
                await tcp.aclose()
            await one.wait(lambda s: s.handshake_failures == 3)


# ------------------------------------------------------------------ failures and membership


async def test_reconnects_after_the_peer_restarts(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (nursery, nodes):
            one, two = nodes[1], nodes[2]
            one.transport.send([msg(1, 2, 1)])
            assert await two.receive(1) == [msg(1, 2, 1)]
            await two.stop()
            await one.wait(lambda s: s.disconnects >= 1)
            one.transport.send([msg(1, 2, 2)])  # waits in the queue while 2 is down
            await one.wait(lambda s: s.connect_failures >= 1)
            await two.start(nursery, port=two.port)
            assert await two.receive(1) == [msg(1, 2, 2)]
            assert one.stats.connects == 2
            two.transport.send([msg(2, 1, 3)])
            assert await one.receive(1) == [msg(2, 1, 3)]


async def test_bounded_queue_drops_oldest_while_the_peer_is_down(
    pki: dict[str, Contexts],
) -> None:
    with trio.fail_after(TIMEOUT):
        port = await dead_port()
        async with trio.open_nursery() as nursery:
            one = Node(1, pki["1"], queue_limit=10)
            await one.start(nursery)
            one.transport.add_peer(2, ("127.0.0.1", port))
            one.transport.send([msg(1, 2, n) for n in range(25)])
            assert one.transport.queued(2) == 10
            assert one.stats.messages_dropped == 15
            one.transport.send([msg(1, 9, 0)])
            assert one.stats.messages_unroutable == 1
            await one.wait(lambda s: s.connect_failures >= 2)  # still down, still bounded
            assert one.transport.queued(2) == 10
            # When the peer comes up it gets the newest ten, in order.
            two = Node(2, pki["2"])
            await two.start(nursery, port=port)
            two.transport.add_peer(1, ("127.0.0.1", one.port))
            assert [m.context for m in await two.receive(10)] == list(range(15, 25))
            nursery.cancel_scope.cancel()


async def test_queue_is_bounded_in_bytes_too(pki: dict[str, Contexts]) -> None:
    port = await dead_port()
    one = Node(1, pki["1"], max_frame_size=2000, queue_bytes_limit=2000)
    one.transport.add_peer(2, ("127.0.0.1", port))
    one.transport.send([msg(1, 2, n, chunk=bytes(500)) for n in range(10)])
    assert one.transport.queued(2) == 3
    assert one.stats.messages_dropped == 7


async def test_peer_table_changes_at_runtime(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (nursery, nodes):
            one, two = nodes[1], nodes[2]
            # Node 3 joins: it knows node 1 before node 1 knows it.
            three = Node(3, pki["3"], backoff=Backoff(base=0.3, cap=0.3))
            await three.start(nursery)
            three.transport.add_peer(1, ("127.0.0.1", one.port))
            three.transport.send([msg(3, 1, 1)])
            await one.wait(lambda s: s.identity_rejections >= 1)
            await three.wait(lambda s: s.disconnects >= 1)
            one.transport.add_peer(3, ("127.0.0.1", three.port))
            three.transport.send([msg(3, 1, 2)])
            assert await one.receive(1) == [msg(3, 1, 2)]
            one.transport.send([msg(1, 3, 3)])
            assert await three.receive(1) == [msg(1, 3, 3)]
            # Node 2 is removed: its connections are cut and messages to it unroutable.
            one.transport.remove_peer(2)
            assert 2 not in one.transport.peers
            await two.wait(lambda s: s.disconnects >= 1)
            one.transport.send([msg(1, 2, 4)])
            assert one.stats.messages_unroutable == 1
            # Node 2 moves to a new port; node 1 follows it.
            await two.stop()
            await two.start(nursery, port=0)
            one.transport.update_peers(
                {1: ("127.0.0.1", one.port), 2: ("127.0.0.1", two.port), 3: one.transport.peers[3]}
            )
            two.transport.add_peer(1, ("127.0.0.1", one.port))
            one.transport.send([msg(1, 2, 5)])
            assert await two.receive(1) == [msg(1, 2, 5)]


async def test_moving_a_connected_peer_redials(pki: dict[str, Contexts]) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster(pki, [1, 2]) as (nursery, nodes):
            one, two = nodes[1], nodes[2]
            one.transport.send([msg(1, 2, 1)])
            await two.receive(1)
            second = Node(2, pki["2"])
            await second.start(nursery)
            second.transport.add_peer(1, ("127.0.0.1", one.port))
            one.transport.add_peer(2, ("127.0.0.1", second.port))
            await one.wait(lambda s: s.connects >= 2)
            one.transport.send([msg(1, 2, 2)])
            assert await second.receive(1) == [msg(1, 2, 2)]


# ------------------------------------------------------------------ API contract


async def test_send_refuses_what_cannot_be_sent(pki: dict[str, Contexts]) -> None:
    one = Node(1, pki["1"], max_frame_size=1000)
    one.transport.add_peer(2, ("127.0.0.1", await dead_port()))
    with pytest.raises(TransportError, match="src"):
        one.transport.send([msg(1, 2), msg(3, 2)])
    with pytest.raises(FrameTooLarge):
        one.transport.send([msg(1, 2), msg(1, 2, chunk=bytes(2000))])
    bad = msg(1, 2)
    bad.term = -1
    with pytest.raises(MalformedMessage):
        one.transport.send([msg(1, 2), bad])
    assert one.transport.queued(2) == 0  # nothing of a refused batch is queued


@pytest.mark.parametrize(
    ("peers", "options"),
    [
        ({2: ("127.0.0.1", 0)}, {}),
        ({2: ("", 1)}, {}),
        ({2: ["127.0.0.1", 1]}, {}),
        ({-2: ("127.0.0.1", 1)}, {}),
        ({}, {"queue_limit": 0}),
        ({}, {"max_frame_size": 10_000, "queue_bytes_limit": 100}),
    ],
)
async def test_constructor_validates(
    pki: dict[str, Contexts], peers: dict[Any, Any], options: dict[str, Any]
) -> None:
    c = pki["1"]
    with pytest.raises(TransportError):
        Transport(1, peers, c.server, c.client, _discard, peer_identity=node_id_from_der, **options)


async def test_contexts_must_verify_peers(pki: dict[str, Contexts]) -> None:
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    c = pki["1"]
    with pytest.raises(TransportError, match="client_ctx"):
        Transport(1, {}, c.server, lax, _discard, peer_identity=node_id_from_der)


async def test_own_entry_in_the_peer_table_is_ignored(pki: dict[str, Contexts]) -> None:
    c = pki["1"]
    t = Transport(
        1,
        {1: ("127.0.0.1", 1), 2: ("127.0.0.1", 2)},
        c.server,
        c.client,
        _discard,
        peer_identity=node_id_from_der,
    )
    assert t.peers == {2: ("127.0.0.1", 2)}
    with pytest.raises(TransportError):
        t.add_peer(1, ("127.0.0.1", 1))
    with pytest.raises(TransportError, match="not running"):
        _ = t.listen_port


async def _discard(messages: list[Message]) -> None:
    del messages


@given(st.integers(0, 10_000), st.integers(0, 2**32))
def test_backoff_is_capped_exponential_with_jitter(attempt: int, seed: int) -> None:
    b = Backoff(base=0.05, cap=5.0)
    ceiling = min(5.0, 0.05 * 2.0 ** min(attempt, 64))
    delay = b.delay(attempt, random.Random(seed))
    assert ceiling / 2 <= delay <= ceiling
    assert delay == b.delay(attempt, random.Random(seed))  # the RNG decides, nothing else


@pytest.mark.parametrize(("base", "cap", "factor"), [(0, 1, 2), (2, 1, 2), (0.1, 1, 0.5)])
def test_backoff_validates(base: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap, factor)


def test_stats_as_dict() -> None:
    stats = TransportStats(frames_sent=3)
    d = stats.as_dict()
    assert d["frames_sent"] == 3 and set(d) >= {"messages_dropped", "connections_rejected"}

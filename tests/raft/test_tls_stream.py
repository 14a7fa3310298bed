"""raft.tls_stream.TLSStream over real loopback sockets, against itself and
against trio.SSLStream (what the admin client and other tools still use)."""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from raft.tls_stream import TLSStream
from vaultd.pki import (
    client_ssl_context,
    create_ca,
    issue_node_cert,
    server_ssl_context,
    write_tls_files,
)

TIMEOUT = 10


@dataclass
class Side:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Side]:
    root = tmp_path_factory.mktemp("tls")
    ca, other = create_ca(), create_ca("another cluster")
    made = {}
    for name, issuer in (("a", ca), ("b", ca), ("foreign", other)):
        d = root / name
        d.mkdir()
        files = write_tls_files(d, ca.certificate, issue_node_cert(issuer, 1, ["127.0.0.1"]))
        made[name] = Side(server_ssl_context(files), client_ssl_context(files))
    return made


Stream = TLSStream | trio.SSLStream[trio.SocketStream]


def wrap(kind: str, tcp: trio.SocketStream, ctx: ssl.SSLContext, *, server: bool) -> Stream:
    if kind == "ours":
        if server:
            return TLSStream.wrap(tcp, ctx, server_side=True)
        return TLSStream.wrap(tcp, ctx, server_hostname="127.0.0.1")
    if server:
        return trio.SSLStream(tcp, ctx, server_side=True)
    return trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1")


@asynccontextmanager
async def pair(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    server_kind: str = "ours",
    client_kind: str = "ours",
    handshake: bool = True,
) -> AsyncIterator[tuple[Stream, Stream]]:
    """A connected (server, client) pair over loopback."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client_tcp = await trio.open_tcp_stream("127.0.0.1", port)
    sock, _ = await listener.accept()
    listener.close()
    server = wrap(server_kind, trio.SocketStream(sock), server_ctx, server=True)
    client = wrap(client_kind, client_tcp, client_ctx, server=False)
    try:
        if handshake:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.do_handshake)
                nursery.start_soon(client.do_handshake)
        yield server, client
    finally:
        await trio.aclose_forcefully(server)
        await trio.aclose_forcefully(client)


async def receive_exactly(stream: Stream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = await stream.receive_some()
        assert data, "the stream ended early"
        got += data
    return bytes(got)


KINDS = [("ours", "ours"), ("ours", "trio"), ("trio", "ours")]


@pytest.mark.parametrize(("server_kind", "client_kind"), KINDS)
async def test_data_flows_both_ways_and_a_clean_close_reads_as_end_of_stream(
    tls: dict[str, Side], server_kind: str, client_kind: str
) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: many records, partial writes
    with trio.fail_after(TIMEOUT):
        async with pair(
            tls["a"].server, tls["b"].client, server_kind=server_kind, client_kind=client_kind
        ) as (server, client):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, payload)
                assert await receive_exactly(server, len(payload)) == payload
            await server.send_all(b"answer")
            assert await receive_exactly(client, 6) == b"answer"
            der = server.getpeercert(binary_form=True)
            assert isinstance(der, bytes) and der
            await client.aclose()
            assert await server.receive_some() == b""


async def test_a_certificate_from_another_ca_fails_the_handshake(tls: dict[str, Side]) -> None:
    with trio.fail_after(TIMEOUT):
        async with pair(tls["a"].server, tls["foreign"].client, handshake=False) as (s, c):
            results: list[BaseException] = []

            async def shake(stream: Stream) -> None:
                try:
                    await stream.do_handshake()
                    await stream.receive_some()  # TLS 1.3: the client learns on its first read
                except trio.BrokenResourceError as exc:
                    results.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(shake, s)
                nursery.start_soon(shake, c)
            assert results
            assert all(isinstance(r.__cause__, ssl.SSLError | OSError) for r in results)


async def test_one_sender_and_one_receiver_at_a_time(tls: dict[str, Side]) -> None:
    with trio.fail_after(TIMEOUT):
        async with pair(tls["a"].server, tls["b"].client) as (server, client):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.receive_some)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await server.receive_some()
                await client.send_all(b"x")
            with pytest.raises(ValueError):
                await server.receive_some(0)


async def test_closing_wakes_a_blocked_receiver_and_the_stream_stays_closed(
    tls: dict[str, Side],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with pair(tls["a"].server, tls["b"].client) as (server, client):
            caught: list[BaseException] = []

            async def blocked() -> None:
                try:
                    await server.receive_some()
                except trio.ClosedResourceError as exc:
                    caught.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked)
                await trio.testing.wait_all_tasks_blocked()
                await server.aclose()
            assert len(caught) == 1
            with pytest.raises(trio.ClosedResourceError):
                await server.send_all(b"x")
            with pytest.raises(trio.ClosedResourceError):
                await server.send_all(b"")
            with pytest.raises(trio.ClosedResourceError):
                await server.receive_some()
            await server.aclose()  # closing twice is fine
            assert await client.receive_some() == b""  # our close_notify arrived


async def test_a_reset_connection_is_a_broken_resource(tls: dict[str, Side]) -> None:
    with trio.fail_after(TIMEOUT):
        async with pair(tls["a"].server, tls["b"].client, client_kind="trio") as (server, client):
            assert isinstance(client, trio.SSLStream)
            # An abortive close (SO_LINGER 0) resets the connection.
            raw = client.transport_stream.socket
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()
            with pytest.raises(trio.BrokenResourceError):
                while True:
                    await server.receive_some()


async def test_a_failed_handshake_closes_in_order_despite_unread_input(
    tls: dict[str, Side],
) -> None:
    # Closing a socket with unread input makes the kernel send a reset, which
    # the other side sees as an error (and which can destroy data still in
    # flight on a real network).  TLSStream.aclose discards unread input first.
    with trio.fail_after(TIMEOUT):
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        sock, _ = await listener.accept()
        listener.close()
        server = TLSStream.wrap(trio.SocketStream(sock), tls["a"].server, server_side=True)
        await client.send_all(b"GET / HTTP/1.1\r\n\r\n" * 200)
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()
        await trio.testing.wait_all_tasks_blocked()
        await server.aclose()
        while data := await client.receive_some():
            assert not data.startswith(b"GET")
        await client.aclose()


@pytest.mark.parametrize("how", ["closed", "fd closed behind its back"])
async def test_a_socket_that_cannot_be_taken_over_is_a_broken_resource(
    tls: dict[str, Side], how: str
) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    tcp = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
    if how == "closed":
        await tcp.aclose()
    else:
        os.close(tcp.socket.fileno())
    with pytest.raises(trio.BrokenResourceError, match="cannot take over"):
        TLSStream.wrap(tcp, tls["b"].client, server_hostname="127.0.0.1")
    listener.close()


@pytest.mark.parametrize("op", ["send", "receive"])
async def test_operations_are_checkpoints(tls: dict[str, Side], op: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with pair(tls["a"].server, tls["b"].client) as (server, client):
            await client.send_all(b"ready")  # data waiting: receive need not block
            await trio.testing.wait_all_tasks_blocked()
            call: Callable[[], Awaitable[Any]] = (
                (lambda: server.send_all(b"x")) if op == "send" else server.receive_some
            )
            with trio.CancelScope() as scope:
                scope.cancel()
                await call()
            assert scope.cancelled_caught
            with trio.testing.assert_checkpoints():
                await call()

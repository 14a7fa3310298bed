"""A small trio client for the client protocol (see :mod:`vaultd.service`).

:class:`Connection` is one pipelined mutual-TLS connection to one node: any
number of tasks may :meth:`Connection.call` on it at once.  :class:`AdminClient`
knows every node of a cluster (from ``client.toml``), follows ``not_leader``
answers to the leader, and asks every node for its status in parallel.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from .config import Address, ClientConfig, format_address, parse_address
from .errors import (
    ConnectionFailed,
    NotLeader,
    ProtocolError,
    ServiceError,
    Unavailable,
    error_from_code,
)
from .pki import TlsFiles, client_ssl_context
from .service import FrameReader, decode_response, encode_request

__all__ = ["AdminClient", "Connection", "NodeStatus", "open_connection"]

_RECEIVE_SIZE: Final = 65536
_MAX_RESPONSE: Final = 64 << 20


class _Pending:
    """One request waiting for its answer."""

    __slots__ = ("body", "event", "ok")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ok: bool | None = None
        self.body: Any = None


class Connection:
    """One pipelined connection.  Use :func:`open_connection` to make one.

    Requests from any number of tasks are queued and written by one writer
    task, as many per ``send_all`` as are waiting, so a busy connection costs
    one TLS record and one system call per batch rather than per request."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], address: Address) -> None:
        self.address = address
        self._stream = stream
        self._next_id = 1
        self._waiting: dict[int, _Pending] = {}
        self._outbox: list[bytes] = []
        self._outbox_ready = trio.Event()
        self._sending = False
        self._broken: str | None = None

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def _failure(self) -> ConnectionFailed:
        return ConnectionFailed(f"{format_address(self.address)}: {self._broken or 'closed'}")

    async def call(self, op: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request and wait for its answer.  Raises the node's typed
        :class:`ServiceError`, or ConnectionFailed if the connection breaks."""
        if self._broken is not None:
            raise self._failure()
        rid = self._next_id
        self._next_id += 1
        pending = _Pending()
        self._waiting[rid] = pending
        try:
            data = encode_request(rid, op, args or {})
            if self._sending or len(self._waiting) > 1:
                # Others are in flight: let the writer batch this with theirs.
                self._outbox.append(data)
                self._outbox_ready.set()
            else:
                # A lone request: send it ourselves, saving the writer task's turn.
                self._sending = True
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail(f"send failed: {exc}")
                finally:
                    self._sending = False
                    if self._outbox:
                        self._outbox_ready.set()
            await pending.event.wait()
        finally:
            self._waiting.pop(rid, None)
        if pending.ok is None:
            raise self._failure()
        if pending.ok:
            return pending.body
        raise _error(pending.body)

    def _fail(self, why: str) -> None:
        if self._broken is None:
            self._broken = why
        for pending in self._waiting.values():
            pending.event.set()
        self._waiting.clear()
        self._outbox_ready.set()

    async def _write_loop(self) -> None:
        try:
            while self._broken is None:
                await self._outbox_ready.wait()
                self._outbox_ready = trio.Event()
                if not self._outbox or self._sending:
                    continue  # a caller is sending; it wakes us when done
                data = b"".join(self._outbox)
                self._outbox.clear()
                self._sending = True
                try:
                    await self._stream.send_all(data)
                finally:
                    self._sending = False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(f"send failed: {exc}")

    async def _read_loop(self) -> None:
        reader = FrameReader(_MAX_RESPONSE)
        try:
            while True:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    self._fail("closed by the node")
                    return
                reader.feed(data)
                while (payload := reader.next()) is not None:
                    rid, ok, body = decode_response(payload)
                    pending = self._waiting.pop(rid, None)
                    if pending is not None:
                        pending.ok, pending.body = ok, body
                        pending.event.set()
                    elif not ok:
                        # An answer to no request (id 0): the node refused the
                        # connection as a whole, e.g. an oversized frame.
                        self._fail(str(_error(body)))
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(f"connection lost: {exc}")
        except ProtocolError as exc:
            self._fail(f"bad response: {exc}")


def _error(body: Mapping[str, Any]) -> ServiceError:
    leader_id = body.get("leader_id")
    leader_address = body.get("leader_address")
    return error_from_code(
        str(body.get("code")),
        str(body.get("message")),
        leader_id=leader_id if type(leader_id) is int else None,
        leader_address=leader_address if type(leader_address) is str else None,
    )


@asynccontextmanager
async def open_connection(
    address: Address, ssl_context: ssl.SSLContext, *, connect_timeout: float = 5.0
) -> AsyncIterator[Connection]:
    """Connect to a node's client port; the connection closes when the block ends.
    Raises ConnectionFailed if the node cannot be reached or refuses the handshake."""
    host, port = address
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
            try:
                await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
        raise ConnectionFailed(f"cannot connect to {format_address(address)}: {exc}") from None
    conn = Connection(stream, address)
    # The nursery is entered by hand so that an exception from the caller's block
    # propagates as itself, not wrapped in an ExceptionGroup.
    manager = trio.open_nursery()
    nursery = await manager.__aenter__()
    try:
        nursery.start_soon(conn._read_loop)
        nursery.start_soon(conn._write_loop)
        yield conn
    finally:
        nursery.cancel_scope.cancel()
        try:
            await manager.__aexit__(None, None, None)
        finally:
            conn._fail("closed")
            await trio.aclose_forcefully(stream)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node's answer to ``status`` (``status`` is None if it did not answer)."""

    id: int
    address: Address
    status: dict[str, Any] | None
    error: str | None = None


class AdminClient:
    """Talks to a cluster described by a :class:`ClientConfig`.

    Use as ``async with AdminClient(cfg) as c:``; connections are opened on
    demand and kept for the life of the block."""

    def __init__(self, config: ClientConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self._ssl = ssl_context or client_ssl_context(
            TlsFiles(ca_cert=config.tls.ca, cert=config.tls.cert, key=config.tls.key)
        )
        self._timeout = config.timeout_ms / 1000
        self._conns: dict[Address, Connection] = {}
        self._nursery: trio.Nursery | None = None
        self._leader: Address | None = None

    async def __aenter__(self) -> AdminClient:
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # As in open_connection: the caller's exception must propagate unwrapped.
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        self._nursery = None
        await self._cm.__aexit__(None, None, None)

    async def _connection(self, address: Address) -> Connection:
        conn = self._conns.get(address)
        if conn is not None and not conn.broken:
            return conn
        if self._nursery is None:
            raise ConnectionFailed("the client is closed (use it inside 'async with')")
        conn = await self._nursery.start(self._hold, address)
        assert isinstance(conn, Connection)
        self._conns[address] = conn
        return conn

    async def _hold(
        self,
        address: Address,
        *,
        task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with open_connection(address, self._ssl, connect_timeout=self._timeout) as conn:
            task_status.started(conn)
            await trio.sleep_forever()

    def address_of(self, node_id: int) -> Address | None:
        for n, address in self.config.nodes:
            if n == node_id:
                return address
        return None

    async def call_node(
        self, address: Address, op: str, args: Mapping[str, Any] | None = None
    ) -> Any:
        """One request to one node, no redirects."""
        conn = await self._connection(address)
        return await conn.call(op, args)

    async def call(
        self, op: str, args: Mapping[str, Any] | None = None, *, deadline: float | None = None
    ) -> Any:
        """Send a request to the leader, following ``not_leader`` answers and trying
        other nodes when one is down, until ``deadline`` (trio clock; default:
        the configured timeout from now).  Raises the last error seen."""
        if deadline is None:
            deadline = trio.current_time() + self._timeout
        order = [a for _, a in self.config.nodes]
        queue = deque(order)
        if self._leader is not None:
            queue.appendleft(self._leader)
        rounds = 0
        last: Exception = ConnectionFailed("no node answered")
        while trio.current_time() < deadline:
            if not queue:
                # Every node said no (an election is probably under way): back off a little.
                rounds += 1
                await trio.sleep(min(0.02 * rounds, 0.2, max(0.0, deadline - trio.current_time())))
                queue.extend(order)
                continue
            address = queue.popleft()
            try:
                with trio.fail_after(max(0.0, deadline - trio.current_time())):
                    result = await self.call_node(address, op, args)
            except NotLeader as exc:
                last = exc
                hint = self._hint(exc)
                if hint is not None and hint != address:
                    queue.appendleft(hint)
                continue
            except (ConnectionFailed, Unavailable) as exc:
                last = exc
                if self._leader == address:
                    self._leader = None
                continue
            except trio.TooSlowError:
                break
            self._leader = address
            return result
        raise last

    def _hint(self, exc: NotLeader) -> Address | None:
        if exc.leader_address:
            try:
                return parse_address(exc.leader_address)
            except ValueError:
                pass
        if exc.leader_id is not None:
            return self.address_of(exc.leader_id)
        return None

    async def status_all(self, *, timeout: float | None = None) -> list[NodeStatus]:
        """Ask every configured node for its status at once; nodes that do not
        answer within ``timeout`` seconds are reported with ``status=None``."""
        limit = self._timeout if timeout is None else timeout
        results: dict[int, NodeStatus] = {}

        async def ask(node_id: int, address: Address) -> None:
            try:
                with trio.fail_after(limit):
                    st = await self.call_node(address, "status")
                if not isinstance(st, dict):
                    raise ProtocolError("status is not a map")
                results[node_id] = NodeStatus(node_id, address, st)
            except (ServiceError, ConnectionFailed, ProtocolError) as exc:
                results[node_id] = NodeStatus(node_id, address, None, str(exc))
            except trio.TooSlowError:
                results[node_id] = NodeStatus(node_id, address, None, "timed out")

        async with trio.open_nursery() as nursery:
            for node_id, address in self.config.nodes:
                nursery.start_soon(ask, node_id, address)
        return [results[n] for n, _ in self.config.nodes]

"""Node-to-node Raft transport: msgpack frames over mutual TLS, on trio.

Each node dials one outbound connection to every peer and only writes to it;
it receives on the connections its peers dialed to it.  Who is at the other end
is decided by the certificate alone: a TLS handshake against the cluster CA,
then the node id the certificate names (``peer_identity``).  Every message
that arrives must carry that id as ``src`` and ours as ``dst``.

Sending never blocks: :meth:`Transport.send` encodes each message at once and
appends it to its peer's bounded queue.  When a queue is full the *oldest*
message is dropped and counted (a newer heartbeat or append supersedes an older
one, and Raft retransmits whatever is missing), so a slow or dead peer costs at
most the queue's bound in memory.  The peer's sender task writes everything
waiting in one ``send_all``, split only where a frame would exceed the maximum
frame size.

Inbound, a malformed frame, an oversized one, a message from a node other than
the certificate's, or a failed handshake closes *that* connection, is logged
on the ``raft.transport`` logger and counted in :class:`TransportStats`; the
node keeps serving everyone else.  See docs/transport.md.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Final

import trio

from .codec import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    FrameDecoder,
    decode_payload,
    encode_message,
    frames_from_packed,
)
from .errors import CodecError, FrameTooLarge, PeerRejected, TransportError
from .tls_stream import TLSStream
from .types import Message, NodeId

__all__ = [
    "Backoff",
    "OnMessages",
    "PeerAddress",
    "PeerIdentity",
    "Transport",
    "TransportStats",
]

log: Final = logging.getLogger("raft.transport")

PeerAddress = tuple[str, int]
OnMessages = Callable[[list[Message]], Awaitable[None]]
"""Receives each batch of messages that arrived together from one peer.  It is
awaited before that connection is read further, which pushes back on a peer
that sends faster than the node consumes."""
PeerIdentity = Callable[[bytes], NodeId]
"""Maps a verified peer certificate (DER) to the node id it names; raises
ValueError if it names none (vaultd.pki.node_id_from_der does this)."""

_RECEIVE_SIZE: Final = 65536
#: inbound connections per peer that have not yet delivered a valid message;
#: beyond this the oldest is closed, so idle or junk connections stay bounded
_MAX_UNPROVEN_PER_PEER: Final = 2


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential reconnect delay with "equal jitter": attempt ``n``
    waits a uniformly random time in ``[d/2, d]`` where ``d = min(cap, base *
    factor**n)``.  Jitter keeps peers that lost a node together from
    reconnecting in lockstep; the lower half keeps a retry loop from spinning."""

    base: float = 0.05
    cap: float = 5.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap) or self.factor < 1:
            raise ValueError("Backoff needs 0 < base <= cap and factor >= 1")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based)."""
        ceiling = self.cap
        # Past ~64 doublings base*factor**n overflows a float; it is capped long before.
        if attempt < 64:
            ceiling = min(self.cap, self.base * self.factor**attempt)
        return ceiling / 2 + rng.random() * ceiling / 2


@dataclass(slots=True)
class TransportStats:
    """Counters since the transport was created (for tests and metrics)."""

    frames_sent: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    #: discarded before reaching the wire: queue full, peer removed, or the
    #: connection failed while they were being written
    messages_dropped: int = 0
    #: addressed to a node that is not in the peer table
    messages_unroutable: int = 0
    #: inbound connections that authenticated as a known peer
    connections_accepted: int = 0
    #: inbound connections closed for cause (the sum of the next three)
    connections_rejected: int = 0
    handshake_failures: int = 0
    identity_rejections: int = 0
    protocol_errors: int = 0
    #: outbound connections established, failed to establish, and lost
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Peer:
    __slots__ = ("address", "connected", "connection_scope", "id", "queue", "queued_bytes", "scope")

    def __init__(self, node_id: NodeId, address: PeerAddress) -> None:
        self.id = node_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.scope = trio.CancelScope()  # the sender task
        self.connection_scope: trio.CancelScope | None = None
        self.connected = False


def _check_address(node_id: object, address: object) -> PeerAddress:
    if type(node_id) is not int or node_id < 0:
        raise TransportError(f"a node id must be a non-negative int, got {node_id!r}")
    if (
        not isinstance(address, tuple)
        or len(address) != 2
        or type(address[0]) is not str
        or not address[0]
        or type(address[1]) is not int
        or not 0 < address[1] < 65536
    ):
        raise TransportError(f"peer {node_id}: address must be (host, port), got {address!r}")
    return (address[0], address[1])


def _enable_keepalive(stream: trio.SocketStream) -> None:
    # Lets the kernel notice a peer that vanished without closing (power loss),
    # so an idle inbound connection does not linger forever.
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class Transport:
    """Mutual-TLS message transport for one Raft node.

    ``peers`` maps node ids to ``(host, port)``; an entry for ``node_id``
    itself is ignored.  ``server_ctx`` and ``client_ctx`` must require peer
    certificates (see vaultd.pki.server_ssl_context / client_ssl_context);
    ``peer_identity`` turns a peer's verified certificate into its node id.
    Call :meth:`run` in a nursery (``await nursery.start(t.run)`` returns the
    port it listens on) and :meth:`send` from the same trio run.

    ``on_messages`` is awaited with each batch that arrived together from one
    peer (all from that peer, all addressed to us).  An exception it raises is
    a bug in the caller and propagates out of :meth:`run`.
    """

    def __init__(
        self,
        node_id: NodeId,
        peers: Mapping[NodeId, PeerAddress],
        server_ctx: ssl.SSLContext,
        client_ctx: ssl.SSLContext,
        on_messages: OnMessages,
        *,
        peer_identity: PeerIdentity,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        queue_limit: int = 4096,
        queue_bytes_limit: int = 64 * 1024 * 1024,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        write_timeout: float = 30.0,
        max_pending_handshakes: int = 64,
    ) -> None:
        if type(node_id) is not int or node_id < 0:
            raise TransportError(f"node_id must be a non-negative int, got {node_id!r}")
        for name, ctx in (("server_ctx", server_ctx), ("client_ctx", client_ctx)):
            if ctx.verify_mode != ssl.CERT_REQUIRED:
                raise TransportError(f"{name} must require and verify peer certificates")
        if max_frame_size < 1 or queue_limit < 1 or max_pending_handshakes < 1:
            raise TransportError(
                "max_frame_size, queue_limit and max_pending_handshakes must be >= 1"
            )
        if queue_bytes_limit < max_frame_size:
            raise TransportError("queue_bytes_limit must be at least max_frame_size")
        self.node_id: Final = node_id
        self._server_ctx = server_ctx
        self._client_ctx = client_ctx
        self._on_messages = on_messages
        self._identify = peer_identity
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._max_frame_size = max_frame_size
        self._queue_limit = queue_limit
        self._queue_bytes_limit = queue_bytes_limit
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._write_timeout = write_timeout
        self._handshake_slots = trio.Semaphore(max_pending_handshakes)
        self._peers: dict[NodeId, _Peer] = {}
        # Per peer: the inbound connection that delivers its messages, and the
        # newer ones that have not yet delivered a valid message (see _serve_peer).
        self._inbound: dict[NodeId, trio.CancelScope] = {}
        self._unproven: dict[NodeId, deque[trio.CancelScope]] = {}
        self._wakeups: dict[NodeId, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._port: int | None = None
        self.stats: Final = TransportStats()
        self._stats_changed = trio.Event()
        self._stats_waiters = 0
        self.update_peers(peers)

    # ------------------------------------------------------------ public API

    @property
    def listen_port(self) -> int:
        """The TCP port accepting peers (known once :meth:`run` has started)."""
        if self._port is None:
            raise TransportError("the transport is not running")
        return self._port

    @property
    def peers(self) -> dict[NodeId, PeerAddress]:
        """A copy of the current peer table."""
        return {n: p.address for n, p in self._peers.items()}

    def queued(self, peer: NodeId) -> int:
        """Messages waiting to be written to ``peer`` (0 for an unknown peer)."""
        p = self._peers.get(peer)
        return len(p.queue) if p is not None else 0

    def is_connected(self, peer: NodeId) -> bool:
        """Whether the outbound connection to ``peer`` is established."""
        p = self._peers.get(peer)
        return p is not None and p.connected

    def update_peers(self, peers: Mapping[NodeId, PeerAddress]) -> None:
        """Replace the peer table.  New peers get a sender; removed peers lose
        their sender, their queued messages and their inbound connection; a
        peer whose address changed is redialled at the new address."""
        wanted = {n: _check_address(n, a) for n, a in peers.items() if n != self.node_id}
        for n in [n for n in self._peers if n not in wanted]:
            self.remove_peer(n)
        for n, address in wanted.items():
            self.add_peer(n, address)

    def add_peer(self, node_id: NodeId, address: PeerAddress) -> None:
        """Add a peer, or move an existing one to ``address``."""
        address = _check_address(node_id, address)
        if node_id == self.node_id:
            raise TransportError("a node is not its own peer")
        peer = self._peers.get(node_id)
        if peer is None:
            peer = _Peer(node_id, address)
            self._peers[node_id] = peer
            if self._nursery is not None:
                self._nursery.start_soon(self._sender, peer)
        elif peer.address != address:
            log.info("node %d: peer %d moved to %s:%d", self.node_id, node_id, *address)
            peer.address = address
            if peer.connection_scope is not None:
                peer.connection_scope.cancel()

    def remove_peer(self, node_id: NodeId) -> None:
        """Forget a peer: stop sending to it and refuse its connections.  Its
        queued messages are dropped (and counted)."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            peer.scope.cancel()
            self.stats.messages_dropped += len(peer.queue)
            peer.queue.clear()
            self._notify()
        inbound = self._inbound.pop(node_id, None)
        if inbound is not None:
            inbound.cancel()
        for scope in self._unproven.pop(node_id, ()):
            scope.cancel()

    def send(self, messages: Sequence[Message]) -> None:
        """Queue messages for their ``dst`` peers without blocking.

        All messages are validated and encoded before any is queued: one that
        cannot be sent (MalformedMessage, FrameTooLarge, or a ``src`` other than
        this node: TransportError) raises and nothing is queued.  A message for
        a node outside the peer table is counted as unroutable and dropped."""
        packed: list[bytes] = []
        limit = self._max_frame_size
        for m in messages:
            p = encode_message(m)
            if m.src != self.node_id:
                raise TransportError(f"message src {m.src} is not this node ({self.node_id})")
            if len(p) + 1 > limit:
                raise FrameTooLarge(len(p) + 1, limit)
            packed.append(p)
        stats = self.stats
        peers = self._peers
        changed = False
        for m, p in zip(messages, packed, strict=True):
            peer = peers.get(m.dst)
            if peer is None:
                stats.messages_unroutable += 1
                changed = True
                continue
            q = peer.queue
            if not q:
                # The sender parks on an empty queue; one reschedule per batch.
                self._wake(peer)
            q.append(p)
            peer.queued_bytes += len(p)
            while len(q) > self._queue_limit or peer.queued_bytes > self._queue_bytes_limit:
                peer.queued_bytes -= len(q.popleft())
                stats.messages_dropped += 1
                changed = True
        if changed:
            self._notify()

    async def wait_stats(self, predicate: Callable[[TransportStats], bool]) -> None:
        """Return once ``predicate(self.stats)`` holds (checked after every
        change).  Meant for tests and health probes; wrap it in a timeout."""
        while not predicate(self.stats):
            self._stats_waiters += 1
            try:
                await self._stats_changed.wait()
            finally:
                self._stats_waiters -= 1

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen for peers and run one sender per peer until cancelled.
        Reports the listening port through ``task_status``."""
        if self._nursery is not None:
            raise TransportError("the transport is already running")
        listeners = await trio.open_tcp_listeners(self._listen_port, host=self._listen_host)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer in list(self._peers.values()):
                    nursery.start_soon(self._sender, peer)
                await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
                self._port = listeners[0].socket.getsockname()[1]
                log.info("node %d: listening on %s:%d", self.node_id, self._listen_host, self._port)
                task_status.started(self._port)
        finally:
            self._nursery = None
            self._port = None
            for peer in self._peers.values():
                peer.connected = False
                # A fresh scope, so that run() can be called again after it ends.
                peer.scope = trio.CancelScope()
            self._inbound.clear()
            self._unproven.clear()

    # ------------------------------------------------------------ internals

    def _notify(self) -> None:
        if self._stats_waiters:
            event = self._stats_changed
            self._stats_changed = trio.Event()
            event.set()

    def _wake(self, peer: _Peer) -> None:
        event = self._wakeups.get(peer.id)
        if event is not None:
            event.set()

    async def _wait_for_messages(self, peer: _Peer) -> None:
        if peer.queue:
            return
        event = trio.Event()
        self._wakeups[peer.id] = event
        try:
            await event.wait()
        finally:
            if self._wakeups.get(peer.id) is event:
                del self._wakeups[peer.id]

    # -- outbound

    async def _sender(self, peer: _Peer) -> None:
        attempt = 0
        failing = False
        with peer.scope:
            while True:
                stream = await self._dial(peer, quiet=failing)
                if stream is None:
                    failing = True
                else:
                    failing = False
                    established = trio.current_time()
                    await self._pump_connection(peer, stream)
                    # Only a connection that lived a while proves the peer healthy;
                    # one that is cut at once (the peer refuses us) keeps backing off.
                    if trio.current_time() - established >= self._backoff.cap:
                        attempt = 0
                await trio.sleep(self._backoff.delay(attempt, self._rng))
                attempt += 1

    async def _open(self, peer: _Peer) -> TLSStream:
        host, port = peer.address
        with trio.fail_after(self._connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
        stream: TLSStream | None = None
        try:
            _enable_keepalive(tcp)
            stream = TLSStream.wrap(tcp, self._client_ctx, server_hostname=host)
            with trio.fail_after(self._handshake_timeout):
                await stream.do_handshake()
            der = stream.getpeercert(binary_form=True)
            if der is None:
                raise PeerRejected("the peer presented no certificate")
            try:
                remote = self._identify(der)
            except ValueError as exc:
                raise PeerRejected(str(exc)) from exc
            if remote != peer.id:
                raise PeerRejected(f"expected node {peer.id}, its certificate names {remote}")
        except BaseException:
            await trio.aclose_forcefully(tcp if stream is None else stream)
            raise
        return stream

    async def _dial(self, peer: _Peer, *, quiet: bool) -> TLSStream | None:
        host, port = peer.address
        try:
            stream = await self._open(peer)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, PeerRejected) as exc:
            self.stats.connect_failures += 1
            self._notify()
            # A peer that is down fails every attempt; say so once, not every back-off.
            level = (
                logging.DEBUG if quiet and not isinstance(exc, PeerRejected) else logging.WARNING
            )
            log.log(
                level,
                "node %d: cannot connect to peer %d at %s:%d: %s",
                self.node_id,
                peer.id,
                host,
                port,
                _describe(exc),
            )
            return None
        self.stats.connects += 1
        self._notify()
        log.info("node %d: connected to peer %d at %s:%d", self.node_id, peer.id, host, port)
        return stream

    async def _pump_connection(self, peer: _Peer, stream: TLSStream) -> None:
        reasons: list[str] = []
        try:
            with trio.CancelScope() as scope:
                peer.connection_scope = scope
                peer.connected = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_outbound, peer, stream, reasons, nursery)
                    reasons.append(await self._write_loop(peer, stream))
                    nursery.cancel_scope.cancel()
        finally:
            peer.connected = False
            peer.connection_scope = None
            await trio.aclose_forcefully(stream)
        self.stats.disconnects += 1
        self._notify()
        reason = reasons[0] if reasons else "peer address changed"
        log.info("node %d: connection to peer %d closed: %s", self.node_id, peer.id, reason)

    async def _watch_outbound(
        self,
        peer: _Peer,
        stream: TLSStream,
        reasons: list[str],
        nursery: trio.Nursery,
    ) -> None:
        # Peers never write on a connection we dialed; reading only tells us when
        # it closes (or when the peer refused our certificate, which TLS 1.3
        # reports after the client's side of the handshake is done).
        try:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if data:
                reasons.append("the peer wrote on a connection meant for sending only")
                log.warning(
                    "node %d: peer %d wrote on our outbound connection; closing it",
                    self.node_id,
                    peer.id,
                )
            else:
                reasons.append("closed by the peer")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reasons.append(f"broken: {_describe(exc)}")
        nursery.cancel_scope.cancel()

    async def _write_loop(self, peer: _Peer, stream: TLSStream) -> str:
        stats = self.stats
        while True:
            await self._wait_for_messages(peer)
            batch = list(peer.queue)
            peer.queue.clear()
            peer.queued_bytes = 0
            frames = frames_from_packed(batch, self._max_frame_size)
            data = b"".join(frames)
            written = False
            try:
                with trio.move_on_after(self._write_timeout) as timeout:
                    await stream.send_all(data)
                    written = True
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return f"write failed: {_describe(exc)}"
            finally:
                if not written:
                    stats.messages_dropped += len(batch)
                    self._notify()
            if timeout.cancelled_caught:
                return f"write stalled for {self._write_timeout}s"
            stats.frames_sent += len(frames)
            stats.messages_sent += len(batch)
            stats.bytes_sent += len(data)
            self._notify()

    # -- inbound

    def _reject(self, counter: str, fmt: str, *args: object) -> None:
        stats = self.stats
        setattr(stats, counter, getattr(stats, counter) + 1)
        stats.connections_rejected += 1
        self._notify()
        log.warning(fmt, *args)

    async def _handle_inbound(self, tcp: trio.SocketStream) -> None:
        where = _peer_name(tcp)
        try:
            self._handshake_slots.acquire_nowait()
        except trio.WouldBlock:
            self._reject(
                "handshake_failures",
                "node %d: too many pending handshakes; refused %s",
                self.node_id,
                where,
            )
            await trio.aclose_forcefully(tcp)
            return
        stream: TLSStream | None = None
        try:
            try:
                _enable_keepalive(tcp)
                stream = TLSStream.wrap(tcp, self._server_ctx, server_side=True)
                with trio.fail_after(self._handshake_timeout):
                    await stream.do_handshake()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                self._reject(
                    "handshake_failures",
                    "node %d: TLS handshake with %s failed: %s",
                    self.node_id,
                    where,
                    _describe(exc),
                )
                return
            finally:
                self._handshake_slots.release()
            der = stream.getpeercert(binary_form=True)
            try:
                if der is None:
                    raise ValueError("no client certificate")
                remote = self._identify(der)
            except ValueError as exc:
                self._reject(
                    "identity_rejections",
                    "node %d: %s has no node identity: %s",
                    self.node_id,
                    where,
                    exc,
                )
                return
            if remote not in self._peers:
                self._reject(
                    "identity_rejections",
                    "node %d: refused node %d from %s: not in the peer table",
                    self.node_id,
                    remote,
                    where,
                )
                return
            await self._serve_peer(remote, stream, where)
        finally:
            await trio.aclose_forcefully(tcp if stream is None else stream)

    async def _serve_peer(self, remote: NodeId, stream: TLSStream, where: str) -> None:
        # A peer dials one connection to us, so a new one usually means it
        # restarted or reconnected and the old one is dead.  But the new one
        # takes over only once it delivers a valid message (_receive_loop): a
        # connection that sends junk, or nothing, must not cut a working one.
        self.stats.connections_accepted += 1
        self._notify()
        log.info("node %d: accepted peer %d from %s", self.node_id, remote, where)
        with trio.CancelScope() as scope:
            unproven = self._unproven.setdefault(remote, deque())
            unproven.append(scope)
            while len(unproven) > _MAX_UNPROVEN_PER_PEER:
                unproven.popleft().cancel()
            try:
                await self._receive_loop(remote, stream, scope)
            except CodecError as exc:
                self._reject(
                    "protocol_errors",
                    "node %d: bad frame from peer %d (%s): %s",
                    self.node_id,
                    remote,
                    where,
                    exc,
                )
            except PeerRejected as exc:
                self._reject(
                    "identity_rejections",
                    "node %d: peer %d (%s) misbehaved: %s",
                    self.node_id,
                    remote,
                    where,
                    exc,
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info(
                    "node %d: connection from peer %d lost: %s",
                    self.node_id,
                    remote,
                    _describe(exc),
                )
            finally:
                if self._inbound.get(remote) is scope:
                    del self._inbound[remote]
                self._forget_unproven(remote, scope)
        if scope.cancelled_caught:
            log.info("node %d: closed a connection from peer %d (%s)", self.node_id, remote, where)

    def _prove(self, remote: NodeId, scope: trio.CancelScope) -> None:
        """``scope``'s connection delivered a valid message: it becomes the one
        that carries ``remote``'s messages, and the one it replaces is closed."""
        self._forget_unproven(remote, scope)
        previous = self._inbound.get(remote)
        if previous is not None and previous is not scope:
            previous.cancel()
        self._inbound[remote] = scope

    def _forget_unproven(self, remote: NodeId, scope: trio.CancelScope) -> None:
        waiting = self._unproven.get(remote)
        if waiting is not None and scope in waiting:
            waiting.remove(scope)
            if not waiting:
                del self._unproven[remote]

    async def _receive_loop(
        self, remote: NodeId, stream: TLSStream, scope: trio.CancelScope
    ) -> None:
        decoder = FrameDecoder(self._max_frame_size)
        stats = self.stats
        me = self.node_id
        proven = False
        while True:
            data = await stream.receive_some(_RECEIVE_SIZE)
            decoder.receive_data(data)
            batch: list[Message] = []
            frames = 0
            nbytes = 0
            while (payload := decoder.next_payload()) is not None:
                messages = decode_payload(payload)
                for m in messages:
                    if m.src != remote or m.dst != me:
                        raise PeerRejected(
                            f"message {m.src}->{m.dst} on the connection of node {remote} to {me}"
                        )
                batch += messages
                frames += 1
                nbytes += len(payload) + HEADER_SIZE
            if frames:
                stats.frames_received += frames
                stats.messages_received += len(batch)
                stats.bytes_received += nbytes
                self._notify()
                if remote not in self._peers:
                    return
                if not proven:
                    self._prove(remote, scope)
                    proven = True
                if batch:
                    await self._on_messages(batch)
            if not data:
                log.info("node %d: peer %d closed its connection", me, remote)
                return


def _describe(exc: BaseException) -> str:
    # trio wraps the ssl/socket error that broke a stream; the cause says what happened.
    cause = exc.__cause__
    if cause is not None and str(cause):
        return f"{type(exc).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _peer_name(tcp: trio.SocketStream) -> str:
    try:
        host, port = tcp.socket.getpeername()[:2]
    except OSError:
        return "an unknown address"
    return f"{host}:{port}"

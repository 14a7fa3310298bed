"""The client-facing service: length-prefixed msgpack requests over mutual TLS.

Wire format (docs/operations.md, "Client protocol"): every frame is a 4-byte
big-endian payload length followed by one msgpack map.  A request is
``{"id": uint, "op": str, "args": map}``; the answer carries the same ``id``
and is either ``{"id": id, "ok": true, "result": ...}`` or
``{"id": id, "ok": false, "error": {"code": str, "message": str,
"leader_id": int|nil, "leader_address": "host:port"|nil}}``.  Clients may
pipeline: many requests may be outstanding on one connection and answers
come back in completion order, matched by ``id``.

Operations: ``kv.put {key, value}``, ``kv.get {key}`` (linearizable),
``kv.incr {key, delta}``, ``kv.cas {key, expected, new}``, ``status {}``,
``members.add {node, peer, client}``, ``members.promote {node}``,
``members.remove {node}``, ``transfer {target}``.

Failure handling: a frame that is not msgpack or not a well-formed request
gets a ``bad_request`` answer and the connection goes on (the framing is
intact); a frame larger than ``max_request_bytes`` gets a ``too_large``
answer and the connection is closed (we cannot resynchronise without reading
the junk); a failed TLS handshake just closes.  Nothing a client sends can
take the node down: every per-connection failure ends that connection only.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgpack
import trio

from raft.tls_stream import TLSStream

from .config import parse_address
from .errors import (
    BadRequest,
    CommandError,
    FrameTooLarge,
    InternalError,
    NotLeader,
    ProtocolError,
    RequestTooLarge,
    ServiceError,
    Timeout,
    Unavailable,
)
from .kvstore import (
    Cas,
    CasResult,
    Command,
    Failed,
    Get,
    Incr,
    Put,
    Result,
    encode_command,
    encode_put,
)

__all__ = [
    "OPS",
    "Backend",
    "FrameReader",
    "Request",
    "Service",
    "ServiceStats",
    "decode_request",
    "decode_response",
    "encode_error",
    "encode_frame",
    "encode_request",
    "encode_result",
    "result_to_wire",
]

log: Final = logging.getLogger("vaultd.service")

_LENGTH: Final = struct.Struct(">I")
_MAX_ID: Final = 2**64 - 1
_UNPACK_ERRORS: Final = (msgpack.UnpackException, ValueError, TypeError, OverflowError)
_RECEIVE_SIZE: Final = 65536
_HANDSHAKE_TIMEOUT: Final = 10.0
# Reused (see vaultd.kvstore._pack): a fresh Packer per answer cost 0.35 us.
_pack: Final = msgpack.Packer(use_bin_type=True).pack

_WRITES: Final = frozenset({"kv.put", "kv.incr", "kv.cas"})
_REQUEST_KEYS: Final = frozenset({"id", "op", "args"})
_PUT_ARGS: Final = frozenset({"key", "value"})
_ANSWERED: Final = (-1, b"")  # _parse_write's "answered with an error already"
OPS: Final = frozenset(
    {
        "kv.put",
        "kv.get",
        "kv.incr",
        "kv.cas",
        "status",
        "members.add",
        "members.promote",
        "members.remove",
        "transfer",
    }
)


# ---------------------------------------------------------------- framing


def encode_frame(body: Mapping[str, Any]) -> bytes:
    """One frame: length prefix plus the msgpack encoding of ``body``."""
    payload: bytes = _pack(body)
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Incremental, sans-I/O frame splitter.  :meth:`feed` buffers bytes,
    :meth:`next` returns the next complete payload or None.  An announced length
    above ``max_size`` raises FrameTooLarge as soon as the 4-byte header is in,
    so a peer can never make us buffer more than one maximal frame."""

    __slots__ = ("_buf", "_max", "_pos")

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self._max = max_size
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next(self) -> bytes | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _LENGTH.unpack_from(buf, pos)
        if length > self._max:
            raise FrameTooLarge(length, self._max)
        end = pos + 4 + length
        if end > len(buf):
            return None
        payload = bytes(buf[pos + 4 : end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > 65536:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return payload


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    op: str
    args: dict[str, Any]


def encode_request(request_id: int, op: str, args: Mapping[str, Any]) -> bytes:
    return encode_frame({"id": request_id, "op": op, "args": dict(args)})


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except _UNPACK_ERRORS as exc:
        raise ProtocolError(f"not msgpack: {exc}") from None


def decode_request(payload: bytes) -> Request:
    """Parse one request payload.  Raises ProtocolError; when the payload had a
    usable id, the error's ``request_id`` attribute carries it."""
    body = _unpack(payload)
    if type(body) is not dict:
        raise ProtocolError("a request must be a map")
    rid = body.get("id")
    if type(rid) is not int or not 0 <= rid <= _MAX_ID:
        raise ProtocolError("a request needs an 'id' in 0..2**64-1")
    try:
        if set(body) != {"id", "op", "args"}:
            raise ProtocolError("a request has exactly the keys id, op and args")
        op, args = body["op"], body["args"]
        if type(op) is not str or op not in OPS:
            raise ProtocolError(f"unknown operation {str(op)[:40]!r}")
        if type(args) is not dict or not all(type(k) is str for k in args):
            raise ProtocolError("args must be a map with string keys")
    except ProtocolError as exc:
        exc.request_id = rid  # type: ignore[attr-defined]
        raise
    return Request(rid, op, args)


def result_to_wire(result: Result) -> Any:
    """A state-machine result as a msgpack value (CasResult becomes a map)."""
    if isinstance(result, CasResult):
        return {"swapped": result.swapped, "current": result.current}
    if isinstance(result, Failed):
        raise InternalError("a failed command has no result")
    return result


def encode_result(request_id: int, result: Any) -> bytes:
    if result is None:
        # The answer to every put: the map {"id": id, "ok": true, "result": nil}
        # assembled around the packed id (what packing the map gives, cheaper).
        rid: bytes = _pack(request_id)
        return _LENGTH.pack(len(rid) + _NONE_RESULT_LEN) + _RESULT_HEAD + rid + _NONE_RESULT_TAIL
    return encode_frame({"id": request_id, "ok": True, "result": result})


_RESULT_HEAD: Final = b"\x83\xa2id"
_NONE_RESULT_TAIL: Final = b"\xa2ok\xc3\xa6result\xc0"
_NONE_RESULT_LEN: Final = len(_RESULT_HEAD) + len(_NONE_RESULT_TAIL)


def encode_error(request_id: int, error: ServiceError) -> bytes:
    leader_id = error.leader_id if isinstance(error, NotLeader) else None
    leader_address = error.leader_address if isinstance(error, NotLeader) else None
    return encode_frame(
        {
            "id": request_id,
            "ok": False,
            "error": {
                "code": error.code,
                "message": error.message,
                "leader_id": leader_id,
                "leader_address": leader_address,
            },
        }
    )


def decode_response(payload: bytes) -> tuple[int, bool, Any]:
    """Parse one answer into ``(id, ok, result_or_error_map)``.  Raises ProtocolError."""
    body = _unpack(payload)
    if type(body) is not dict:
        raise ProtocolError("a response must be a map")
    rid, ok = body.get("id"), body.get("ok")
    if type(rid) is not int or rid < 0 or type(ok) is not bool:
        raise ProtocolError("a response needs an integer 'id' and a boolean 'ok'")
    if ok:
        if set(body) != {"id", "ok", "result"}:
            raise ProtocolError("a success response has exactly id, ok and result")
        return rid, True, body["result"]
    err = body.get("error")
    if set(body) != {"id", "ok", "error"} or type(err) is not dict:
        raise ProtocolError("an error response has exactly id, ok and an error map")
    if type(err.get("code")) is not str or type(err.get("message")) is not str:
        raise ProtocolError("an error needs a string code and message")
    return rid, False, err


# ---------------------------------------------------------------- arguments


def _arg(args: Mapping[str, Any], name: str, kind: type, *, nullable: bool = False) -> Any:
    if name not in args:
        if nullable:
            return None
        raise BadRequest(f"missing argument {name!r}")
    v = args[name]
    if v is None and nullable:
        return None
    if type(v) is not kind:
        raise BadRequest(f"argument {name!r} must be {kind.__name__}")
    return v


def _only(args: Mapping[str, Any], *names: str) -> None:
    extra = sorted(set(args) - set(names))
    if extra:
        raise BadRequest(f"unknown argument {extra[0][:40]!r}")


def _node_arg(args: Mapping[str, Any], name: str = "node") -> int:
    node = _arg(args, name, int)
    if not 0 < node < 2**63:
        raise BadRequest(f"{name} must be a node id in 1..2**63-1")
    assert isinstance(node, int)
    return node


def _address_arg(args: Mapping[str, Any], name: str) -> tuple[str, int]:
    text = _arg(args, name, str)
    try:
        return parse_address(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def parse_kv_command(op: str, args: Mapping[str, Any]) -> Command:
    """Turn a kv.* request into a state-machine command.  Raises BadRequest."""
    key = _arg(args, "key", bytes)
    if op == "kv.put":
        _only(args, "key", "value")
        return Put(key, _arg(args, "value", bytes))
    if op == "kv.get":
        _only(args, "key")
        return Get(key)
    if op == "kv.incr":
        _only(args, "key", "delta")
        delta = _arg(args, "delta", int) if "delta" in args else 1
        return Incr(key, delta)
    if op == "kv.cas":
        _only(args, "key", "expected", "new")
        return Cas(
            key,
            _arg(args, "expected", bytes, nullable=True),
            _arg(args, "new", bytes, nullable=True),
        )
    raise BadRequest(f"{op} is not a kv operation")


# ---------------------------------------------------------------- server


class Backend(Protocol):
    """What the service needs from the node it fronts.  Every method raises a
    :class:`vaultd.errors.ServiceError` subclass for an expected failure
    (NotLeader with the leader's client address, Timeout, Rejected, ...)."""

    async def propose(self, command: bytes) -> Result:
        """Replicate an encoded state-machine command; return its result once applied."""
        ...

    def group_limits(self) -> tuple[int, int]:
        """How many commands, and how many bytes of them in all, one group for
        :meth:`submit_many` may hold (one command of any size always may)."""
        ...

    def submit_many(
        self,
        commands: list[bytes],
        done: Callable[[list[Result] | None, ServiceError | None], None],
    ) -> None:
        """Like :meth:`propose` for a group of commands, without waiting: they go
        into one log entry, and ``done(results, None)`` (one result per command)
        or ``done(None, error)`` is called once.  The service's hot path."""
        ...

    async def read(self, query: bytes) -> Result:
        """Answer an encoded read-only command linearizably."""
        ...

    def status(self) -> dict[str, Any]: ...

    async def add_member(
        self, node: int, peer: tuple[str, int], client: tuple[str, int]
    ) -> Any: ...

    async def promote_member(self, node: int) -> Any: ...

    async def remove_member(self, node: int) -> Any: ...

    async def transfer_leadership(self, target: int | None) -> Any: ...


class _ClientConnection:
    """Per-connection state of the server: answers waiting to be written (one writer
    task sends them all at once) and the bound on requests in flight."""

    __slots__ = ("_done_reading", "_max", "_outbox", "_ready", "_slot_free", "inflight")

    def __init__(self, max_inflight: int) -> None:
        self._max = max_inflight
        self.inflight = 0
        self._outbox: list[bytes] = []
        self._ready = trio.Event()
        self._slot_free = trio.Event()
        self._done_reading = False

    def has_slot(self) -> bool:
        return self.inflight < self._max

    async def wait_slot(self) -> None:
        """Return once fewer than the maximum requests are in flight."""
        while self.inflight >= self._max:
            self._slot_free = trio.Event()
            await self._slot_free.wait()

    def release_slot(self, count: int = 1) -> None:
        self.inflight -= count
        self._slot_free.set()
        if self._done_reading and self.inflight == 0:
            self._ready.set()

    def push(self, answer: bytes) -> None:
        self._outbox.append(answer)
        self._ready.set()

    def push_many(self, answers: list[bytes]) -> None:
        self._outbox += answers
        self._ready.set()

    def reading_done(self) -> None:
        self._done_reading = True
        self._ready.set()

    async def write_loop(self, stream: TLSStream, scope: trio.CancelScope) -> None:
        """Write answers as they come until reading stopped and every request was
        answered; if the client goes away, cancel the connection's other tasks."""
        try:
            while True:
                if self._outbox:
                    data = b"".join(self._outbox)
                    self._outbox.clear()
                    await stream.send_all(data)
                    continue
                if self._done_reading and self.inflight == 0:
                    return
                self._ready = trio.Event()
                await self._ready.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()


@dataclass(slots=True)
class ServiceStats:
    connections_accepted: int = 0
    connections_refused: int = 0
    handshake_failures: int = 0
    requests: int = 0
    errors: int = 0
    bad_frames: int = 0


class Service:
    """Serves the client protocol for one node on ``listen`` (``(host, port)``).

    ``ssl_context`` must be a server context that requires client certificates
    from the cluster CA (:func:`vaultd.pki.server_ssl_context`)."""

    def __init__(
        self,
        backend: Backend,
        ssl_context: ssl.SSLContext,
        listen: tuple[str, int],
        *,
        max_request_bytes: int = 1 << 20,
        max_inflight_per_connection: int = 1024,
        max_connections: int = 1024,
        request_timeout: float = 5.0,
        idle_timeout: float = 300.0,
    ) -> None:
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the client port must require client certificates")
        self._backend = backend
        self._ssl = ssl_context
        self._listen = listen
        self._max_request = max_request_bytes
        self._max_inflight = max_inflight_per_connection
        self._connections = trio.Semaphore(max_connections)
        self._request_timeout = request_timeout
        self._idle_timeout = idle_timeout
        self.stats = ServiceStats()
        self.port: int | None = None
        self._closing = False

    def stop_accepting(self) -> None:
        """Answer every further request with ``unavailable`` (used while shutting down)."""
        self._closing = True

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started`` gets the port."""
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("client port listening on %s:%d", host, self.port)
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        try:
            self._connections.acquire_nowait()
        except trio.WouldBlock:
            self.stats.connections_refused += 1
            await trio.aclose_forcefully(tcp)
            return
        stream: TLSStream | None = None
        try:
            try:
                stream = TLSStream.wrap(tcp, self._ssl, server_side=True)
                with trio.fail_after(_HANDSHAKE_TIMEOUT):
                    await stream.do_handshake()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                self.stats.handshake_failures += 1
                log.info("client TLS handshake failed: %s", exc)
                return
            self.stats.connections_accepted += 1
            await self._serve(stream)
            # A clean TLS close, so the client reads every answer sent before it.
            with trio.move_on_after(1):
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # one connection's failure must never take the node down
            log.exception("client connection failed unexpectedly")
        finally:
            self._connections.release()
            await trio.aclose_forcefully(tcp if stream is None else stream)

    async def _serve(self, stream: TLSStream) -> None:
        conn = _ClientConnection(self._max_inflight)
        reader = FrameReader(self._max_request)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.write_loop, stream, nursery.cancel_scope)
            try:
                while True:
                    data: bytes | bytearray = b""
                    with trio.move_on_after(self._idle_timeout):
                        with contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError
                        ):
                            data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        break
                    reader.feed(data)
                    try:
                        while self._ingest(reader, conn, nursery):
                            await conn.wait_slot()
                    except FrameTooLarge as exc:
                        self.stats.bad_frames += 1
                        log.info("client sent an oversized frame: %s", exc)
                        conn.push(encode_error(0, RequestTooLarge(str(exc))))
                        break
            finally:
                conn.reading_done()

    def _ingest(self, reader: FrameReader, conn: _ClientConnection, nursery: trio.Nursery) -> bool:
        """Start every complete request ``reader`` holds.  Returns True if it
        stopped because the connection has its maximum in flight (requests may
        remain buffered), False once the reader is drained.

        The hot path: well-formed kv writes are collected into groups that go to
        the backend with one callback each (one entry's worth at most), instead
        of a task or a callback per request.  Anything else gets its own task.
        Raises FrameTooLarge (after submitting what it collected)."""
        rids: list[int] = []
        commands: list[bytes] = []
        size = 0
        max_commands, max_bytes = self._backend.group_limits()
        try:
            while True:
                if not conn.has_slot():
                    return True
                payload = reader.next()
                if payload is None:
                    return False
                conn.inflight += 1
                write = self._parse_write(payload, conn)
                if write is None:
                    nursery.start_soon(self._request, payload, conn)
                elif write is not _ANSWERED:
                    rid, command = write
                    if rids and (len(rids) == max_commands or size + len(command) > max_bytes):
                        self._submit_group(rids, commands, conn)
                        rids, commands, size = [], [], 0
                    rids.append(rid)
                    commands.append(command)
                    size += len(command)
        finally:
            if rids:
                self._submit_group(rids, commands, conn)

    def _parse_write(self, payload: bytes, conn: _ClientConnection) -> tuple[int, bytes] | None:
        """A well-formed kv write as ``(id, encoded command)``; ``_ANSWERED`` if it
        was answered with an error here; None (nothing done) for anything else,
        which takes the general path."""
        if self._closing:
            return None
        try:
            body = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
        except _UNPACK_ERRORS:
            return None
        # What decode_request checks, specialised to the shapes a write can have;
        # anything unusual (a bad id, a kv.put with odd arguments) takes the
        # general path, which gives the precise error.
        if type(body) is not dict or body.keys() != _REQUEST_KEYS:
            return None
        rid, op, args = body["id"], body["op"], body["args"]
        if type(rid) is not int or not 0 <= rid <= _MAX_ID or type(args) is not dict:
            return None
        if type(op) is not str or op not in _WRITES:
            return None
        self.stats.requests += 1
        try:
            if op == "kv.put":
                if args.keys() != _PUT_ARGS:
                    return None
                key, value = args["key"], args["value"]
                if type(key) is not bytes or type(value) is not bytes:
                    return None
                return rid, encode_put(key, value)
            if not all(type(k) is str for k in args):
                return None
            return rid, encode_command(parse_kv_command(op, args))
        except (ServiceError, CommandError) as exc:
            error = exc if isinstance(exc, ServiceError) else BadRequest(str(exc))
            self.stats.errors += 1
            conn.push(encode_error(rid, error))
            conn.release_slot()
            return _ANSWERED

    def _submit_group(
        self, rids: list[int], commands: list[bytes], conn: _ClientConnection
    ) -> None:
        stats = self.stats

        def done(results: list[Result] | None, error: ServiceError | None) -> None:
            try:
                if error is not None or results is None:
                    error = error or InternalError("a group was answered without results")
                    stats.errors += len(rids)
                    conn.push_many([encode_error(rid, error) for rid in rids])
                    return
                answers = []
                for rid, result in zip(rids, results, strict=True):
                    if result is None:
                        answers.append(encode_result(rid, None))
                    elif isinstance(result, Failed):
                        stats.errors += 1
                        answers.append(encode_error(rid, BadRequest(result.reason)))
                    else:
                        answers.append(encode_result(rid, result_to_wire(result)))
                conn.push_many(answers)
            finally:
                conn.release_slot(len(rids))

        self._backend.submit_many(commands, done)

    async def _request(self, payload: bytes, conn: _ClientConnection) -> None:
        try:
            conn.push(await self._answer(payload))
        finally:
            conn.release_slot()

    async def _answer(self, payload: bytes) -> bytes:
        self.stats.requests += 1
        rid = 0
        try:
            try:
                req = decode_request(payload)
            except ProtocolError as exc:
                self.stats.bad_frames += 1
                rid = getattr(exc, "request_id", 0)
                raise BadRequest(str(exc)) from None
            rid = req.id
            if self._closing:
                raise Unavailable("the node is shutting down")
            if req.op.startswith("kv."):
                # The node bounds proposals and reads itself (proposal_timeout_ms):
                # no second timer on the hot path.
                result = await self._dispatch(req)
            else:
                with trio.fail_after(self._request_timeout):
                    result = await self._dispatch(req)
            return encode_result(rid, result)
        except ServiceError as exc:
            self.stats.errors += 1
            return encode_error(rid, exc)
        except trio.TooSlowError:
            self.stats.errors += 1
            return encode_error(rid, Timeout("the request timed out; it may still take effect"))
        except Exception as exc:  # a bug must not take the node down: report and go on
            self.stats.errors += 1
            log.exception("request %d failed unexpectedly", rid)
            return encode_error(rid, InternalError(f"{type(exc).__name__}: {exc}"))

    async def _dispatch(self, req: Request) -> Any:
        b, op, args = self._backend, req.op, req.args
        if op.startswith("kv."):
            cmd = parse_kv_command(op, args)
            try:
                data = encode_command(cmd)
            except CommandError as exc:
                raise BadRequest(str(exc)) from None
            result = await (b.read(data) if isinstance(cmd, Get) else b.propose(data))
            if isinstance(result, Failed):
                raise BadRequest(result.reason)
            return result_to_wire(result)
        if op == "status":
            _only(args)
            return b.status()
        if op == "members.add":
            _only(args, "node", "peer", "client")
            return await b.add_member(
                _node_arg(args), _address_arg(args, "peer"), _address_arg(args, "client")
            )
        if op == "members.promote":
            _only(args, "node")
            return await b.promote_member(_node_arg(args))
        if op == "members.remove":
            _only(args, "node")
            return await b.remove_member(_node_arg(args))
        if op == "transfer":
            _only(args, "target")
            target = _node_arg(args, "target") if args.get("target") is not None else None
            return await b.transfer_leadership(target)
        raise BadRequest(f"unknown operation {op!r}")

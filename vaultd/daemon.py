"""``vaultd serve``: one node, i.e. a Raft node and the client service in one trio nursery.

The replicated state is a :class:`ClusterStateMachine`: the application
machine (the interim :class:`vaultd.kvstore.KVStore`) plus the cluster's
*address book*, so that a node added at run time becomes reachable by every
member through the same log that adds it.  Log commands carry a one-byte tag
(:data:`TAG_APP`, :data:`TAG_DIRECTORY`, :data:`TAG_BATCH`).

Client writes that arrive together are proposed together: the
:class:`ProposalBatcher` packs every write waiting at that moment into one
log entry (``TAG_BATCH``), applied in order as if each were its own entry.
Each client is still answered only once its write is committed and applied;
what batching saves is the per-entry cost in the runtime, the WAL, the
transport and the followers, which is what bounds throughput in Python.

SIGTERM and SIGINT trigger a graceful shutdown: the client port stops taking
requests, the node hands leadership over if it has it, and the process exits
0.  Storage damage that recovery must not paper over (corruption in the middle
of the log) stops the node before it joins anything, with the file and offset
on stderr and exit status 1.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import trio

from raft import errors as raft_errors
from raft.types import ConfChange, ConfChangeType

from . import pki
from .config import Address, NodeConfig, format_address, parse_address
from .errors import (
    BadRequest,
    CommandError,
    CorruptState,
    InternalError,
    NotLeader,
    Rejected,
    ServiceError,
    Timeout,
    Unavailable,
)
from .kvstore import KVStore, Result
from .service import Service

__all__ = [
    "TAG_APP",
    "TAG_BATCH",
    "TAG_DIRECTORY",
    "ClusterStateMachine",
    "Directory",
    "NodeBackend",
    "ProposalBatcher",
    "configure_logging",
    "pack_batch",
    "serve",
]

log: Final = logging.getLogger("vaultd.daemon")

TAG_APP: Final = 0x00
TAG_DIRECTORY: Final = 0x01
#: 0x02 was an array of separately packed commands, before entries held the
#: commands' own encodings inline; it is refused rather than misread
TAG_BATCH: Final = 0x03
#: limits of one batched log entry (it must fit the runtime's max_command_bytes)
BATCH_MAX_COMMANDS: Final = 1024
BATCH_MAX_BYTES: Final = 256 * 1024
_SNAPSHOT_VERSION: Final = 1
_APP: Final = bytes([TAG_APP])
_DIRECTORY: Final = bytes([TAG_DIRECTORY])
_BATCH: Final = bytes([TAG_BATCH])


# ---------------------------------------------------------------- state machine


@dataclass(slots=True)
class Directory:
    """Where each node listens: ``node id -> (peer address, client address)``."""

    entries: dict[int, tuple[Address, Address]] = field(default_factory=dict)


def encode_directory_set(node: int, peer: Address, client: Address) -> bytes:
    body: bytes = msgpack.packb(["set", node, format_address(peer), format_address(client)])
    return bytes([TAG_DIRECTORY]) + body


def encode_directory_remove(node: int) -> bytes:
    body: bytes = msgpack.packb(["remove", node])
    return bytes([TAG_DIRECTORY]) + body


class ClusterStateMachine:
    """The replicated state of a node: the application machine plus the address book.

    Implements :class:`raft.statemachine.StateMachine`.  ``on_directory`` is
    called (with the whole directory) after every change to the address book,
    including a restore, so the daemon can update its transport's peer table.
    """

    def __init__(
        self,
        app: KVStore,
        initial: dict[int, tuple[Address, Address]],
        on_directory: Callable[[dict[int, tuple[Address, Address]]], None] | None = None,
    ) -> None:
        self.app = app
        self.directory = Directory(dict(initial))
        self._on_directory = on_directory

    def set_listener(self, fn: Callable[[dict[int, tuple[Address, Address]]], None]) -> None:
        self._on_directory = fn

    def _changed(self) -> None:
        if self._on_directory is not None:
            self._on_directory(dict(self.directory.entries))

    def apply(self, index: int, command: bytes) -> object:
        tag = command[:1]
        if tag == _APP:
            return self.app.apply(index, command[1:])
        if tag == _BATCH:
            try:
                commands = msgpack.unpackb(
                    command[1:], raw=False, use_list=True, strict_map_key=True
                )
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                return CommandError(f"bad batch: {exc}")
            if type(commands) is not list:
                return CommandError("bad batch: not an array of commands")
            return self.app.apply_batch(index, commands)
        if tag == _DIRECTORY:
            return self._apply_directory(command[1:])
        return CommandError("unknown command tag")

    def _apply_directory(self, body: bytes) -> object:
        try:
            cmd = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
            if type(cmd) is not list or not cmd:
                raise ValueError("not a directory command")
            if cmd[0] == "set" and len(cmd) == 4 and type(cmd[1]) is int:
                self.directory.entries[cmd[1]] = (parse_address(cmd[2]), parse_address(cmd[3]))
            elif cmd[0] == "remove" and len(cmd) == 2 and type(cmd[1]) is int:
                self.directory.entries.pop(cmd[1], None)
            else:
                raise ValueError("not a directory command")
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            return CommandError(f"bad directory command: {exc}")
        self._changed()
        return None

    def query(self, query: bytes) -> object:
        return self.app.query(query)

    def snapshot(self) -> bytes:
        body = {
            "v": _SNAPSHOT_VERSION,
            "dir": [
                [n, format_address(p), format_address(c)]
                for n, (p, c) in sorted(self.directory.entries.items())
            ],
            "app": self.app.snapshot(),
        }
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed

    def restore(self, index: int, data: bytes) -> None:
        if not data:
            # The bootstrap snapshot (index 0) carries no application state.
            self.app.restore(index, KVStore().snapshot())
            return
        try:
            body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
            if type(body) is not dict or body.get("v") != _SNAPSHOT_VERSION:
                raise ValueError("not a cluster snapshot")
            entries = {}
            for n, p, c in body["dir"]:
                if type(n) is not int:
                    raise ValueError("bad node id")
                entries[n] = (parse_address(p), parse_address(c))
            app_data = body["app"]
            if type(app_data) is not bytes:
                raise ValueError("bad application snapshot")
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            raise CorruptState(f"cluster snapshot at {index}: {exc}") from None
        self.app.restore(index, app_data)
        self.directory.entries = entries
        self._changed()


# ---------------------------------------------------------------- backend


Done = Callable[[object, BaseException | None], None]
"""Receives a submitted command's result, or the error that failed its batch."""

GroupDone = Callable[[list[object] | None, BaseException | None], None]
"""Receives a submitted group's results (one per command, in order), or the one
error that failed the entry carrying the whole group."""


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def pack_batch(commands: list[bytes]) -> bytes:
    """A ``TAG_BATCH`` entry: one msgpack array whose elements are the commands'
    own msgpack encodings, concatenated as they are (so packing costs a join
    and applying decodes the whole entry in one call).  Each command must be
    exactly one msgpack object, as :func:`vaultd.kvstore.encode_command` makes."""
    return _BATCH + _array_header(len(commands)) + b"".join(commands)


class _Group:
    """Commands submitted together: they go into one entry and share its fate."""

    __slots__ = ("commands", "done", "size")

    def __init__(self, commands: list[bytes], done: GroupDone, size: int) -> None:
        self.commands = commands
        self.done = done
        self.size = size


class ProposalBatcher:
    """Packs application commands submitted at about the same time into one entry.

    Commands come in *groups* (:meth:`submit_many`; the service submits every
    write one read from a connection carried as one group, so the per-command
    bookkeeping is a list element, not a callback).  A group never spans two
    entries, so it has one outcome; an entry holds as many whole groups as fit
    ``max_commands``/``max_bytes``.

    With a node that offers ``attach_proposal_source`` (a
    :class:`raft.runtime.RaftNode`), :meth:`run` attaches the batcher as the
    node's proposal source: the node's ready loop takes everything queued
    just before it proposes and reports each entry's outcome through a
    callback.  Commands that arrive while a flush runs thus go into the next
    one with no task of their own, and no task wakes per batch on either side
    of the log.

    With any other node (an object with ``async propose``), the first group
    queued schedules a flush task; by the time it runs, the other tasks that
    were runnable have queued theirs too, and it proposes everything waiting
    (the rest gets another flush task at once), so several batches can be in
    flight.

    Either way a failed proposal fails every command of its entry with the
    same error.  :meth:`run` must be running for commands to be proposed.
    """

    def __init__(
        self,
        node: Any,
        *,
        max_commands: int = BATCH_MAX_COMMANDS,
        max_bytes: int = BATCH_MAX_BYTES,
    ) -> None:
        if max_commands < 1 or max_bytes < 1:
            raise ValueError("batch limits must be positive")
        self._node = node
        self.max_commands = max_commands
        self.max_bytes = max_bytes
        self._pending: list[_Group] = []
        self._nursery: trio.Nursery | None = None
        self._flush_scheduled = False
        self._attached = False  # the node pulls (take_proposals)
        self.batches = 0
        self.commands = 0

    def group_limits(self) -> tuple[int, int]:
        """The most commands, and bytes of them, one group may hold (what
        :meth:`group_fits` allows for more than one command)."""
        return self.max_commands, self.max_bytes - _ENTRY_OVERHEAD * self.max_commands

    def group_fits(self, count: int, size: int) -> bool:
        """Whether ``count`` commands of ``size`` bytes in all may form one group.
        One command always may: the node enforces its own command size limit."""
        return count == 1 or (
            count <= self.max_commands and size + _ENTRY_OVERHEAD * count <= self.max_bytes
        )

    async def submit(self, command: bytes) -> object:
        """Propose one application command; return its result once applied.
        Raises what the node's ``propose`` raises."""
        if self._nursery is None:
            return await self._node.propose(_APP + command)
        event = trio.Event()
        outcome: list[Any] = []

        def done(results: list[object] | None, error: BaseException | None) -> None:
            outcome.append((results, error))
            event.set()

        self.submit_many([command], done)
        await event.wait()
        results, error = outcome[0]
        if error is not None:
            raise error
        return results[0]

    def submit_many(self, commands: list[bytes], done: GroupDone) -> None:
        """Queue a group of commands for one entry; ``done(results, None)`` with one
        result per command once it is applied, or ``done(None, error)``, exactly
        once.  A group must fit the limits (:meth:`group_fits`): ValueError
        otherwise.  Without :meth:`run` running, fails at once with NodeStopped."""
        size = sum(map(len, commands))
        if not commands or not self.group_fits(len(commands), size):
            raise ValueError(f"a group of {len(commands)} commands, {size} bytes, does not fit")
        if self._nursery is None:
            done(None, raft_errors.NodeStopped("the node is not running"))
            return
        self._pending.append(_Group(commands, done, size + _ENTRY_OVERHEAD * len(commands)))
        if self._attached:
            if len(self._pending) == 1:
                self._node.proposals_waiting()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._nursery.start_soon(self._flush)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attach = getattr(self._node, "attach_proposal_source", None)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if attach is not None:
                    attach(self)
                    self._attached = True
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if self._attached and attach is not None:
                self._attached = False
                attach(None)
            error = raft_errors.NodeStopped("the node is stopping")
            pending, self._pending = self._pending, []
            for group in pending:
                group.done(None, error)

    def take_proposals(self) -> list[tuple[bytes, Callable[[object, BaseException | None], None]]]:
        """Everything queued, packed into entries, each with the callback that
        answers its commands (the node's proposal-source protocol)."""
        entries = []
        while self._pending:
            entries.append(self._next_entry())
        return entries

    def _next_entry(self) -> tuple[bytes, Done]:
        pending = self._pending
        count = size = taken = 0
        for group in pending:
            n = len(group.commands)
            if taken and (count + n > self.max_commands or size + group.size > self.max_bytes):
                break
            count += n
            size += group.size
            taken += 1
        groups = pending[:taken]
        del pending[:taken]
        self.batches += 1
        self.commands += count
        if count == 1:
            return _APP + groups[0].commands[0], _answer_single(groups[0].done)
        if taken == 1:
            data = pack_batch(groups[0].commands)
        else:
            data = pack_batch([c for g in groups for c in g.commands])
        return data, _answer_groups(groups, count)

    async def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        data, done = self._next_entry()
        if self._pending and self._nursery is not None:
            self._flush_scheduled = True
            self._nursery.start_soon(self._flush)
        try:
            result = await self._node.propose(data)
        except Exception as exc:
            done(None, exc)
            return
        done(result, None)


#: what one command adds to a batch entry beyond its own bytes (the array
#: header, amortised generously), so size limits stay conservative
_ENTRY_OVERHEAD: Final = 5


def _answer_single(done: GroupDone) -> Done:
    def answer(result: object, error: BaseException | None) -> None:
        done(None if error is not None else [result], error)

    return answer


def _answer_groups(groups: list[_Group], count: int) -> Done:
    """The callback that answers every group of one batch entry."""

    def answer(result: object, error: BaseException | None) -> None:
        if error is not None:
            for group in groups:
                group.done(None, error)
            return
        # A batch's result is one result per command; anything else (a bad batch
        # gives one CommandError) answers every command alike.
        if type(result) is not list or len(result) != count:
            for group in groups:
                group.done([result] * len(group.commands), None)
            return
        start = 0
        for group in groups:
            end = start + len(group.commands)
            group.done(result[start:end] if len(groups) > 1 else result, None)
            start = end

    return answer


class NodeBackend:
    """Adapts :class:`raft.runtime.RaftNode` to what :class:`vaultd.service.Service`
    needs, turning Raft's exceptions into the service's typed errors."""

    def __init__(self, node: Any, machine: ClusterStateMachine, cfg: NodeConfig) -> None:
        self.node = node
        self.machine = machine
        self.cfg = cfg
        self.batcher = ProposalBatcher(node)

    def _client_address(self, node_id: int | None) -> str | None:
        if node_id is None:
            return None
        entry = self.machine.directory.entries.get(node_id)
        return format_address(entry[1]) if entry else None

    def _not_leader(self, exc: raft_errors.NotLeader) -> NotLeader:
        hint = exc.leader_hint
        return NotLeader(f"node {self.cfg.id} is not the leader", hint, self._client_address(hint))

    def service_error(self, exc: raft_errors.RaftError) -> ServiceError:
        """The typed answer a client gets for a Raft error."""
        if isinstance(exc, raft_errors.LeadershipLost):
            # Appended, then leadership moved: the entry may still commit.
            return Timeout(f"{exc}; the outcome is unknown")
        if isinstance(exc, raft_errors.NotLeader):
            return self._not_leader(exc)
        if isinstance(exc, raft_errors.ConfChangeRejected):
            return Rejected(str(exc))
        if isinstance(exc, raft_errors.InvalidRequest):
            return BadRequest(str(exc))
        if isinstance(exc, raft_errors.ProposalDropped | raft_errors.NodeStopped):
            return Unavailable(str(exc))
        if isinstance(exc, raft_errors.RequestTimeout):
            return Timeout(str(exc))
        return InternalError(f"{type(exc).__name__}: {exc}")

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except raft_errors.RaftError as exc:
            raise self.service_error(exc) from None

    def group_limits(self) -> tuple[int, int]:
        return self.batcher.group_limits()

    def submit_many(
        self,
        commands: list[bytes],
        done: Callable[[list[Result] | None, ServiceError | None], None],
    ) -> None:
        """Propose a group of application commands (one entry) without waiting:
        ``done(results, None)`` once applied, or ``done(None, error)`` with a
        typed error."""

        def finished(results: list[object] | None, error: BaseException | None) -> None:
            # An entry the state machine refused as a whole answers every command
            # with the same CommandError, so the first result tells.
            if error is None and results is not None and isinstance(results[0], CommandError):
                error = InternalError(str(results[0]))
            if error is None:
                done(results, None)  # type: ignore[arg-type]
            elif isinstance(error, raft_errors.RaftError):
                done(None, self.service_error(error))
            elif isinstance(error, ServiceError):
                done(None, error)
            else:
                done(None, InternalError(f"{type(error).__name__}: {error}"))

        self.batcher.submit_many(commands, finished)

    async def propose(self, command: bytes) -> Result:
        result = await self._run(self.batcher.submit(command))
        if isinstance(result, CommandError):
            raise InternalError(str(result))
        return result  # type: ignore[no-any-return]

    async def read(self, query: bytes) -> Result:
        try:
            return await self._run(self.node.read(query))  # type: ignore[no-any-return]
        except CommandError as exc:
            raise InternalError(str(exc)) from None

    def status(self) -> dict[str, Any]:
        st = dict(self.node.status())
        stats = self.node.stats.as_dict()
        st["stats"] = stats
        st["fsyncs"] = stats.get("flushes", 0)
        st["client_commands"] = self.batcher.commands
        st["client_batches"] = self.batcher.batches
        st["client_address"] = format_address(self.cfg.client_listen)
        st["peer_address"] = format_address(self.cfg.peer_listen)
        st["directory"] = {
            str(n): {"peer": format_address(p), "client": format_address(c)}
            for n, (p, c) in sorted(self.machine.directory.entries.items())
        }
        leader = st.get("leader")
        st["leader_client_address"] = self._client_address(leader if type(leader) is int else None)
        return _plain(st)  # type: ignore[no-any-return]

    async def add_member(self, node: int, peer: Address, client: Address) -> Any:
        # The address book entry first: once it applies, every member dials the
        # new node, so it can catch up as soon as it is a learner.
        await self._run(self.node.propose(encode_directory_set(node, peer, client)))
        index = await self._run(
            self.node.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, node))
        )
        return {"node": node, "learner": True, "index": index}

    async def promote_member(self, node: int) -> Any:
        index = await self._run(
            self.node.change_membership(ConfChange(ConfChangeType.PROMOTE, node))
        )
        return {"node": node, "voter": True, "index": index}

    async def remove_member(self, node: int) -> Any:
        index = await self._run(
            self.node.change_membership(ConfChange(ConfChangeType.REMOVE, node))
        )
        if node != self.cfg.id:
            await self._run(self.node.propose(encode_directory_remove(node)))
        return {"node": node, "removed": True, "index": index}

    async def transfer_leadership(self, target: int | None) -> Any:
        return await self._run(self.node.transfer_leadership(target))


def _plain(v: Any) -> Any:
    """A status value as plain msgpack/JSON data (enums become their names)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_plain(x) for x in v]
    if isinstance(v, bool | int | float | str | bytes) or v is None:
        return v
    return str(v)


# ---------------------------------------------------------------- serve


def configure_logging(level: str, *, prefix: str | None) -> None:
    fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    if prefix:
        fmt = f"{prefix} {fmt}"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


_FATAL: Final = (
    raft_errors.StorageError,
    raft_errors.StateMachineFailed,
    raft_errors.TransportError,
    raft_errors.InvalidRequest,
    CorruptState,
    pki.PkiError,
    OSError,
)


def _fatal_cause(exc: BaseException) -> BaseException | None:
    """The first error of a kind that stops a node for cause, looking inside groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _fatal_cause(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, _FATAL) else None


def serve(cfg: NodeConfig) -> int:
    """Run one node until SIGTERM/SIGINT; returns the process exit status (0 after a
    graceful stop, 1 when the node cannot start or stops for cause, with the reason,
    e.g. the file and offset of a corrupt log record, on stderr)."""
    try:
        return trio.run(_serve, cfg)
    except BaseException as exc:
        cause = _fatal_cause(exc)
        if cause is None:
            raise
        what = "refuses to start" if isinstance(cause, raft_errors.CorruptLog) else "stopped"
        log.error("node %d %s: %s", cfg.id, what, cause)
        print(f"vaultd: node {cfg.id} {what}: {cause}", file=sys.stderr)
        return 1


async def _serve(cfg: NodeConfig) -> int:
    from raft.runtime import NodeOptions, RaftNode

    files = pki.TlsFiles(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
    server_ssl = pki.server_ssl_context(files)
    client_ssl = pki.client_ssl_context(files)
    initial = {p.id: (p.peer, p.client) for p in cfg.peers}
    initial[cfg.id] = (cfg.peer_listen, cfg.client_listen)
    machine = ClusterStateMachine(KVStore(), initial)
    node = RaftNode(_node_options(NodeOptions, cfg), machine, server_ssl, client_ssl)
    machine.set_listener(lambda d: _update_peers(node, cfg, d))
    backend = NodeBackend(node, machine, cfg)
    service = Service(
        backend,
        server_ssl,
        cfg.client_listen,
        max_request_bytes=cfg.service.max_request_bytes,
        max_inflight_per_connection=cfg.service.max_inflight_per_connection,
        max_connections=cfg.service.max_connections,
        request_timeout=cfg.service.request_timeout_ms / 1000,
        idle_timeout=cfg.service.idle_timeout_ms / 1000,
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(backend.batcher.run)
            await nursery.start(service.run)
            log.info(
                "node %d serving: peers on %s, clients on %s",
                cfg.id,
                format_address(cfg.peer_listen),
                format_address(cfg.client_listen),
            )
            async for signum in signals:
                log.info("node %d: %s, shutting down", cfg.id, signal.Signals(signum).name)
                break
            service.stop_accepting()
            with trio.move_on_after(10):
                await node.shutdown()
            nursery.cancel_scope.cancel()
    log.info("node %d stopped", cfg.id)
    return 0


def _node_options(options_cls: Any, cfg: NodeConfig) -> Any:
    timeout = cfg.raft.proposal_timeout_ms / 1000
    return options_cls(
        id=cfg.id,
        data_dir=cfg.data_dir,
        listen=cfg.peer_listen,
        peers={p.id: p.peer for p in cfg.peers},
        tick_ms=cfg.raft.tick_ms,
        election_tick=cfg.raft.election_ticks,
        heartbeat_tick=cfg.raft.heartbeat_ticks,
        snapshot_every=cfg.raft.snapshot_entries,
        unsafe_no_fsync=not cfg.raft.fsync,
        proposal_timeout_s=timeout,
        read_timeout_s=timeout,
        max_command_bytes=cfg.service.max_request_bytes,
    )


def _update_peers(
    node: Any, cfg: NodeConfig, directory: dict[int, tuple[Address, Address]]
) -> None:
    """Make the transport's peer table follow the replicated address book."""
    wanted = {n: p for n, (p, _) in directory.items() if n != cfg.id}
    current = node.peers
    for n in set(current) - set(wanted):
        node.remove_peer(n)
    for n, address in wanted.items():
        if current.get(n) != address:
            node.add_peer(n, address)

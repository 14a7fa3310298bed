"""The trio runtime: drives a :class:`raft.core.RawNode` with a clock, a disk and a network.

One :class:`RaftNode` owns, inside the nursery of :meth:`RaftNode.run`:

- a **ticker** task that ticks the core from trio's clock every ``tick_ms``;
- the **transport** (:class:`raft.transport.Transport`, mutual TLS), whose
  receive callback steps incoming messages into the core;
- the **ready loop**, the only task that takes work out of the core.  For each
  :class:`raft.types.Ready` it persists (snapshot, entries, hard state; one
  flush through :class:`raft.group_commit.GroupCommitter`), only then sends the
  Ready's messages, applies committed entries to the :class:`StateMachine`,
  answers the proposers, serves linearizable reads whose read point has been
  applied, and acknowledges the Ready with ``advance``;
- a short-lived **snapshot saver** task when the log is compacted.

Everything runs in one trio thread, so the core needs no lock; blocking disk
work (flushes, snapshot files) runs in worker threads via ``trio.to_thread``.

Group commit falls out of the single outstanding Ready: proposals that arrive
while a flush runs are queued, then appended with one ``propose_batch`` and
persisted by the next flush.  Queues are bounded: at most
``max_pending_proposals`` proposals and ``max_pending_reads`` reads wait at a
time (further callers wait for a slot, within their timeout), and the
transport bounds each peer's outbound queue.

See docs/runtime.md for the API contract, error meanings and defaults.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import signal
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final, Protocol

import trio

from .core import Config, RawNode
from .errors import (
    BootstrapMismatch,
    InvalidRequest,
    InvalidStorageInput,
    LeadershipLost,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    ProposalTimeout,
    RaftError,
    ReadTimeout,
    StateMachineFailed,
    StorageError,
    TransferTimeout,
)
from .group_commit import GroupCommitter
from .statemachine import StateMachine
from .storage import Storage
from .transport import Backoff, PeerAddress, PeerIdentity, Transport
from .types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    Message,
    NodeId,
    Ready,
    Role,
    Snapshot,
    SoftState,
)

__all__ = [
    "NodeOptions",
    "ProposalCallback",
    "ProposalSource",
    "RaftNode",
    "RuntimeStats",
    "StateMachine",
    "shutdown_on_signals",
]

log: Final = logging.getLogger("raft.runtime")

_MAX_ID: Final = (1 << 63) - 1

# Lifecycle of a RaftNode (it runs at most once).
_NEW: Final = "new"
_STARTING: Final = "starting"
_RUNNING: Final = "running"
_STOPPING: Final = "stopping"
_STOPPED: Final = "stopped"


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Configuration of one node.

    The defaults suit a LAN or loopback: 20 ms ticks, elections after
    200-400 ms without a leader (``election_tick`` to ``2 * election_tick``
    ticks), heartbeats every 40 ms, so a crashed leader is replaced well
    within 600 ms.  ``listen`` may use port 0 (an ephemeral port; :meth:`RaftNode.run`
    reports the one bound).  ``peers`` maps the other members' ids to their
    addresses; an entry for ``id`` itself is ignored.
    """

    id: NodeId
    data_dir: Path
    listen: PeerAddress
    peers: Mapping[NodeId, PeerAddress]
    tick_ms: int = 20
    election_tick: int = 10
    heartbeat_tick: int = 2
    #: compact the log every this many applied entries (state machine snapshot)
    snapshot_every: int = 10_000
    #: benchmarks only: nothing is flushed, a crash can lose acknowledged writes
    unsafe_no_fsync: bool = False
    proposal_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    #: default for transfer_leadership(); None means three election timeouts
    transfer_timeout_s: float | None = None
    #: how long a leader's shutdown() waits for leadership to move before stopping anyway
    shutdown_transfer_timeout_s: float = 2.0
    max_pending_proposals: int = 4096
    max_pending_reads: int = 4096
    #: largest command accepted by propose(); it must fit one transport frame
    max_command_bytes: int = 1 << 20
    #: longest wait between attempts to reach an unreachable peer; a restarted peer
    #: hears from this node at most this long after it is back
    reconnect_max_s: float = 1.0

    def validate(self) -> None:
        """Raise :class:`InvalidRequest` naming the first option that is out of range."""
        if type(self.id) is not int or not 0 < self.id <= _MAX_ID:
            raise InvalidRequest(f"id must be an int in 1..2**63-1, got {self.id!r}")
        if not isinstance(self.data_dir, Path):
            raise InvalidRequest(f"data_dir must be a pathlib.Path, got {self.data_dir!r}")
        _check_address(self.listen, "listen", allow_port_zero=True)
        if not isinstance(self.peers, Mapping):
            raise InvalidRequest("peers must map node ids to (host, port)")
        for node, address in self.peers.items():
            if type(node) is not int or not 0 < node <= _MAX_ID:
                raise InvalidRequest(f"peer id must be an int in 1..2**63-1, got {node!r}")
            _check_address(address, f"peer {node}", allow_port_zero=False)
        for name in (
            "tick_ms",
            "election_tick",
            "heartbeat_tick",
            "snapshot_every",
            "max_pending_proposals",
            "max_pending_reads",
            "max_command_bytes",
        ):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise InvalidRequest(f"{name} must be a positive int, got {v!r}")
        if self.election_tick <= self.heartbeat_tick:
            raise InvalidRequest("heartbeat_tick must be smaller than election_tick")
        if type(self.unsafe_no_fsync) is not bool:
            raise InvalidRequest("unsafe_no_fsync must be a bool")
        for name in (
            "proposal_timeout_s",
            "read_timeout_s",
            "shutdown_transfer_timeout_s",
            "reconnect_max_s",
        ):
            _check_timeout(getattr(self, name), name)
        if self.transfer_timeout_s is not None:
            _check_timeout(self.transfer_timeout_s, "transfer_timeout_s")

    @property
    def election_timeout_s(self) -> float:
        """The shortest election timeout, in seconds."""
        return self.tick_ms * self.election_tick / 1000


def _check_address(address: object, what: str, *, allow_port_zero: bool) -> None:
    low = 0 if allow_port_zero else 1
    if not (
        isinstance(address, tuple)
        and len(address) == 2
        and type(address[0]) is str
        and address[0]
        and type(address[1]) is int
        and low <= address[1] < 65536
    ):
        raise InvalidRequest(f"{what}: address must be (host, port), got {address!r}")


def _check_timeout(value: object, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRequest(f"{what} must be a positive finite number of seconds, got {value!r}")
    return float(value)


@dataclass(slots=True)
class RuntimeStats:
    """Counters since the node started (tests, benchmarks and metrics read them)."""

    readies: int = 0
    #: flushes awaited by the ready loop; each one covers every entry appended before it
    flushes: int = 0
    entries_persisted: int = 0
    messages_sent: int = 0
    entries_applied: int = 0
    #: proposals appended to the log, and the propose_batch calls that appended them
    proposals: int = 0
    proposal_batches: int = 0
    reads_served: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    #: messages the core refused as malformed
    invalid_messages: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ProposalCallback = Callable[[object, BaseException | None], None]
"""Receives the outcome of a command taken from a :class:`ProposalSource`:
``(result, None)`` once it is applied on this node (``result`` is what the
state machine's ``apply`` returned), or ``(None, error)`` with the error
:meth:`RaftNode.propose` would have raised for it."""


class ProposalSource(Protocol):
    """Commands the ready loop pulls itself (see :meth:`RaftNode.attach_proposal_source`)."""

    def take_proposals(self) -> list[tuple[bytes, ProposalCallback]]:
        """Every command to propose now, each with the callback its outcome goes to.
        Called from the ready loop; must not block or raise."""
        ...


class _Waiter:
    """One caller waiting for the ready loop: a proposal, a membership change or a read.

    A waiter either has an event its task awaits, or (proposals taken from a
    ProposalSource) a callback the ready loop calls, with a deadline."""

    __slots__ = (
        "callback",
        "data",
        "deadline",
        "done",
        "error",
        "event",
        "index",
        "result",
        "term",
    )

    def __init__(self, data: bytes, callback: ProposalCallback | None = None) -> None:
        self.data = data
        self.callback = callback
        self.event = trio.Event() if callback is None else None
        self.deadline = 0.0
        self.done = False
        self.result: object = None
        self.error: BaseException | None = None
        self.index = 0  # log index once appended (proposals, membership changes)
        self.term = 0

    def resolve(self, result: object) -> None:
        if not self.done:
            self.done = True
            self.result = result
            self._settle()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self._settle()

    def _settle(self) -> None:
        if self.callback is None:
            assert self.event is not None
            self.event.set()
            return
        try:
            self.callback(self.result, self.error)
        except Exception:
            # One caller's broken callback must not stop the ready loop.
            log.exception("a proposal callback raised")

    async def wait(self) -> object:
        assert self.event is not None
        await self.event.wait()
        if self.error is not None:
            raise self.error
        return self.result


class RaftNode:
    """One member of a Raft cluster, running on trio.

    Create it, then ``await nursery.start(node.run)``; use :meth:`propose`,
    :meth:`read`, :meth:`change_membership` and :meth:`transfer_leadership`
    from tasks of the same trio run; stop it with :meth:`shutdown` (graceful)
    or by cancelling the scope ``run`` runs in (a crash, as far as the
    cluster can tell).  A node runs once: to restart, create a new RaftNode
    on the same ``data_dir``.

    ``bootstrap`` is the initial membership.  It is stored when the data
    directory is created and must match on later starts (or be None).  It
    names members with their storage incarnations, so a directory created
    by the cluster init tool (which draws them) is the normal way in; a node
    that starts on an empty directory without ``bootstrap`` has no
    configuration, never votes, and waits to be added (``change_membership``
    on the leader).

    ``peer_identity`` maps a peer's verified certificate (DER) to its node id;
    the default is :func:`vaultd.pki.node_id_from_der` (imported on first
    use, so that raft itself does not depend on vaultd).
    """

    def __init__(
        self,
        options: NodeOptions,
        state_machine: StateMachine,
        server_ssl: ssl.SSLContext,
        client_ssl: ssl.SSLContext,
        *,
        bootstrap: ConfState | None = None,
        rng: random.Random | None = None,
        peer_identity: PeerIdentity | None = None,
    ) -> None:
        if not isinstance(options, NodeOptions):
            raise InvalidRequest(f"options must be NodeOptions, got {type(options).__name__}")
        options.validate()
        for name, ctx in (("server_ssl", server_ssl), ("client_ssl", client_ssl)):
            if not isinstance(ctx, ssl.SSLContext):
                raise InvalidRequest(f"{name} must be an ssl.SSLContext")
        if bootstrap is not None and not isinstance(bootstrap, ConfState):
            raise InvalidRequest(f"bootstrap must be a ConfState, got {type(bootstrap).__name__}")
        self.options: Final = options
        self.id: Final = options.id
        self.stats: Final = RuntimeStats()
        self._sm = state_machine
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._bootstrap = bootstrap
        self._rng = rng if rng is not None else random.Random()
        self._peer_identity = peer_identity
        self._peers: dict[NodeId, PeerAddress] = {
            n: a for n, a in options.peers.items() if n != options.id
        }

        self._state = _NEW
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self._core: RawNode | None = None
        self._storage: Storage | None = None
        self._transport: Transport | None = None
        self._committer: GroupCommitter | None = None
        self._listen: PeerAddress | None = None
        self._incarnation = 0

        self._wakeup = trio.Event()  # set whenever the core may have work
        self._changed = trio.Event()  # set (and replaced) after every state change
        self._queued: list[_Waiter] = []  # proposals waiting for the next propose_batch
        self._source: ProposalSource | None = None
        self._source_waiting = False  # the source has commands for the next propose_batch
        self._timed: deque[_Waiter] = deque()  # callback proposals, by deadline
        self._by_index: dict[int, _Waiter] = {}  # appended proposals and membership changes
        self._reads: dict[int, _Waiter] = {}  # read_index token -> reader
        self._read_points: list[tuple[int, int]] = []  # (index to apply first, token)
        self._read_tokens = itertools.count(1)
        self._proposal_slots = trio.Semaphore(options.max_pending_proposals)
        self._read_slots = trio.Semaphore(options.max_pending_reads)
        self._applied = 0
        self._soft: SoftState | None = None
        self._history: deque[SoftState] = deque(maxlen=256)
        self._saving_snapshot = False

    # ------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        """Whether the node is up (started and not yet stopping or stopped)."""
        return self._state == _RUNNING

    @property
    def leader_id(self) -> NodeId | None:
        """Who this node believes leads its current term (None if unknown or stopped)."""
        core = self._core
        if core is None or self._state not in (_RUNNING, _STOPPING):
            return None
        return core.leader

    @property
    def is_leader(self) -> bool:
        core = self._core
        return core is not None and self.running and core.role is Role.LEADER

    @property
    def listen_address(self) -> PeerAddress:
        """The address peers reach this node at (known once :meth:`run` has started)."""
        if self._listen is None:
            raise NodeStopped(f"node {self.id} is not running")
        return self._listen

    @property
    def role_history(self) -> list[SoftState]:
        """The last 256 (role, leader, term) states this node went through, oldest first,
        as seen at each Ready (transient states between two Readys are not recorded)."""
        return list(self._history)

    # ------------------------------------------------------------ lifecycle

    async def run(
        self, *, task_status: trio.TaskStatus[PeerAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the storage, restore the state machine, start the transport, the
        ticker and the ready loop.  Reports the address it listens on through
        ``task_status`` once it serves; returns after :meth:`shutdown` (or when
        its scope is cancelled).

        Raises whatever stops it for cause: StorageError/CorruptLog (disk),
        StateMachineFailed, BootstrapMismatch, TransportError (cannot listen).
        """
        if self._state != _NEW:
            raise NodeStopped(f"node {self.id} was already started; create a new RaftNode")
        self._state = _STARTING
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                storage = await trio.to_thread.run_sync(self._open_storage)
                self._storage = storage
                try:
                    await self._serve(storage, task_status)
                finally:
                    # Unflushed records were never acknowledged to anyone: drop
                    # them as a crash would.
                    storage.close(sync=False)
        finally:
            self._state = _STOPPED
            self._listen = None
            self._fail_all(lambda: NodeStopped(f"node {self.id} stopped"))
            self._stopped.set()
            self._notify()
            log.info("node %d: stopped", self.id)

    def _open_storage(self) -> Storage:
        opts = self.options
        storage = Storage.open(
            opts.data_dir, bootstrap=self._bootstrap, unsafe_no_fsync=opts.unsafe_no_fsync
        )
        if storage.incarnation > _MAX_ID:
            storage.close(sync=False)
            raise StorageError(
                f"{opts.data_dir} has incarnation {storage.incarnation:#x}, above 2**63-1: "
                "the Raft core (ours and our peers') refuses such a value in every message, "
                "so this node could never be heard; recreate the directory with an "
                "incarnation below 2**63 (see docs/runtime.md, 'Old directories')"
            )
        boot = storage.recovered.bootstrap
        if boot is None and (opts.data_dir / "BASE-MEMBERSHIP").exists():
            storage.close(sync=False)
            raise StorageError(
                f"{opts.data_dir} keeps a joiner's membership in BASE-MEMBERSHIP, which this "
                "version no longer reads (storage records it in META now): wipe the directory "
                "and add the node back as a learner (see docs/runtime.md, 'Old directories')"
            )
        named = boot.incarnation_of(self.id) if boot is not None else None
        if named is not None and named != storage.incarnation:
            storage.close(sync=False)
            raise BootstrapMismatch(
                f"the bootstrap membership names node {self.id} with incarnation {named:#x}, "
                f"but {opts.data_dir} has incarnation {storage.incarnation:#x}: create the "
                "directory with the incarnation the membership names (the cluster init tool "
                "does), or start without a bootstrap and join as a learner"
            )
        return storage

    async def _serve(self, storage: Storage, task_status: trio.TaskStatus[PeerAddress]) -> None:
        rec = storage.recovered
        opts = self.options
        snapshot = rec.initial_snapshot()
        config = Config(
            id=self.id, election_tick=opts.election_tick, heartbeat_tick=opts.heartbeat_tick
        )
        core = RawNode(
            config,
            rng=random.Random(self._rng.getrandbits(64)),
            incarnation=rec.incarnation,
            hard_state=rec.hard_state,
            snapshot=snapshot,
            entries=rec.entries,
        )
        self._incarnation = rec.incarnation
        if snapshot is not None and snapshot.meta.index > 0:
            self._restore(snapshot)
        self._applied = core.applied
        self._core = core
        self._committer = GroupCommitter(storage)
        identify = self._peer_identity or _default_peer_identity()
        transport = Transport(
            self.id,
            self._peers,
            self._server_ssl,
            self._client_ssl,
            self._on_messages,
            peer_identity=identify,
            listen_host=opts.listen[0],
            listen_port=opts.listen[1],
            rng=random.Random(self._rng.getrandbits(64)),
            backoff=Backoff(base=min(0.05, opts.reconnect_max_s), cap=opts.reconnect_max_s),
        )
        self._transport = transport
        log.info(
            "node %d: starting (incarnation %#x, term %d, commit %d, last index %d, snapshot %d)",
            self.id,
            rec.incarnation,
            core.term,
            core.commit,
            core.last_index(),
            core.snap_index,
        )
        error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                port = await nursery.start(transport.run)
                self._listen = (opts.listen[0], port)
                nursery.start_soon(self._ticker, core)
                nursery.start_soon(self._ready_loop, core, storage)
                if self._state == _STARTING:
                    self._state = _RUNNING
                self._notify()
                task_status.started(self._listen)
        except BaseExceptionGroup as group:
            error = _sole_error(group)
            if error is group:
                raise
        if error is not None:
            # Raised outside the except block so it does not chain to its own group.
            raise error

    async def shutdown(self) -> None:
        """Stop gracefully and return once stopped.

        A leader first hands leadership to its most up-to-date voter and waits
        (at most ``shutdown_transfer_timeout_s``) until another node leads, so
        the cluster does not wait an election timeout; then everything stops.
        Requests still in flight fail with NodeStopped.  Idempotent.
        """
        if self._state == _NEW:
            self._state = _STOPPED
            self._stopped.set()
            return
        if self._state == _STOPPING:
            await self._stopped.wait()  # another shutdown() is handing over
            return
        if self._state == _RUNNING:
            self._state = _STOPPING
            core = self._core
            if core is not None and core.role is Role.LEADER and self._best_transferee(core):
                with trio.move_on_after(self.options.shutdown_transfer_timeout_s):
                    try:
                        new = await self._transfer(None)
                        log.info("node %d: handed leadership to %d before stopping", self.id, new)
                    except RaftError as exc:
                        log.warning(
                            "node %d: leadership transfer before stopping failed: %s", self.id, exc
                        )
        if self._scope is not None:
            self._scope.cancel()
        await self._stopped.wait()

    # ------------------------------------------------------------ requests

    async def propose(self, command: bytes, *, timeout: float | None = None) -> object:
        """Replicate ``command`` and return what the state machine's ``apply``
        returned for it, once it is committed and applied on this node.

        Raises NotLeader(leader_hint) if this node does not lead (nothing was
        proposed), ProposalDropped if the proposal was refused or its entry was
        overwritten by another leader (it was not applied), LeadershipLost (a
        NotLeader) or ProposalTimeout if the outcome is unknown, NodeStopped,
        and InvalidRequest for a command that is not bytes or is larger than
        ``max_command_bytes``.
        """
        if type(command) is not bytes:
            raise InvalidRequest(f"a command must be bytes, got {type(command).__name__}")
        if len(command) > self.options.max_command_bytes:
            raise InvalidRequest(
                f"command of {len(command)} bytes exceeds max_command_bytes "
                f"({self.options.max_command_bytes})"
            )
        limit = self._timeout(timeout, self.options.proposal_timeout_s)
        core = self._serving_core()
        if core.role is not Role.LEADER:
            raise NotLeader(core.leader)
        waiter = _Waiter(command)
        with trio.move_on_after(limit):
            async with self._proposal_slots:
                self._serving_core()
                self._queued.append(waiter)
                self._wake()
                try:
                    return await waiter.wait()
                finally:
                    self._forget(waiter)
        raise ProposalTimeout(f"proposal not applied within {limit:g}s; its outcome is unknown")

    def attach_proposal_source(self, source: ProposalSource | None) -> None:
        """Let the ready loop take commands from ``source`` itself (None detaches).

        After :meth:`proposals_waiting`, the ready loop calls
        ``source.take_proposals()`` just before it proposes what is queued, so
        commands that arrive while a flush runs go into the next one without a
        task of their own waiting on each.  Every command taken gets exactly
        one callback: its result once applied here, or the error ``propose``
        would raise (NotLeader, ProposalDropped, LeadershipLost,
        ProposalTimeout after ``proposal_timeout_s``, NodeStopped,
        InvalidRequest for a command that is not bytes or too large).  The
        callbacks run in the ready loop: they must be quick and not raise.
        """
        self._source = source
        self._source_waiting = source is not None

    def proposals_waiting(self) -> None:
        """Tell the node that its proposal source has commands (cheap; call it when
        the source goes from empty to non-empty).  On a node that is not running
        they are taken and failed with NodeStopped at once."""
        self._source_waiting = True
        if self._state in (_NEW, _STOPPED):
            self._drain_source(lambda: NodeStopped(f"node {self.id} is {self._state}"))
            return
        self._wake()

    def _drain_source(self, error: Callable[[], BaseException]) -> None:
        source = self._source
        if source is None or not self._source_waiting:
            return
        self._source_waiting = False
        for _, done in source.take_proposals():
            _Waiter(b"", done).fail(error())

    async def read(self, query: bytes, *, timeout: float | None = None) -> object:
        """Answer ``query`` with the state machine's ``query``, linearizably: the
        answer reflects every write acknowledged (anywhere) before the call.

        ReadIndex: the leader records its commit index, confirms with a quorum
        of heartbeats that it still leads, waits until it has applied that
        index, then queries its own state machine.  Raises NotLeader on a
        follower (or if leadership is lost first), ReadTimeout, NodeStopped,
        InvalidRequest; an exception from ``query`` itself reaches the caller.
        """
        if type(query) is not bytes:
            raise InvalidRequest(f"a query must be bytes, got {type(query).__name__}")
        limit = self._timeout(timeout, self.options.read_timeout_s)
        core = self._serving_core()
        if core.role is not Role.LEADER:
            raise NotLeader(core.leader)
        waiter = _Waiter(query)
        with trio.move_on_after(limit):
            async with self._read_slots:
                core = self._serving_core()
                token = next(self._read_tokens)
                core.read_index(token)  # NotLeader if leadership moved while we waited
                self._reads[token] = waiter
                self._wake()
                try:
                    return await waiter.wait()
                finally:
                    self._reads.pop(token, None)
        raise ReadTimeout(f"no linearizable read point within {limit:g}s")

    async def change_membership(self, change: ConfChange, *, timeout: float | None = None) -> int:
        """Propose one membership change and return its log index once it is
        committed and applied here.

        ADD_LEARNER adds a non-voting member (tell every node its address with
        :meth:`add_peer` first); PROMOTE makes a caught-up learner a voter
        (ConfChangeRejected until it has caught up: retry); REMOVE removes a
        member.  Raises NotLeader, ConfChangeRejected, ProposalDropped,
        LeadershipLost, ProposalTimeout, NodeStopped, InvalidRequest.
        """
        if not isinstance(change, ConfChange) or not isinstance(change.type, ConfChangeType):
            raise InvalidRequest(f"change must be a ConfChange, got {change!r}")
        if type(change.node) is not int or not 0 < change.node <= _MAX_ID:
            raise InvalidRequest(f"invalid node id {change.node!r}")
        limit = self._timeout(timeout, self.options.proposal_timeout_s)
        core = self._serving_core()
        index = core.propose_conf_change(change)
        waiter = _Waiter(b"")
        waiter.index, waiter.term = index, core.term
        self._by_index[index] = waiter
        self._wake()
        log.info(
            "node %d: proposed %s of node %d at %d", self.id, change.type.name, change.node, index
        )
        with trio.move_on_after(limit):
            try:
                await waiter.wait()
                return index
            finally:
                self._forget(waiter)
        raise ProposalTimeout(f"membership change not applied within {limit:g}s; outcome unknown")

    async def transfer_leadership(
        self, target: NodeId | None = None, *, timeout: float | None = None
    ) -> NodeId:
        """Hand leadership to ``target`` (default: the most up-to-date other voter)
        and return the new leader's id once this node has seen it take over.

        Proposals are refused (ProposalDropped) while the transfer runs.  Raises
        NotLeader, InvalidRequest (target is not another voter, or there is none),
        TransferTimeout (the core abandons a transfer after an election timeout),
        NodeStopped.
        """
        default = self.options.transfer_timeout_s or 3 * self.options.election_timeout_s
        limit = self._timeout(timeout, default)
        if target is not None and (type(target) is not int or not 0 < target <= _MAX_ID):
            raise InvalidRequest(f"invalid node id {target!r}")
        self._serving_core()
        with trio.move_on_after(limit):
            return await self._transfer(target)
        raise TransferTimeout(f"leadership did not move within {limit:g}s")

    async def _transfer(self, target: NodeId | None) -> NodeId:
        core = self._core
        if core is None or self._state not in (_RUNNING, _STOPPING):
            raise NodeStopped(f"node {self.id} is not running")
        if core.role is not Role.LEADER:
            raise NotLeader(core.leader)
        if target is None:
            target = self._best_transferee(core)
            if target is None:
                raise InvalidRequest("there is no other voter to hand leadership to")
        elif target == self.id or target not in core.conf.voter_ids():
            raise InvalidRequest(f"node {target} is not another voter")
        core.transfer_leadership(target)
        self._wake()
        log.info("node %d: transferring leadership to %d", self.id, target)

        def moved() -> bool:
            return core.role is not Role.LEADER and core.leader not in (None, self.id)

        await self._wait_until(moved, allow_stopping=True)
        assert core.leader is not None
        return core.leader

    def _best_transferee(self, core: RawNode) -> NodeId | None:
        best: tuple[int, NodeId] | None = None
        for node, inc in core.conf.voters:
            pr = core.progress.get(node)
            if node == self.id or pr is None or pr.incarnation != inc:
                continue
            if best is None or pr.match > best[0]:
                best = (pr.match, node)
        return best[1] if best is not None else None

    # ------------------------------------------------------------ peers and status

    def add_peer(self, node_id: NodeId, address: PeerAddress) -> None:
        """Add a peer's address, or move a known peer to a new one.  Needed before
        the peer is added to the membership (and harmless for non-members)."""
        if type(node_id) is not int or not 0 < node_id <= _MAX_ID:
            raise InvalidRequest(f"invalid node id {node_id!r}")
        if node_id == self.id:
            raise InvalidRequest("a node is not its own peer")
        _check_address(address, f"peer {node_id}", allow_port_zero=False)
        self._peers[node_id] = address
        if self._transport is not None:
            self._transport.add_peer(node_id, address)

    def remove_peer(self, node_id: NodeId) -> None:
        """Forget a peer's address (after it left the membership)."""
        self._peers.pop(node_id, None)
        if self._transport is not None:
            self._transport.remove_peer(node_id)

    @property
    def peers(self) -> dict[NodeId, PeerAddress]:
        return dict(self._peers)

    def status(self) -> dict[str, object]:
        """A snapshot for humans and metrics: id, state, role, term, leader,
        commit, applied, last_index, snapshot_index, voters, learners,
        is_voter, incarnation, listen, pending_proposals, pending_reads.
        ``role`` is ``"stopped"`` unless the node runs."""
        core = self._core
        out: dict[str, object] = {
            "id": self.id,
            "state": self._state,
            "role": "stopped",
            "term": 0,
            "leader": None,
            "commit": 0,
            "applied": self._applied,
            "last_index": 0,
            "snapshot_index": 0,
            "voters": [],
            "learners": [],
            "is_voter": False,
        }
        if core is not None:
            out.update(core.status())
            out["applied"] = self._applied
            if self._state not in (_RUNNING, _STOPPING):
                out["role"], out["leader"] = "stopped", None
        out["state"] = self._state
        out["incarnation"] = self._incarnation
        out["listen"] = self._listen
        out["pending_proposals"] = len(self._queued) + len(self._by_index)
        out["pending_reads"] = len(self._reads)
        return out

    async def wait_for_change(self) -> None:
        """Return after the node's state next changes (after a Ready was handled,
        or when it starts or stops).  Raises NodeStopped if it is stopped.
        May be called before :meth:`run` starts the node."""
        if self._state == _STOPPED:
            raise NodeStopped(f"node {self.id} is stopped")
        await self._changed.wait()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checking it after every state change.
        Raises NodeStopped if the node stops (or begins to) first.  May be called
        before :meth:`run` starts the node.  Wrap it in a timeout."""
        await self._wait_until(predicate, allow_stopping=False)

    async def _wait_until(self, predicate: Callable[[], bool], *, allow_stopping: bool) -> None:
        while not predicate():
            if self._state == _STOPPED or (self._state == _STOPPING and not allow_stopping):
                raise NodeStopped(f"node {self.id} is {self._state}")
            await self._changed.wait()

    # ------------------------------------------------------------ helpers

    def _serving_core(self) -> RawNode:
        core = self._core
        if core is None or self._state != _RUNNING:
            raise NodeStopped(f"node {self.id} is {self._state}")
        return core

    @staticmethod
    def _timeout(timeout: float | None, default: float) -> float:
        if timeout is None:
            return default
        return _check_timeout(timeout, "timeout")

    def _wake(self) -> None:
        self._wakeup.set()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def _forget(self, waiter: _Waiter) -> None:
        """Drop a waiter whose caller gave up (timeout, cancellation) or finished."""
        if waiter.done:
            return
        waiter.done = True  # a later flush or apply must not use it
        if waiter.index:
            if self._by_index.get(waiter.index) is waiter:
                del self._by_index[waiter.index]
        elif waiter in self._queued:
            self._queued.remove(waiter)

    def _fail_all(self, error: Callable[[], BaseException]) -> None:
        self._drain_source(error)
        self._timed.clear()
        for w in self._queued:
            w.fail(error())
        for w in self._by_index.values():
            w.fail(error())
        for w in self._reads.values():
            w.fail(error())
        self._queued = []
        self._by_index = {}
        self._reads = {}
        self._read_points = []

    def _restore(self, snapshot: Snapshot) -> None:
        index = snapshot.meta.index
        try:
            self._sm.restore(index, snapshot.data)
        except Exception as exc:
            raise StateMachineFailed(
                f"node {self.id}: restoring the snapshot at {index} raised {exc!r}"
            ) from exc
        self._applied = index

    # ------------------------------------------------------------ tasks

    async def _ticker(self, core: RawNode) -> None:
        period = self.options.tick_ms / 1000
        deadline = trio.current_time() + period
        while True:
            await trio.sleep_until(deadline)
            core.tick()
            self._expire_proposals(trio.current_time())
            self._wake()
            deadline += period
            now = trio.current_time()
            if deadline < now:
                # The loop was stalled for more than a tick: carry on from now rather
                # than firing a burst of ticks that would expire election timers at once.
                deadline = now + period

    async def _on_messages(self, messages: list[Message]) -> None:
        core = self._core
        if core is None or self._state == _STOPPED:
            return
        for m in messages:
            err = core.step(m)
            if err is not None:
                self.stats.invalid_messages += 1
                log.warning("node %d: ignored a message from %d: %s", self.id, m.src, err)
        self._wake()

    async def _ready_loop(self, core: RawNode, storage: Storage) -> None:
        while True:
            self._flush_proposals(core)
            if not core.has_ready():
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            await self._handle_ready(core, storage, core.ready())
            # Let receivers and proposers run before the next Ready, so it batches
            # everything that arrived meanwhile.
            await trio.lowlevel.checkpoint()

    def _expire_proposals(self, now: float) -> None:
        """Fail callback proposals whose deadline passed (a task-held proposal
        times out by itself); their entries may still be applied."""
        timed = self._timed
        while timed and (timed[0].done or timed[0].deadline <= now):
            w = timed.popleft()
            if w.done:
                continue
            index = w.index
            w.fail(
                ProposalTimeout(
                    f"proposal not applied within {self.options.proposal_timeout_s:g}s; "
                    "its outcome is unknown"
                )
            )
            if index and self._by_index.get(index) is w:
                del self._by_index[index]
            elif w in self._queued:
                self._queued.remove(w)

    def _take_from_source(self) -> None:
        source = self._source
        if source is None or not self._source_waiting:
            return
        if self._state != _RUNNING:
            self._drain_source(lambda: NodeStopped(f"node {self.id} is {self._state}"))
            return
        self._source_waiting = False
        deadline = trio.current_time() + self.options.proposal_timeout_s
        room = self.options.max_pending_proposals - len(self._by_index) - len(self._queued)
        limit = self.options.max_command_bytes
        for data, done in source.take_proposals():
            w = _Waiter(data, done)
            if type(data) is not bytes or len(data) > limit:
                w.fail(InvalidRequest(f"a command must be bytes of at most {limit} bytes"))
            elif room <= 0:
                w.fail(
                    ProposalDropped(
                        f"{self.options.max_pending_proposals} proposals are pending already"
                    )
                )
            else:
                room -= 1
                w.deadline = deadline
                self._timed.append(w)
                self._queued.append(w)

    def _flush_proposals(self, core: RawNode) -> None:
        self._take_from_source()
        batch = [w for w in self._queued if not w.done]
        self._queued = []
        if not batch:
            return
        try:
            first = core.propose_batch([w.data for w in batch])
        except NotLeader as exc:
            for w in batch:
                w.fail(NotLeader(exc.leader_hint))
            return
        except ProposalDropped as exc:
            for w in batch:
                w.fail(ProposalDropped(str(exc)))
            return
        term = core.term
        for k, w in enumerate(batch):
            w.index, w.term = first + k, term
            self._by_index[first + k] = w
        self.stats.proposals += len(batch)
        self.stats.proposal_batches += 1

    async def _handle_ready(self, core: RawNode, storage: Storage, rd: Ready) -> None:
        self.stats.readies += 1
        lost_leadership = False
        if rd.soft_state is not None:
            lost_leadership = self._on_soft_state(rd.soft_state)

        # 0. A leader's own requests may leave before its flush: followers persist
        #    while it does, so a commit costs one flush time, not two.
        if rd.early_messages:
            self._send(rd.early_messages)

        # Committed entries this node had already persisted before this Ready may
        # be applied (and their proposers answered) before this Ready's flush:
        # otherwise every commit waits for an unrelated flush of newer entries.
        early = 0
        if rd.snapshot is None and rd.committed and rd.committed[0].index <= core.stable_index:
            early = min(len(rd.committed), core.stable_index - rd.committed[0].index + 1)
            for e in rd.committed[:early]:
                self._apply(e)

        # 1. Persist: snapshot, entries, hard state, then one flush.
        if rd.snapshot is not None and rd.snapshot.meta.index == 0:
            # A node that started with no configuration learned the cluster's
            # initial membership.  Without it on disk, a restarted joiner would
            # rebuild its membership from its log's changes alone (after
            # "promote 4": voters {4}) and could elect itself.
            await trio.to_thread.run_sync(storage.adopt_bootstrap, rd.snapshot.meta.conf)
        elif rd.snapshot is not None:
            # Durable on return; discards the old log (the core already did).
            await trio.to_thread.run_sync(storage.save_snapshot, rd.snapshot)
        must_flush = False
        if rd.entries:
            storage.append(rd.entries)
            self.stats.entries_persisted += len(rd.entries)
            must_flush = True
        if rd.hard_state is not None:
            before = storage.hard_state
            storage.set_hard_state(rd.hard_state)
            # Term and vote must be durable before any message of this Ready leaves;
            # a commit index alone need not be (a restarted node learns it again from
            # the leader), so it rides along with the next flush.
            if (before.term, before.vote) != (rd.hard_state.term, rd.hard_state.vote):
                must_flush = True
        flush_behind = must_flush and rd.persist_later and self._nursery is not None
        if flush_behind:
            # A leader's Ready: nothing in it waits for this flush, so the loop goes
            # on building the next Ready while it runs; the core counts the leader
            # toward committing these entries only once _flush_behind reports them.
            assert self._nursery is not None
            self._nursery.start_soon(self._flush_behind, core, rd)
        elif must_flush:
            assert self._committer is not None
            await self._committer.commit()
            self.stats.flushes += 1

        # 2. Only now may the messages leave.
        if rd.messages:
            self._send(rd.messages)

        # 3. Apply: an installed snapshot first, then committed entries.
        if rd.snapshot is not None and rd.snapshot.meta.index == 0:
            log.info("node %d: learned the initial membership from the leader", self.id)
        elif rd.snapshot is not None:
            self._restore(rd.snapshot)
            self.stats.snapshots_installed += 1
            log.info("node %d: installed a snapshot at %d", self.id, rd.snapshot.meta.index)
            self._fail_covered(rd.snapshot.meta.index, core)
        for e in rd.committed[early:]:
            self._apply(e)

        # 4. Reads: register read points, fail dropped ones, serve what is applied.
        for rs in rd.read_states:
            token = rs.request
            if isinstance(token, int) and token in self._reads:
                self._read_points.append((rs.index, token))
        for token in rd.dropped_reads:
            w = self._reads.get(token) if isinstance(token, int) else None
            if w is not None:
                w.fail(NotLeader(core.leader))
        self._serve_reads()

        core.advance(rd, persisted=not flush_behind)
        if lost_leadership:
            self._on_leadership_lost(core)
        self._maybe_compact(core)
        self._notify()

    async def _flush_behind(self, core: RawNode, rd: Ready) -> None:
        assert self._committer is not None
        await self._committer.commit()
        self.stats.flushes += 1
        core.persisted(rd)
        self._wake()

    def _on_soft_state(self, ss: SoftState) -> bool:
        prev = self._soft
        self._soft = ss
        self._history.append(ss)
        log.info(
            "node %d: %s in term %d (leader %s)", self.id, ss.role.name.lower(), ss.term, ss.leader
        )
        return (
            prev is not None
            and prev.role is Role.LEADER
            and (ss.role is not Role.LEADER or ss.term != prev.term)
        )

    def _on_leadership_lost(self, core: RawNode) -> None:
        # Entries at or below the commit index are committed and will be applied
        # here, which settles their proposals; the rest may or may not survive.
        for index in [i for i in self._by_index if i > core.commit]:
            self._by_index.pop(index).fail(LeadershipLost(core.leader))

    def _fail_covered(self, index: int, core: RawNode) -> None:
        # A snapshot replaced the log through ``index``: this node will never apply
        # those entries itself, so it cannot tell whether its proposals made it.
        for i in [i for i in self._by_index if i <= index]:
            self._by_index.pop(i).fail(LeadershipLost(core.leader))

    def _send(self, messages: list[Message]) -> None:
        assert self._transport is not None
        try:
            self._transport.send(messages)
        except RaftError:
            # One message the transport refuses (should not happen: commands are
            # bounded) must not hold back the others.
            for m in messages:
                try:
                    self._transport.send([m])
                except RaftError as exc:
                    log.error("node %d: cannot send %s to %d: %s", self.id, m.type.name, m.dst, exc)
        self.stats.messages_sent += len(messages)

    def _apply(self, e: Entry) -> None:
        result: object = e.index
        if e.kind is EntryKind.NORMAL:
            try:
                result = self._sm.apply(e.index, e.data)
            except Exception as exc:
                raise StateMachineFailed(
                    f"node {self.id}: applying entry {e.index} raised {exc!r}"
                ) from exc
            self.stats.entries_applied += 1
        self._applied = e.index
        w = self._by_index.pop(e.index, None)
        if w is None:
            return
        if w.term == e.term:
            w.resolve(result)
        else:
            w.fail(
                ProposalDropped(
                    f"entry {e.index} of term {w.term} was replaced by another leader's "
                    f"entry of term {e.term}; it was not applied"
                )
            )

    def _serve_reads(self) -> None:
        if not self._read_points:
            return
        waiting: list[tuple[int, int]] = []
        for index, token in self._read_points:
            w = self._reads.get(token)
            if w is None or w.done:
                continue
            if index > self._applied:
                waiting.append((index, token))
                continue
            try:
                w.resolve(self._sm.query(w.data))
            except Exception as exc:
                w.fail(exc)
            self.stats.reads_served += 1
        self._read_points = waiting

    def _compaction_due(self, core: RawNode) -> bool:
        return (
            not self._saving_snapshot
            and core.applied - core.snap_index >= self.options.snapshot_every
            # A write-behind leader may have applied entries its own disk has not
            # finished writing; the snapshot waits for them (see RawNode.compact).
            and core.applied <= core.stable_index
        )

    def _maybe_compact(self, core: RawNode) -> None:
        # The state machine must be exactly at the core's applied index, which it
        # is right after advance(); the snapshot must describe that index.
        if not self._compaction_due(core) or self._applied != core.applied:
            return
        index = core.applied
        try:
            data = self._sm.snapshot()
        except Exception as exc:
            raise StateMachineFailed(f"node {self.id}: snapshot() raised {exc!r}") from exc
        if type(data) is not bytes:
            raise StateMachineFailed(
                f"node {self.id}: snapshot() returned {type(data).__name__}, not bytes"
            )
        snap = core.compact(index, data)
        self.stats.snapshots_taken += 1
        self._saving_snapshot = True
        assert self._nursery is not None
        self._nursery.start_soon(self._save_snapshot, snap)

    async def _save_snapshot(self, snap: Snapshot) -> None:
        assert self._storage is not None
        try:
            await trio.to_thread.run_sync(self._storage.save_snapshot, snap)
            log.info("node %d: saved a snapshot at %d", self.id, snap.meta.index)
        except InvalidStorageInput as exc:
            # A newer snapshot from the leader was installed meanwhile.
            log.info(
                "node %d: skipped saving the snapshot at %d: %s", self.id, snap.meta.index, exc
            )
        finally:
            self._saving_snapshot = False


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one real error in a nursery's exception group (cancellations aside), or
    the group itself when there are several, so callers can catch e.g.
    StateMachineFailed from :meth:`RaftNode.run` directly."""
    _, rest = group.split(trio.Cancelled)
    if rest is not None and len(rest.exceptions) == 1:
        only = rest.exceptions[0]
        if not isinstance(only, BaseExceptionGroup):
            return only
    return group


def _default_peer_identity() -> PeerIdentity:
    from vaultd.pki import node_id_from_der

    return node_id_from_der


async def shutdown_on_signals(
    node: RaftNode,
    signals: Sequence[int] = (signal.SIGTERM,),
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Wait for one of ``signals``, then shut ``node`` down gracefully (a leader
    hands over first) and return the signal's number.

    Run it in the nursery that runs the node (``await nursery.start(...)``
    returns once the handler is installed).  Must run in the main thread.
    """
    with trio.open_signal_receiver(*signals) as received:
        task_status.started()
        async for signum in received:
            log.info("node %d: got %s, shutting down", node.id, signal.Signals(signum).name)
            await node.shutdown()
            return signum
    raise AssertionError("the signal receiver never ends")

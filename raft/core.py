"""The Raft consensus core: a pure state machine in the style of etcd-io/raft's RawNode.

Nothing here performs I/O, reads a clock or draws global randomness.  The
driver feeds the node messages (:meth:`RawNode.step`), clock ticks
(:meth:`RawNode.tick`), proposals, read requests and membership changes; it
collects work with :meth:`RawNode.ready` and acknowledges it with
:meth:`RawNode.advance` once the Ready's persistence is durable.

The node keeps its log in memory between snapshots; compaction
(:meth:`RawNode.compact`) bounds it.  Protocol features: PreVote,
CheckQuorum with leader leases, pipelined and batched replication with fast
back-off, ReadIndex reads, leadership transfer, one-at-a-time membership
changes with learners, chunked snapshot streaming, and storage incarnations
so that a node that lost its disk neither votes nor counts toward a quorum
until it is added back (see docs/raft.md).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from . import confchange
from .errors import ConfChangeRejected, InvalidMessage, NotLeader, ProposalDropped, RaftError
from .progress import Progress, ProgressState
from .types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

_MT = MessageType
_REQUESTS = frozenset({_MT.APPEND, _MT.HEARTBEAT, _MT.SNAPSHOT, _MT.TIMEOUT_NOW})
_LEADER_REQUESTS = frozenset({_MT.APPEND, _MT.HEARTBEAT, _MT.SNAPSHOT, _MT.TIMEOUT_NOW})
_RESPONSES = frozenset({_MT.APPEND_RESP, _MT.HEARTBEAT_RESP, _MT.SNAPSHOT_RESP})
_MAX_ID = (1 << 63) - 1


@dataclass(slots=True, frozen=True)
class Config:
    """Tuning of one node.  Ticks are the driver's clock unit (e.g. 50 ms)."""

    id: NodeId
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_entries_per_msg: int = 4096
    max_bytes_per_msg: int = 1 << 20
    max_inflight_msgs: int = 64
    snapshot_chunk_bytes: int = 1 << 20
    pre_vote: bool = True
    check_quorum: bool = True

    def validate(self) -> None:
        if not 0 < self.id <= _MAX_ID:
            raise RaftError(f"node id must be in 1..2**63-1, got {self.id}")
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise RaftError("need 1 <= heartbeat_tick < election_tick")
        if min(self.max_entries_per_msg, self.max_bytes_per_msg, self.max_inflight_msgs) < 1:
            raise RaftError("message and in-flight limits must be positive")
        if self.snapshot_chunk_bytes < 1:
            raise RaftError("snapshot_chunk_bytes must be positive")


@dataclass(slots=True)
class _PendingRead:
    round: int
    index: int
    request: object


@dataclass(slots=True)
class _IncomingSnapshot:
    src: NodeId
    meta: SnapshotMeta
    data: bytearray


class RawNode:
    """One Raft participant.  See the module docstring for the driving contract."""

    def __init__(
        self,
        config: Config,
        *,
        rng: random.Random,
        incarnation: int,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: list[Entry] | None = None,
    ) -> None:
        """Restore a node from what its storage recovered.

        ``snapshot`` carries the membership; a node created for a new cluster
        gets a bootstrap snapshot at index 0 naming the initial voters.  A
        node with no snapshot has no configuration: it only listens until a
        leader adds it.
        """
        config.validate()
        self.config = config
        self.id = config.id
        self.incarnation = incarnation
        self._rng = rng
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote: NodeId | None = hs.vote

        self._snapshot = snapshot
        self.snap_index = snapshot.meta.index if snapshot else 0
        self.snap_term = snapshot.meta.term if snapshot else 0
        self._snap_conf = snapshot.meta.conf if snapshot else ConfState()
        self.entries: list[Entry] = list(entries or [])
        if self.entries and self.entries[0].index != self.snap_index + 1:
            raise RaftError(
                f"stored entries start at {self.entries[0].index}, "
                f"expected {self.snap_index + 1} after the snapshot"
            )
        for prev, nxt in zip(self.entries, self.entries[1:], strict=False):
            if nxt.index != prev.index + 1 or nxt.term < prev.term:
                raise RaftError(f"stored entries are not a log at index {nxt.index}")
        self.commit = max(self.snap_index, min(hs.commit, self.last_index()))
        self.applied = self.snap_index
        self._handed_commit = self.snap_index  # committed entries handed to the driver
        self.stable_index = self.last_index()  # persisted through this index
        self._unsent_from = self.last_index() + 1  # first entry not yet handed to the driver

        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None
        self.progress: dict[NodeId, Progress] = {}
        self.conf = self._snap_conf
        self.pending_conf_index = 0
        self._recompute_conf()
        self._votes: dict[NodeId, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()
        self._transferee: NodeId | None = None
        self._transfer_elapsed = 0
        self._read_round = 0
        self._read_round_open = False
        self._pending_reads: deque[_PendingRead] = deque()
        self._reads_awaiting_commit: list[object] = []
        self._incoming: _IncomingSnapshot | None = None
        self._want_broadcast = False

        self._msgs: list[Message] = []
        self._install: Snapshot | None = None
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[object] = []
        self._prev_hard = HardState(self.term, self.vote, self.commit)
        self._prev_soft = SoftState(self.role, self.leader, self.term)
        self._outstanding: Ready | None = None

    # ------------------------------------------------------------------ log

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snap_index

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None if compacted away or absent."""
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.last_index():
            return None
        return self.entries[index - self.snap_index - 1].term

    def _slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index <= hi (both inside the log)."""
        base = self.snap_index + 1
        return self.entries[lo - base : hi - base + 1]

    def _truncate_from(self, index: int) -> None:
        del self.entries[index - self.snap_index - 1 :]
        self.stable_index = min(self.stable_index, index - 1)
        self._unsent_from = min(self._unsent_from, index)
        if self.pending_conf_index >= index:
            self._recompute_conf()

    def _append(self, new: list[Entry]) -> None:
        self.entries.extend(new)
        for e in new:
            if e.kind is EntryKind.CONF_CHANGE:
                self._apply_conf_entry(e)

    def _recompute_conf(self) -> None:
        self.conf = self._snap_conf
        self.pending_conf_index = 0
        for e in self.entries:
            if e.kind is EntryKind.CONF_CHANGE:
                self._apply_conf_entry(e)

    def _apply_conf_entry(self, e: Entry) -> None:
        try:
            cc = confchange.decode(e.data)
        except InvalidMessage:
            # Only a leader creates conf entries and it encodes them itself;
            # an undecodable one is skipped identically on every node.
            return
        self.conf = confchange.apply(self.conf, cc)
        self.pending_conf_index = e.index
        if self.role is Role.LEADER:
            self._sync_progress_with_conf()

    def _conf_at(self, index: int) -> ConfState:
        conf = self._snap_conf
        for e in self._slice(self.snap_index + 1, index):
            if e.kind is EntryKind.CONF_CHANGE:
                try:
                    conf = confchange.apply(conf, confchange.decode(e.data))
                except InvalidMessage:
                    continue
        return conf

    # ----------------------------------------------------------- membership

    def is_voter(self) -> bool:
        return self.conf.is_voter(self.id, self.incarnation)

    def _counts(self, node: NodeId, incarnation: int) -> bool:
        """Whether ``node`` speaking with ``incarnation`` is the voter the config names."""
        return self.conf.is_voter(node, incarnation)

    def _quorum(self) -> int:
        return len(self.conf.voters) // 2 + 1

    def _sync_progress_with_conf(self) -> None:
        members = self.conf.member_ids()
        for node in list(self.progress):
            if node not in members and node != self.id:
                del self.progress[node]
        for node in members:
            if node not in self.progress:
                self.progress[node] = Progress(next=self.last_index() + 1)
        me = self.progress.get(self.id)
        if me is None:
            me = self.progress[self.id] = Progress()
        me.match, me.next, me.incarnation = (
            self.stable_index,
            self.last_index() + 1,
            self.incarnation,
        )
        if self._transferee is not None and self._transferee not in self.conf.voter_ids():
            self._transferee = None

    # ---------------------------------------------------------- role changes

    def _reset_randomized_timeout(self) -> None:
        et = self.config.election_tick
        self._randomized_timeout = et + self._rng.randrange(et)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self._transferee = None
        self._drop_reads()
        self.progress = {}

    def _drop_reads(self) -> None:
        self._read_round_open = False
        self._dropped_reads.extend(r.request for r in self._pending_reads)
        self._dropped_reads.extend(self._reads_awaiting_commit)
        self._pending_reads.clear()
        self._reads_awaiting_commit = []

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        # PreVote leaves term and vote untouched: a partitioned node that
        # keeps failing pre-votes never inflates the cluster's term.
        self._drop_reads()
        self.progress = {}
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {}

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self._sync_progress_with_conf()
        for node, pr in self.progress.items():
            if node != self.id:
                pr.recent_active = True  # give every follower one CheckQuorum round
        # A fresh leader cannot know which earlier-term entries are committed
        # until it commits one of its own (§5.4.2); membership changes wait
        # for that too, which closes the single-server-change hole.
        self._append([Entry(self.term, self.last_index() + 1, EntryKind.NOOP, b"")])
        self.pending_conf_index = self.last_index()
        self._want_broadcast = True

    def _campaign(self, force: bool = False) -> None:
        if not self._may_vote():
            return
        if self.config.pre_vote and not force:
            self._become_pre_candidate()
            vote_type, term = _MT.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = _MT.VOTE, self.term
        self._votes = {self.id: True} if self.is_voter() else {}
        if self._tally() is True:
            self._won(vote_type)
            return
        for node, _inc in self.conf.voters:
            if node != self.id:
                self._send(
                    Message(
                        vote_type,
                        self.id,
                        node,
                        term,
                        index=self.last_index(),
                        log_term=self.last_term(),
                        force=force,
                    )
                )

    def _tally(self) -> bool | None:
        # Only the current configuration's voters count, the candidate included
        # only if it is one of them (it may be campaigning to finish its own removal).
        votes = [self._votes.get(n) for n, _ in self.conf.voters]
        granted = sum(1 for v in votes if v)
        rejected = sum(1 for v in votes if v is False)
        if granted >= self._quorum():
            return True
        if rejected > len(self.conf.voters) - self._quorum():
            return False
        return None

    def _won(self, vote_type: MessageType) -> None:
        if vote_type is _MT.PRE_VOTE:
            self._campaign(force=True)
        else:
            self._become_leader()

    # ---------------------------------------------------------------- inputs

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        self._election_elapsed += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        elif self._election_elapsed >= self._randomized_timeout and self._may_vote():
            self._election_elapsed = 0
            self._reset_randomized_timeout()
            self._campaign()

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.election_tick:
                self._transferee = None
        if self._election_elapsed >= self.config.election_tick:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
        if self._heartbeat_elapsed >= self.config.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = 0
        for node, inc in self.conf.voters:
            if node == self.id:
                active += inc == self.incarnation
                continue
            pr = self.progress.get(node)
            if pr is not None and pr.recent_active and pr.incarnation == inc:
                active += 1
        for node, pr in self.progress.items():
            if node != self.id:
                pr.was_active, pr.recent_active = pr.recent_active, False
        return active >= self._quorum()

    def propose(self, data: bytes) -> int:
        """Append an application command; returns its log index.

        Raises NotLeader, or ProposalDropped during a leadership transfer.
        The entry is committed only if it later appears in ``Ready.committed``.
        """
        return self.propose_batch([data])

    def propose_batch(self, commands: list[bytes]) -> int:
        """Append several commands at once; returns the index of the first."""
        self._check_can_propose()
        term, first = self.term, self.last_index() + 1
        self._append(
            [Entry(term, first + i, EntryKind.NORMAL, data) for i, data in enumerate(commands)]
        )
        self._after_leader_append()
        return first

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose one membership change; returns its log index.

        ADD_LEARNER adds a non-voter (or demotes a voter); PROMOTE turns a
        learner that has caught up into a voter, binding the incarnation the
        learner reported; REMOVE removes a member.  Raises ConfChangeRejected
        while another change is uncommitted or when the change is unsafe.
        """
        self._check_can_propose()
        if self.pending_conf_index > self.commit:
            raise ConfChangeRejected("another membership change is not yet committed")
        if not 0 < cc.node <= _MAX_ID:
            raise ConfChangeRejected(f"invalid node id {cc.node}")
        if cc.type is ConfChangeType.PROMOTE:
            if cc.node not in self.conf.learner_ids():
                raise ConfChangeRejected(f"node {cc.node} is not a learner")
            pr = self.progress.get(cc.node)
            if pr is None or pr.incarnation == 0 or pr.match < self.commit:
                raise ConfChangeRejected(f"learner {cc.node} has not caught up yet")
            cc = ConfChange(cc.type, cc.node, pr.incarnation)
        elif cc.type is ConfChangeType.REMOVE:
            if cc.node not in self.conf.member_ids():
                raise ConfChangeRejected(f"node {cc.node} is not a member")
            if self.conf.voter_ids() == {cc.node}:
                raise ConfChangeRejected("cannot remove the last voter")
        elif cc.type is ConfChangeType.ADD_LEARNER:
            if self.conf.voter_ids() == {cc.node}:
                raise ConfChangeRejected("cannot demote the last voter")
            cc = ConfChange(cc.type, cc.node, 0)
        if cc.type is not ConfChangeType.PROMOTE:
            self._check_quorum_survives(confchange.apply(self.conf, cc))
        index = self.last_index() + 1
        self._append([Entry(self.term, index, EntryKind.CONF_CHANGE, confchange.encode(cc))])
        self._after_leader_append()
        return index

    def _check_quorum_survives(self, new: ConfState) -> None:
        """Refuse a removal or demotion that would leave no live, intact majority.

        Counting only voters that answer with the incarnation the configuration
        names keeps an operator from, say, demoting a healthy voter while
        another one's disk is wiped: the cluster would never commit again.
        """
        healthy = 0
        for node, inc in new.voters:
            if node == self.id:
                healthy += inc == self.incarnation
                continue
            pr = self.progress.get(node)
            alive = pr is not None and (pr.recent_active or pr.was_active)
            healthy += alive and pr is not None and pr.incarnation == inc
        if healthy < len(new.voters) // 2 + 1:
            raise ConfChangeRejected(
                f"only {healthy} of the {len(new.voters)} remaining voters are reachable "
                "and intact: the change would lose the quorum"
            )

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee is not None:
            raise ProposalDropped("leadership transfer in progress")

    def _after_leader_append(self) -> None:
        self.progress[self.id].next = self.last_index() + 1
        self._want_broadcast = True

    def read_index(self, request: object) -> None:
        """Ask for a linearizable read point.

        ``request`` comes back in a ReadState once this node has confirmed
        with a quorum that it was still leader after the request arrived; the
        read may be served once the state machine has applied that index.
        If leadership is lost first, ``request`` comes back in
        ``Ready.dropped_reads`` instead.  Raises NotLeader on a non-leader.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.term_at(self.commit) != self.term:
            self._reads_awaiting_commit.append(request)
            return
        self._register_read(request)

    def _register_read(self, request: object) -> None:
        if self._quorum() == 1 and self.is_voter():
            self._read_states.append(ReadState(request, self.commit))
            return
        # Reads arriving between two Readys share one heartbeat round.
        if not self._read_round_open:
            self._read_round += 1
            self._read_round_open = True
        self._pending_reads.append(_PendingRead(self._read_round, self.commit, request))

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to ``target`` (a voter): catch it up, then TIMEOUT_NOW.

        Proposals are refused until the transfer ends; it is abandoned after
        an election timeout.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        pr = self.progress.get(target)
        inc = self.conf.incarnation_of(target)
        if target == self.id or pr is None or inc is None or not self._counts(target, inc):
            raise RaftError(f"cannot transfer leadership to {target}: not another voter")
        self._transferee = target
        self._transfer_elapsed = 0
        if pr.match == self.last_index():
            self._send(Message(_MT.TIMEOUT_NOW, self.id, target, self.term))
        else:
            self._send_append(target, pr)

    def campaign(self) -> None:
        """Start an election now (tests and operators; normally ticks do this)."""
        if self.role is not Role.LEADER:
            self._campaign()

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Record the application's snapshot at ``index`` and drop the log up to it.

        ``index`` must be applied (acknowledged through advance) and persisted here.  Returns
        the Snapshot for the driver to persist; the node keeps it to stream
        to followers that fall behind.
        """
        if not self.snap_index < index <= min(self.applied, self.stable_index):
            # Beyond stable_index the entries are committed (by a majority) but
            # not yet on this node's disk (a write-behind leader): a snapshot there
            # would land on disk before the entries it covers.
            raise RaftError(
                f"cannot snapshot at {index}: need {self.snap_index} < index <= "
                f"applied ({self.applied}) and <= persisted ({self.stable_index})"
            )
        term = self.term_at(index)
        assert term is not None
        meta = SnapshotMeta(index, term, self._conf_at(index))
        self._snapshot = Snapshot(meta, data)
        del self.entries[: index - self.snap_index]
        self.snap_index, self.snap_term, self._snap_conf = index, term, meta.conf
        return self._snapshot

    # ----------------------------------------------------------------- step

    def step(self, m: Message) -> InvalidMessage | None:
        """Feed one message from a peer.

        Returns an InvalidMessage (and changes nothing) if the message is
        malformed or absurd; protocol-level oddities such as stale terms are
        handled by the protocol's rules.  Never raises.
        """
        err = self._validate(m)
        if err is not None:
            return err
        if m.term > self.term:
            if (
                m.type in (_MT.VOTE, _MT.PRE_VOTE)
                and not m.force
                and self.config.check_quorum
                and self.leader is not None
                and self._election_elapsed < self.config.election_tick
            ):
                return None  # leader lease: a live leader is known, ignore the disruptor
            if m.type is _MT.PRE_VOTE or (m.type is _MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes are for a term nobody has entered yet
            elif m.type in _REQUESTS:
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if m.type in (_MT.APPEND, _MT.HEARTBEAT) and self.config.check_quorum:
                # A stale leader behind a partition: tell it our term so it steps down.
                self._send(Message(_MT.APPEND_RESP, self.id, m.src, self.term))
            elif m.type is _MT.PRE_VOTE:
                self._send(Message(_MT.PRE_VOTE_RESP, self.id, m.src, self.term, reject=True))
            return None

        t = m.type
        if t is _MT.VOTE or t is _MT.PRE_VOTE:
            self._handle_vote_request(m)
        elif t is _MT.VOTE_RESP or t is _MT.PRE_VOTE_RESP:
            self._handle_vote_response(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        else:
            self._step_follower(m)
        return None

    def _validate(self, m: object) -> InvalidMessage | None:
        if not isinstance(m, Message):
            return InvalidMessage(f"not a Message: {type(m).__name__}")
        # Fields are typed, but a decoder bug or a hostile peer could still put
        # anything there: check through ``object`` so nothing is assumed.
        mtype: object = m.type
        if not isinstance(mtype, MessageType):
            return InvalidMessage(f"unknown message type {mtype!r}")
        for name in ("src", "dst", "term", "incarnation", "index", "log_term", "commit"):
            v = getattr(m, name)
            if type(v) is not int or not 0 <= v <= _MAX_ID:
                return InvalidMessage(f"{m.type.name}.{name} is not a valid integer: {v!r}")
        for name in ("hint_index", "hint_term", "context", "offset"):
            v = getattr(m, name)
            if type(v) is not int or not 0 <= v <= _MAX_ID:
                return InvalidMessage(f"{m.type.name}.{name} is not a valid integer: {v!r}")
        if m.dst != self.id:
            return InvalidMessage(f"message for node {m.dst} delivered to {self.id}")
        if m.src == self.id or m.src == 0:
            return InvalidMessage(f"message claims to come from node {m.src}")
        entries: object = m.entries
        if not isinstance(entries, list):
            return InvalidMessage("entries is not a list")
        if entries:
            if m.type is not _MT.APPEND:
                return InvalidMessage(f"{m.type.name} carries entries")
            expect = m.index + 1
            prev_term = m.log_term
            for e in entries:
                if not isinstance(e, Entry) or type(e.index) is not int or type(e.term) is not int:
                    return InvalidMessage("malformed entry")
                kind: object = e.kind
                data: object = e.data
                if not isinstance(kind, EntryKind) or not isinstance(data, bytes):
                    return InvalidMessage(f"malformed entry at {e.index}")
                if e.index != expect or not prev_term <= e.term <= m.term:
                    return InvalidMessage(f"entries are not a log run at index {e.index}")
                expect += 1
                prev_term = e.term
        if m.type is _MT.APPEND and m.log_term > m.term:
            return InvalidMessage("APPEND with a previous term above its own term")
        if m.type is _MT.SNAPSHOT:
            meta = m.snapshot
            if not isinstance(meta, SnapshotMeta) or not isinstance(m.chunk, bytes):
                return InvalidMessage("SNAPSHOT without metadata or with a non-bytes chunk")
            if meta.term > m.term or (meta.index == 0) != (meta.term == 0):
                return InvalidMessage("SNAPSHOT metadata is inconsistent")
        if m.type is _MT.APPEND_RESP and m.index > self.last_index() and self.role is Role.LEADER:
            return InvalidMessage(f"APPEND_RESP acknowledges {m.index} beyond the log")
        return None

    def _handle_vote_request(self, m: Message) -> None:
        resp_type = _MT.VOTE_RESP if m.type is _MT.VOTE else _MT.PRE_VOTE_RESP
        # The candidate counts votes by its own configuration (it may know of
        # changes we have not seen), so we only refuse one whose id our
        # configuration binds to another incarnation: that is a wiped disk.
        known = self.conf.incarnation_of(m.src)
        sender_ok = known is None or known == 0 or known == m.incarnation
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (m.type is _MT.PRE_VOTE and m.term > self.term)
        )
        grant = (
            self._may_vote()
            and sender_ok
            and can_vote
            and self._log_up_to_date(m.log_term, m.index)
        )
        if grant:
            # A granted pre-vote answers with the term it was asked about, so the
            # pre-candidate can tell it from a rejection carrying our own term.
            self._send(Message(resp_type, self.id, m.src, m.term))
            if m.type is _MT.VOTE:
                self._election_elapsed = 0
                self.vote = m.src
        else:
            self._send(Message(resp_type, self.id, m.src, self.term, reject=True))

    def _may_vote(self) -> bool:
        """Whether this node may grant votes and stand for election.

        A voter in the current configuration may; so may one that the
        committed configuration names, even if an uncommitted entry in its
        own log demotes it: that entry may yet be overwritten (then its vote is
        needed), or it may be the only copy of the change (then it must lead
        long enough to commit it, counting votes by its current configuration,
        before it steps down).  Refusing either left clusters unable to elect
        anyone (both found by the simulator).  A node with no base snapshot, or
        whose incarnation no configuration names (a wiped disk), never votes.
        """
        if self._snapshot is None:
            return False
        return self.is_voter() or self._conf_at(self.commit).is_voter(self.id, self.incarnation)

    def _log_up_to_date(self, last_term: int, last_index: int) -> bool:
        """§5.4.1: grant only to candidates whose log is at least as up to date as ours."""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    def _handle_vote_response(self, m: Message) -> None:
        expected = _MT.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else _MT.VOTE_RESP
        if self.role not in (Role.PRE_CANDIDATE, Role.CANDIDATE) or m.type is not expected:
            return
        if not self._counts(m.src, m.incarnation):
            return
        self._votes.setdefault(m.src, not m.reject)
        result = self._tally()
        if result is True:
            self._won(_MT.PRE_VOTE if m.type is _MT.PRE_VOTE_RESP else _MT.VOTE)
        elif result is False:
            self._become_follower(self.term, None)

    # -------------------------------------------------------------- follower

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in _REQUESTS:
            if self.role is not Role.FOLLOWER:
                self._become_follower(m.term, m.src)
            self.leader = m.src
            self._election_elapsed = 0
        if t is _MT.APPEND:
            self._handle_append(m)
        elif t is _MT.HEARTBEAT:
            self._handle_heartbeat(m)
        elif t is _MT.SNAPSHOT:
            self._handle_snapshot(m)
        elif t is _MT.TIMEOUT_NOW:
            self._campaign(force=True)

    def _reply(self, m: Message, t: MessageType, **fields: object) -> None:
        self._send(Message(t, self.id, m.src, self.term, **fields))  # type: ignore[arg-type]

    def _handle_append(self, m: Message) -> None:
        if self._snapshot is None:
            # No base (a new or wiped node): entries alone would leave us without
            # the membership they build on.  ``force`` asks for a snapshot.
            self._reply(m, _MT.APPEND_RESP, index=m.index, reject=True, force=True)
            return
        prev, entries = m.index, m.entries
        if prev < self.commit:
            # Entries up to our commit index are committed and therefore match.
            skip = self.commit - prev
            if skip >= len(entries):
                self._reply(m, _MT.APPEND_RESP, index=self.commit)
                return
            entries = entries[skip:]
            prev = self.commit
            prev_term = self.term_at(prev)
        else:
            prev_term = m.log_term
        if self.term_at(prev) != prev_term:
            hint = min(prev, self.last_index())
            floor = max(self.snap_index, self.commit)
            while hint > floor and (self.term_at(hint) or 0) > m.log_term:
                hint -= 1
            self._reply(
                m,
                _MT.APPEND_RESP,
                index=m.index,
                reject=True,
                hint_index=hint,
                hint_term=self.term_at(hint) or 0,
            )
            return
        last = self.last_index()
        if entries:
            first = entries[0].index
            if first == last + 1:
                self._append(entries)
            else:
                for i, e in enumerate(entries):
                    if e.index > last or self.term_at(e.index) != e.term:
                        if e.index <= last:
                            self._truncate_from(e.index)
                        self._append(entries[i:])
                        break
        last_new = prev + len(entries)
        if m.commit > self.commit:
            self.commit = max(self.commit, min(m.commit, last_new))
        self._reply(m, _MT.APPEND_RESP, index=last_new)

    def _handle_heartbeat(self, m: Message) -> None:
        if m.commit > self.commit and m.commit <= self.last_index():
            self.commit = m.commit
        self._reply(m, _MT.HEARTBEAT_RESP, context=m.context)

    def _handle_snapshot(self, m: Message) -> None:
        meta = m.snapshot
        assert meta is not None  # validated
        if meta.index <= self.commit and self._snapshot is not None:
            # Already have everything it covers: acknowledge as installed.
            self._incoming = None
            self._reply(m, _MT.SNAPSHOT_RESP, index=meta.index, done=True, snapshot=meta)
            return
        inc = self._incoming
        if m.offset == 0 and (inc is None or inc.meta != meta or inc.src != m.src):
            inc = self._incoming = _IncomingSnapshot(m.src, meta, bytearray())
        if inc is None or inc.meta != meta or m.offset != len(inc.data):
            have = len(inc.data) if inc is not None and inc.meta == meta else 0
            self._reply(
                m, _MT.SNAPSHOT_RESP, index=meta.index, reject=True, hint_index=have, snapshot=meta
            )
            return
        inc.data += m.chunk
        if not m.done:
            self._reply(m, _MT.SNAPSHOT_RESP, index=meta.index, offset=len(inc.data), snapshot=meta)
            return
        self._incoming = None
        self._restore(Snapshot(meta, bytes(inc.data)))
        self._reply(m, _MT.SNAPSHOT_RESP, index=meta.index, done=True, snapshot=meta)

    def _restore(self, snap: Snapshot) -> None:
        meta = snap.meta
        if self._snapshot is not None and self.term_at(meta.index) == meta.term:
            # Our log already contains the snapshot's last entry: just commit to it.
            self.commit = meta.index
            return
        self.entries = []
        self._snapshot = snap
        self.snap_index, self.snap_term, self._snap_conf = meta.index, meta.term, meta.conf
        self.commit = self.applied = self._handed_commit = meta.index
        self.stable_index = meta.index
        self._unsent_from = meta.index + 1
        self._recompute_conf()
        self._install = snap

    # ---------------------------------------------------------------- leader

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if pr is None or m.type not in _RESPONSES:
            return  # not a member we replicate to, or a request only followers handle
        if m.incarnation != pr.incarnation:
            if pr.incarnation == 0:
                pr.incarnation = m.incarnation  # first word from it this term
            else:
                # Another incarnation than before: its disk was wiped, so what it
                # matched is gone; find the match point anew.
                pr.incarnation = m.incarnation
                pr.match = 0
                pr.read_ack = 0
                pr.become_probe()
        pr.recent_active = True
        if m.type is _MT.APPEND_RESP:
            self._handle_append_response(m, pr)
        elif m.type is _MT.HEARTBEAT_RESP:
            self._handle_heartbeat_response(m, pr)
        else:
            self._handle_snapshot_response(m, pr)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            if pr.state is ProgressState.SNAPSHOT:
                return
            if m.force and self._snapshot is not None:
                pr.match = 0
                pr.become_snapshot(self._snapshot)
                self._send_snapshot_chunk(m.src, pr)
                return
            if m.index <= pr.match:
                if m.hint_index >= pr.match:
                    return  # stale rejection
                # The follower no longer holds entries it acknowledged (its disk
                # lost a synced tail under the same incarnation), or this is a
                # reordered old rejection.  Lowering match is safe either way:
                # the commit index never moves back, at worst we resend.
                pr.match = m.hint_index
            elif pr.state is ProgressState.PROBE and m.index != pr.next - 1:
                return  # stale rejection
            nxt = m.hint_index
            if m.hint_term:
                nxt = self._find_conflict_by_term(m.hint_index, m.hint_term)
            pr.become_probe()
            pr.next = max(pr.match + 1, min(nxt + 1, m.index))
            self._send_append(m.src, pr)
            return
        if m.index > pr.match:
            pr.match = m.index
            pr.free_inflight_to(m.index)
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif (
                pr.state is ProgressState.SNAPSHOT
                and pr.snapshot is not None
                and pr.match >= pr.snapshot.meta.index
            ):
                pr.become_probe()
            if pr.next <= pr.match:
                pr.next = pr.match + 1
            # A new commit index is not broadcast on its own: it rides on the next
            # append each follower gets, or on the next heartbeat round (see
            # _send_append).  Under load that halves the messages per entry.
            self._maybe_commit()
        elif pr.state is ProgressState.PROBE:
            pr.paused = False
        if m.src == self._transferee and pr.match == self.last_index():
            self._send(Message(_MT.TIMEOUT_NOW, self.id, m.src, self.term))
        self._send_append(m.src, pr)

    def _find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` in our log."""
        index = min(index, self.last_index())
        while index > self.snap_index:
            t = self.term_at(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        if (
            pr.state is ProgressState.REPLICATE
            and len(pr.inflight) >= self.config.max_inflight_msgs
        ):
            pr.inflight.popleft()  # a lost append would otherwise stall the window forever
        pr.paused = False
        if pr.state is ProgressState.SNAPSHOT:
            self._send_snapshot_chunk(m.src, pr)
        elif pr.match < self.last_index() or pr.sent_commit < self.commit:
            # An empty append at the tail is cheap and, if earlier appends were
            # lost, draws the rejection that restarts replication from the gap.
            self._send_append(m.src, pr, probe_tail=True)
        if m.context > pr.read_ack and self._counts(m.src, m.incarnation):
            pr.read_ack = m.context
            self._advance_reads()

    def _handle_snapshot_response(self, m: Message, pr: Progress) -> None:
        snap = pr.snapshot
        if pr.state is not ProgressState.SNAPSHOT or snap is None or m.snapshot != snap.meta:
            return
        if m.reject:
            pr.snapshot_offset = min(m.hint_index, len(snap.data))
        elif m.done:
            pr.match = max(pr.match, snap.meta.index)
            pr.become_probe()
            self._send_append(m.src, pr)
            return
        else:
            pr.snapshot_offset = m.offset
        self._send_snapshot_chunk(m.src, pr)

    def _maybe_commit(self) -> bool:
        matches = []
        for node, inc in self.conf.voters:
            pr = self.progress.get(node)
            ok = pr is not None and pr.incarnation == inc
            matches.append(pr.match if ok and pr is not None else 0)
        if not matches:
            return False
        matches.sort(reverse=True)
        index = matches[len(matches) // 2]
        if index > self.commit and self._may_commit_by_counting(index):
            self.commit = index
            self._on_commit_advanced()
            return True
        return False

    def _may_commit_by_counting(self, index: int) -> bool:
        """§5.4.2: only an entry of the current term is committed by counting replicas."""
        return self.term_at(index) == self.term

    def _on_commit_advanced(self) -> None:
        if self._reads_awaiting_commit and self.term_at(self.commit) == self.term:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for request in waiting:
                self._register_read(request)
        if self.commit >= self.pending_conf_index and not self.is_voter():
            # Our own removal (or demotion) is committed: hand over and step down.
            self._step_down_after_removal()

    def _step_down_after_removal(self) -> None:
        best: tuple[int, NodeId] | None = None
        for node, inc in self.conf.voters:
            pr = self.progress.get(node)
            if pr is not None and pr.incarnation == inc and (best is None or pr.match > best[0]):
                best = (pr.match, node)
        self._want_broadcast = False
        # Followers hear the committed removal now: no heartbeat of ours follows.
        self._broadcast_append(with_commit=True)
        if best is not None and best[0] == self.last_index():
            self._send(Message(_MT.TIMEOUT_NOW, self.id, best[1], self.term))
        self._become_follower(self.term, None)

    def _advance_reads(self) -> None:
        quorum = self._quorum()
        while self._pending_reads:
            rd = self._pending_reads[0]
            acks = 0
            for node, inc in self.conf.voters:
                if node == self.id:
                    acks += inc == self.incarnation
                else:
                    pr = self.progress.get(node)
                    acks += pr is not None and pr.incarnation == inc and pr.read_ack >= rd.round
            if acks < quorum:
                return
            self._pending_reads.popleft()
            self._read_states.append(ReadState(rd.request, rd.index))

    def _broadcast_heartbeat(self) -> None:
        self._read_round_open = False
        for node, pr in self.progress.items():
            if node != self.id:
                self._send(
                    Message(
                        _MT.HEARTBEAT,
                        self.id,
                        node,
                        self.term,
                        commit=min(pr.match, self.commit),
                        context=self._read_round,
                    )
                )

    def _broadcast_append(self, *, with_commit: bool = False) -> None:
        for node, pr in self.progress.items():
            if node != self.id:
                self._send_append(node, pr, probe_tail=with_commit)

    def _send_append(self, node: NodeId, pr: Progress, probe_tail: bool = False) -> None:
        """Send what ``node`` is missing, within the flow-control limits."""
        if pr.state is ProgressState.SNAPSHOT or pr.paused:
            return
        if (
            pr.state is ProgressState.REPLICATE
            and len(pr.inflight) >= self.config.max_inflight_msgs
        ):
            return
        last = self.last_index()
        if pr.next <= self.snap_index:
            if self._snapshot is None:
                return
            pr.become_snapshot(self._snapshot)
            self._send_snapshot_chunk(node, pr)
            return
        if pr.state is ProgressState.REPLICATE and pr.next > last and not probe_tail:
            # Nothing new to send.  A commit index the follower lacks waits for the
            # next append or heartbeat round: followers only need it to apply,
            # and nothing is answered from a follower's state machine.
            return
        while True:
            prev = pr.next - 1
            prev_term = self.term_at(prev)
            assert prev_term is not None
            entries: list[Entry] = []
            if pr.next <= last:
                hi = min(last, pr.next + self.config.max_entries_per_msg - 1)
                entries = self._slice(pr.next, hi)
                budget = self.config.max_bytes_per_msg
                for i, e in enumerate(entries):
                    budget -= len(e.data)
                    if budget < 0 and i > 0:
                        del entries[i:]
                        break
            commit = self.commit
            self._send(
                Message(
                    _MT.APPEND,
                    self.id,
                    node,
                    self.term,
                    index=prev,
                    log_term=prev_term,
                    entries=entries,
                    commit=commit,
                )
            )
            pr.sent_commit = max(pr.sent_commit, min(commit, prev + len(entries)))
            if pr.state is ProgressState.PROBE:
                pr.paused = True
                return
            if not entries:
                return
            pr.next = entries[-1].index + 1
            pr.inflight.append(entries[-1].index)
            if pr.next > last or len(pr.inflight) >= self.config.max_inflight_msgs:
                return

    def _send_snapshot_chunk(self, node: NodeId, pr: Progress) -> None:
        snap = pr.snapshot
        assert snap is not None
        lo = pr.snapshot_offset
        hi = min(len(snap.data), lo + self.config.snapshot_chunk_bytes)
        self._send(
            Message(
                _MT.SNAPSHOT,
                self.id,
                node,
                self.term,
                snapshot=snap.meta,
                offset=lo,
                chunk=snap.data[lo:hi],
                done=hi == len(snap.data),
            )
        )

    def _send(self, m: Message) -> None:
        m.incarnation = self.incarnation
        self._msgs.append(m)

    # ---------------------------------------------------------- ready/advance

    def has_ready(self) -> bool:
        """Whether :meth:`ready` would return work (and none is outstanding)."""
        if self._outstanding is not None:
            return False
        return bool(
            self._msgs
            or self._want_broadcast
            or self._read_round_open
            or self._unsent_from <= self.last_index()
            or self._install is not None
            or self._read_states
            or self._dropped_reads
            or self._handed_commit < self.commit
            or self._prev_hard != HardState(self.term, self.vote, self.commit)
            or self._prev_soft != SoftState(self.role, self.leader, self.term)
        )

    def ready(self) -> Ready:
        """Collect the work accumulated since the last Ready.

        Only one Ready may be outstanding: call :meth:`advance` with it before
        asking again.
        """
        if self._outstanding is not None:
            raise RaftError("ready() called again before advance()")
        if self.role is Role.LEADER:
            if self._want_broadcast:
                self._broadcast_append()
            if self._read_round_open:
                self._broadcast_heartbeat()
        # Whatever these flags asked for was done above, or no longer applies.
        self._want_broadcast = False
        self._read_round_open = False
        rd = Ready()
        hs = HardState(self.term, self.vote, self.commit)
        vote_durable = (hs.term, hs.vote) == (self._prev_hard.term, self._prev_hard.vote)
        if hs != self._prev_hard:
            rd.hard_state = hs
            self._prev_hard = hs
        ss = SoftState(self.role, self.leader, self.term)
        if ss != self._prev_soft:
            rd.soft_state = ss
            self._prev_soft = ss
        if self._unsent_from <= self.last_index():
            rd.entries = self._slice(self._unsent_from, self.last_index())
            self._unsent_from = self.last_index() + 1
        rd.snapshot, self._install = self._install, None
        if self._handed_commit < self.commit:
            rd.committed = self._slice(self._handed_commit + 1, self.commit)
            self._handed_commit = self.commit
        msgs, self._msgs = self._msgs, []
        if self.role is Role.LEADER and vote_durable and rd.snapshot is None:
            # A leader's own requests need none of its local persistence (it counts
            # itself toward commit only once advance() reports the entries stable),
            # so they may leave while it flushes (Raft thesis §10.2.1).  Not when
            # this Ready also carries a new term or vote: the term must be durable
            # before anything of it is seen.
            rd.early_messages = [m for m in msgs if m.type in _LEADER_REQUESTS]
            if len(rd.early_messages) != len(msgs):
                rd.messages = [m for m in msgs if m.type not in _LEADER_REQUESTS]
        else:
            rd.messages = msgs
        # Nothing in this Ready waits for the leader's disk: its entries may be
        # flushed while the next Ready is built (see advance(persisted=False)).
        rd.persist_later = (
            self.role is Role.LEADER and vote_durable and rd.snapshot is None and not rd.messages
        )
        rd.read_states, self._read_states = self._read_states, []
        rd.dropped_reads, self._dropped_reads = self._dropped_reads, []
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready, *, persisted: bool = True) -> None:
        """Acknowledge that ``rd`` was sent and applied, and (by default) persisted.

        ``persisted=False`` is allowed only for a Ready whose ``persist_later``
        is true (a leader's Ready whose messages do not wait for its disk): the
        driver may then ask for the next Ready while this one's flush runs, and
        reports its durability with :meth:`persisted`.  Until then the leader
        does not count itself toward committing those entries.
        """
        if rd is not self._outstanding:
            raise RaftError("advance() with a Ready that is not the outstanding one")
        if not persisted and not rd.persist_later:
            raise RaftError("this Ready must be persisted before advance()")
        self._outstanding = None
        if rd.committed:
            self.applied = max(self.applied, rd.committed[-1].index)
        if persisted:
            self.persisted(rd)

    def persisted(self, rd: Ready) -> None:
        """Report that ``rd`` (already advanced with ``persisted=False``) is durable."""
        if not rd.entries:
            return
        last = rd.entries[-1]
        # Persisted entries still count only if no truncation replaced them meanwhile.
        off = last.index - self.snap_index - 1
        if 0 <= off < len(self.entries) and self.entries[off] is last:
            self.stable_index = max(self.stable_index, last.index)
        if self.role is Role.LEADER:
            me = self.progress[self.id]
            if self.stable_index > me.match:
                me.match = self.stable_index
                self._maybe_commit()

    # -------------------------------------------------------------- queries

    def status(self) -> dict[str, object]:
        """A snapshot of this node's state for humans and metrics."""
        return {
            "id": self.id,
            "role": self.role.name.lower(),
            "term": self.term,
            "leader": self.leader,
            "commit": self.commit,
            "applied": self.applied,
            "last_index": self.last_index(),
            "snapshot_index": self.snap_index,
            "voters": sorted(self.conf.voter_ids()),
            "learners": sorted(self.conf.learner_ids()),
            "is_voter": self.is_voter(),
        }

"""Value types shared by the consensus core, its storage and its transport.

Entries and messages sit on the hot path (every replicated command creates
one of each per follower), so they are plain slotted dataclasses: a frozen
dataclass costs about 3.7x more to construct here (measured with timeit,
0.38 s vs 0.10 s per million).  Treat them as immutable all the same: the
core never mutates an entry or a message after handing it out.
Configuration and snapshot metadata are cold and therefore frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NodeId = int


class EntryKind(IntEnum):
    """What an entry carries."""

    NORMAL = 0  # an application command
    NOOP = 1  # appended by every new leader so it can commit entries of earlier terms
    CONF_CHANGE = 2  # data is an encoded ConfChange


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class MessageType(IntEnum):
    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    SNAPSHOT_RESP = 10
    TIMEOUT_NOW = 11


class ConfChangeType(IntEnum):
    ADD_LEARNER = 0  # add a non-voting member (or demote a voter to learner)
    PROMOTE = 1  # turn a caught-up learner into a voter
    REMOVE = 2  # remove a voter or a learner


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind
    data: bytes


@dataclass(slots=True, frozen=True)
class ConfState:
    """Cluster membership.

    Members are keyed by node id; the value is the member's *incarnation*, a
    random number its storage drew when it was created.  A node whose disk
    was wiped comes back with a new incarnation and therefore does not count
    as the member the configuration names: it neither votes nor counts toward
    any quorum until it is added back (see docs/raft.md, "lost disks").
    """

    voters: tuple[tuple[NodeId, int], ...] = ()
    learners: tuple[tuple[NodeId, int], ...] = ()

    def voter_ids(self) -> frozenset[NodeId]:
        return frozenset(n for n, _ in self.voters)

    def learner_ids(self) -> frozenset[NodeId]:
        return frozenset(n for n, _ in self.learners)

    def member_ids(self) -> frozenset[NodeId]:
        return self.voter_ids() | self.learner_ids()

    def incarnation_of(self, node: NodeId) -> int | None:
        for n, inc in self.voters:
            if n == node:
                return inc
        for n, inc in self.learners:
            if n == node:
                return inc
        return None

    def is_voter(self, node: NodeId, incarnation: int) -> bool:
        return (node, incarnation) in self.voters


@dataclass(slots=True, frozen=True)
class ConfChange:
    type: ConfChangeType
    node: NodeId
    incarnation: int = 0


@dataclass(slots=True)
class HardState:
    """What must be durable before any message of the same Ready is sent."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    index: int
    term: int
    conf: ConfState


@dataclass(slots=True, frozen=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes


@dataclass(slots=True)
class Message:
    """One Raft RPC.  Fields a type does not use keep their defaults.

    - ``index``/``log_term``: for APPEND the entry preceding ``entries``; for
      (PRE_)VOTE the candidate's last log index/term; for APPEND_RESP the
      highest index the follower now matches (or, when ``reject``, the index
      that was rejected).
    - ``hint_index``/``hint_term``: on a rejected APPEND_RESP, where the
      leader should retry (fast back-off).
    - ``context``: the ReadIndex round a HEARTBEAT belongs to, echoed back.
    - ``snapshot``/``offset``/``chunk``/``done``: one chunk of a snapshot.
    - ``incarnation``: the sender's storage incarnation (see ConfState).
    """

    type: MessageType
    src: NodeId
    dst: NodeId
    term: int
    incarnation: int = 0
    index: int = 0
    log_term: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    context: int = 0
    force: bool = False
    snapshot: SnapshotMeta | None = None
    offset: int = 0
    chunk: bytes = b""
    done: bool = False


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    request: object
    index: int


@dataclass(slots=True, frozen=True)
class SoftState:
    role: Role
    leader: NodeId | None
    term: int


@dataclass(slots=True)
class Ready:
    """A batch of work handed from the core to its driver.

    The driver must, in this order:
    0. send ``early_messages`` (a leader's own requests, which depend on none
       of this Ready's persistence) at once, if it wishes, so that followers
       work while the leader flushes; otherwise send them with ``messages``;
    1. durably persist ``snapshot`` (if any), then ``entries`` (which replace
       any stored entries at the same or higher indexes), then ``hard_state``;
    2. send ``messages``;
    3. apply ``committed`` to the state machine (``snapshot`` first, if any);
    4. serve ``read_states`` once the state machine has applied their index;
    5. call ``advance(ready)``.

    When ``persist_later`` is true (a leader's Ready with nothing that waits for
    its disk), the driver may instead call ``advance(ready, persisted=False)``
    right after steps 0, 2-4 and report ``persisted(ready)`` once its flush is
    done, so the leader keeps building Readys while it flushes.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    early_messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[object] = field(default_factory=list)
    persist_later: bool = False

    def is_empty(self) -> bool:
        return (
            self.soft_state is None
            and self.hard_state is None
            and not self.entries
            and self.snapshot is None
            and not self.messages
            and not self.early_messages
            and not self.committed
            and not self.read_states
            and not self.dropped_reads
        )

"""The raft package's error hierarchy."""

from __future__ import annotations

from .types import NodeId


class RaftError(Exception):
    """Base of every error the raft package raises or reports."""


class InvalidMessage(RaftError):
    """A message was malformed or made no sense; it was ignored without touching state."""


class NotLeader(RaftError):
    """This node cannot serve the request; ``leader_hint`` is who might."""

    def __init__(self, leader_hint: NodeId | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The proposal was not appended (leadership transfer under way, or a
    membership change is already in flight)."""


class ConfChangeRejected(RaftError):
    """The membership change is not allowed now (see the message for why)."""


class StorageError(RaftError):
    """Persistent state could not be read or written."""


class CorruptLog(StorageError):
    """Stored data failed its checksum somewhere other than a torn tail."""


class CodecError(RaftError):
    """Bytes from the wire could not be turned into messages (or messages into bytes)."""


class FrameError(CodecError):
    """The framing is broken: unknown version byte, truncated frame, or a frame too large."""


class FrameTooLarge(FrameError):
    """A frame's payload exceeds the configured maximum (``size`` > ``limit``)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame payload of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class MalformedMessage(CodecError):
    """A payload is not a well-formed batch of messages (bad msgpack, bad shape or bad
    value), or a message holds a value the wire format cannot carry."""


class TransportError(RaftError):
    """A node-to-node connection failed or was refused."""


class PeerRejected(TransportError):
    """A peer authenticated but may not talk to us: unknown node id, or messages not its own."""


# --- storage (raft/wal.py, raft/snapshots.py, raft/storage.py) ---------------


class CorruptRecord(CorruptLog):
    """A WAL record (or a segment file as a whole) is damaged somewhere other than the
    torn tail of the last segment.  ``path`` and ``offset`` say where."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"{path}: corrupt WAL at byte offset {offset}: {reason} "
            "(see docs/storage.md, 'Corruption')"
        )
        self.path = path
        self.offset = offset
        self.reason = reason


class CorruptSnapshot(CorruptLog):
    """A snapshot file failed its checksum or does not parse; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: corrupt snapshot file: {reason}")
        self.path = path
        self.reason = reason


class StorageLocked(StorageError):
    """Another process (or another Storage in this one) has the directory open."""


class StorageClosed(StorageError):
    """The Storage was closed, or failed earlier and refuses further work."""


class InvalidStorageInput(StorageError):
    """The caller asked for something the log cannot hold: a gap, entries at or below
    the snapshot, overwriting committed entries, a stale snapshot, a second vote in
    one term, or values of the wrong type.  Nothing was written."""


class BootstrapMismatch(StorageError):
    """The directory was created with a different bootstrap configuration or incarnation."""


# --- runtime (raft/runtime.py) ----------------------------------------------


class LeadershipLost(NotLeader):
    """This node stopped being leader after it appended the proposal but before the
    proposal was applied.  The outcome is unknown: the entry may still be committed
    by the next leader.  Retry only operations that are idempotent."""


class RequestTimeout(RaftError):
    """A runtime request did not finish within its timeout."""


class ProposalTimeout(RequestTimeout):
    """The proposal was not applied in time.  If it had been appended, the outcome is
    unknown: it may still be committed and applied later."""


class ReadTimeout(RequestTimeout):
    """A linearizable read did not get its read point in time; nothing was read."""


class TransferTimeout(RequestTimeout):
    """Leadership did not move to another node in time (the transfer was abandoned)."""


class NodeStopped(RaftError):
    """The node is not running (not started yet, shut down, or crashed).  A request
    that was in flight when it stopped has an unknown outcome."""


class InvalidRequest(RaftError, ValueError):
    """A runtime request or option is malformed (wrong type, out of range, too large);
    nothing was proposed or changed."""


class StateMachineFailed(RaftError):
    """The state machine raised while applying a committed entry or restoring a
    snapshot.  The node stops: continuing could make its replica diverge."""

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

"""Membership changes: their wire form inside a log entry, and how they alter a ConfState.

A change takes effect on every node as soon as its entry is *appended* to
that node's log (Raft dissertation §4.1), and a leader allows one
uncommitted change at a time, only after it has committed an entry of its
own term.  Changes alter one voter at a time, so any two consecutive
configurations share a majority.
"""

from __future__ import annotations

import struct

from .errors import InvalidMessage
from .types import ConfChange, ConfChangeType, ConfState

_WIRE = struct.Struct(">BQQ")


def encode(cc: ConfChange) -> bytes:
    return _WIRE.pack(int(cc.type), cc.node, cc.incarnation)


def decode(data: bytes) -> ConfChange:
    """Parse an entry's payload; raises InvalidMessage if it is not a ConfChange."""
    if len(data) != _WIRE.size:
        raise InvalidMessage(f"conf change payload of {len(data)} bytes, want {_WIRE.size}")
    kind, node, incarnation = _WIRE.unpack(data)
    try:
        cc_type = ConfChangeType(kind)
    except ValueError:
        raise InvalidMessage(f"unknown conf change type {kind}") from None
    return ConfChange(cc_type, node, incarnation)


def apply(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration that results from applying ``cc`` to ``conf``.

    Total: a change that names an unknown node removes nothing and a
    promotion of a non-learner adds the voter anyway, because every node
    must compute the same configuration from the same log whatever the
    leader validated.
    """
    voters = tuple(m for m in conf.voters if m[0] != cc.node)
    learners = tuple(m for m in conf.learners if m[0] != cc.node)
    if cc.type is ConfChangeType.ADD_LEARNER:
        learners = (*learners, (cc.node, cc.incarnation))
    elif cc.type is ConfChangeType.PROMOTE:
        voters = (*voters, (cc.node, cc.incarnation))
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))

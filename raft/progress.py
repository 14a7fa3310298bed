"""The leader's view of one follower's log (model: etcd-io/raft's tracker)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from .types import Snapshot


class ProgressState(IntEnum):
    PROBE = 0  # one append in flight at a time, until the match point is found
    REPLICATE = 1  # pipelined: ``next`` runs ahead optimistically, bounded in-flight window
    SNAPSHOT = 2  # the follower is behind the leader's log: a snapshot is being streamed


@dataclass(slots=True)
class Progress:
    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    incarnation: int = 0  # as the follower last reported it; 0 until it has answered
    paused: bool = False  # PROBE: an append is outstanding
    recent_active: bool = False  # heard from since the last CheckQuorum round
    was_active: bool = False  # heard from in the round before that
    sent_commit: int = 0  # highest commit index this follower was told
    inflight: deque[int] = field(default_factory=deque)  # last index of each append in flight
    read_ack: int = 0  # highest ReadIndex round this follower confirmed
    snapshot: Snapshot | None = None  # SNAPSHOT: what is being streamed
    snapshot_offset: int = 0

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT and self.snapshot is not None:
            # The follower now holds the snapshot: resume just after it.
            self.next = max(self.match, self.snapshot.meta.index) + 1
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.paused = False
        self.inflight.clear()
        self.snapshot = None
        self.snapshot_offset = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.inflight.clear()

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot = snapshot
        self.snapshot_offset = 0
        self.paused = False
        self.inflight.clear()

    def free_inflight_to(self, index: int) -> None:
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()

"""A hand-driven network of RawNodes for scenario tests.

Unlike raft.sim, nothing happens unless the test says so: the test decides
which messages are delivered, dropped or held, which makes scenarios such
as the Raft paper's Figure 8 reproducible step by step.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from raft.core import Config, RawNode
from raft.sim import Disk
from raft.types import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    Role,
    Snapshot,
    SnapshotMeta,
)


class Net:
    def __init__(
        self,
        n: int,
        *,
        factory: Callable[..., RawNode] = RawNode,
        max_entries_per_msg: int = 4096,
        seed: int = 7,
    ) -> None:
        self.rng = random.Random(seed)
        self.factory = factory
        self.max_entries = max_entries_per_msg
        incs = {i: 1000 + i for i in range(1, n + 1)}
        boot = Snapshot(SnapshotMeta(0, 0, ConfState(voters=tuple(sorted(incs.items())))), b"")
        self.disks = {i: Disk(incs[i], snapshot=boot) for i in incs}
        self.nodes: dict[int, RawNode | None] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in incs}
        self.mailbox: list[Message] = []
        for i in incs:
            self.start(i)

    def start(self, i: int) -> RawNode:
        d = self.disks[i]
        node = self.factory(
            Config(id=i, election_tick=10, max_entries_per_msg=self.max_entries),
            rng=random.Random(self.rng.getrandbits(32)),
            incarnation=d.incarnation,
            hard_state=HardState(d.hard_state.term, d.hard_state.vote, d.hard_state.commit),
            snapshot=d.snapshot,
            entries=list(d.entries),
        )
        self.nodes[i] = node
        self.applied[i] = [e for e in self.applied[i] if e.index <= node.snap_index]
        return node

    def crash(self, i: int) -> None:
        self.nodes[i] = None
        self.mailbox = [m for m in self.mailbox if m.dst != i]

    def node(self, i: int) -> RawNode:
        node = self.nodes[i]
        assert node is not None, f"n{i} is down"
        return node

    def pump(self) -> None:
        """Persist and collect the output of every live node until all are quiet."""
        busy = True
        while busy:
            busy = False
            for i, node in self.nodes.items():
                if node is None or not node.has_ready():
                    continue
                busy = True
                rd = node.ready()
                self.disks[i].persist(rd)
                self.mailbox.extend(rd.early_messages)
                self.mailbox.extend(rd.messages)
                self.applied[i].extend(rd.committed)
                node.advance(rd)

    def deliver(self, allow: Callable[[Message], bool] = lambda m: True, rounds: int = 50) -> None:
        """Deliver allowed messages until none is left; the others stay in the mailbox."""
        for _ in range(rounds):
            self.pump()
            batch = [m for m in self.mailbox if allow(m)]
            if not batch:
                return
            self.mailbox = [m for m in self.mailbox if not allow(m)]
            for m in batch:
                node = self.nodes.get(m.dst)
                if node is not None:
                    assert node.step(m) is None
        self.pump()

    def expire_leases(self, *ids: int) -> None:
        """Tick followers past the election timeout without letting them campaign."""
        for i in ids:
            node = self.node(i)
            # Ticking would start elections; move the clock state directly instead.
            node._election_elapsed = node.config.election_tick

    def elect(self, i: int, among: set[int]) -> None:
        """Make node ``i`` win an election with votes flowing only within ``among``.

        Only election traffic is delivered; the new leader's first appends stay
        in the mailbox for the test to deliver, drop or filter.
        """
        voting = {MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP, MessageType.VOTE}
        voting.add(MessageType.VOTE_RESP)
        for _ in range(3):  # a first attempt may only teach it the current term
            self.expire_leases(*[j for j in among if self.nodes.get(j) is not None])
            self.node(i).campaign()
            self.deliver(lambda m: m.src in among and m.dst in among and m.type in voting)
            if self.node(i).role is Role.LEADER:
                return
        raise AssertionError(f"n{i} did not win: {self.node(i).status()}")

    def sent(self, t: MessageType) -> list[Message]:
        return [m for m in self.mailbox if m.type is t]

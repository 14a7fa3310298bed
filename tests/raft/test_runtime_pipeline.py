"""raft.runtime: proposals pulled from a ProposalSource by the ready loop, and a
leader applying what its followers committed while its own flush runs."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from raft.errors import (
    InvalidRequest,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    ProposalTimeout,
)
from raft.runtime import NodeOptions, ProposalCallback, RaftNode
from tests.raft.conftest import FlushGate
from tests.raft.test_runtime import KV, TIMEOUT, Tls, open_cluster, tls

__all__ = ["tls"]  # the certificate fixture, shared with test_runtime

Outcome = tuple[object, BaseException | None]


class Source:
    """A ProposalSource holding commands until the node takes them; records outcomes."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, ProposalCallback]] = []
        self.outcomes: dict[bytes, Outcome] = {}
        self.settled = trio.Event()
        self.expected = 0

    def add(self, *commands: bytes) -> None:
        for c in commands:
            self.pending.append((c, self._callback(c)))
        self.expected += len(commands)

    def _callback(self, command: bytes) -> ProposalCallback:
        def done(result: object, error: BaseException | None) -> None:
            assert command not in self.outcomes, "one callback per command"
            self.outcomes[command] = (result, error)
            if len(self.outcomes) == self.expected:
                self.settled.set()

        return done

    def take_proposals(self) -> list[tuple[bytes, ProposalCallback]]:
        taken, self.pending = self.pending, []
        return taken


async def test_a_source_feeds_the_leader_in_batches_and_gets_every_result(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    async with open_cluster(tmp_path, tls, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            leader = await c.wait_leader()
            source = Source()
            leader.attach_proposal_source(source)
            source.add(b"incr n", *(f"set k{i}={i}".encode() for i in range(30)))
            batches = leader.stats.proposal_batches
            leader.proposals_waiting()
            await source.settled.wait()
            assert source.outcomes[b"incr n"] == (1, None)
            assert [source.outcomes[f"set k{i}={i}".encode()] for i in range(30)] == [
                (i + 2, None) for i in range(30)
            ]
            # Everything waiting when the ready loop looked went into one propose_batch.
            assert leader.stats.proposal_batches == batches + 1
            assert await leader.read(b"k29") == "29"

            # A command that is not bytes, or too large, fails alone.
            big = b"x" * (leader.options.max_command_bytes + 1)
            source.add(big, b"incr x")
            source.pending.append(("text", source._callback(b"text")))  # type: ignore[arg-type]
            source.expected += 1
            source.settled = trio.Event()
            leader.proposals_waiting()
            await source.settled.wait()
            assert isinstance(source.outcomes[big][1], InvalidRequest)
            assert isinstance(source.outcomes[b"text"][1], InvalidRequest)
            assert source.outcomes[b"incr x"] == (1, None)

            # On a follower the commands fail with NotLeader and its hint.
            follower = next(m.node for m in c.running() if m.node is not leader)
            await c.until(lambda: follower.leader_id == leader.id)
            other = Source()
            follower.attach_proposal_source(other)
            other.add(b"incr f")
            follower.proposals_waiting()
            await other.settled.wait()
            error = other.outcomes[b"incr f"][1]
            assert isinstance(error, NotLeader) and error.leader_hint == leader.id


async def test_a_raising_callback_does_not_stop_the_node(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    async with open_cluster(tmp_path, tls, n=1, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            node = await c.wait_leader()
            source = Source()
            called = trio.Event()

            def broken(result: object, error: BaseException | None) -> None:
                called.set()
                raise RuntimeError("a caller's bug")

            source.pending.append((b"incr n", broken))
            node.attach_proposal_source(source)
            node.proposals_waiting()
            await called.wait()
            assert await node.propose(b"incr n") == 2  # the first one was applied
            assert node.running


async def test_source_commands_time_out_with_an_unknown_outcome_and_respect_the_bound(
    tmp_path: Path, tls: dict[int, Tls], flush_gate: FlushGate
) -> None:
    async with open_cluster(
        tmp_path, tls, n=1, unsafe_no_fsync=True, proposal_timeout_s=0.2, max_pending_proposals=2
    ) as c:
        with trio.fail_after(TIMEOUT):
            node = await c.wait_leader()
            assert await node.propose(b"incr n") == 1
            flush_gate.hold()
            source = Source()
            try:
                node.attach_proposal_source(source)
                source.add(b"incr n", b"incr m", b"incr o")
                node.proposals_waiting()
                await source.settled.wait()
                assert isinstance(source.outcomes[b"incr n"][1], ProposalTimeout)
                assert isinstance(source.outcomes[b"incr m"][1], ProposalTimeout)
                assert isinstance(source.outcomes[b"incr o"][1], ProposalDropped)
                assert node.status()["pending_proposals"] == 0
            finally:
                flush_gate.release()
            # Timed out is "unknown", not "failed": the first two were applied.
            assert await node.propose(b"incr n") == 3
            assert await node.read(b"m") == "1"
            assert await node.read(b"o") is None


async def test_a_node_that_does_not_run_fails_source_commands_at_once(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    opts = NodeOptions(id=1, data_dir=tmp_path / "n1", listen=("127.0.0.1", 0), peers={})
    node = RaftNode(opts, KV(), tls[1].server, tls[1].client)
    source = Source()
    node.attach_proposal_source(source)
    source.add(b"incr n")
    node.proposals_waiting()
    assert isinstance(source.outcomes[b"incr n"][1], NodeStopped)
    node.attach_proposal_source(None)
    node.proposals_waiting()  # nothing attached: nothing to fail


async def test_a_stopped_node_fails_source_commands_at_once(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    async with open_cluster(tmp_path, tls, n=1, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            node = await c.wait_leader()
            source = Source()
            node.attach_proposal_source(source)
            await node.shutdown()
            source.add(b"incr n")
            node.proposals_waiting()
            assert isinstance(source.outcomes[b"incr n"][1], NodeStopped)


async def test_a_leader_whose_disk_stalls_still_acknowledges_what_its_followers_persisted(
    tmp_path: Path, tls: dict[int, Tls], flush_gate: FlushGate
) -> None:
    async with open_cluster(tmp_path, tls, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            leader = await c.wait_leader()
            assert await leader.propose(b"incr n") == 1
            # Followers that applied it have acknowledged everything: the leader
            # replicates to them freely (no probing), so the next entries leave
            # with the Ready that flushes them.
            await c.until(lambda: all(m.kv.data == {"n": "1"} for m in c.members.values()))
            await trio.testing.wait_all_tasks_blocked()
            storage = leader._storage
            assert storage is not None
            flush_gate.hold(storage)
            source = Source()
            leader.attach_proposal_source(source)
            try:
                # The leader's own flush is held, yet both followers' flushes commit
                # the entries: they are answered while the leader's disk is stalled.
                source.add(b"incr n", b"incr m")
                leader.proposals_waiting()
                await source.settled.wait()
                assert source.outcomes == {b"incr n": (2, None), b"incr m": (1, None)}
            finally:
                flush_gate.release()
            assert await leader.propose(b"incr n") == 3
            assert await leader.read(b"m") == "1"
            await c.until(
                lambda: all(m.kv.data == {"n": "3", "m": "1"} for m in c.members.values())
            )


async def test_snapshots_stay_exact_while_a_loaded_leader_compacts(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    # Counters are not idempotent: a snapshot that held an entry past its index
    # would count that entry twice on a node that restores it.  The restarted
    # node usually catches up from the leader's snapshot; when its log still
    # reaches past the leader's snapshot index (messages the transport queued
    # while it was down), it catches up from the log, and the counters must be
    # exact either way.
    async with open_cluster(tmp_path, tls, snapshot_every=5) as c:
        with trio.fail_after(TIMEOUT):
            leader = await c.wait_leader()
            lagging = next(m for m in c.running() if m.node is not leader)
            await c.crash(lagging.id)
            for _ in range(20):
                source = Source()
                leader.attach_proposal_source(source)
                source.add(b"incr c0", b"incr c1", b"incr c2")
                leader.proposals_waiting()
                await source.settled.wait()
                assert all(error is None for _, error in source.outcomes.values())
                await leader.propose(b"incr total")
            assert leader.stats.snapshots_taken >= 3
            await c.start(lagging.id)
            want = {"c0": "20", "c1": "20", "c2": "20", "total": "20"}
            await c.until(lambda: all(m.kv.data == want for m in c.members.values()))

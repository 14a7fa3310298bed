"""vaultd.daemon.ProposalBatcher as a node's proposal source (the node pulls)."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest
import trio
import trio.testing

from raft import errors as raft_errors
from vaultd.daemon import TAG_APP, TAG_BATCH, ProposalBatcher
from vaultd.kvstore import Incr, encode_command

Callback = Callable[[object, BaseException | None], None]


class PullingNode:
    """Offers the RaftNode source API; the test decides when entries are taken."""

    def __init__(self) -> None:
        self.source: ProposalBatcher | None = None
        self.announced = 0

    def attach_proposal_source(self, source: ProposalBatcher | None) -> None:
        self.source = source

    def proposals_waiting(self) -> None:
        self.announced += 1

    def take(self) -> list[tuple[bytes, Callback]]:
        assert self.source is not None
        return self.source.take_proposals()


def incr() -> bytes:
    return encode_command(Incr(b"n", 1))


async def test_the_node_takes_packed_entries_and_answers_each_command() -> None:
    node = PullingNode()
    batcher = ProposalBatcher(node, max_commands=3, max_bytes=1 << 20)
    answers: list[tuple[object, BaseException | None]] = []

    def one_command(results: list[object] | None, error: BaseException | None) -> None:
        answers.append((None if results is None else results[0], error))

    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        assert node.source is batcher
        for _ in range(7):
            batcher.submit_many([incr()], one_command)
        assert node.announced == 1  # once, when the queue stopped being empty
        entries = node.take()
        assert [e[0][0] for e in entries] == [TAG_BATCH, TAG_BATCH, TAG_APP]
        assert [len(msgpack.unpackb(e[0][1:])) for e in entries[:2]] == [3, 3]
        assert batcher.commands == 7 and batcher.batches == 3
        entries[0][1]([1, 2, 3], None)
        entries[1][1](None, raft_errors.NotLeader(2))
        entries[2][1](7, None)
        assert answers[:3] == [(1, None), (2, None), (3, None)]
        assert all(isinstance(e, raft_errors.NotLeader) for _, e in answers[3:6])
        assert answers[6] == (7, None)
        # A result that is not one per command (a bad batch) answers all alike.
        batcher.submit_many([incr()], one_command)
        batcher.submit_many([incr()], one_command)
        assert node.announced == 2
        [(_, done)] = node.take()
        done("bad batch", None)
        assert answers[7:] == [("bad batch", None), ("bad batch", None)]
        # The awaiting form works through the same pull.
        async with trio.open_nursery() as waiters:
            result: list[object] = []

            async def one() -> None:
                result.append(await batcher.submit(incr()))

            waiters.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            [(data, done)] = node.take()
            assert data[0] == TAG_APP
            done(42, None)
        assert result == [42]
        nursery.cancel_scope.cancel()
    assert node.source is None  # detached when run() ends


async def test_commands_still_queued_when_the_batcher_stops_fail() -> None:
    node = PullingNode()
    batcher = ProposalBatcher(node)
    answers: list[BaseException | None] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        batcher.submit_many([incr()], lambda r, e: answers.append(e))
        nursery.cancel_scope.cancel()
    assert len(answers) == 1 and isinstance(answers[0], raft_errors.NodeStopped)


async def test_groups_share_entries_whole_and_get_their_own_results() -> None:
    node = PullingNode()
    batcher = ProposalBatcher(node, max_commands=5, max_bytes=1 << 20)
    got: list[tuple[object, BaseException | None]] = []

    def record(results: list[object] | None, error: BaseException | None) -> None:
        got.append((results, error))

    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        batcher.submit_many([incr(), incr()], record)  # a
        batcher.submit_many([incr(), incr(), incr()], record)  # b: fills the entry
        batcher.submit_many([incr(), incr()], record)  # c: would overflow it, so waits
        assert node.announced == 1
        entries = node.take()
        assert [len(msgpack.unpackb(data[1:])) for data, _ in entries] == [5, 2]
        entries[0][1]([1, 2, 3, 4, 5], None)
        assert got == [([1, 2], None), ([3, 4, 5], None)]
        entries[1][1](None, raft_errors.LeadershipLost(2))
        assert got[2][0] is None and isinstance(got[2][1], raft_errors.LeadershipLost)
        # A group larger than an entry is refused outright; one command of any
        # size is always accepted (the node enforces its own command limit).
        assert not batcher.group_fits(6, 10)
        with pytest.raises(ValueError):
            batcher.submit_many([incr()] * 6, record)
        with pytest.raises(ValueError):
            batcher.submit_many([], record)
        small = ProposalBatcher(node, max_commands=5, max_bytes=64)
        assert small.group_fits(1, 10_000) and not small.group_fits(2, 64)
        nursery.cancel_scope.cancel()


async def test_a_group_that_a_stopped_batcher_gets_fails_at_once() -> None:
    batcher = ProposalBatcher(PullingNode())
    got: list[BaseException | None] = []
    batcher.submit_many([incr()], lambda r, e: got.append(e))
    assert len(got) == 1 and isinstance(got[0], raft_errors.NodeStopped)

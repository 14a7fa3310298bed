"""vaultd.daemon: the cluster state machine (address book + KV), the proposal batcher,
and how Raft's errors become the service's typed errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from raft import errors as raft_errors
from raft.statemachine import StateMachine
from vaultd.config import NodeConfig, NodeEntry, TlsPaths
from vaultd.daemon import (
    TAG_APP,
    TAG_BATCH,
    ClusterStateMachine,
    NodeBackend,
    ProposalBatcher,
    encode_directory_remove,
    encode_directory_set,
    pack_batch,
)
from vaultd.errors import (
    BadRequest,
    CommandError,
    CorruptState,
    NotLeader,
    Rejected,
    Timeout,
    Unavailable,
)
from vaultd.kvstore import Failed, Get, Incr, KVStore, Put, encode_command

A1 = (("10.0.0.1", 7000), ("10.0.0.1", 7001))


def machine(seen: list[dict[int, Any]] | None = None) -> ClusterStateMachine:
    m = ClusterStateMachine(KVStore(), {1: A1})
    if seen is not None:
        m.set_listener(seen.append)
    return m


def test_it_is_a_raft_state_machine() -> None:
    assert isinstance(machine(), StateMachine)


def test_directory_commands_update_the_address_book_and_notify() -> None:
    seen: list[dict[int, Any]] = []
    m = machine(seen)
    assert m.apply(1, encode_directory_set(4, ("h4", 1), ("h4", 2))) is None
    assert m.directory.entries[4] == (("h4", 1), ("h4", 2))
    assert seen[-1] == {1: A1, 4: (("h4", 1), ("h4", 2))}
    assert m.apply(2, encode_directory_remove(4)) is None
    assert seen[-1] == {1: A1}
    for bad in (b"\x01\xc1", b"\x01" + msgpack.packb(["set", 4, "nohost", "h:1"]),
                b"\x01" + msgpack.packb(["drop"]), b"\x09", b""):  # fmt: skip
        assert isinstance(m.apply(3, bad), CommandError)
    assert len(seen) == 2


def test_app_and_batch_commands() -> None:
    m = machine()
    assert m.apply(1, bytes([TAG_APP]) + encode_command(Incr(b"n", 2))) == 2
    batch = [encode_command(Incr(b"n", 1)), encode_command(Put(b"k", b"v")), msgpack.packb("junk")]
    assert pack_batch(batch)[0] == TAG_BATCH
    results = m.apply(2, pack_batch(batch))
    assert isinstance(results, list) and results[:2] == [3, None]
    assert isinstance(results[2], Failed)
    assert m.query(encode_command(Get(b"k"))) == b"v"


@pytest.mark.parametrize(
    "entry",
    [
        bytes([TAG_BATCH]) + msgpack.packb(5),  # not an array
        bytes([TAG_BATCH]) + b"\x93" + encode_command(Put(b"k", b"v")),  # cut short
        pack_batch([encode_command(Put(b"k", b"v"))]) + b"\x00",  # trailing bytes
        bytes([TAG_BATCH]) + b"\xc1",  # not msgpack
        # the old batch format (an array of separately packed commands) is
        # refused, never misread
        b"\x02" + msgpack.packb([encode_command(Put(b"k", b"v"))]),
    ],
)
def test_a_malformed_batch_entry_fails_as_a_whole_and_changes_nothing(entry: bytes) -> None:
    m = machine()
    before = m.snapshot()
    assert isinstance(m.apply(1, entry), CommandError)
    assert m.snapshot() == before


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65535, 65536])
def test_pack_batch_writes_a_msgpack_array_of_the_commands(count: int) -> None:
    commands = [msgpack.packb(i) for i in range(count)]
    assert msgpack.unpackb(pack_batch(commands)[1:]) == list(range(count))


def test_snapshot_restores_app_state_and_address_book() -> None:
    m = machine()
    m.apply(1, encode_directory_set(5, ("h5", 1), ("h5", 2)))
    m.apply(2, bytes([TAG_APP]) + encode_command(Put(b"a", b"1")))
    seen: list[dict[int, Any]] = []
    other = ClusterStateMachine(KVStore(), {}, seen.append)
    other.restore(2, m.snapshot())
    assert other.snapshot() == m.snapshot()
    assert seen == [m.directory.entries]
    assert other.query(encode_command(Get(b"a"))) == b"1"
    for bad in (b"\xc1", msgpack.packb({"v": 2}), msgpack.packb({"v": 1, "dir": [[1, "x", "y"]],
                                                                 "app": b""})):  # fmt: skip
        with pytest.raises(CorruptState):
            other.restore(3, bad)


class FakeNode:
    """Records proposals; answers like a leader applying to a ClusterStateMachine."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.machine = machine()
        self.proposed: list[bytes] = []
        self.fail = fail
        self.index = 0

    async def propose(self, command: bytes) -> object:
        self.proposed.append(command)
        await trio.sleep(0.01)
        if self.fail is not None:
            raise self.fail
        self.index += 1
        return self.machine.apply(self.index, command)


async def test_batcher_packs_concurrent_commands_into_one_entry() -> None:
    node = FakeNode()
    batcher = ProposalBatcher(node)
    results: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)

        async def one(i: int) -> None:
            results[i] = await batcher.submit(encode_command(Incr(b"n", 1)))

        async with trio.open_nursery() as clients:
            for i in range(50):
                clients.start_soon(one, i)
        assert sorted(results.values()) == list(range(1, 51))  # type: ignore[type-var]
        assert len(node.proposed) < 50
        assert node.proposed[0][0] == TAG_BATCH
        assert batcher.commands == 50
        # A lone command goes as a plain entry.
        assert await batcher.submit(encode_command(Incr(b"n", 1))) == 51
        assert node.proposed[-1][0] == TAG_APP
        nursery.cancel_scope.cancel()


async def test_batcher_respects_its_limits() -> None:
    node = FakeNode()
    batcher = ProposalBatcher(node, max_commands=4, max_bytes=1 << 20)
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        async with trio.open_nursery() as clients:
            for _ in range(10):
                clients.start_soon(batcher.submit, encode_command(Incr(b"n", 1)))
        sizes = [len(msgpack.unpackb(p[1:])) if p[0] == TAG_BATCH else 1 for p in node.proposed]
        assert sum(sizes) == 10 and max(sizes) <= 4
        nursery.cancel_scope.cancel()


async def test_batcher_fails_every_command_of_a_failed_batch() -> None:
    node = FakeNode(fail=raft_errors.NotLeader(2))
    batcher = ProposalBatcher(node)
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)

        async def one() -> None:
            try:
                await batcher.submit(encode_command(Incr(b"n", 1)))
            except raft_errors.NotLeader as exc:
                errors.append(exc)

        async with trio.open_nursery() as clients:
            for _ in range(5):
                clients.start_soon(one)
        nursery.cancel_scope.cancel()
    assert len(errors) == 5


def _cfg() -> NodeConfig:
    tls = TlsPaths(Path("/x/ca.pem"), Path("/x/node.pem"), Path("/x/node.key"))
    return NodeConfig(
        id=1,
        data_dir=tls.ca,
        peer_listen=A1[0],
        client_listen=A1[1],
        tls=tls,
        peers=(NodeEntry(2, ("10.0.0.2", 7000), ("10.0.0.2", 7001)),),
    )


@pytest.mark.parametrize(
    ("raised", "expected", "fragment"),
    [
        (raft_errors.NotLeader(2), NotLeader, "not the leader"),
        (raft_errors.LeadershipLost(None), Timeout, "outcome is unknown"),
        (raft_errors.ProposalTimeout("slow"), Timeout, "slow"),
        (raft_errors.ConfChangeRejected("not caught up"), Rejected, "not caught up"),
        (raft_errors.ProposalDropped("transfer"), Unavailable, "transfer"),
        (raft_errors.NodeStopped("stopped"), Unavailable, "stopped"),
        (raft_errors.InvalidRequest("too big"), BadRequest, "too big"),
    ],
)
async def test_backend_maps_raft_errors(
    raised: BaseException, expected: type[Exception], fragment: str
) -> None:
    m = ClusterStateMachine(KVStore(), {1: A1, 2: (("10.0.0.2", 7000), ("10.0.0.2", 7001))})
    backend = NodeBackend(FakeNode(fail=raised), m, _cfg())
    with pytest.raises(expected, match=fragment) as info:
        await backend.propose(encode_command(Put(b"k", b"v")))
    if isinstance(info.value, NotLeader):
        assert info.value.leader_id == 2
        assert info.value.leader_address == "10.0.0.2:7001"

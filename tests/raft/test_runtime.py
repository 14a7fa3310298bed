"""RaftNode: whole clusters in one trio process, over loopback with real mutual TLS.

Waiting: every wait is on the nodes' own change notifications
(``RaftNode.wait_for_change``, fired after each Ready a node handles and when
it starts or stops) under ``trio.fail_after``.  Nothing sleeps to let things
happen.  Conditions that span nodes ("some node leads", "every replica holds
these keys") are re-checked whenever any running node changes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trio

from raft.errors import (
    BootstrapMismatch,
    ConfChangeRejected,
    InvalidRequest,
    InvalidStorageInput,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    ProposalTimeout,
    RaftError,
    RequestTimeout,
    StateMachineFailed,
    StorageError,
)
from raft.runtime import NodeOptions, RaftNode, shutdown_on_signals
from raft.statemachine import StateMachine
from raft.storage import Storage
from raft.types import ConfChange, ConfChangeType, ConfState, Role
from tests.raft.conftest import FlushGate
from vaultd.pki import (
    client_ssl_context,
    create_ca,
    issue_node_cert,
    server_ssl_context,
    write_tls_files,
)

TIMEOUT = 20
Address = tuple[str, int]


# ---------------------------------------------------------------- fixtures


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Tls]:
    """Certificates for nodes 1-5 from one cluster CA."""
    root = tmp_path_factory.mktemp("pki")
    ca = create_ca()
    out = {}
    for i in range(1, 6):
        d = root / str(i)
        d.mkdir()
        files = write_tls_files(d, ca.certificate, issue_node_cert(ca, i, ["127.0.0.1"]))
        out[i] = Tls(server_ssl_context(files), client_ssl_context(files))
    return out


class KV:
    """The test state machine: ``set k=v`` (returns the number of keys),
    ``incr k`` (returns the new value), ``boom`` (raises)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.last_index = 0
        self.restored_at: list[int] = []

    def apply(self, index: int, command: bytes, /) -> object:
        assert index > self.last_index, "indexes must increase"
        self.last_index = index
        op, _, arg = command.decode().partition(" ")
        if op == "set":
            key, _, value = arg.partition("=")
            self.data[key] = value
            return len(self.data)
        if op == "incr":
            n = int(self.data.get(arg, "0")) + 1
            self.data[arg] = str(n)
            return n
        if op == "boom":
            raise RuntimeError("the state machine broke")
        return f"unknown command {op!r}"

    def query(self, query: bytes, /) -> object:
        if query == b"*":
            return dict(self.data)
        if query == b"bad":
            raise KeyError("no such query")
        return self.data.get(query.decode())

    def snapshot(self) -> bytes:
        return json.dumps(self.data).encode()

    def restore(self, index: int, data: bytes, /) -> None:
        self.data = json.loads(data)
        self.last_index = index
        self.restored_at.append(index)


def create_storage(path: Path, bootstrap: ConfState | None, incarnation: int) -> None:
    """Create a data directory with a chosen incarnation, as the cluster init tool
    does so that the bootstrap membership can name it."""
    Storage.open(path, bootstrap=bootstrap, incarnation=incarnation).close()


@dataclass
class Member:
    id: int
    data_dir: Path
    node: RaftNode
    kv: KV
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)
    starts: int = 1


class Cluster:
    """Nodes of one cluster, each running in its own cancel scope (cancelling it
    is a crash: no handover, unflushed writes dropped)."""

    def __init__(
        self, nursery: trio.Nursery, root: Path, tls: dict[int, Tls], **options: Any
    ) -> None:
        self.nursery = nursery
        self.root = root
        self.tls = tls
        self.options = {"reconnect_max_s": 0.2, **options}
        self.members: dict[int, Member] = {}
        self.addresses: dict[int, Address] = {}
        self.bootstrap: ConfState | None = None

    async def bootstrap_nodes(self, n: int) -> None:
        incarnations = {i: random.Random(i).getrandbits(62) + 1 for i in range(1, n + 1)}
        self.bootstrap = ConfState(voters=tuple(sorted(incarnations.items())))
        for i, inc in incarnations.items():
            create_storage(self.root / f"n{i}", self.bootstrap, inc)
        for i in incarnations:
            await self.start(i, bootstrap=self.bootstrap)

    async def start(self, i: int, *, bootstrap: ConfState | None = None) -> RaftNode:
        """Start node ``i`` on its data directory (created empty if missing) and tell
        everyone where it listens."""
        kv = KV()
        old = self.members.get(i)
        starts = old.starts + 1 if old else 1
        opts = NodeOptions(
            id=i,
            data_dir=self.root / f"n{i}",
            listen=("127.0.0.1", 0),
            peers={j: a for j, a in self.addresses.items() if j != i},
            **self.options,
        )
        node = RaftNode(
            opts,
            kv,
            self.tls[i].server,
            self.tls[i].client,
            bootstrap=bootstrap,
            rng=random.Random(100 * i + starts),
        )
        member = Member(i, opts.data_dir, node, kv, trio.CancelScope(), starts=starts)
        self.members[i] = member

        async def runner(task_status: trio.TaskStatus[Address]) -> None:
            try:
                with member.scope:
                    await node.run(task_status=task_status)
            finally:
                member.done.set()

        address = await self.nursery.start(runner)
        self.addresses[i] = address
        for j, m in self.members.items():
            if j != i and m.node.running:
                m.node.add_peer(i, address)
        return node

    async def crash(self, i: int) -> None:
        m = self.members[i]
        m.scope.cancel()
        await m.done.wait()

    def node(self, i: int) -> RaftNode:
        return self.members[i].node

    def running(self) -> list[Member]:
        return [m for m in self.members.values() if m.node.running]

    def leader(self) -> RaftNode | None:
        leaders = [m.node for m in self.running() if m.node.is_leader]
        return max(leaders, key=lambda n: _int(n.status()["term"]), default=None)

    async def next_change(self) -> None:
        """Return when any running node's state next changes."""
        nodes = [m.node for m in self.running()]
        assert nodes, "no node is running"
        async with trio.open_nursery() as nursery:

            async def one(node: RaftNode) -> None:
                with suppress(NodeStopped):
                    await node.wait_for_change()
                nursery.cancel_scope.cancel()

            for node in nodes:
                nursery.start_soon(one, node)

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.next_change()

    async def wait_leader(self) -> RaftNode:
        await self.until(lambda: self.leader() is not None)
        leader = self.leader()
        assert leader is not None
        return leader

    async def write(self, command: bytes) -> object:
        """Propose through whoever leads, retrying (for idempotent commands) until
        acknowledged."""
        while True:
            leader = await self.wait_leader()
            try:
                return await leader.propose(command, timeout=2)
            except (NotLeader, ProposalDropped, NodeStopped, RequestTimeout):
                await self.next_change()

    async def change(self, cc: ConfChange) -> int:
        while True:
            leader = await self.wait_leader()
            try:
                return await leader.change_membership(cc, timeout=2)
            except (NotLeader, ProposalDropped, ConfChangeRejected, NodeStopped, RequestTimeout):
                await self.next_change()


def _int(v: object) -> int:
    assert isinstance(v, int)
    return v


@asynccontextmanager
async def open_cluster(
    root: Path, tls: dict[int, Tls], n: int = 3, **options: Any
) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, root, tls, **options)
        await cluster.bootstrap_nodes(n)
        yield cluster
        nursery.cancel_scope.cancel()


class Writer:
    """A client writing unique keys (``set w<k>=<k>``) in the background, following
    the leader and retrying each write until acknowledged."""

    def __init__(self, cluster: Cluster, prefix: str = "w") -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.acked: list[str] = []
        self.progress = trio.Event()

    async def run(self) -> None:
        k = 0
        while True:
            key = f"{self.prefix}{k}"
            await self.cluster.write(f"set {key}={k}".encode())
            self.acked.append(key)
            self.progress.set()
            self.progress = trio.Event()
            k += 1

    async def wait_acked(self, count: int) -> None:
        while len(self.acked) < count:
            await self.progress.wait()


def holds(kv: KV, keys: list[str]) -> bool:
    return all(k in kv.data for k in keys)


# ---------------------------------------------------------------- tests


async def test_three_nodes_elect_replicate_and_read(tmp_path: Path, tls: dict[int, Tls]) -> None:
    async with open_cluster(tmp_path, tls, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            leader = await c.wait_leader()
            assert [await leader.propose(b"incr n") for _ in range(5)] == [1, 2, 3, 4, 5]

            # Concurrent proposals: every caller gets the result of its own entry,
            # and those that arrive while a flush runs share the next batch.
            results: list[int] = []

            async def propose_one() -> None:
                results.append(_int(await leader.propose(b"incr n")))

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(propose_one)
            assert sorted(results) == list(range(6, 46))
            assert leader.stats.proposals == 45
            assert leader.stats.proposal_batches < 45

            assert await leader.read(b"n") == "45"
            assert await leader.read(b"*") == {"n": "45"}
            with pytest.raises(KeyError):
                await leader.read(b"bad")  # the query's own error reaches the reader

            followers = [m.node for m in c.running() if m.node is not leader]
            await c.until(lambda: all(f.leader_id == leader.id for f in followers))
            for f in followers:
                with pytest.raises(NotLeader) as read_err:
                    await f.read(b"n")
                assert read_err.value.leader_hint == leader.id
                with pytest.raises(NotLeader) as write_err:
                    await f.propose(b"incr n")
                assert write_err.value.leader_hint == leader.id

            await c.until(lambda: all(m.kv.data == {"n": "45"} for m in c.members.values()))
            st = leader.status()
            assert st["role"] == "leader" and st["leader"] == leader.id
            assert st["voters"] == [1, 2, 3] and st["pending_proposals"] == 0
            assert _int(st["applied"]) == _int(st["commit"]) >= 46  # 45 commands + no-op


async def test_leader_crash_loses_no_acknowledged_write_and_restart_catches_up(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    # Durability matters here: real flushes.
    async with open_cluster(tmp_path, tls) as c:
        with trio.fail_after(TIMEOUT):
            writer = Writer(c)
            async with trio.open_nursery() as clients:
                clients.start_soon(writer.run)
                await writer.wait_acked(15)

                old = await c.wait_leader()
                old_term = _int(old.status()["term"])
                await c.crash(old.id)  # mid-stream: a write is usually in flight
                assert old.status()["role"] == "stopped"

                new = await c.wait_leader()
                assert new.id != old.id and _int(new.status()["term"]) > old_term
                await writer.wait_acked(len(writer.acked) + 15)

                restarted = await c.start(old.id)
                assert restarted.status()["incarnation"] == old.status()["incarnation"]
                await writer.wait_acked(len(writer.acked) + 5)
                clients.cancel_scope.cancel()

            acked = list(writer.acked)
            await c.until(lambda: all(holds(m.kv, acked) for m in c.running()))
            leader = await c.wait_leader()
            seen = await leader.read(b"*")
            assert isinstance(seen, dict) and set(acked) <= set(seen)
            # With the writers gone, every replica reaches the same state.
            target = _int(leader.status()["commit"])
            await c.until(
                lambda: all(_int(m.node.status()["applied"]) >= target for m in c.running())
            )
            states = [m.kv.data for m in c.running()]
            assert all(s == states[0] for s in states[1:])


async def test_sigterm_makes_the_leader_hand_over_without_an_election_timeout(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    async with open_cluster(tmp_path, tls, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            leader = await c.wait_leader()
            await c.write(b"set a=1")
            term = _int(leader.status()["term"])
            others = [m.node for m in c.running() if m.node is not leader]
            seen_before = {n.id: len(n.role_history) for n in others}

            async with trio.open_nursery() as nursery:
                await nursery.start(shutdown_on_signals, leader)
                os.kill(os.getpid(), signal.SIGTERM)
            assert leader.status()["state"] == "stopped"

            new = await c.wait_leader()
            # A handover is one forced election: term + 1, no pre-vote round.  A
            # leader found by election timeout would have been a pre-candidate first.
            assert _int(new.status()["term"]) == term + 1
            for n in others:
                since = n.role_history[seen_before[n.id] :]
                assert all(s.role is not Role.PRE_CANDIDATE for s in since), since
            roles = [(s.role, s.term) for s in new.role_history[seen_before[new.id] :]]
            assert (Role.CANDIDATE, term + 1) in roles and roles[-1] == (Role.LEADER, term + 1)
            assert await c.write(b"set b=2") == 2
            with pytest.raises(NodeStopped):
                await leader.propose(b"set c=3")
            await leader.shutdown()  # idempotent


async def test_shutdown_of_a_follower_and_transfer_to_a_chosen_node(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    async with open_cluster(tmp_path, tls, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            leader = await c.wait_leader()
            await c.write(b"set a=1")
            target = next(m.id for m in c.running() if m.node is not leader)
            await c.until(lambda: _int(c.node(target).status()["applied"]) >= 2)
            assert await leader.transfer_leadership(target) == target
            assert c.node(target).is_leader
            with pytest.raises(NotLeader) as err:
                await leader.transfer_leadership()
            assert err.value.leader_hint == target
            follower = next(m.node for m in c.running() if m.id not in (leader.id, target))
            await follower.shutdown()  # no handover needed
            assert follower.status()["role"] == "stopped"
            assert await c.write(b"set b=2") == 2  # two of three voters still commit


async def test_a_leader_that_loses_its_quorum_fails_what_it_cannot_finish(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    async with open_cluster(tmp_path, tls, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            leader = await c.wait_leader()
            await c.write(b"set a=1")
            for m in c.running():
                if m.node is not leader:
                    await c.crash(m.id)
            outcomes: list[BaseException] = []

            async def attempt(request: Callable[[], Any]) -> None:
                try:
                    await request()
                except RaftError as exc:
                    outcomes.append(exc)

            # Neither can complete without a quorum; CheckQuorum makes the leader
            # step down within two election timeouts, which settles both.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attempt, lambda: leader.propose(b"set lost=1", timeout=10))
                nursery.start_soon(attempt, lambda: leader.read(b"a", timeout=10))
            kinds = sorted(type(e).__name__ for e in outcomes)
            assert kinds == ["LeadershipLost", "NotLeader"]
            assert all(isinstance(e, NotLeader) and e.leader_hint is None for e in outcomes)
            assert leader.status()["role"] != "leader"
            with pytest.raises(NotLeader):
                await leader.propose(b"set b=2")


async def test_a_timed_out_proposal_has_an_unknown_outcome(
    tmp_path: Path, tls: dict[int, Tls], flush_gate: FlushGate
) -> None:
    async with open_cluster(tmp_path, tls, n=1, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            node = await c.wait_leader()
            assert await node.propose(b"incr n") == 1
            flush_gate.hold()
            try:
                with pytest.raises(ProposalTimeout):
                    await node.propose(b"incr n", timeout=0.2)
                # The ready loop is not stuck behind the held flush: a read is served
                # at the commit index, which the unflushed write has not reached.
                assert await node.read(b"n", timeout=0.2) == "1"
                assert node.status()["pending_proposals"] == 0  # the caller's waiter is gone
            finally:
                flush_gate.release()
            # The timed-out proposal was applied all the same: "unknown", not "failed".
            assert await node.propose(b"incr n") == 3
            assert await node.read(b"n") == "3"


async def test_snapshots_compact_the_log_and_a_lagging_node_catches_up_by_snapshot(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    async with open_cluster(tmp_path, tls, unsafe_no_fsync=True, snapshot_every=16) as c:
        with trio.fail_after(TIMEOUT):
            leader = await c.wait_leader()
            for k in range(5):
                await leader.propose(f"set a{k}={k}".encode())
            lagging = next(m.id for m in c.running() if m.node is not leader)
            await c.crash(lagging)
            behind = _int(c.node(lagging).status()["last_index"])
            # The transports would hold the appends sent to it while it is down and
            # deliver them when it is back; forgetting it drops them, as a queue
            # overflow would, so it must be brought back by snapshot.
            for m in c.running():
                m.node.remove_peer(lagging)

            keys = []
            for k in range(60):
                await leader.propose(f"set b{k}={k}".encode())
                keys.append(f"b{k}")
            st = leader.status()
            assert _int(st["snapshot_index"]) > behind  # the entries it lacks are gone
            assert leader.stats.snapshots_taken >= 3

            node = await c.start(lagging)
            kv = c.members[lagging].kv
            await c.until(lambda: holds(kv, keys))
            assert node.stats.snapshots_installed >= 1 and kv.restored_at
            assert kv.data == c.members[leader.id].kv.data

            # A restart recovers from the node's own snapshot, then replays the log.
            applied = _int(node.status()["applied"])
            await c.crash(lagging)
            node = await c.start(lagging)
            kv = c.members[lagging].kv
            assert kv.restored_at and 0 < kv.restored_at[0] <= applied
            await leader.propose(b"set after=1")
            await c.until(lambda: holds(kv, [*keys, "after"]))
            assert kv.data == c.members[leader.id].kv.data


async def test_membership_add_learner_promote_and_remove_while_writing(
    tmp_path: Path, tls: dict[int, Tls]
) -> None:
    async with open_cluster(tmp_path, tls, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            writer = Writer(c)
            async with trio.open_nursery() as clients:
                clients.start_soon(writer.run)
                await writer.wait_acked(10)

                # A new node: empty directory, no bootstrap, so no configuration.
                create_storage(tmp_path / "n4", None, 4444)
                newcomer = await c.start(4)
                assert newcomer.status()["voters"] == [] and not newcomer.status()["is_voter"]
                await c.change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
                kv4 = c.members[4].kv
                await c.until(lambda: holds(kv4, writer.acked[:10]))
                assert newcomer.status()["learners"] == [4]

                promoted_at = await c.change(ConfChange(ConfChangeType.PROMOTE, 4))
                await c.until(lambda: _int(newcomer.status()["applied"]) >= promoted_at)
                assert newcomer.status()["voters"] == [1, 2, 3, 4]
                assert newcomer.status()["is_voter"] is True

                # Restarted, it must still know the whole membership (the initial
                # one it learned from the leader plus its log's changes), not just
                # the changes in its log: those alone would make it a lone voter.
                await c.crash(4)
                with Storage.open(tmp_path / "n4") as storage:
                    assert storage.recovered.bootstrap is not None  # adopted from the leader
                newcomer = await c.start(4)
                assert newcomer.status()["voters"] == [1, 2, 3, 4]
                await writer.wait_acked(len(writer.acked) + 10)

                leader = await c.wait_leader()
                gone = next(i for i in (1, 2, 3) if i != leader.id)
                await c.change(ConfChange(ConfChangeType.REMOVE, gone))
                remaining = sorted({1, 2, 3, 4} - {gone})
                await c.until(lambda: c.node(4).status()["voters"] == remaining)
                await c.node(gone).shutdown()
                for m in c.running():
                    m.node.remove_peer(gone)
                await writer.wait_acked(len(writer.acked) + 10)
                clients.cancel_scope.cancel()

            acked = list(writer.acked)
            await c.until(lambda: all(holds(m.kv, acked) for m in c.running()))
            assert {m.id for m in c.running()} == set(remaining)


async def test_bad_requests_get_typed_errors(tmp_path: Path, tls: dict[int, Tls]) -> None:
    good = NodeOptions(id=1, data_dir=tmp_path / "n1", listen=("127.0.0.1", 0), peers={})
    for bad in (
        replace(good, id=0),
        replace(good, id=True),
        replace(good, data_dir="n1"),  # type: ignore[arg-type]
        replace(good, listen=("127.0.0.1", 70000)),
        replace(good, peers={2: ("127.0.0.1", 0)}),
        replace(good, peers={"2": ("127.0.0.1", 1)}),  # type: ignore[dict-item]
        replace(good, tick_ms=0),
        replace(good, election_tick=2, heartbeat_tick=2),
        replace(good, proposal_timeout_s=float("nan")),
        replace(good, read_timeout_s=-1),
        replace(good, transfer_timeout_s=0),
        replace(good, max_pending_proposals=0),
        replace(good, unsafe_no_fsync=1),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidRequest):
            RaftNode(bad, KV(), tls[1].server, tls[1].client)
    with pytest.raises(InvalidRequest):
        RaftNode("options", KV(), tls[1].server, tls[1].client)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        RaftNode(good, KV(), "ctx", tls[1].client)  # type: ignore[arg-type]

    node = RaftNode(good, KV(), tls[1].server, tls[1].client)
    with pytest.raises(NodeStopped):
        await node.propose(b"incr n")  # not started
    with pytest.raises(NodeStopped):
        node.listen_address  # noqa: B018

    async with open_cluster(tmp_path / "c", tls, n=1, unsafe_no_fsync=True) as c:
        with trio.fail_after(TIMEOUT):
            node = await c.wait_leader()
            assert await node.propose(b"incr n") == 1
            for command in ("incr n", bytearray(b"incr n"), None):
                with pytest.raises(InvalidRequest):
                    await node.propose(command)  # type: ignore[arg-type]
            with pytest.raises(InvalidRequest):
                await node.propose(b"x" * ((1 << 20) + 1))  # over max_command_bytes
            for timeout in (0, -1.0, float("inf"), "1"):
                with pytest.raises(InvalidRequest):
                    await node.propose(b"incr n", timeout=timeout)  # type: ignore[arg-type]
            with pytest.raises(InvalidRequest):
                await node.read("n")  # type: ignore[arg-type]
            with pytest.raises(InvalidRequest):
                await node.change_membership("add 2")  # type: ignore[arg-type]
            with pytest.raises(InvalidRequest):
                await node.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, 0))
            with pytest.raises(ConfChangeRejected):
                await node.change_membership(ConfChange(ConfChangeType.PROMOTE, 2))
            with pytest.raises(InvalidRequest):
                await node.transfer_leadership()  # nobody to hand over to
            with pytest.raises(InvalidRequest):
                await node.transfer_leadership(7)
            with pytest.raises(InvalidRequest):
                node.add_peer(1, ("127.0.0.1", 1))
            with pytest.raises(InvalidRequest):
                node.add_peer(2, ("127.0.0.1", 0))
            with pytest.raises(NodeStopped):
                await node.run()  # a node runs once
            assert await node.read(b"n") == "1"

            # The bootstrap must name the incarnation the directory has.
            boot = c.bootstrap
            assert boot is not None
            wrong = ConfState(voters=((2, 5),))
            create_storage(tmp_path / "n2", wrong, 6)
            stray = RaftNode(
                replace(good, id=2, data_dir=tmp_path / "n2", unsafe_no_fsync=True),
                KV(),
                tls[2].server,
                tls[2].client,
                bootstrap=wrong,
            )
            with pytest.raises(BootstrapMismatch):
                await stray.run()
            assert stray.status()["state"] == "stopped"

            # An incarnation the core would refuse on the wire cannot be stored at all.
            with pytest.raises(InvalidStorageInput, match="2\\*\\*63"):
                create_storage(tmp_path / "n3", None, 2**63 + 5)

            # A joiner's directory from before storage kept the learned membership:
            # starting it would rebuild the membership from its log alone.
            create_storage(tmp_path / "n4", None, 8)
            (tmp_path / "n4" / "BASE-MEMBERSHIP").write_bytes(b"from an earlier version")
            old = RaftNode(
                replace(good, id=4, data_dir=tmp_path / "n4", unsafe_no_fsync=True),
                KV(),
                tls[4].server,
                tls[4].client,
            )
            with pytest.raises(StorageError, match="BASE-MEMBERSHIP"):
                await old.run()


async def test_a_failing_state_machine_stops_the_node(tmp_path: Path, tls: dict[int, Tls]) -> None:
    incarnation = 77
    boot = ConfState(voters=((1, incarnation),))
    create_storage(tmp_path / "n1", boot, incarnation)
    kv = KV()
    options = NodeOptions(
        id=1, data_dir=tmp_path / "n1", listen=("127.0.0.1", 0), peers={}, unsafe_no_fsync=True
    )
    node = RaftNode(options, kv, tls[1].server, tls[1].client, bootstrap=boot)
    outcomes: list[object] = []

    async def client() -> None:
        await node.wait_until(lambda: node.is_leader)
        outcomes.append(await node.propose(b"incr n"))
        try:
            await node.propose(b"boom")
        except RaftError as exc:
            outcomes.append(exc)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            with pytest.raises(StateMachineFailed) as failed:
                await node.run()
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert node.status()["state"] == "stopped" and node.status()["role"] == "stopped"
    assert kv.data == {"n": "1"}
    assert outcomes[0] == 1 and isinstance(outcomes[1], NodeStopped)


def test_the_test_state_machine_satisfies_the_protocol() -> None:
    assert isinstance(KV(), StateMachine)

"""Real vaultd processes on loopback: elections, crashes, damaged logs, bad peers, membership.

Every node is a child process (``python -m vaultd serve``) that the fixture
kills when the test ends, whatever happens.  Waits poll the nodes' status
with a bound; nothing here asserts on how long anything took.  Fast election
timings everywhere; fsync stays on in the tests about crashes and logs and is
off where durability is not the point.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from vaultd import pki
from vaultd.admin_client import AdminClient, open_connection
from vaultd.cli import DEV_TIMINGS, free_port_block, init_cluster, new_node
from vaultd.config import (
    Address,
    ClientConfig,
    NodeConfig,
    RaftSettings,
    TlsPaths,
    load_client_config,
    load_node_config,
    render_node_config,
)
from vaultd.errors import ConnectionFailed, ServiceError

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # bound on every wait for the cluster to reach a state


def _settings(fsync: bool) -> RaftSettings:
    return RaftSettings(
        tick_ms=DEV_TIMINGS.tick_ms,
        election_ticks=DEV_TIMINGS.election_ticks,
        heartbeat_ticks=DEV_TIMINGS.heartbeat_ticks,
        fsync=fsync,
    )


@dataclass
class ProcCluster:
    """A cluster directory and the node processes running from it."""

    directory: Path
    configs: dict[int, Path]
    client_path: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    config_override: dict[int, Path] = field(default_factory=dict)

    @property
    def client(self) -> ClientConfig:
        return load_client_config(self.client_path)

    def node_config(self, node: int) -> NodeConfig:
        return load_node_config(self.config_override.get(node, self.configs[node]))

    def log_path(self, node: int) -> Path:
        return self.directory / f"node-{node}.log"

    def start(self, node: int) -> subprocess.Popen[bytes]:
        assert node not in self.procs or self.procs[node].poll() is not None
        path = self.config_override.get(node, self.configs[node])
        with open(self.log_path(node), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vaultd", "serve", "--config", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.procs[node] = proc
        return proc

    def kill(self, node: int) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    async def stop(self, node: int) -> int:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            while proc.poll() is None:
                await trio.sleep(0.02)
        return proc.returncode

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()

    def log_text(self, node: int) -> str:
        return self.log_path(node).read_text(errors="replace")

    def admin(self, timeout_ms: int = 2000) -> AdminClient:
        c = self.client
        return AdminClient(ClientConfig(c.tls, c.nodes, timeout_ms))


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., ProcCluster]]:
    made: list[ProcCluster] = []

    def make(
        nodes: int, *, fsync: bool = False, name: str = "c", start: bool = True
    ) -> ProcCluster:
        d = tmp_path / name
        res = init_cluster(
            d, nodes, base_port=free_port_block(2 * nodes + 4), raft=_settings(fsync)
        )
        cluster = ProcCluster(
            d, {i + 1: p for i, p in enumerate(res.node_configs)}, res.client_config
        )
        made.append(cluster)
        if start:
            for n in cluster.configs:
                cluster.start(n)
        return cluster

    yield make
    for c in made:
        c.kill_all()


async def statuses(admin: AdminClient) -> dict[int, dict[str, Any] | None]:
    return {s.id: s.status for s in await admin.status_all(timeout=1.0)}


async def wait_for(
    admin: AdminClient,
    predicate: Callable[[dict[int, dict[str, Any] | None]], bool],
    what: str,
    timeout: float = WAIT,
) -> dict[int, dict[str, Any] | None]:
    last: dict[int, dict[str, Any] | None] = {}
    with trio.move_on_after(timeout):
        while True:
            last = await statuses(admin)
            if predicate(last):
                return last
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last status: {last}")


def leader_of(sts: dict[int, dict[str, Any] | None]) -> int | None:
    leaders = [(s["term"], n) for n, s in sts.items() if s and s["role"] == "leader"]
    return max(leaders)[1] if leaders else None


def has_leader(sts: dict[int, dict[str, Any] | None]) -> bool:
    return leader_of(sts) is not None


def converged(nodes: set[int]) -> Callable[[dict[int, dict[str, Any] | None]], bool]:
    """All of ``nodes`` answer, agree on one leader, and applied the leader's commit."""

    def check(sts: dict[int, dict[str, Any] | None]) -> bool:
        leader = leader_of(sts)
        if leader is None or not all(sts.get(n) for n in nodes):
            return False
        lead = sts[leader]
        assert lead is not None
        return all(
            (s := sts[n]) is not None and s["leader"] == leader and s["applied"] >= lead["commit"]
            for n in nodes
        )

    return check


@dataclass
class Writers:
    """Client tasks writing unique keys until stopped; ``acked`` holds every key
    whose put was acknowledged."""

    admin: AdminClient
    acked: list[bytes] = field(default_factory=list)
    failed: int = 0
    scopes: list[trio.CancelScope] = field(default_factory=list)

    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True
        for scope in self.scopes:
            scope.cancel()

    async def writer(self, wid: int) -> None:
        with trio.CancelScope() as scope:
            if self.stopped:
                return
            self.scopes.append(scope)
            await self._write(wid)

    async def _write(self, wid: int) -> None:
        seq = 0
        while True:
            key = b"w%d-%d" % (wid, seq)
            seq += 1
            try:
                await self.admin.call("kv.put", {"key": key, "value": key * 3})
            except (ServiceError, ConnectionFailed):
                self.failed += 1
                await trio.sleep(0.01)
                continue
            self.acked.append(key)

    async def wait_for_acks(self, n: int) -> None:
        target = len(self.acked) + n
        with trio.fail_after(WAIT):
            while len(self.acked) < target:
                await trio.sleep(0.01)


@pytest.fixture
async def writers_factory() -> AsyncIterator[Callable[..., Any]]:
    async with trio.open_nursery() as nursery:
        made: list[Writers] = []

        def start(admin: AdminClient, count: int = 8) -> Writers:
            w = Writers(admin)
            made.append(w)
            for i in range(count):
                nursery.start_soon(w.writer, i)
            return w

        yield start
        for w in made:
            w.stop()


async def assert_all_present(admin: AdminClient, keys: list[bytes]) -> None:
    missing: list[bytes] = []
    pending = list(keys)

    async def check() -> None:
        while pending:
            key = pending.pop()
            value = await admin.call("kv.get", {"key": key}, deadline=trio.current_time() + WAIT)
            if value != key * 3:
                missing.append(key)

    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(check)
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


# ---------------------------------------------------------------- elections, replication


@pytest.mark.parametrize("nodes", [3, 5])
async def test_election_and_replication(
    make_cluster: Callable[..., ProcCluster], nodes: int
) -> None:
    cluster = make_cluster(nodes)
    async with cluster.admin() as admin:
        sts = await wait_for(admin, converged(set(cluster.configs)), "a leader")
        leader = leader_of(sts)
        for s in sts.values():
            assert (
                s is not None and s["is_voter"] and sorted(s["voters"]) == sorted(cluster.configs)
            )
        for i in range(30):
            assert await admin.call("kv.incr", {"key": b"counter", "delta": 1}) == i + 1
        await admin.call("kv.put", {"key": b"greeting", "value": b"hello"})
        assert await admin.call("kv.get", {"key": b"greeting"}) == b"hello"
        sts = await wait_for(admin, converged(set(cluster.configs)), "replication everywhere")
        assert leader_of(sts) == leader
        # A minority of the nodes may fail: the rest still commit.
        victims = [n for n in cluster.configs if n != leader][: (nodes - 1) // 2]
        for n in victims:
            cluster.kill(n)
        assert await admin.call("kv.incr", {"key": b"counter", "delta": 1}) == 31
        for n in victims:
            cluster.start(n)
        await wait_for(admin, converged(set(cluster.configs)), "the restarted nodes to catch up")
        assert await admin.call("kv.get", {"key": b"counter"}) == b"31"


async def test_leader_sigkill_under_load_loses_no_acked_write(
    make_cluster: Callable[..., ProcCluster], writers_factory: Callable[..., Writers]
) -> None:
    cluster = make_cluster(3, fsync=True)
    async with cluster.admin() as admin:
        sts = await wait_for(admin, converged({1, 2, 3}), "a leader")
        old = leader_of(sts)
        assert old is not None
        writers = writers_factory(admin)
        await writers.wait_for_acks(200)
        cluster.kill(old)
        sts = await wait_for(
            admin, lambda s: (lead := leader_of(s)) is not None and lead != old, "a new leader"
        )
        await writers.wait_for_acks(200)
        cluster.start(old)
        await writers.wait_for_acks(100)
        writers.stop()
        await wait_for(admin, converged({1, 2, 3}), "the old leader to catch up")
        await assert_all_present(admin, list(writers.acked))


# ---------------------------------------------------------------- damaged logs


def newest_segment(cluster: ProcCluster, node: int) -> Path:
    wal = cluster.node_config(node).data_dir / "wal"
    segments = sorted(wal.glob("*.wal"))
    assert segments, f"no WAL segments in {wal}"
    return segments[-1]


WAL_MAGIC = b"\xa7W"  # every WAL record starts with it (raft/wal.py)


def damage_tail(segment: Path, damage: str) -> None:
    """Damage the end of a WAL segment the way a crash or a bad disk would.

    - ``torn-header``/``torn-garbage``: a record that was being appended when the
      node died (never flushed, so never acknowledged) reached the disk only in
      part: the start of a header, or a header followed by junk.
    - ``truncate``/``overwrite``: the last flushed bytes of the file are gone or
      overwritten (cuts into a record the node had acknowledged)."""
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        if damage == "torn-header":
            f.seek(size)
            f.write(WAL_MAGIC + b"\x02\x00\x40\x00")
        elif damage == "torn-garbage":
            f.seek(size)
            f.write(WAL_MAGIC + bytes(random.Random(3).getrandbits(8) for _ in range(300)))
        elif damage == "truncate":
            f.truncate(size - 7)  # mid-record: every record is longer than 7 bytes
        else:
            f.seek(size - 5)
            f.write(b"\xde\xad\xbe\xef\x00")


@pytest.mark.parametrize(
    "damage",
    [
        "torn-header",
        "torn-garbage",
        "truncate",
        "overwrite",
    ],
)
async def test_damaged_wal_tail_recovers_and_rejoins(
    make_cluster: Callable[..., ProcCluster], writers_factory: Callable[..., Writers], damage: str
) -> None:
    cluster = make_cluster(3, fsync=True)
    async with cluster.admin() as admin:
        sts = await wait_for(admin, converged({1, 2, 3}), "a leader")
        leader = leader_of(sts)
        victim = next(n for n in (1, 2, 3) if n != leader)
        writers = writers_factory(admin, 4)
        await writers.wait_for_acks(150)
        cluster.kill(victim)
        await writers.wait_for_acks(20)
        writers.stop()
        segment = newest_segment(cluster, victim)
        damage_tail(segment, damage)
        cluster.start(victim)
        # Rejoining takes a few heartbeats; the bound is short because the
        # lost-acked-tail variants are expected to stall here until raft.core is fixed.
        await wait_for(admin, converged({1, 2, 3}), "the damaged node to rejoin", timeout=10)
        assert "torn tail" in cluster.log_text(victim)
        await assert_all_present(admin, list(writers.acked))
        # The repaired node holds the whole log: with the leader it is a quorum.
        sts = await statuses(admin)
        leader = leader_of(sts)
        third = next(n for n in (1, 2, 3) if n not in (leader, victim))
        cluster.kill(third)
        await admin.call("kv.put", {"key": b"after", "value": b"repair"})
        await assert_all_present(admin, list(writers.acked))


async def test_corruption_in_the_middle_refuses_to_start(
    make_cluster: Callable[..., ProcCluster], writers_factory: Callable[..., Writers]
) -> None:
    cluster = make_cluster(3, fsync=True)
    async with cluster.admin() as admin:
        sts = await wait_for(admin, converged({1, 2, 3}), "a leader")
        victim = next(n for n in (1, 2, 3) if n != leader_of(sts))
        writers = writers_factory(admin, 4)
        await writers.wait_for_acks(200)
        writers.stop()
    assert await cluster.stop(victim) == 0
    segment = newest_segment(cluster, victim)
    data = bytearray(segment.read_bytes())
    offset = len(data) // 3
    data[offset] ^= 0xFF
    segment.write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "-m", "vaultd", "serve", "--config", str(cluster.configs[victim])],
        capture_output=True,
        cwd=ROOT,
        timeout=WAIT,
    )
    assert proc.returncode != 0
    stderr = proc.stderr.decode()
    assert "refuses to start" in stderr
    assert str(segment) in stderr
    assert "offset" in stderr


# ---------------------------------------------------------------- hostile peers and clients


async def test_node_with_a_foreign_ca_certificate_cannot_join(
    make_cluster: Callable[..., ProcCluster],
) -> None:
    cluster = make_cluster(3, start=False)
    foreign = make_cluster(3, name="foreign", start=False)
    # An impostor for node 2: node 2's addresses and data directory, another CA's certificate.
    base = cluster.node_config(2)
    impostor_tls = foreign.node_config(2).tls
    impostor = NodeConfig(
        id=2,
        data_dir=cluster.directory / "impostor-data",
        peer_listen=base.peer_listen,
        client_listen=base.client_listen,
        tls=impostor_tls,
        peers=base.peers,
        raft=base.raft,
        service=base.service,
    )
    path = cluster.directory / "impostor.toml"
    path.write_text(render_node_config(impostor, cluster.directory))
    cluster.config_override[2] = path
    for n in (1, 2, 3):
        cluster.start(n)
    async with cluster.admin() as admin:
        sts = await wait_for(
            admin,
            lambda s: (_lead := leader_of(s)) in (1, 3) and s[1] is not None and s[3] is not None,
            "a leader among the genuine nodes",
        )
        for _i in range(20):
            await admin.call("kv.incr", {"key": b"n", "delta": 1})
        sts = await wait_for(admin, converged({1, 3}), "replication to the genuine nodes")
        # Our admin certificate cannot even talk to the impostor's client port.
        assert sts[2] is None
    fc = foreign.client
    impostor_admin = AdminClient(ClientConfig(fc.tls, ((2, base.client_listen),), 2000))
    async with impostor_admin as ia:
        st = (await ia.status_all())[0].status
    assert st is not None
    assert st["commit"] == 0 and st["leader"] is None and st["role"] != "leader"
    assert "not issued" in cluster.log_text(1).lower() or "handshake" in cluster.log_text(1).lower()


def _tls_client(tls: TlsPaths) -> ssl.SSLContext:
    return pki.client_ssl_context(pki.TlsFiles(tls.ca, tls.cert, tls.key))


async def _send_raw(address: Address, data: bytes) -> None:
    try:
        tcp = await trio.open_tcp_stream(*address)
    except OSError:
        return
    try:
        with trio.move_on_after(2):
            await tcp.send_all(data)
            while await tcp.receive_some(65536):
                pass
    except (trio.BrokenResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(tcp)


async def _send_tls(address: Address, ctx: ssl.SSLContext, data: bytes) -> None:
    try:
        tcp = await trio.open_tcp_stream(*address)
    except OSError:
        return
    stream = trio.SSLStream(tcp, ctx, server_hostname=address[0])
    try:
        with trio.move_on_after(2):
            await stream.do_handshake()
            await stream.send_all(data)
            while await stream.receive_some(65536):
                pass
    except (trio.BrokenResourceError, OSError, ssl.SSLError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def test_garbage_and_oversized_frames_leave_the_cluster_undisturbed(
    make_cluster: Callable[..., ProcCluster],
) -> None:
    cluster = make_cluster(3)
    rng = random.Random(7)
    async with cluster.admin() as admin:
        before = await wait_for(admin, converged({1, 2, 3}), "a leader")
        leader = leader_of(before)
        term = before[leader]["term"]  # type: ignore[index]
        admin_ctx = _tls_client(cluster.client.tls)
        node3 = cluster.node_config(3)
        node3_ctx = _tls_client(node3.tls)
        attacks = []
        for n in (1, 2, 3):
            cfg = cluster.node_config(n)
            for address in (cfg.peer_listen, cfg.client_listen):
                attacks += [
                    (_send_raw, address, bytes(rng.getrandbits(8) for _ in range(4096))),
                    (_send_raw, address, struct.pack(">I", 0xFFFFFFF0) + b"\x01" * 64),
                    (_send_raw, address, b"\x16\x03\x01\xff\xff" + b"\x00" * 100),
                ]
            # Well-authenticated connections sending bad frames.
            attacks += [
                (_send_tls, cfg.client_listen, admin_ctx, struct.pack(">I", 1 << 31) + b"x" * 10),
                (_send_tls, cfg.client_listen, admin_ctx, struct.pack(">I", 3) + b"\xc1\xc1\xc1"),
                (_send_tls, cfg.peer_listen, admin_ctx, b"\x00\x00\x00\x05\x01hello"),
            ]
            if n != 3:
                attacks += [
                    (_send_tls, cfg.peer_listen, node3_ctx, struct.pack(">IB", 1 << 30, 1)),
                    (_send_tls, cfg.peer_listen, node3_ctx, struct.pack(">IB", 4, 9) + b"junk"),
                    (
                        _send_tls,
                        cfg.peer_listen,
                        node3_ctx,
                        struct.pack(">IB", 3, 1) + b"\x91\x01\x02",
                    ),
                ]
        async with trio.open_nursery() as nursery:
            for fn, *args in attacks:
                nursery.start_soon(fn, *args)
        # A pipelined client still gets answers.
        async with open_connection(cluster.client.nodes[0][1], admin_ctx) as conn:
            assert (await conn.call("status"))["id"] == 1
        for i in range(20):
            assert await admin.call("kv.incr", {"key": b"after", "delta": 1}) == i + 1
        after = await wait_for(admin, converged({1, 2, 3}), "all nodes answering")
        assert leader_of(after) == leader
        assert all(s is not None and s["term"] == term for s in after.values())
    for n in (1, 2, 3):
        assert cluster.procs[n].poll() is None


# ---------------------------------------------------------------- lost disks and membership


async def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "vaultd", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=WAIT * 2,
        )
    )


async def test_wiped_node_does_not_vote_until_added_back(
    make_cluster: Callable[..., ProcCluster],
) -> None:
    cluster = make_cluster(3)
    async with cluster.admin() as admin:
        sts = await wait_for(admin, converged({1, 2, 3}), "a leader")
        leader = leader_of(sts)
        assert leader is not None
        others = [n for n in (1, 2, 3) if n != leader]
        wiped, other = others
        old_incarnation = sts[wiped]["incarnation"]  # type: ignore[index]
        for _i in range(10):
            await admin.call("kv.incr", {"key": b"n", "delta": 1})
        cluster.kill(wiped)
        shutil.rmtree(cluster.node_config(wiped).data_dir)
        cluster.start(wiped)
        sts = await wait_for(
            admin,
            lambda s: (w := s[wiped]) is not None and wiped in w["voters"] and w["applied"] > 0,
            "the wiped node to learn the membership",
        )
        w = sts[wiped]
        assert w is not None
        assert w["incarnation"] != old_incarnation
        assert not w["is_voter"]
        # Without the other genuine voter, the leader and the wiped node are no quorum.
        cluster.kill(other)
        sts = await wait_for(
            admin, lambda s: not has_leader(s), "the leader to step down (CheckQuorum)"
        )
        term = max(s["term"] for s in sts.values() if s)
        # For many election timeouts, nobody wins: the wiped node neither votes nor counts.
        for _ in range(20):
            sts = await statuses(admin)
            assert not has_leader(sts), sts
            await trio.sleep(0.05)
        wiped_status = sts[wiped]
        assert wiped_status is not None and wiped_status["role"] == "follower"
        assert wiped_status["term"] <= term + 1
        cluster.start(other)
        await wait_for(admin, has_leader, "a leader once the genuine voter is back")
        host, port = cluster.node_config(wiped).peer_listen
        client_port = cluster.node_config(wiped).client_listen[1]
        add = await run_cli(
            "members", "add", str(wiped), "--host", host, "--port", str(port),
            "--client-port", str(client_port), "--config", str(cluster.client_path),
        )  # fmt: skip
        assert add.returncode == 0, add.stderr
        promote = await run_cli(
            "members", "promote", str(wiped), "--wait", "20", "--config", str(cluster.client_path)
        )
        assert promote.returncode == 0, promote.stderr
        sts = await wait_for(
            admin, lambda s: (w := s[wiped]) is not None and w["is_voter"], "the node to vote again"
        )
        # Now it counts: the leader and the re-added node commit without the third node.
        leader = leader_of(sts)
        third = next(n for n in (1, 2, 3) if n not in (leader, wiped))
        cluster.kill(third)
        assert await admin.call("kv.incr", {"key": b"n", "delta": 1}) == 11


async def test_membership_changes_while_clients_write(
    make_cluster: Callable[..., ProcCluster], writers_factory: Callable[..., Writers]
) -> None:
    cluster = make_cluster(3)
    new_path = new_node(cluster.directory, 4)
    cluster.configs[4] = new_path
    cluster.start(4)
    async with cluster.admin() as admin:
        sts = await wait_for(admin, converged({1, 2, 3}), "a leader")
        st4 = sts[4]
        assert st4 is not None and not st4["is_voter"] and st4["voters"] == []
        writers = writers_factory(admin, 4)
        await writers.wait_for_acks(50)
        cfg4 = cluster.node_config(4)
        await admin.call(
            "members.add",
            {"node": 4, "peer": f"127.0.0.1:{cfg4.peer_listen[1]}",
             "client": f"127.0.0.1:{cfg4.client_listen[1]}"},
        )  # fmt: skip
        await writers.wait_for_acks(50)
        with trio.fail_after(WAIT):
            while True:
                try:
                    await admin.call("members.promote", {"node": 4})
                    break
                except ServiceError as exc:
                    assert exc.code == "rejected", exc
                    await trio.sleep(0.05)
        await writers.wait_for_acks(50)
        sts = await statuses(admin)
        leader = leader_of(sts)
        removed = next(n for n in (1, 2, 3) if n != leader)
        await admin.call("members.remove", {"node": removed})
        await writers.wait_for_acks(50)
        writers.stop()
        remaining = {1, 2, 3, 4} - {removed}
        sts = await wait_for(admin, converged(remaining), "the new configuration to settle")
        lead = sts[leader_of(sts)]  # type: ignore[index]
        assert lead is not None
        assert sorted(lead["voters"]) == sorted(remaining)
        assert str(removed) not in lead["directory"]
        await cluster.stop(removed)
        await assert_all_present(admin, list(writers.acked))
        assert writers.acked


def test_free_port_block_is_free() -> None:
    base = free_port_block(4)
    for port in range(base, base + 4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

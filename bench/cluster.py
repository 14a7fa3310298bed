"""Cluster benchmark: a real 3-process vaultd cluster on loopback against PySyncObj.

Measured in one run, on the same disk:

- raw fsync rate of the disk (100-byte write + fdatasync, back to back);
- vaultd, fsync ON: commit throughput and p50/p99 latency of ``--clients``
  concurrent clients, each with one 100-byte ``kv.put`` outstanding at a time,
  sent to the leader over ``--connections`` pipelined TLS connections (one
  task per connection reads the answers and sends the follow-ups, so the load
  generator, which shares the CPU with the cluster, costs as little as the
  protocol allows); the leader's fsyncs/s, log
  entries per fsync and client commands per fsync over the same window (the
  leader packs writes that arrive together into one entry, see
  vaultd.daemon.ProposalBatcher, so commands per fsync is the batching figure);
- vaultd lone-commit latency (one client, one command at a time);
- vaultd failover: SIGKILL the leader while a prober writes, time to the first
  commit acknowledged by a new leader; median of ``--failover-runs`` runs;
- PySyncObj (pip package ``pysyncobj``), 3 processes, a replicated counter
  whose command carries a 100-byte payload, its file journal, batched
  appends, deep queues; the same number of commands in flight, generated
  inside the leader process (PySyncObj has no client protocol, so it pays no
  client hop: the comparison favours it).  Its journal is an mmap that is
  never flushed per entry, i.e. it does *not* fsync.

Prints a table, then one JSON line (``throughput_ratio`` = ours / PySyncObj).

    .venv/bin/python bench/cluster.py [--duration 5] [--clients 256] [--connections 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raft.tls_stream import TLSStream  # noqa: E402
from vaultd.admin_client import AdminClient, open_connection  # noqa: E402
from vaultd.cli import free_port_block, init_cluster  # noqa: E402
from vaultd.config import (  # noqa: E402
    Address,
    ClientConfig,
    RaftSettings,
    load_client_config,
)
from vaultd.errors import ConnectionFailed, NotLeader, ServiceError  # noqa: E402
from vaultd.kvstore import Put, encode_command  # noqa: E402
from vaultd.pki import TlsFiles, client_ssl_context  # noqa: E402
from vaultd.service import (  # noqa: E402
    FrameReader,
    decode_response,
    encode_request,
    encode_result,
)

COMMAND_BYTES = 100


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


# ---------------------------------------------------------------- raw disk


def raw_fsync_rate(directory: Path, seconds: float = 1.0) -> float:
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, b"x" * 100)
            os.fdatasync(fd)
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


# ---------------------------------------------------------------- vaultd


def _put_value(task: int) -> tuple[bytes, bytes]:
    key = b"k%07d" % task
    value = b""
    while len(encode_command(Put(key, value))) < COMMAND_BYTES:
        value += b"v"
    return key, value


class Cluster:
    def __init__(self, directory: Path, nodes: int, fsync: bool) -> None:
        base = free_port_block(2 * nodes)
        self.init = init_cluster(
            directory, nodes, base_port=base, raft=RaftSettings(fsync=fsync), log_level="warning"
        )
        self.client = load_client_config(self.init.client_config)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs = directory / "logs"
        self.logs.mkdir()

    def start(self, node: int) -> None:
        path = self.init.node_configs[node - 1]
        log = open(self.logs / f"node-{node}.log", "ab")  # noqa: SIM115
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "vaultd", "serve", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()

    def kill(self, node: int) -> None:
        p = self.procs.pop(node)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def address(self, node: int) -> Address:
        return dict(self.client.nodes)[node]


async def wait_leader(admin: AdminClient, timeout: float = 30.0) -> dict[str, Any]:
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        for s in await admin.status_all(timeout=0.5):
            if s.status is not None and s.status.get("role") == "leader":
                return s.status
        await trio.sleep(0.05)
    raise RuntimeError("no leader elected")


async def wait_caught_up(admin: AdminClient, timeout: float = 30.0) -> None:
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        sts = await admin.status_all(timeout=0.5)
        if all(s.status is not None for s in sts):
            commits = [s.status["commit"] for s in sts if s.status is not None]
            applied = [s.status["applied"] for s in sts if s.status is not None]
            if (
                min(applied) >= max(commits) - 1
                and len({s.status["leader"] for s in sts if s.status}) == 1
            ):
                return
        await trio.sleep(0.05)
    raise RuntimeError("cluster did not catch up")


async def throughput(
    cluster: Cluster, admin: AdminClient, duration: float, clients: int, connections: int
) -> dict[str, Any]:
    ssl_ctx = client_ssl_context(
        TlsFiles(cluster.client.tls.ca, cluster.client.tls.cert, cluster.client.tls.key)
    )
    leader = await wait_leader(admin)
    address = cluster.address(leader["id"])
    load = _Load()
    async with trio.open_nursery() as nursery:
        for c in range(connections):
            await nursery.start(
                _load_connection, address, ssl_ctx, range(c, clients, connections), load
            )
        await trio.sleep(1.0)  # warm up
        before = await admin.call_node(address, "status")
        load.measuring = True
        t0 = time.perf_counter()
        await trio.sleep(duration)
        load.measuring = False
        elapsed = time.perf_counter() - t0
        after = await admin.call_node(address, "status")
        nursery.cancel_scope.cancel()
    latencies = load.latencies
    committed = after["commit"] - before["commit"]
    commands = after["client_commands"] - before["client_commands"]
    fsyncs = after.get("fsyncs", 0) - before.get("fsyncs", 0)
    return {
        "ops": len(latencies),
        "ops_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": len(load.errors),
        "fsyncs_per_s": fsyncs / elapsed,
        "entries_per_fsync": committed / fsyncs if fsyncs else float("nan"),
        "commands_per_fsync": commands / fsyncs if fsyncs else float("nan"),
        "commands_per_entry": commands / committed if committed else float("nan"),
        "leader": leader["id"],
    }


class _Load:
    """What the load connections record while ``measuring`` is set."""

    def __init__(self) -> None:
        self.measuring = False
        self.latencies: list[float] = []
        self.errors: list[str] = []


async def _load_connection(
    address: Address,
    ssl_ctx: Any,
    clients: range,
    load: _Load,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Closed-loop load on one pipelined connection: each of ``clients`` has exactly
    one ``kv.put`` outstanding and sends its next one as soon as the answer to the
    previous one arrives (request ids are client numbers).

    One task both reads answers and writes the follow-up requests of everything it
    read in one ``send_all``, instead of a task (and two wake-ups) per client: on
    this 2-core machine the load generator shares the CPU with the cluster it
    measures, so it has to cost as little as the protocol allows.  Latency is
    measured per request, from just before its ``send_all`` to the processing of
    the read that carried its answer."""
    host, port = address
    tcp = await trio.open_tcp_stream(host, port)
    stream = TLSStream.wrap(tcp, ssl_ctx, server_hostname=host)
    await stream.do_handshake()
    frames = {
        c: encode_request(c, "kv.put", dict(zip(("key", "value"), _put_value(c), strict=True)))
        for c in clients
    }
    # A put's answer is exactly {"id": c, "ok": true, "result": nil}: looking the
    # bytes up checks it completely for the price of a dict lookup; anything else
    # is decoded and judged in full.
    success = {encode_result(c, None)[4:]: c for c in clients}
    sent: dict[int, float] = {}
    reader = FrameReader(1 << 20)
    task_status.started()
    try:
        now = time.perf_counter()
        for c in clients:
            sent[c] = now
        await stream.send_all(b"".join(frames.values()))
        while True:
            data = await stream.receive_some(65536)
            if not data:
                load.errors.append("connection closed by the node")
                return
            now = time.perf_counter()
            reader.feed(data)
            again: list[int] = []
            while (payload := reader.next()) is not None:
                rid = success.get(payload)
                if rid is None:
                    rid, ok, body = decode_response(payload)
                    if not ok or body is not None or rid not in sent:
                        load.errors.append(str(body))
                        continue  # this client stops: a healthy run has no errors
                if load.measuring:
                    load.latencies.append(now - sent[rid])
                again.append(rid)
            if again:
                now = time.perf_counter()
                for c in again:
                    sent[c] = now
                await stream.send_all(b"".join([frames[c] for c in again]))
    finally:
        await trio.aclose_forcefully(stream)


async def _hold_connection(
    address: Address, ssl_ctx: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    async with open_connection(address, ssl_ctx) as conn:
        task_status.started(conn)
        await trio.sleep_forever()


async def lone_commits(admin: AdminClient, n: int) -> dict[str, float]:
    key, value = _put_value(10**6)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await admin.call("kv.put", {"key": key, "value": value})
        lat.append(time.perf_counter() - t0)
    return {"p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000}


async def failover_once(cluster: Cluster, admin: AdminClient) -> float:
    leader = await wait_leader(admin)
    old = leader["id"]
    survivors = [n for n, _ in cluster.client.nodes if n != old]
    ssl_ctx = client_ssl_context(
        TlsFiles(cluster.client.tls.ca, cluster.client.tls.cert, cluster.client.tls.key)
    )
    key, value = _put_value(2 * 10**6)
    async with trio.open_nursery() as nursery:
        conns = {
            n: await nursery.start(_hold_connection, cluster.address(n), ssl_ctx) for n in survivors
        }
        await trio.sleep(0.5)
        t_kill = time.perf_counter()
        cluster.kill(old)
        elapsed = None
        while elapsed is None:
            for n in survivors:
                try:
                    with trio.fail_after(0.2):
                        await conns[n].call("kv.put", {"key": key, "value": value})
                    elapsed = time.perf_counter() - t_kill
                    break
                except (NotLeader, ServiceError, ConnectionFailed, trio.TooSlowError):
                    continue
            else:
                await trio.sleep(0.002)
        nursery.cancel_scope.cancel()
    cluster.start(old)
    await wait_caught_up(admin)
    return elapsed


async def bench_vaultd(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cluster = Cluster(work / "vaultd", 3, fsync=not args.unsafe_no_fsync)
    for n in (1, 2, 3):
        cluster.start(n)
    try:
        cfg = ClientConfig(cluster.client.tls, cluster.client.nodes, 2000)
        async with AdminClient(cfg) as admin:
            await wait_leader(admin)
            await wait_caught_up(admin)
            tp = await throughput(cluster, admin, args.duration, args.clients, args.connections)
            await wait_caught_up(admin)
            lone = await lone_commits(admin, args.lone_ops)
            failovers = []
            for _ in range(args.failover_runs):
                failovers.append(await failover_once(cluster, admin))
    finally:
        cluster.stop_all()
    return {
        "throughput": tp,
        "lone": lone,
        "failover_ms": [f * 1000 for f in failovers],
        "failover_median_ms": statistics.median(failovers) * 1000 if failovers else float("nan"),
    }


# ---------------------------------------------------------------- PySyncObj


def psync_node(index: int, ports: list[int], workdir: Path, args: argparse.Namespace) -> None:
    """One PySyncObj node (runs in its own process).  The node that finds itself
    leader generates the load and prints one JSON line of results."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, others: list[str], conf: SyncObjConf) -> None:
            super().__init__(me, others, conf)
            self.count = 0

        @replicated  # type: ignore[misc]
        def add(self, payload: bytes) -> int:
            self.count += 1
            return self.count

    addrs = [f"127.0.0.1:{p}" for p in ports]
    conf = SyncObjConf(
        journalFile=str(workdir / f"journal-{index}"),
        fullDumpFile=str(workdir / f"dump-{index}"),
        appendEntriesUseBatch=True,
        commandsQueueSize=10_000_000,
        appendEntriesBatchSizeBytes=2**20,
        sendBufferSize=2**20,
        recvBufferSize=2**20,
        raftMinTimeout=0.2,
        raftMaxTimeout=0.4,
        appendEntriesPeriod=args.append_period,
        logCompactionMinEntries=10**9,
        logCompactionMinTime=10**9,
        autoTickPeriod=0.001,
    )
    obj = Counter(addrs[index], [a for i, a in enumerate(addrs) if i != index], conf)
    stop_file = workdir / "stop"
    deadline = time.monotonic() + 30
    while obj._getLeader() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    if not obj._isLeader():
        while not stop_file.exists():
            time.sleep(0.05)
        obj.destroy()
        return
    payload = b"p" * COMMAND_BYTES
    latencies: list[float] = []
    errors = [0]
    state = {"measuring": False, "stop": False}
    lock = threading.Lock()

    def submit() -> None:
        t0 = time.perf_counter()
        obj.add(payload, callback=lambda res, err, t0=t0: done(err, t0))

    def done(err: int, t0: float) -> None:
        if err != 0:
            errors[0] += 1
        elif state["measuring"]:
            with lock:
                latencies.append(time.perf_counter() - t0)
        if not state["stop"]:
            submit()

    for _ in range(args.clients):
        submit()
    time.sleep(1.0)
    state["measuring"] = True
    t0 = time.perf_counter()
    time.sleep(args.duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    state["stop"] = True
    with lock:
        lat = list(latencies)
    time.sleep(0.5)
    lone = []
    for _ in range(args.lone_ops):
        s = time.perf_counter()
        obj.add(payload, sync=True, timeout=5)
        lone.append(time.perf_counter() - s)
    print(
        json.dumps(
            {
                "ops": len(lat),
                "ops_per_s": len(lat) / elapsed,
                "p50_ms": percentile(lat, 50) * 1000,
                "p99_ms": percentile(lat, 99) * 1000,
                "errors": errors[0],
                "lone_p50_ms": percentile(lone, 50) * 1000,
            }
        ),
        flush=True,
    )
    stop_file.touch()
    obj.destroy()


def bench_pysyncobj(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run PySyncObj once per append period in ``--peer-periods`` and keep the fastest."""
    best: dict[str, Any] | None = None
    for period in args.peer_periods:
        r = _bench_pysyncobj_once(args, work / f"pysyncobj-{period}", period)
        r["append_period"] = period
        if best is None or r["ops_per_s"] > best["ops_per_s"]:
            best = r
    assert best is not None
    return best


def _bench_pysyncobj_once(args: argparse.Namespace, d: Path, period: float) -> dict[str, Any]:
    d.mkdir()
    ports = [_free_port() for _ in range(3)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--_psync-node",
                str(i),
                "--_ports",
                ",".join(map(str, ports)),
                "--_dir",
                str(d),
                "--duration",
                str(args.duration),
                "--clients",
                str(args.clients),
                "--lone-ops",
                str(args.lone_ops),
                "--_append-period",
                str(period),
            ],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for i in range(3)
    ]
    result: dict[str, Any] | None = None
    try:
        for p in procs:
            out, _ = p.communicate(timeout=args.duration + 120)
            for line in out.decode().splitlines():
                if line.startswith("{"):
                    result = json.loads(line)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if result is None:
        raise RuntimeError("PySyncObj produced no result")
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds of measured load")
    p.add_argument(
        "--clients", type=int, default=256, help="concurrent clients (one request outstanding each)"
    )
    p.add_argument("--connections", type=int, default=4, help="client connections to the leader")
    p.add_argument("--lone-ops", type=int, default=300, help="sequential commits for lone p50")
    p.add_argument("--failover-runs", type=int, default=5)
    p.add_argument("--skip-peer", action="store_true", help="do not run PySyncObj")
    p.add_argument(
        "--unsafe-no-fsync",
        action="store_true",
        help="diagnosis only: run vaultd without flushes to see what fsync costs",
    )
    p.add_argument("--_psync-node", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_ports", help=argparse.SUPPRESS)
    p.add_argument("--_dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_append-period", dest="append_period", type=float, help=argparse.SUPPRESS)
    p.add_argument(
        "--peer-periods",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[0.002, 0.005, 0.01],
        help="PySyncObj appendEntriesPeriod values to try (the fastest is reported)",
    )
    args = p.parse_args()
    if args._psync_node is not None:
        psync_node(args._psync_node, [int(x) for x in args._ports.split(",")], args._dir, args)
        return
    with tempfile.TemporaryDirectory(prefix="vaultd-bench-", dir=os.environ.get("BENCH_DIR")) as w:
        work = Path(w)
        raw = raw_fsync_rate(work)
        ours = trio.run(bench_vaultd, args, work)
        peer = None if args.skip_peer else bench_pysyncobj(args, work)
    tp, lone = ours["throughput"], ours["lone"]
    rows = [
        ("raw disk fsync rate (100 B + fdatasync)", f"{raw:,.0f} /s"),
        (f"vaultd commits/s ({args.clients} clients, fsync on)", f"{tp['ops_per_s']:,.0f}"),
        ("vaultd commit latency p50 / p99", f"{tp['p50_ms']:.2f} / {tp['p99_ms']:.2f} ms"),
        (
            "vaultd leader fsyncs/s (vs raw)",
            f"{tp['fsyncs_per_s']:,.0f} ({tp['fsyncs_per_s'] / raw:.0%})",
        ),
        ("vaultd log entries per fsync", f"{tp['entries_per_fsync']:.1f}"),
        ("vaultd client commands per fsync", f"{tp['commands_per_fsync']:.1f}"),
        ("vaultd client commands per log entry", f"{tp['commands_per_entry']:.1f}"),
        ("vaultd lone commit p50 / p99", f"{lone['p50_ms']:.2f} / {lone['p99_ms']:.2f} ms"),
        (
            f"vaultd failover (median of {len(ours['failover_ms'])})",
            f"{ours['failover_median_ms']:.0f} ms  {[round(x) for x in ours['failover_ms']]}",
        ),
    ]
    if peer is not None:
        rows += [
            (f"PySyncObj commits/s ({args.clients} in flight)", f"{peer['ops_per_s']:,.0f}"),
            ("PySyncObj latency p50 / p99", f"{peer['p50_ms']:.2f} / {peer['p99_ms']:.2f} ms"),
            ("PySyncObj lone commit p50", f"{peer['lone_p50_ms']:.2f} ms"),
            ("PySyncObj best appendEntriesPeriod", f"{peer['append_period']} s"),
            ("throughput ratio (vaultd / PySyncObj)", f"{tp['ops_per_s'] / peer['ops_per_s']:.2f}"),
        ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    figures = {
        "raw_fsyncs_per_s": round(raw, 1),
        "ops_per_s": round(tp["ops_per_s"], 1),
        "p50_ms": round(tp["p50_ms"], 3),
        "p99_ms": round(tp["p99_ms"], 3),
        "fsyncs_per_s": round(tp["fsyncs_per_s"], 1),
        "entries_per_fsync": round(tp["entries_per_fsync"], 2),
        "commands_per_fsync": round(tp["commands_per_fsync"], 2),
        "lone_commit_p50_ms": round(lone["p50_ms"], 3),
        "failover_median_ms": round(ours["failover_median_ms"], 1),
        "errors": tp["errors"],
    }
    if peer is not None:
        figures["pysyncobj_ops_per_s"] = round(peer["ops_per_s"], 1)
        figures["pysyncobj_p50_ms"] = round(peer["p50_ms"], 3)
        figures["throughput_ratio"] = round(tp["ops_per_s"] / peer["ops_per_s"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

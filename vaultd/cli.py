"""The ``vaultd`` command line: create a cluster, run nodes, inspect and change it.

::

    vaultd init --nodes 3 --dir DIR [--hosts h1,h2,h3] [--base-port 7400]
    vaultd new-node --dir DIR --id 4 [--host H] [--peer-port P] [--client-port C]
    vaultd serve --config DIR/node-1.toml
    vaultd dev [--nodes 3] [--dir DIR] [--demo-writes N]
    vaultd status --config DIR/client.toml [--json]
    vaultd members add|promote|remove ID [--host H --port P] --config DIR/client.toml
    vaultd kv put|get|incr KEY [VALUE] --config DIR/client.toml
    vaultd transfer [--to ID] --config DIR/client.toml

Exit status: 0 on success, 1 when the cluster refused or failed the
operation, 2 for bad usage or configuration (the message names the problem).
See docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from . import pki
from .config import (
    ClientConfig,
    NodeConfig,
    NodeEntry,
    RaftSettings,
    TlsPaths,
    format_address,
    load_client_config,
    load_node_config,
    render_client_config,
    render_node_config,
)
from .errors import (
    ConfigError,
    ConnectionFailed,
    InitError,
    Rejected,
    ServiceError,
    VaultdError,
)

__all__ = [
    "DEV_TIMINGS",
    "InitResult",
    "init_cluster",
    "main",
    "new_node",
]

DEFAULT_BASE_PORT: Final = 7400
DEV_TIMINGS: Final = RaftSettings(tick_ms=10, election_ticks=10, heartbeat_ticks=2)
"""Fast elections for local clusters and tests (100-200 ms election timeouts)."""
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


# ---------------------------------------------------------------- init


@dataclass(frozen=True, slots=True)
class InitResult:
    directory: Path
    node_configs: tuple[Path, ...]
    client_config: Path
    incarnations: dict[int, int]


def _node_layout(
    n: int, hosts: Sequence[str], base_port: int
) -> list[tuple[int, str, tuple[str, int], tuple[str, int]]]:
    if len(hosts) not in (1, n):
        raise InitError(f"--hosts lists {len(hosts)} hosts for {n} nodes (give 1 or {n})")
    if base_port < 1 or base_port + 2 * n - 1 > 65535:
        raise InitError(f"--base-port {base_port} leaves no room for {n} nodes below 65536")
    out = []
    for i in range(1, n + 1):
        host = hosts[0] if len(hosts) == 1 else hosts[i - 1]
        peer = (host, base_port + 2 * (i - 1))
        client = (host, base_port + 2 * (i - 1) + 1)
        out.append((i, host, peer, client))
    return out


def _create_storage(path: Path, bootstrap: Any, incarnation: int, fsync: bool) -> int:
    """Create a node's storage holding ``bootstrap`` with the given incarnation and
    return the incarnation it recorded."""
    from raft.storage import Storage

    st = Storage.open(path, bootstrap=bootstrap, incarnation=incarnation, unsafe_no_fsync=not fsync)
    try:
        recorded: int = st.incarnation
    finally:
        st.close()
    if recorded != incarnation:
        raise InitError(f"{path}: storage recorded incarnation {recorded}, not {incarnation}")
    return recorded


def init_cluster(
    directory: Path,
    nodes: int,
    *,
    hosts: Sequence[str] = ("127.0.0.1",),
    base_port: int = DEFAULT_BASE_PORT,
    raft: RaftSettings | None = None,
    log_level: str = "info",
) -> InitResult:
    """Create a cluster directory: CA, node and admin certificates (keys 0600), one
    ``node-<i>.toml`` per node, ``client.toml``, and each node's storage holding the
    bootstrap membership with every node's incarnation.  ``directory`` must be
    missing or empty.  Raises InitError."""
    from raft.types import ConfState

    if not 1 <= nodes <= 99:
        raise InitError(f"--nodes must be in 1..99, got {nodes}")
    if nodes % 2 == 0:
        print(f"warning: {nodes} nodes tolerate no more failures than {nodes - 1}", file=sys.stderr)
    layout = _node_layout(nodes, hosts, base_port)
    settings = raft or RaftSettings()
    d = directory
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise InitError(f"{d} exists and is not an empty directory")
    tls_dir, data_dir = d / "tls", d / "data"
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        tls_dir.mkdir(mode=0o700)
        data_dir.mkdir(mode=0o700)
    except OSError as exc:
        raise InitError(f"cannot create {d}: {exc.strerror}") from None
    try:
        ca = pki.create_ca()
        pki.write_pem(tls_dir / "ca.pem", ca.certificate)
        pki.write_pem(tls_dir / "ca.key", ca.private_key)
        incarnations = {i: _draw_incarnation() for i, *_ in layout}
        bootstrap = ConfState(voters=tuple(sorted(incarnations.items())))
        paths = []
        for i, host, peer, client in layout:
            cred = pki.issue_node_cert(ca, i, [host])
            pki.write_pem(tls_dir / f"node-{i}.pem", cred.certificate)
            pki.write_pem(tls_dir / f"node-{i}.key", cred.private_key)
            cfg = NodeConfig(
                id=i,
                data_dir=data_dir / f"node-{i}",
                peer_listen=peer,
                client_listen=client,
                tls=TlsPaths(
                    tls_dir / "ca.pem", tls_dir / f"node-{i}.pem", tls_dir / f"node-{i}.key"
                ),
                peers=tuple(NodeEntry(j, p, c) for j, _, p, c in layout if j != i),
                raft=settings,
                log_level=log_level,
            )
            _create_storage(cfg.data_dir, bootstrap, incarnations[i], settings.fsync)
            path = d / f"node-{i}.toml"
            _write_new(path, render_node_config(cfg, d))
            paths.append(path)
        admin = pki.issue_client_cert(ca, "admin")
        pki.write_pem(tls_dir / "admin.pem", admin.certificate)
        pki.write_pem(tls_dir / "admin.key", admin.private_key)
        client_cfg = ClientConfig(
            tls=TlsPaths(tls_dir / "ca.pem", tls_dir / "admin.pem", tls_dir / "admin.key"),
            nodes=tuple((i, c) for i, _, _, c in layout),
        )
        client_path = d / "client.toml"
        _write_new(client_path, render_client_config(client_cfg, d))
    except (pki.PkiError, OSError) as exc:
        raise InitError(f"cannot initialise {d}: {exc}") from None
    return InitResult(d, tuple(paths), client_path, incarnations)


def _draw_incarnation() -> int:
    # 1..2**63-1: 0 means "unknown" to the Raft core, which also refuses
    # message fields above 2**63-1.
    return 1 + secrets.randbelow(2**63 - 1)


def _write_new(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def new_node(
    directory: Path,
    node_id: int,
    *,
    host: str = "127.0.0.1",
    peer_port: int | None = None,
    client_port: int | None = None,
) -> Path:
    """Add configuration for a new node to a cluster directory made by :func:`init_cluster`:
    a certificate from the cluster CA, ``node-<id>.toml`` naming every existing node as a
    peer, and an entry in ``client.toml``.  Its data directory gets no bootstrap
    membership: the node joins only once ``vaultd members add`` (then ``promote``) adds it.
    Returns the new node's config path.  Raises InitError."""
    d = directory
    tls_dir = d / "tls"
    path = d / f"node-{node_id}.toml"
    if path.exists():
        raise InitError(f"{path} already exists")
    existing = sorted(d.glob("node-*.toml"))
    if not existing:
        raise InitError(f"{d} holds no node-*.toml: run 'vaultd init' first")
    try:
        configs = [load_node_config(p) for p in existing]
        client_path = d / "client.toml"
        client = load_client_config(client_path)
    except ConfigError as exc:
        raise InitError(str(exc)) from None
    template = configs[0]
    used = {c.peer_listen[1] for c in configs} | {c.client_listen[1] for c in configs}
    if peer_port is None:
        peer_port = max(used) + 1
    if client_port is None:
        client_port = peer_port + 1
    for port in (peer_port, client_port):
        if not 0 < port < 65536:
            raise InitError(f"port {port} is not in 1..65535")
    try:
        ca = pki.load_certified_key(tls_dir / "ca.pem", tls_dir / "ca.key")
        cred = pki.issue_node_cert(ca, node_id, [host])
        pki.write_pem(tls_dir / f"node-{node_id}.pem", cred.certificate)
        pki.write_pem(tls_dir / f"node-{node_id}.key", cred.private_key)
    except pki.PkiError as exc:
        raise InitError(f"cannot issue a certificate for node {node_id}: {exc}") from None
    cfg = NodeConfig(
        id=node_id,
        data_dir=d / "data" / f"node-{node_id}",
        peer_listen=(host, peer_port),
        client_listen=(host, client_port),
        tls=TlsPaths(
            tls_dir / "ca.pem", tls_dir / f"node-{node_id}.pem", tls_dir / f"node-{node_id}.key"
        ),
        peers=tuple(NodeEntry(c.id, c.peer_listen, c.client_listen) for c in configs),
        raft=template.raft,
        service=template.service,
        log_level=template.log_level,
    )
    _write_new(path, render_node_config(cfg, d))
    nodes = (*tuple(n for n in client.nodes if n[0] != node_id), (node_id, cfg.client_listen))
    updated = ClientConfig(tls=client.tls, nodes=nodes, timeout_ms=client.timeout_ms)
    tmp = client_path.with_name("client.toml.tmp")
    tmp.write_text(render_client_config(updated, d))
    tmp.replace(client_path)
    return path


# ---------------------------------------------------------------- admin commands


def _client(args: argparse.Namespace) -> Any:
    from .admin_client import AdminClient

    cfg = load_client_config(args.config)
    if getattr(args, "timeout", None):
        cfg = ClientConfig(cfg.tls, cfg.nodes, int(args.timeout * 1000), cfg.source)
    return AdminClient(cfg)


def _fmt_status_table(rows: list[dict[str, Any]]) -> str:
    head = ["id", "address", "answered", "role", "term", "leader", "commit", "applied", "voter"]
    table = [head]
    for r in rows:
        s = r.get("status") or {}
        table.append(
            [
                str(r["id"]),
                r["address"],
                "yes" if r["answered"] else "no",
                str(s.get("role", "-")),
                str(s.get("term", "-")),
                str(s.get("leader") if s.get("leader") is not None else "-"),
                str(s.get("commit", "-")),
                str(s.get("applied", "-")),
                ("yes" if s.get("is_voter") else "no") if s else "-",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    for r in rows:
        if not r["answered"]:
            lines.append(f"node {r['id']}: {r['error']}")
    return "\n".join(lines)


async def _status(args: argparse.Namespace) -> int:
    async with _client(args) as c:
        statuses = await c.status_all()
    rows = [
        {
            "id": s.id,
            "address": format_address(s.address),
            "answered": s.status is not None,
            "status": s.status,
            "error": s.error,
        }
        for s in statuses
    ]
    if args.json:
        print(json.dumps({"nodes": rows}, sort_keys=True))
    else:
        print(_fmt_status_table(rows))
    return EXIT_OK if any(r["answered"] for r in rows) else EXIT_FAILED


async def _members(args: argparse.Namespace) -> int:
    node = args.id
    async with _client(args) as c:
        if args.action == "add":
            if args.host is None or args.port is None:
                raise _Usage("members add needs --host and --port (the new node's peer address)")
            client_port = args.client_port if args.client_port is not None else args.port + 1
            peer = format_address((args.host, args.port))
            client = format_address((args.host, client_port))
            result = await c.call("members.add", {"node": node, "peer": peer, "client": client})
        elif args.action == "promote":
            deadline = trio.current_time() + args.wait
            while True:
                try:
                    result = await c.call("members.promote", {"node": node})
                    break
                except Rejected as exc:
                    if "caught up" not in exc.message or trio.current_time() >= deadline:
                        raise
                    await trio.sleep(0.1)
        else:
            result = await c.call("members.remove", {"node": node})
    print(
        json.dumps(result, sort_keys=True) if args.json else f"{args.action} {node}: ok ({result})"
    )
    return EXIT_OK


def _show(value: Any) -> str:
    if value is None:
        return "(nil)"
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + value.hex()
    if isinstance(value, dict):
        return json.dumps({k: _show(v) for k, v in value.items()}, sort_keys=True)
    return str(value)


async def _kv(args: argparse.Namespace) -> int:
    key = args.key.encode()
    async with _client(args) as c:
        if args.action == "put":
            if args.value is None:
                raise _Usage("kv put needs a VALUE")
            result = await c.call("kv.put", {"key": key, "value": args.value.encode()})
            print("ok")
            return EXIT_OK
        if args.value is not None and args.action == "get":
            raise _Usage("kv get takes no VALUE")
        if args.action == "get":
            result = await c.call("kv.get", {"key": key})
        else:
            delta = args.by if args.value is None else _int_arg(args.value, "VALUE")
            result = await c.call("kv.incr", {"key": key, "delta": delta})
    print(_show(result))
    return EXIT_OK


def _int_arg(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Usage(f"{what} must be an integer, got {text!r}") from None


async def _transfer(args: argparse.Namespace) -> int:
    async with _client(args) as c:
        result = await c.call("transfer", {"target": args.to})
    print(f"leadership transferred: {_show(result)}")
    return EXIT_OK


class _Usage(VaultdError):
    """Bad command-line usage (exit status 2)."""


# ---------------------------------------------------------------- serve / dev


def _serve(args: argparse.Namespace) -> int:
    from .daemon import configure_logging, serve

    cfg = load_node_config(args.config)
    configure_logging(args.log_level or cfg.log_level, prefix=None)
    return serve(cfg)


_COLOURS: Final = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m")


def free_port_block(count: int, *, host: str = "127.0.0.1") -> int:
    """A base port such that ``count`` consecutive ports are free on ``host`` right now."""
    import random
    import socket

    # Stay below the kernel's ephemeral range: an outgoing connection could
    # otherwise take one of the ports between our check and the node's bind.
    lo, hi = 10000, 32000
    try:
        ephemeral_lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        hi = min(hi, ephemeral_lo) if ephemeral_lo > lo + 2 * count else hi
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lo, hi - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise InitError(f"found no {count} consecutive free ports on {host}")


class _DevCluster:
    """The child processes of ``vaultd dev`` and their prefixed output."""

    def __init__(self, configs: Sequence[Path], colour: bool) -> None:
        self.configs = list(configs)
        self.colour = colour
        self.procs: list[trio.Process] = []

    def _prefix(self, i: int, name: str) -> str:
        if not self.colour:
            return f"{name} | "
        return f"{_COLOURS[i % len(_COLOURS)]}{name}\033[0m | "

    async def start(self, nursery: trio.Nursery) -> None:
        width = max(len(p.stem) for p in self.configs)
        for i, path in enumerate(self.configs):
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "vaultd", "serve", "--config", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Own process group: the terminal's Ctrl-C reaches only us, and we
                # stop the nodes in order instead of all at once.
                start_new_session=True,
            )
            self.procs.append(proc)
            nursery.start_soon(self._pump, proc, self._prefix(i, path.stem.ljust(width)))

    @staticmethod
    async def _pump(proc: trio.Process, prefix: str) -> None:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                print(prefix + line.decode("utf-8", "replace"), flush=True)
        if buf:
            print(prefix + buf.decode("utf-8", "replace"), flush=True)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            for proc in self.procs:
                await proc.wait()
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _wait_for_leader(client_path: Path, timeout: float) -> dict[str, Any] | None:
    from .admin_client import AdminClient

    cfg = load_client_config(client_path)
    deadline = trio.current_time() + timeout
    async with AdminClient(ClientConfig(cfg.tls, cfg.nodes, 1000)) as c:
        while trio.current_time() < deadline:
            for s in await c.status_all(timeout=1.0):
                if s.status is not None and s.status.get("role") == "leader":
                    return s.status
            await trio.sleep(0.1)
    return None


async def _demo_writes(client_path: Path, count: int) -> None:
    from .admin_client import AdminClient

    async with AdminClient(load_client_config(client_path)) as c:
        started = time.perf_counter()
        value: Any = None
        for i in range(count):
            value = await c.call("kv.incr", {"key": b"demo-counter", "delta": 1})
            await c.call("kv.put", {"key": f"demo-{i}".encode(), "value": b"x" * 16})
        elapsed = time.perf_counter() - started
        read = await c.call("kv.get", {"key": b"demo-counter"})
        print(
            f"dev: {2 * count} writes committed in {elapsed:.2f}s; "
            f"demo-counter = {value} (read back: {_show(read)})",
            flush=True,
        )
        if read != str(count).encode():
            raise VaultdError(f"demo-counter reads {read!r}, expected {count}")
        rows = [
            {"id": s.id, "address": format_address(s.address), "answered": s.status is not None,
             "status": s.status, "error": s.error}
            for s in await c.status_all()
        ]  # fmt: skip
        print(_fmt_status_table(rows), flush=True)


async def _dev_main(
    nodes: int, directory: Path | None, base_port: int | None, demo_writes: int, keep: bool
) -> int:
    temporary = directory is None
    d = Path(tempfile.mkdtemp(prefix="vaultd-dev-")) if directory is None else directory
    client_path = d / "client.toml"
    try:
        if (d / "node-1.toml").exists():
            configs = sorted(d.glob("node-*.toml"), key=lambda p: int(p.stem.split("-")[1]))
            print(f"dev: reusing the cluster in {d}", flush=True)
        else:
            base = base_port if base_port is not None else free_port_block(2 * nodes)
            configs = list(init_cluster(d, nodes, base_port=base, raft=DEV_TIMINGS).node_configs)
        cfgs = [load_node_config(p) for p in configs]
        print(
            f"dev: cluster directory {d}" + (" (deleted on exit)" if temporary and not keep else "")
        )
        for c in cfgs:
            print(
                f"dev: node {c.id}: peers on {format_address(c.peer_listen)}, "
                f"clients on {format_address(c.client_listen)}, data in {c.data_dir}"
            )
        exe = "vaultd" if shutil.which("vaultd") else f"{sys.executable} -m vaultd"
        print(f"dev: talk to it with:  {exe} status --config {client_path}")
        print(f"dev:                   {exe} kv incr hits --config {client_path}")
        print("dev: press Ctrl-C to stop", flush=True)
        cluster = _DevCluster(configs, colour=sys.stdout.isatty())
        status = EXIT_OK
        async with trio.open_nursery() as nursery:
            try:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    await cluster.start(nursery)
                    leader = await _wait_for_leader(client_path, 30)
                    if leader is None:
                        print("dev: no leader was elected within 30 s", file=sys.stderr)
                        status = EXIT_FAILED
                    else:
                        print(
                            f"dev: ready: node {leader['id']} leads term {leader['term']}",
                            flush=True,
                        )
                        if demo_writes > 0:
                            try:
                                await _demo_writes(client_path, demo_writes)
                            except (ServiceError, VaultdError) as exc:
                                print(f"dev: demo writes failed: {exc}", file=sys.stderr)
                                status = EXIT_FAILED
                        else:
                            async for _ in signals:
                                break
                    print("dev: stopping the nodes", flush=True)
            finally:
                with trio.CancelScope(shield=True):
                    await cluster.stop()
        codes = [p.returncode for p in cluster.procs]
        print(f"dev: nodes exited with status {codes}", flush=True)
        return status
    finally:
        if temporary and not keep:
            shutil.rmtree(d, ignore_errors=True)


def _dev(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 9:
        raise _Usage("dev runs 1..9 nodes")
    result: int = trio.run(
        _dev_main, args.nodes, args.dir, args.base_port, args.demo_writes, args.keep
    )
    return result


# ---------------------------------------------------------------- parsing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaultd", description="The vaultd replicated key vault.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create a cluster directory (CA, certificates, configs, data)")
    s.add_argument("--nodes", type=int, required=True, help="number of nodes (3 or 5)")
    s.add_argument("--dir", type=Path, required=True, help="directory to create (must be empty)")
    s.add_argument("--hosts", default="127.0.0.1", help="comma-separated host per node, or one")
    s.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="first port to use")
    s.add_argument("--dev-timings", action="store_true", help="fast elections (local clusters)")
    s.add_argument(
        "--unsafe-no-fsync",
        action="store_true",
        help="never flush to disk: a crash loses acknowledged writes (tests/benchmarks only)",
    )

    s = sub.add_parser("new-node", help="add configuration for a new node to a cluster directory")
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--id", type=int, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--peer-port", type=int)
    s.add_argument("--client-port", type=int)

    s = sub.add_parser("serve", help="run one node")
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    s = sub.add_parser("dev", help="run a throwaway local cluster in the foreground")
    s.add_argument("--nodes", type=int, default=3)
    s.add_argument("--dir", type=Path, help="cluster directory (default: a new temporary one)")
    s.add_argument("--base-port", type=int, help="first port (default: free ports)")
    s.add_argument(
        "--demo-writes", type=int, default=0, metavar="N",
        help="write N counter increments, show the status, then stop (for scripted runs)",
    )  # fmt: skip
    s.add_argument("--keep", action="store_true", help="keep the temporary directory on exit")

    def client_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--config", type=Path, required=True, help="client.toml")
        s.add_argument("--timeout", type=float, help="seconds (default: from client.toml)")
        s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("status", help="show every node's role, term and progress")
    client_args(s)

    s = sub.add_parser("members", help="change the cluster's membership")
    s.add_argument("action", choices=("add", "promote", "remove"))
    s.add_argument("id", type=int, help="node id")
    s.add_argument("--host", help="add: the new node's host")
    s.add_argument("--port", type=int, help="add: the new node's peer port")
    s.add_argument("--client-port", type=int, help="add: its client port (default: port + 1)")
    s.add_argument(
        "--wait", type=float, default=0.0, help="promote: keep retrying this many seconds "
        "while the learner catches up",
    )  # fmt: skip
    client_args(s)

    s = sub.add_parser("kv", help="try the replicated key-value store")
    s.add_argument("action", choices=("put", "get", "incr"))
    s.add_argument("key")
    s.add_argument("value", nargs="?")
    s.add_argument("--by", type=int, default=1, help="incr: the delta")
    client_args(s)

    s = sub.add_parser("transfer", help="hand leadership to another voter")
    s.add_argument("--to", type=int, help="target node (default: the most caught-up voter)")
    client_args(s)
    return p


def _run_async(fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    result: int = trio.run(fn, args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vaultd`` script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
            raft = DEV_TIMINGS if args.dev_timings else RaftSettings()
            if args.unsafe_no_fsync:
                raft = RaftSettings(**{**_as_dict(raft), "fsync": False})
            res = init_cluster(args.dir, args.nodes, hosts=hosts or ["127.0.0.1"],
                               base_port=args.base_port, raft=raft)  # fmt: skip
            print(f"created a {args.nodes}-node cluster in {res.directory}")
            for p in res.node_configs:
                print(f"  vaultd serve --config {p}")
            print(f"  vaultd status --config {res.client_config}")
            return EXIT_OK
        if args.command == "new-node":
            path = new_node(args.dir, args.id, host=args.host, peer_port=args.peer_port,
                            client_port=args.client_port)  # fmt: skip
            cfg = load_node_config(path)
            print(f"wrote {path}; start it, then add it to the cluster:")
            print(f"  vaultd serve --config {path}")
            print(
                f"  vaultd members add {args.id} --host {cfg.peer_listen[0]} "
                f"--port {cfg.peer_listen[1]} --client-port {cfg.client_listen[1]} "
                f"--config {args.dir / 'client.toml'}"
            )
            print(
                f"  vaultd members promote {args.id} --wait 30 --config {args.dir / 'client.toml'}"
            )
            return EXIT_OK
        if args.command == "serve":
            return _serve(args)
        if args.command == "dev":
            return _dev(args)
        handler = {"status": _status, "members": _members, "kv": _kv, "transfer": _transfer}
        return _run_async(handler[args.command], args)
    except (ConfigError, InitError, _Usage) as exc:
        print(f"vaultd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServiceError as exc:
        print(f"vaultd: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except (ConnectionFailed, VaultdError, pki.PkiError) as exc:
        print(f"vaultd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _as_dict(r: RaftSettings) -> dict[str, Any]:
    return {f: getattr(r, f) for f in RaftSettings.__slots__}

"""The vaultd command line: init, new-node, usage errors, and the admin commands
against a real cluster (``vaultd dev`` and ``vaultd serve`` child processes)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raft.storage import Storage
from vaultd.cli import free_port_block, main
from vaultd.config import load_client_config, load_node_config

ROOT = Path(__file__).resolve().parents[2]


def vaultd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultd", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_init_writes_keys_configs_and_bootstrapped_storages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "cluster"
    assert main(["init", "--nodes", "3", "--dir", str(d), "--base-port", "21000"]) == 0
    out = capsys.readouterr().out
    assert "vaultd serve --config" in out and "client.toml" in out
    for name in ("ca.key", "node-1.key", "node-2.key", "node-3.key", "admin.key"):
        mode = stat.S_IMODE((d / "tls" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    configs = [load_node_config(d / f"node-{i}.toml") for i in (1, 2, 3)]
    assert [c.peer_listen for c in configs] == [("127.0.0.1", 21000 + 2 * i) for i in range(3)]
    assert configs[0].client_addresses() == {
        1: ("127.0.0.1", 21001),
        2: ("127.0.0.1", 21003),
        3: ("127.0.0.1", 21005),
    }
    assert configs[0].raft.fsync
    client = load_client_config(d / "client.toml")
    assert [n for n, _ in client.nodes] == [1, 2, 3]
    # Every storage holds the same bootstrap membership, naming each node's incarnation.
    boots, incarnations = [], {}
    for c in configs:
        st = Storage.open(c.data_dir)
        try:
            boots.append(st.recovered.bootstrap)
            incarnations[c.id] = st.incarnation
        finally:
            st.close()
    assert boots[0] == boots[1] == boots[2]
    assert boots[0] is not None
    assert dict(boots[0].voters) == incarnations
    assert len(set(incarnations.values())) == 3
    assert all(0 < inc < 2**63 for inc in incarnations.values())


def test_init_options(tmp_path: Path) -> None:
    d = tmp_path / "c"
    args = ["init", "--nodes", "3", "--dir", str(d), "--hosts", "10.0.0.1,10.0.0.2,host-3",
            "--base-port", "9000", "--dev-timings", "--unsafe-no-fsync"]  # fmt: skip
    assert main(args) == 0
    c3 = load_node_config(d / "node-3.toml")
    assert c3.peer_listen == ("host-3", 9004)
    assert c3.raft.tick_ms == 10 and not c3.raft.fsync
    assert {p.id: p.client for p in c3.peers} == {1: ("10.0.0.1", 9001), 2: ("10.0.0.2", 9003)}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--nodes", "0"], "--nodes must be in 1..99"),
        (["--nodes", "3", "--hosts", "a,b"], "lists 2 hosts for 3 nodes"),
        (["--nodes", "3", "--base-port", "65534"], "no room for 3 nodes"),
        (["--nodes", "3", "--hosts", "bad host!"], "neither an IP address nor a valid DNS name"),
    ],
)
def test_init_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    assert main(["init", "--dir", str(tmp_path / "c"), *args]) == 2
    assert fragment in capsys.readouterr().err


def test_init_refuses_a_non_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["init", "--nodes", "3", "--dir", str(tmp_path)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_new_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "c"
    assert main(["init", "--nodes", "3", "--dir", str(d), "--base-port", "21000"]) == 0
    assert main(["new-node", "--dir", str(d), "--id", "4"]) == 0
    out = capsys.readouterr().out
    assert "vaultd members add 4 --host 127.0.0.1 --port 21006 --client-port 21007" in out
    c4 = load_node_config(d / "node-4.toml")
    assert c4.peer_listen == ("127.0.0.1", 21006)
    assert sorted(p.id for p in c4.peers) == [1, 2, 3]
    assert stat.S_IMODE((d / "tls" / "node-4.key").stat().st_mode) == 0o600
    assert [n for n, _ in load_client_config(d / "client.toml").nodes] == [1, 2, 3, 4]
    assert not c4.data_dir.exists()  # created empty by the node: it joins only when added
    assert main(["new-node", "--dir", str(d), "--id", "4"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["new-node", "--dir", str(tmp_path / "nothing"), "--id", "5"]) == 2
    assert "run 'vaultd init' first" in capsys.readouterr().err


def test_serve_with_a_bad_config_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "c"
    assert main(["init", "--nodes", "3", "--dir", str(d)]) == 0
    path = d / "node-1.toml"
    path.write_text(path.read_text().replace("tick_ms = 20", "tick_ms = -5"))
    assert main(["serve", "--config", str(path)]) == 2
    assert f"{path}: raft.tick_ms: must be in 1..10000, got -5" in capsys.readouterr().err
    path.write_text(path.read_text().replace("tick_ms = -5", "tick_ms = 20") + "\n[metrics]\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert "metrics: unknown key" in capsys.readouterr().err


def test_serve_with_an_unreadable_key_fails_clearly(tmp_path: Path) -> None:
    d = tmp_path / "c"
    assert main(["init", "--nodes", "3", "--dir", str(d)]) == 0
    os.chmod(d / "tls" / "node-1.key", 0o644)
    proc = vaultd("serve", "--config", str(d / "node-1.toml"))
    assert proc.returncode == 1
    assert "node-1.key has mode 644" in proc.stderr


def test_admin_commands_without_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "c"
    assert (
        main(["init", "--nodes", "3", "--dir", str(d), "--base-port", str(free_port_block(6))]) == 0
    )
    capsys.readouterr()
    client = str(d / "client.toml")
    assert main(["status", "--config", client, "--timeout", "0.5"]) == 1
    out = capsys.readouterr().out
    assert out.count(" no ") >= 3 and "node 1: cannot connect" in out
    assert main(["kv", "incr", "x", "--config", client, "--timeout", "0.5"]) == 1
    assert "cannot connect" in capsys.readouterr().err
    assert main(["kv", "put", "x", "--config", client]) == 2
    assert "kv put needs a VALUE" in capsys.readouterr().err
    assert main(["kv", "incr", "x", "lots", "--config", client]) == 2
    assert "VALUE must be an integer" in capsys.readouterr().err
    assert main(["members", "add", "4", "--config", client]) == 2
    assert "needs --host and --port" in capsys.readouterr().err
    assert main(["status", "--config", str(d / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_dev_runs_a_cluster_and_demo_writes(tmp_path: Path) -> None:
    proc = vaultd("dev", "--nodes", "3", "--dir", str(tmp_path / "dev"), "--demo-writes", "5",
                  timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "dev: talk to it with:  " in out and " status --config " in out
    assert "dev: ready: node" in out
    assert "demo-counter = 5 (read back: 5)" in out
    assert "node-1 | " in out and "node-3 | " in out
    assert "dev: nodes exited with status [0, 0, 0]" in out
    # --dir keeps the cluster, and a second run reuses it.
    assert (tmp_path / "dev" / "client.toml").exists()


def test_dev_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaultd", "dev", "--nodes", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("dev: ready"):
                break
        assert any(line.startswith("dev: ready") for line in seen), "".join(seen)
        directory = next(
            line.split()[2] for line in seen if line.startswith("dev: cluster directory")
        )
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "dev: nodes exited with status [0]" in rest
    assert not Path(directory).exists()  # the temporary directory is removed


@pytest.fixture
def running_cluster(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "c"
    base = free_port_block(6)
    assert main(["init", "--nodes", "3", "--dir", str(d), "--base-port", str(base),
                 "--dev-timings", "--unsafe-no-fsync"]) == 0  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vaultd", "serve", "--config", str(d / f"node-{i}.toml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        for i in (1, 2, 3)
    ]
    try:
        yield d / "client.toml"
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def test_admin_commands_against_a_cluster(running_cluster: Path) -> None:
    client = str(running_cluster)
    put = vaultd("kv", "put", "greeting", "hello", "--config", client)
    assert (put.returncode, put.stdout.strip()) == (0, "ok"), put.stderr
    assert vaultd("kv", "get", "greeting", "--config", client).stdout.strip() == "hello"
    assert vaultd("kv", "get", "missing", "--config", client).stdout.strip() == "(nil)"
    assert vaultd("kv", "incr", "n", "--by", "5", "--config", client).stdout.strip() == "5"
    incr_text = vaultd("kv", "incr", "greeting", "--config", client)
    assert incr_text.returncode == 1 and "does not hold an integer" in incr_text.stderr
    status = vaultd("status", "--json", "--config", client)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    nodes = doc["nodes"]
    assert [n["id"] for n in nodes] == [1, 2, 3]
    assert all(n["answered"] for n in nodes)
    roles = sorted(n["status"]["role"] for n in nodes)
    assert roles == ["follower", "follower", "leader"]
    for n in nodes:
        st = n["status"]
        assert {"term", "commit", "applied", "leader", "is_voter"} <= set(st)
    table = vaultd("status", "--config", client)
    assert table.stdout.splitlines()[0].split() == [
        "id", "address", "answered", "role", "term", "leader", "commit", "applied", "voter"
    ]  # fmt: skip
    leader = next(n["id"] for n in nodes if n["status"]["role"] == "leader")
    target = next(n["id"] for n in nodes if n["id"] != leader)
    moved = vaultd("transfer", "--to", str(target), "--config", client)
    assert moved.returncode == 0, moved.stderr
    assert f"leadership transferred: {target}" in moved.stdout
    promote = vaultd("members", "promote", "9", "--config", client)
    assert promote.returncode == 1 and "rejected" in promote.stderr

"""Deterministic simulation of a whole Raft cluster, driven by one seed.

Simulated time (integer microseconds), a network with delay, jitter, drops,
duplicates, reordering and partitions, disks that lose whatever was not yet
persisted when a node crashes, disk wipes, membership changes, and clients
that write and read.  Every run replays identically from its seed and fault
schedule.  Safety invariants are checked as the run goes; a violation raises
:class:`InvariantViolation` carrying the seed and a readable trace.

Run ``python -m raft.sim --nodes 5 --seed 1 --faults`` for a demo.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import confchange
from .core import Config, RawNode
from .errors import ConfChangeRejected, NotLeader, ProposalDropped, RaftError
from .types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    NodeId,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)

MS = 1000  # simulated time is in microseconds

NodeFactory = Callable[..., RawNode]


class InvariantViolation(AssertionError):
    """A safety or liveness property failed.  ``str()`` includes seed and trace."""

    def __init__(self, what: str, seed: int, trace: Sequence[str]) -> None:
        self.what = what
        self.seed = seed
        self.trace = list(trace)
        lines = "\n".join(f"  {t}" for t in self.trace)
        super().__init__(f"{what}\nseed={seed}; last {len(self.trace)} events:\n{lines}")


@dataclass(slots=True)
class NetConfig:
    min_delay_us: int = 200
    max_delay_us: int = 2 * MS
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0


@dataclass(slots=True, frozen=True)
class Fault:
    """One step of a fault schedule, applied at ``at_ms`` of simulated time.

    kinds: crash, restart, wipe (crash, lose the disk, restart empty),
    partition (``groups``: nodes in different groups cannot talk),
    oneway (``a`` cannot send to ``b``), heal (all links and drop rate
    restored), lossy (``rate`` of messages dropped and duplicated),
    transfer (leader hands over to ``a``), add_learner / promote / remove
    (membership change of ``a`` through the current leader).
    """

    at_ms: int
    kind: str
    a: NodeId = 0
    b: NodeId = 0
    groups: tuple[tuple[NodeId, ...], ...] = ()
    rate: float = 0.0

    def describe(self) -> str:
        if self.kind == "partition":
            return "partition " + " | ".join(
                "{" + ",".join(f"n{x}" for x in g) + "}" for g in self.groups
            )
        if self.kind == "oneway":
            return f"block n{self.a} -> n{self.b}"
        if self.kind == "lossy":
            return f"lossy network ({self.rate:.0%} dropped, {self.rate:.0%} duplicated)"
        if self.kind in ("heal",):
            return "heal network"
        return f"{self.kind} n{self.a}"


@dataclass(slots=True)
class Disk:
    incarnation: int
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            base = self.snapshot.meta.index + 1 if self.snapshot else 1
            del self.entries[max(0, first - base) :]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            hs = rd.hard_state
            self.hard_state = HardState(hs.term, hs.vote, hs.commit)

    def compact(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > snap.meta.index]


@dataclass(slots=True)
class _Machine:
    """The replicated state machine: an ordered list of client writes."""

    applied: int = 0
    writes: list[bytes] = field(default_factory=list)

    def snapshot(self) -> bytes:
        return b",".join(self.writes)

    def restore(self, index: int, data: bytes) -> None:
        self.applied = index
        self.writes = data.split(b",") if data else []


@dataclass(slots=True)
class _SimNode:
    id: NodeId
    disk: Disk
    core: RawNode | None = None
    machine: _Machine = field(default_factory=_Machine)
    persisting: Ready | None = None
    waiting_reads: list[tuple[int, object]] = field(default_factory=list)
    role: Role = Role.FOLLOWER
    generation: int = 0  # bumped by each crash: writes issued before it are lost
    disk_free_at: int = 0


@dataclass(slots=True)
class _Write:
    wid: bytes
    node: NodeId
    index: int
    term: int
    invoked: int


@dataclass(slots=True)
class _Read:
    rid: int
    node: NodeId
    invoked: int
    must_see: int  # highest index of a write acknowledged before the read began


@dataclass(slots=True)
class RunStats:
    writes_acked: int = 0
    reads_served: int = 0
    elections: int = 0
    events: int = 0
    max_term: int = 0
    committed: int = 0
    snapshots_installed: int = 0
    heal_to_commit_ms: float | None = None


class Cluster:
    """A simulated cluster.  Construct, optionally schedule faults, then :meth:`run`."""

    def __init__(
        self,
        nodes: int = 3,
        seed: int = 0,
        *,
        spares: int = 2,
        net: NetConfig | None = None,
        tick_us: int = 10 * MS,
        election_tick: int = 10,
        node_factory: NodeFactory = RawNode,
        compact_every: int = 64,
        client_interval_us: int = 15 * MS,
        read_every: int = 3,
        trace_len: int = 60,
        checks: bool = True,
        leader_writes_behind: bool = True,
        verbose: bool = False,
        out: Callable[[str], None] = print,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = net or NetConfig()
        self._base_net = NetConfig(
            self.net.min_delay_us, self.net.max_delay_us, self.net.drop_rate, 0.0
        )
        self.tick_us = tick_us
        self.election_tick = election_tick
        self.factory = node_factory
        self.compact_every = compact_every
        self.client_interval_us = client_interval_us
        self.read_every = read_every
        self.now = 0
        self.stats = RunStats()
        self.trace: deque[str] = deque(maxlen=trace_len)
        self.verbose = verbose
        self.checks = checks  # benchmarks switch the per-entry bookkeeping off
        # Leaders advance before their flush ends (Ready.persist_later), as the
        # runtime does; crashes then lose writes the core already moved past.
        self.leader_writes_behind = leader_writes_behind
        self.out = out
        self._queue: list[tuple[int, int, str, Any]] = []
        self._seq = 0
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.clients_on = True
        self.auto_compact = True

        # Invariant bookkeeping.
        self.leaders: dict[int, NodeId] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.entry_shape: dict[tuple[int, int], tuple[EntryKind, bytes, int]] = {}
        self.acked_max_index = 0
        self.pending_writes: list[_Write] = []
        self.pending_reads: dict[int, _Read] = {}
        self._wid = 0
        self._rid = 0
        self._client_round = 0

        self.initial = list(range(1, nodes + 1))
        incs = {n: self.rng.getrandbits(62) + 1 for n in self.initial}
        conf = ConfState(voters=tuple(sorted(incs.items())))
        boot = Snapshot(SnapshotMeta(0, 0, conf), b"")
        self.nodes: dict[NodeId, _SimNode] = {}
        for n in self.initial:
            self.nodes[n] = _SimNode(n, Disk(incs[n], snapshot=boot))
        for n in range(nodes + 1, nodes + 1 + spares):
            self.nodes[n] = _SimNode(n, Disk(self.rng.getrandbits(62) + 1))
        for n in self.nodes:
            self._start(n)
            self._at(self.rng.randrange(self.tick_us), "tick", n)
        self._at(self.client_interval_us, "client", None)

    # ------------------------------------------------------------ plumbing

    def _at(self, when: int, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, kind, payload))

    def log(self, what: str) -> None:
        line = f"{self.now / 1000:9.1f}ms  {what}"
        self.trace.append(line)
        if self.verbose:
            self.out(line)

    def fail(self, what: str) -> None:
        self.log(f"VIOLATION: {what}")
        raise InvariantViolation(what, self.seed, self.trace)

    def _start(self, n: NodeId) -> None:
        node = self.nodes[n]
        d = node.disk
        cfg = Config(id=n, election_tick=self.election_tick)
        node.core = self.factory(
            cfg,
            rng=random.Random(self.rng.getrandbits(64)),
            incarnation=d.incarnation,
            hard_state=HardState(d.hard_state.term, d.hard_state.vote, d.hard_state.commit),
            snapshot=d.snapshot,
            entries=list(d.entries),
        )
        node.machine = _Machine()
        if d.snapshot is not None:
            node.machine.restore(d.snapshot.meta.index, d.snapshot.data)
        node.persisting = None
        node.waiting_reads = []
        node.role = Role.FOLLOWER

    def schedule(self, faults: Iterable[Fault]) -> None:
        for f in faults:
            self._at(f.at_ms * MS, "fault", f)

    def run_until(self, t_us: int, stop: Callable[[], bool] | None = None) -> None:
        """Process events up to simulated time ``t_us`` (or until ``stop()``)."""
        q = self._queue
        same_instant = 0
        while q and q[0][0] <= t_us:
            when, _, kind, payload = heapq.heappop(q)
            # Nodes that keep producing work without time passing are livelocked:
            # fail with the trace rather than spin forever.
            same_instant = same_instant + 1 if when == self.now else 0
            if same_instant > 10_000:
                self.fail("livelock: 10,000 events without simulated time passing")
            self.now = when
            self.stats.events += 1
            if kind == "deliver":
                self._deliver(payload)
            elif kind == "tick":
                self._tick(payload)
            elif kind == "persisted":
                self._persisted(*payload)
            elif kind == "durable":
                self._durable(*payload)
            elif kind == "client":
                self._client()
            elif kind == "fault":
                self._fault(payload)
            if stop is not None and stop():
                return
        self.now = max(self.now, t_us)

    # ---------------------------------------------------------------- nodes

    def _tick(self, n: NodeId) -> None:
        node = self.nodes[n]
        self._at(self.now + self.tick_us, "tick", n)
        if node.core is None:
            return
        node.core.tick()
        self._pump(node)

    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.dst)
        if node is None or node.core is None or (m.src, m.dst) in self.blocked:
            return
        err = node.core.step(m)
        if err is not None:
            self.fail(f"n{m.dst} rejected a message from a correct peer: {err}")
        self._pump(node)

    def _pump(self, node: _SimNode) -> None:
        core = node.core
        if core is None or node.persisting is not None or not core.has_ready():
            return
        rd = core.ready()
        node.persisting = rd
        for m in rd.early_messages:
            self._send(m)
        if rd.soft_state is not None:
            self._on_soft_state(node, core)
        if rd.entries or rd.hard_state is not None or rd.snapshot is not None:
            # One disk per node: writes complete in the order they were issued.
            # Mostly fast, now and then a stall: a slow leader disk is when
            # followers commit entries the leader has not written yet.
            delay = self.rng.randrange(50, 500)
            if self.rng.random() < 0.03:
                delay = self.rng.randrange(2 * MS, 20 * MS)
            node.disk_free_at = max(self.now + delay, node.disk_free_at)
            done = node.disk_free_at
        else:
            done = self.now
        if rd.persist_later and self.leader_writes_behind:
            self._at(done, "durable", (node.id, node.generation, rd))
            self._complete(node, rd, persisted=False)
        else:
            self._at(done, "persisted", (node.id, rd))

    def _on_soft_state(self, node: _SimNode, core: RawNode) -> None:
        role = core.role
        if role is node.role:
            return
        node.role = role
        self.log(f"n{node.id} is {role.name.lower()} in term {core.term}")
        if role is Role.LEADER:
            self.stats.elections += 1
            prev = self.leaders.setdefault(core.term, node.id)
            if prev != node.id:
                self.fail(f"election safety: n{prev} and n{node.id} both lead term {core.term}")
            for index, (term, data) in self.committed.items():
                if index > core.snap_index and (
                    core.term_at(index) != term
                    or core.entries[index - core.snap_index - 1].data != data
                ):
                    self.fail(
                        f"leader completeness: new leader n{node.id} (term {core.term}) "
                        f"lacks committed entry {index}"
                    )
        self.stats.max_term = max(self.stats.max_term, core.term)

    def _persisted(self, n: NodeId, rd: Ready) -> None:
        node = self.nodes[n]
        if node.core is None or node.persisting is not rd:
            return  # crashed meanwhile: this Ready never reached the disk
        self._write(node, rd)
        self._complete(node, rd, persisted=True)

    def _durable(self, n: NodeId, generation: int, rd: Ready) -> None:
        node = self.nodes[n]
        if node.core is None or node.generation != generation:
            return  # crashed before the write finished: it never reached the disk
        self._write(node, rd)
        node.core.persisted(rd)
        self._pump(node)

    def _write(self, node: _SimNode, rd: Ready) -> None:
        if self.checks:
            self._check_log_matching(node, rd)
        node.disk.persist(rd)

    def _complete(self, node: _SimNode, rd: Ready, *, persisted: bool) -> None:
        """Send, apply and serve what ``rd`` holds, then advance the core."""
        core = node.core
        assert core is not None
        for m in rd.messages:
            self._send(m)
        if rd.snapshot is not None:
            node.machine.restore(rd.snapshot.meta.index, rd.snapshot.data)
            self.stats.snapshots_installed += 1
            self.log(f"n{node.id} installed a snapshot at {rd.snapshot.meta.index}")
        if self.checks:
            for e in rd.committed:
                self._apply(node, e)
        elif rd.committed:
            node.machine.applied = rd.committed[-1].index
        for rs in rd.read_states:
            node.waiting_reads.append((rs.index, rs.request))
        for req in rd.dropped_reads:
            assert isinstance(req, int)
            self.pending_reads.pop(req, None)
        self._serve_reads(node)
        node.persisting = None
        core.advance(rd, persisted=persisted)
        if (
            self.auto_compact
            and core.applied - core.snap_index >= self.compact_every
            and core.snap_index < core.applied <= core.stable_index
        ):
            snap = core.compact(core.applied, node.machine.snapshot())
            node.disk.compact(snap)
        self._pump(node)

    def _check_log_matching(self, node: _SimNode, rd: Ready) -> None:
        # If every (index, term) pair names one (kind, data, previous term),
        # then by induction two logs agreeing on an entry agree on all before it.
        core = node.core
        assert core is not None
        for e in rd.entries:
            prev = core.term_at(e.index - 1)
            shape = (e.kind, e.data, -1 if prev is None else prev)
            seen = self.entry_shape.setdefault((e.index, e.term), shape)
            if seen[:2] != shape[:2] or (seen[2] != shape[2] and -1 not in (seen[2], shape[2])):
                self.fail(f"log matching: n{node.id} holds a different entry {e.index}/{e.term}")

    def _apply(self, node: _SimNode, e: Entry) -> None:
        sm = node.machine
        if e.index != sm.applied + 1:
            self.fail(f"n{node.id} applied {e.index} after {sm.applied}")
        sm.applied = e.index
        prev = self.committed.setdefault(e.index, (e.term, e.data))
        if prev != (e.term, e.data):
            self.fail(
                f"state machine safety: n{node.id} applied {e.data!r}@{e.term} at {e.index}, "
                f"others applied {prev[1]!r}@{prev[0]}"
            )
        self.stats.committed = max(self.stats.committed, e.index)
        if e.kind is EntryKind.NORMAL:
            sm.writes.append(e.data)
        for w in self.pending_writes:
            if w.node == node.id and w.index == e.index:
                if w.wid == e.data:
                    self.stats.writes_acked += 1
                    self.acked_max_index = max(self.acked_max_index, e.index)
                self.pending_writes.remove(w)
                break

    def _serve_reads(self, node: _SimNode) -> None:
        keep = []
        for index, req in node.waiting_reads:
            if node.machine.applied < index:
                keep.append((index, req))
                continue
            rd = self.pending_reads.pop(req, None)  # type: ignore[call-overload]
            if rd is None:
                continue
            seen = node.machine.applied
            if seen < rd.must_see:
                self.fail(
                    f"linearizability: read {rd.rid} on n{node.id} saw index {seen}, but a write "
                    f"at {rd.must_see} was acknowledged before the read began"
                )
            self.stats.reads_served += 1
        node.waiting_reads = keep

    def _send(self, m: Message) -> None:
        net = self.net
        if (m.src, m.dst) in self.blocked:
            return
        rng = self.rng
        if net.drop_rate and rng.random() < net.drop_rate:
            return
        copies = 2 if net.duplicate_rate and rng.random() < net.duplicate_rate else 1
        for _ in range(copies):
            delay = rng.randint(net.min_delay_us, net.max_delay_us)
            self._at(self.now + delay, "deliver", m)

    # --------------------------------------------------------------- clients

    def leader(self) -> _SimNode | None:
        """The live leader of the highest term, if any."""
        best: _SimNode | None = None
        best_term = -1
        for node in self.nodes.values():
            c = node.core
            if c is not None and c.role is Role.LEADER and c.term > best_term:
                best, best_term = node, c.term
        return best

    def _client(self) -> None:
        self._at(self.now + self.client_interval_us, "client", None)
        if not self.clients_on:
            return
        self._client_round += 1
        if self._client_round % 64 == 0:
            self.log(
                f"progress: {self.stats.writes_acked} writes and {self.stats.reads_served} reads "
                f"acknowledged, commit index {self.stats.committed}"
            )
        live = [n for n in self.nodes.values() if n.core is not None]
        if not live:
            return
        node = self.rng.choice(live)
        assert node.core is not None
        hint = node.core.leader
        if node.core.role is not Role.LEADER and hint is not None and hint in self.nodes:
            target = self.nodes[hint]
            if target.core is not None:
                node = target
        core = node.core
        assert core is not None
        if self._client_round % self.read_every == 0:
            self._rid += 1
            rd = _Read(self._rid, node.id, self.now, self.acked_max_index)
            try:
                core.read_index(rd.rid)
            except NotLeader:
                return
            self.pending_reads[rd.rid] = rd
        else:
            self.propose_write(node)
        self._pump(node)

    def propose_write(self, node: _SimNode) -> _Write | None:
        core = node.core
        if core is None:
            return None
        self._wid += 1
        wid = f"w{self._wid}".encode()
        try:
            index = core.propose(wid)
        except (NotLeader, ProposalDropped):
            return None
        w = _Write(wid, node.id, index, core.term, self.now)
        self.pending_writes.append(w)
        return w

    # ---------------------------------------------------------------- faults

    def _fault(self, f: Fault) -> None:
        k = f.kind
        if k in ("crash", "restart", "wipe") and f.a not in self.nodes:
            return
        if k == "crash":
            self.crash(f.a)
        elif k == "restart":
            self.restart(f.a)
        elif k == "wipe":
            if not self.can_wipe(f.a):
                self.log(f"(skipped wipe n{f.a}: would leave no intact majority)")
                return
            self.wipe(f.a)
        elif k == "partition":
            self.partition(*f.groups)
        elif k == "oneway":
            self.blocked.add((f.a, f.b))
            self.log(f.describe())
        elif k == "heal":
            self.heal_network()
        elif k == "lossy":
            self.net.drop_rate = f.rate
            self.net.duplicate_rate = f.rate
            self.log(f.describe())
        elif k == "transfer":
            ld = self.leader()
            if ld is not None and ld.core is not None:
                try:
                    ld.core.transfer_leadership(f.a)
                    self.log(f"n{ld.id} transfers leadership to n{f.a}")
                except RaftError:
                    return
                self._pump(ld)
        elif k in ("add_learner", "promote", "remove"):
            self.change_membership(k, f.a)

    def crash(self, n: NodeId) -> None:
        node = self.nodes[n]
        if node.core is None:
            return
        node.core = None
        node.persisting = None
        node.generation += 1
        for req in [r for _, r in node.waiting_reads]:
            self.pending_reads.pop(req, None)  # type: ignore[call-overload]
        self.pending_writes = [w for w in self.pending_writes if w.node != n]
        self.log(f"crash n{n}")

    def restart(self, n: NodeId) -> None:
        if self.nodes[n].core is not None:
            return
        self._start(n)
        self.log(f"restart n{n}")

    def wipe(self, n: NodeId) -> None:
        self.crash(n)
        self.nodes[n].disk = Disk(self.rng.getrandbits(62) + 1)
        self._start(n)
        self.log(f"wipe n{n}: restarted with an empty disk")

    def can_wipe(self, n: NodeId) -> bool:
        """Whether every configuration any node holds keeps an intact majority without ``n``."""
        for node in self.nodes.values():
            conf = node.core.conf if node.core is not None else _disk_conf(node.disk)
            if not conf.voters:
                continue
            intact = sum(
                1
                for vid, inc in conf.voters
                if vid != n and vid in self.nodes and self.nodes[vid].disk.incarnation == inc
            )
            if intact < len(conf.voters) // 2 + 1:
                return False
        return True

    def partition(self, *groups: Sequence[NodeId]) -> None:
        side = {n: i for i, g in enumerate(groups) for n in g}
        self.blocked = {
            (a, b)
            for a in self.nodes
            for b in self.nodes
            if a != b and side.get(a, -1) != side.get(b, -2)
        }
        self.log(Fault(0, "partition", groups=tuple(tuple(g) for g in groups)).describe())

    def heal_network(self) -> None:
        self.blocked = set()
        self.net.drop_rate = self._base_net.drop_rate
        self.net.duplicate_rate = 0.0
        self.log("heal network")

    def change_membership(self, kind: str, n: NodeId) -> bool:
        ld = self.leader()
        if ld is None or ld.core is None:
            return False
        cc_type = {
            "add_learner": ConfChangeType.ADD_LEARNER,
            "promote": ConfChangeType.PROMOTE,
            "remove": ConfChangeType.REMOVE,
        }[kind]
        try:
            ld.core.propose_conf_change(ConfChange(cc_type, n))
        except (RaftError, ConfChangeRejected) as e:
            self.log(f"{kind} n{n} refused: {e}")
            return False
        self.log(f"n{ld.id} proposes {kind} n{n}")
        self._pump(ld)
        return True

    # ----------------------------------------------------------------- runs

    def heal_all(self) -> None:
        """End every fault: network whole again, every crashed node restarted."""
        self.heal_network()
        for n, node in self.nodes.items():
            if node.core is None:
                self.restart(n)

    def check_liveness(self, within_ms: int = 10_000) -> float:
        """After healing: a write must commit and reach every live voter within the bound.

        Returns the simulated milliseconds it took.
        """
        start = self.now
        deadline = start + within_ms * MS
        probe: _Write | None = None
        while self.now < deadline:
            self.run_until(self.now + 20 * MS)
            ld = self.leader()
            if ld is None or ld.core is None:
                continue
            if probe is None or (probe not in self.pending_writes and not self._acked(probe)):
                probe = self.propose_write(ld)
                if probe is not None:
                    self._pump(ld)
                continue
            if self._acked(probe) and self._everyone_applied(probe.index):
                took = (self.now - start) / 1000
                self.stats.heal_to_commit_ms = took
                self.log(f"liveness: write {probe.wid.decode()} everywhere after {took:.0f}ms")
                return took
        self.fail(f"liveness: no write committed everywhere within {within_ms}ms of healing")
        raise AssertionError("unreachable")

    def _acked(self, w: _Write) -> bool:
        return self.committed.get(w.index) == (w.term, w.wid)

    def _everyone_applied(self, index: int) -> bool:
        ld = self.leader()
        if ld is None or ld.core is None:
            return False
        voters = ld.core.conf.voters
        for vid, inc in voters:
            node = self.nodes.get(vid)
            if node is None or node.core is None or node.disk.incarnation != inc:
                continue
            if node.machine.applied < index:
                return False
        return True

    def run(self, faults: Sequence[Fault] = (), heal_at_ms: int | None = None) -> RunStats:
        """Run the schedule, heal, and check liveness.  Returns statistics."""
        self.schedule(faults)
        end = (
            heal_at_ms
            if heal_at_ms is not None
            else max((f.at_ms for f in faults), default=0) + 500
        )
        self.run_until(end * MS)
        self.heal_all()
        self.check_liveness()
        return self.stats


def _disk_conf(disk: Disk) -> ConfState:
    """The membership a crashed node will come back with."""
    conf = disk.snapshot.meta.conf if disk.snapshot is not None else ConfState()
    for e in disk.entries:
        if e.kind is EntryKind.CONF_CHANGE:
            conf = confchange.apply(conf, confchange.decode(e.data))
    return conf


def random_schedule(rng: random.Random, nodes: int, duration_ms: int, count: int) -> list[Fault]:
    """A random fault schedule (used by the CLI demo; the tests draw theirs with hypothesis)."""
    faults = []
    ids = list(range(1, nodes + 1))
    for _ in range(count):
        at = rng.randrange(duration_ms)
        kind = rng.choice(["crash", "restart", "partition", "heal", "lossy", "transfer", "wipe"])
        if kind == "partition":
            shuffled = ids[:]
            rng.shuffle(shuffled)
            cut = rng.randrange(1, nodes)
            faults.append(Fault(at, kind, groups=(tuple(shuffled[:cut]), tuple(shuffled[cut:]))))
        elif kind == "lossy":
            faults.append(Fault(at, kind, rate=rng.choice([0.05, 0.2])))
        else:
            faults.append(Fault(at, kind, a=rng.choice(ids)))
    faults.sort(key=lambda f: f.at_ms)
    return faults


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raft.sim", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faults", action="store_true", help="inject a random fault schedule")
    p.add_argument("--duration-ms", type=int, default=5000)
    p.add_argument("--count", type=int, default=12, help="number of faults")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    schedule = random_schedule(rng, args.nodes, args.duration_ms, args.count) if args.faults else []
    cluster = Cluster(args.nodes, args.seed, verbose=True, trace_len=40)
    print(f"simulating {args.nodes} nodes, seed {args.seed}, {len(schedule)} faults")
    for f in schedule:
        print(f"  scheduled at {f.at_ms:5d}ms: {f.describe()}")
    print()
    try:
        stats = cluster.run(schedule, heal_at_ms=args.duration_ms)
    except InvariantViolation as e:
        print(f"\nVERDICT: FAIL: {e.what} (replay with --seed {args.seed})")
        return 1
    print(
        f"\nVERDICT: OK: {stats.committed} entries committed, {stats.writes_acked} writes and "
        f"{stats.reads_served} linearizable reads acknowledged, {stats.elections} elections "
        f"(max term {stats.max_term}); after healing a write reached every voter in "
        f"{stats.heal_to_commit_ms:.0f}ms of simulated time; all invariants held"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

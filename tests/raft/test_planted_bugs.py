"""Bugs planted in subclasses of the core: the checks must catch every one.

A checker that never fails proves nothing; these show that the simulator's
invariants and the scenario tests do fail when the protocol is wrong.
"""

from __future__ import annotations

import random

import pytest

from raft.core import RawNode
from raft.sim import MS, Cluster, InvariantViolation, random_schedule

from .test_scenarios import applied_history_conflicts, run_figure_8


class CommitsOldTermByCounting(RawNode):
    """Forgets §5.4.2: commits any entry a majority holds, whatever its term."""

    def _may_commit_by_counting(self, index: int) -> bool:
        return True


class VotesWithoutLogCheck(RawNode):
    """Grants votes without checking that the candidate's log is up to date."""

    def _log_up_to_date(self, last_term: int, last_index: int) -> bool:
        return True


class ReadsWithoutHeartbeat(RawNode):
    """Serves ReadIndex reads at once, without confirming leadership first.

    It also never steps down for lack of a quorum: CheckQuorum alone closes
    most of the window in which a deposed leader could answer, and the point
    here is that the linearizability check sees the stale reads.
    """

    def _register_read(self, request: object) -> None:
        from raft.types import ReadState

        self._read_states.append(ReadState(request, self.commit))

    def _quorum_active(self) -> bool:
        return True


def first_violation(
    factory: type[RawNode], seeds: range, count: int = 14
) -> InvariantViolation | None:
    for seed in seeds:
        rng = random.Random(seed)
        nodes = 5 if seed % 2 else 3
        cluster = Cluster(nodes, seed, node_factory=factory)
        try:
            cluster.run(random_schedule(rng, nodes, 3000, count), heal_at_ms=3000)
        except InvariantViolation as e:
            return e
    return None


def test_figure_8_catches_committing_an_old_term_by_counting() -> None:
    net = run_figure_8(CommitsOldTermByCounting)
    assert applied_history_conflicts(net), "the planted bug went unnoticed"


def test_simulator_catches_votes_without_the_log_check() -> None:
    violation = first_violation(VotesWithoutLogCheck, range(200))
    assert violation is not None, "no schedule exposed the planted voting bug"
    assert "seed=" in str(violation)
    assert violation.trace, "a violation must come with the trace that led to it"


def test_simulator_catches_reads_without_leadership_confirmation() -> None:
    # A leader cut off in a minority keeps answering reads until CheckQuorum
    # deposes it, while the majority elects a new leader and acknowledges writes.
    caught = []
    for seed in range(10):
        cluster = Cluster(5, seed, node_factory=ReadsWithoutHeartbeat, read_every=2)
        cluster.run_until(1000 * MS, stop=lambda c=cluster: c.leader() is not None)
        cluster.run_until(cluster.now + 200 * MS)  # it commits in its term first
        old = cluster.leader()
        assert old is not None
        others = [n for n in range(1, 6) if n != old.id]
        cluster.partition((old.id, others[0]), tuple(others[1:]))
        try:
            cluster.run_until(cluster.now + 1500 * MS)
        except InvariantViolation as e:
            caught.append(e)
    assert caught, "no run exposed the planted stale-read bug"
    assert all("linearizability" in e.what for e in caught)


def test_the_same_partitions_hold_no_stale_read_with_the_correct_core() -> None:
    for seed in range(10):
        cluster = Cluster(5, seed, read_every=2)
        cluster.run_until(1000 * MS, stop=lambda c=cluster: c.leader() is not None)
        cluster.run_until(cluster.now + 200 * MS)  # it commits in its term first
        old = cluster.leader()
        assert old is not None
        others = [n for n in range(1, 6) if n != old.id]
        cluster.partition((old.id, others[0]), tuple(others[1:]))
        cluster.run_until(cluster.now + 1500 * MS)
        assert cluster.stats.reads_served > 0


@pytest.mark.parametrize("factory", [RawNode])
def test_the_correct_core_passes_the_same_schedules(factory: type[RawNode]) -> None:
    assert first_violation(factory, range(60)) is None

"""Hypothesis draws fault schedules; the simulator's invariants are the properties.

CI explores RAFT_SIM_EXAMPLES schedules (default 300, derandomized so that CI
is reproducible); set RAFT_SIM_LONG=1 for a long randomized hunt, e.g.
``RAFT_SIM_LONG=1 RAFT_SIM_EXAMPLES=20000 scripts/test tests/raft/test_sim_properties.py``.
A failure prints the seed and the shrunk schedule, replayable with
``Cluster(nodes, seed).run(schedule, heal_at_ms=DURATION_MS)``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.sim import Cluster, Fault, NetConfig

LONG = os.environ.get("RAFT_SIM_LONG") == "1"
EXAMPLES = int(os.environ.get("RAFT_SIM_EXAMPLES", "300"))
DURATION_MS = 3000


def _partition(at_ms: int, order: list[int], cut: int) -> Fault:
    return Fault(at_ms, "partition", groups=(tuple(order[:cut]), tuple(order[cut:])))


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, int, list[Fault]]:
    nodes = draw(st.sampled_from([3, 5]))
    seed = draw(st.integers(0, 2**32))
    ids = list(range(1, nodes + 3))  # members plus two spares that can be added
    node = st.sampled_from(ids)
    at = st.integers(0, DURATION_MS)
    fault = st.one_of(
        st.builds(Fault, at, st.sampled_from(["crash", "restart", "wipe", "transfer"]), node),
        st.builds(Fault, at, st.sampled_from(["add_learner", "promote", "remove"]), node),
        st.builds(Fault, at, st.just("heal")),
        st.builds(Fault, at, st.just("oneway"), node, node),
        st.builds(Fault, at, st.just("lossy"), rate=st.sampled_from([0.05, 0.2, 0.5])),
        st.builds(_partition, at, st.permutations(ids[:nodes]), st.integers(1, nodes - 1)),
    )
    faults = sorted(draw(st.lists(fault, max_size=14)), key=lambda f: f.at_ms)
    return nodes, seed, faults


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(schedules())
def test_invariants_hold_under_any_fault_schedule(case: tuple[int, int, list[Fault]]) -> None:
    nodes, seed, faults = case
    cluster = Cluster(nodes, seed, net=NetConfig(drop_rate=0.0))
    cluster.run(faults, heal_at_ms=DURATION_MS)
    assert cluster.stats.committed > 0

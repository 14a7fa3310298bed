"""Committed entries per second through the in-memory simulator (3 nodes, no faults).

100-byte entries, proposed in batches at the leader; the simulator delivers
messages with its default network delay and persists Readys with its disk
delay, so batching and pipelining happen as they would on a real cluster.
The invariant checks stay on in one row and off in another, to show how much
of the time is the checker's.  Prints a table, then one JSON line.

    .venv/bin/python bench/raft_core.py [--entries 300000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import time

from raft.sim import MS, Cluster


def run(entries: int, batch: int, checks: bool) -> dict[str, float]:
    c = Cluster(3, seed=1, spares=0, compact_every=50_000, checks=checks)
    c.clients_on = False
    c.run_until(1000 * MS, stop=lambda: c.leader() is not None)
    leader = c.leader()
    assert leader is not None and leader.core is not None
    c.run_until(c.now + 50 * MS)
    payload = [bytes(100)] * batch
    start_index = leader.core.commit
    target = start_index + entries
    wall, cpu = time.perf_counter(), time.process_time()
    sim_start = c.now
    while leader.core.commit < target:
        if leader.core.last_index() - leader.core.commit < 4 * batch:
            leader.core.propose_batch(payload)
            c._pump(leader)
        c.run_until(c.now + 200)  # 0.2 ms of simulated time
    # Count only what every node applied.
    while min(n.machine.applied for n in c.nodes.values()) < target:
        c.run_until(c.now + 200)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert all(n.core is not None and n.core.commit >= target for n in c.nodes.values())
    return {
        "entries": entries,
        "wall_s": wall,
        "entries_per_s": entries / wall,
        "cpu_us_per_entry": cpu / entries * 1e6,
        "sim_ms": (c.now - sim_start) / 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=300_000)
    p.add_argument("--batch", type=int, default=1000)
    args = p.parse_args()
    fast = run(args.entries, args.batch, checks=False)
    checked = run(max(args.entries // 5, 1000), args.batch, checks=True)
    print(f"{'mode':<28}{'entries':>10}{'entries/s':>14}{'CPU us/entry':>15}")
    for name, r in (("core, checks off", fast), ("core + invariant checks", checked)):
        print(
            f"{name:<28}{r['entries']:>10}{r['entries_per_s']:>14,.0f}{r['cpu_us_per_entry']:>15.2f}"
        )
    print(
        json.dumps(
            {
                "entries_per_s": round(fast["entries_per_s"]),
                "cpu_us_per_entry": round(fast["cpu_us_per_entry"], 3),
                "entries_per_s_with_checks": round(checked["entries_per_s"]),
                "target_entries_per_s": 100_000,
                "nodes": 3,
                "entry_bytes": 100,
                "batch": args.batch,
            }
        )
    )


if __name__ == "__main__":
    main()

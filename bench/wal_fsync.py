"""How fast can this disk make things durable, and how close does the WAL get?

Measures, each for about ``--seconds``:

1. raw: write 100 bytes + flush, in a loop, on a plain file (fdatasync, the
   call the WAL uses; fsync too, for reference);
2. WAL, one writer: append one 100-byte entry + ``Storage.sync()``, in a loop;
3. WAL, group commit: ``--tasks`` trio tasks each appending one 100-byte entry
   and awaiting ``GroupCommitter.commit()``, in a loop;
4. WAL, big batches: append 1000 x 100-byte entries + sync, in a loop (and
   the CPU cost of queuing such a batch, which is the hot path).

Prints a table, then one JSON line.  ``wal_vs_raw_fsync_ratio`` is the WAL's
flush rate under group commit divided by the raw flush rate (1.0: the WAL
adds nothing to the disk's own cost); ``group_commit_vs_raw_fsync_ratio`` is
committed entries per second divided by the raw flush rate (how much group
commit multiplies durable writes).

Usage: .venv/bin/python bench/wal_fsync.py [--seconds 2] [--tasks 64] [--dir PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from raft.group_commit import GroupCommitter
from raft.storage import Storage
from raft.types import Entry, EntryKind

PAYLOAD = b"p" * 100


@dataclass
class Tally:
    """Accumulated over the rounds of one measurement."""

    seconds: float = 0.0
    flushes: int = 0
    entries: int = 0
    queue_seconds: float = 0.0  # time spent in append() (batch measurement)
    batches: int = 0

    def rate(self, what: int) -> float:
        return what / self.seconds if self.seconds else 0.0


def raw_round(fd: int, seconds: float, flush: Callable[[int], None], t: Tally) -> None:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        os.write(fd, PAYLOAD)
        flush(fd)
        n += 1
    t.seconds += time.perf_counter() - start
    t.flushes += n
    t.entries += n


def single_round(st: Storage, seconds: float, t: Tally) -> None:
    syncs0 = st.wal_syncs
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        st.append([Entry(1, st.last_index + 1, EntryKind.NORMAL, PAYLOAD)])
        st.sync()
        n += 1
    t.seconds += time.perf_counter() - start
    t.flushes += st.wal_syncs - syncs0
    t.entries += n


def group_round(st: Storage, seconds: float, tasks: int, t: Tally) -> None:
    committed = 0

    async def main() -> float:
        gc = GroupCommitter(st)  # one per trio run: it holds trio events

        async def writer(deadline: float) -> None:
            nonlocal committed
            while trio.current_time() < deadline:
                st.append([Entry(1, st.last_index + 1, EntryKind.NORMAL, PAYLOAD)])
                await gc.commit()
                committed += 1

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(writer, start + seconds)
        return trio.current_time() - start

    syncs0 = st.wal_syncs
    t.seconds += trio.run(main)
    t.flushes += st.wal_syncs - syncs0
    t.entries += committed


def batch_round(st: Storage, seconds: float, t: Tally) -> None:
    syncs0 = st.wal_syncs
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        first = st.last_index + 1
        batch = [Entry(1, first + k, EntryKind.NORMAL, PAYLOAD) for k in range(1000)]
        t0 = time.perf_counter()
        st.append(batch)
        t.queue_seconds += time.perf_counter() - t0
        st.sync()
        t.entries += 1000
        t.batches += 1
    t.seconds += time.perf_counter() - start
    t.flushes += st.wal_syncs - syncs0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement, in total")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per measurement")
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    slot = args.seconds / args.rounds

    base = Path(tempfile.mkdtemp(prefix="wal-bench-", dir=args.dir))
    names = ["raw_fdatasync", "raw_fsync", "wal_single", "wal_group", "wal_batch"]
    tallies = {name: Tally() for name in names}
    fdatasync = getattr(os, "fdatasync", os.fsync)
    raw_fd = os.open(base / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    single = Storage.open(base / "single")
    group = Storage.open(base / "group")
    batch = Storage.open(base / "batch")
    try:
        # Interleaved so that every measurement sees the same background load:
        # on a shared VM the flush latency drifts by 10x within seconds.
        for _ in range(args.rounds):
            raw_round(raw_fd, slot, fdatasync, tallies["raw_fdatasync"])
            raw_round(raw_fd, slot, os.fsync, tallies["raw_fsync"])
            single_round(single, slot, tallies["wal_single"])
            group_round(group, slot, args.tasks, tallies["wal_group"])
            batch_round(batch, slot, tallies["wal_batch"])
    finally:
        os.close(raw_fd)
        for st in (single, group, batch):
            st.close()
        shutil.rmtree(base, ignore_errors=True)

    raw = tallies["raw_fdatasync"]
    raw_fsync = tallies["raw_fsync"]
    one = tallies["wal_single"]
    grp = tallies["wal_group"]
    big = tallies["wal_batch"]
    raw_rate = raw.rate(raw.flushes)
    grp_flushes = grp.rate(grp.flushes)
    grp_entries = grp.rate(grp.entries)
    per_flush = grp.entries / max(grp.flushes, 1)
    append_us = big.queue_seconds / max(big.batches, 1) * 1e6
    rows = [
        ("raw write(100 B) + fdatasync", f"{raw_rate:,.0f} flushes/s", ""),
        ("raw write(100 B) + fsync", f"{raw_fsync.rate(raw_fsync.flushes):,.0f} flushes/s", ""),
        (
            "WAL, 1 writer: append 1 + sync",
            f"{one.rate(one.flushes):,.0f} flushes/s",
            f"{one.rate(one.entries):,.0f} entries/s",
        ),
        (
            f"WAL, {args.tasks} tasks, group commit",
            f"{grp_flushes:,.0f} flushes/s",
            f"{grp_entries:,.0f} entries/s ({per_flush:.1f} per flush)",
        ),
        (
            "WAL, batches of 1000 + sync",
            f"{big.rate(big.flushes):,.0f} flushes/s",
            f"{big.rate(big.entries):,.0f} entries/s; append() {append_us:,.0f} us/batch",
        ),
    ]
    print(
        f"WAL durability benchmark: {args.seconds:g} s per line in {args.rounds} interleaved "
        f"rounds, files under {base.parent}"
    )
    print(f"{'measurement':<36} {'flush rate':<20} throughput")
    print("-" * 96)
    for name, rate, thr in rows:
        print(f"{name:<36} {rate:<20} {thr}")
    figures = {
        "raw_fdatasync_per_s": round(raw_rate, 1),
        "raw_fsync_per_s": round(raw_fsync.rate(raw_fsync.flushes), 1),
        "wal_single_writer_syncs_per_s": round(one.rate(one.flushes), 1),
        "wal_group_fsyncs_per_s": round(grp_flushes, 1),
        "wal_group_entries_per_s": round(grp_entries, 1),
        "wal_group_entries_per_fsync": round(per_flush, 2),
        "wal_group_tasks": args.tasks,
        "wal_batch_entries_per_s": round(big.rate(big.entries), 1),
        "wal_append_us_per_1000_entries": round(append_us, 1),
        "wal_vs_raw_fsync_ratio": round(grp_flushes / raw_rate, 3),
        "group_commit_vs_raw_fsync_ratio": round(grp_entries / raw_rate, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

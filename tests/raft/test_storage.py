"""The Storage facade: creation, identity, hard state, durability switches, group commit,
and a model-based crash/restart property."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.errors import (
    BootstrapMismatch,
    CorruptLog,
    InvalidStorageInput,
    StorageClosed,
    StorageError,
    StorageLocked,
)
from raft.group_commit import GroupCommitter
from raft.storage import Storage
from raft.types import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta

CONF = ConfState(voters=((1, 0xAA), (2, 0xBB), (3, 0xCC)))


def ents(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, b"e%d" % i) for i in range(first, last + 1)]


# ------------------------------------------------------------ identity


def test_fresh_directory(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"  # parents are created too
    with Storage.open(d, bootstrap=CONF) as s:
        r = s.recovered
        assert 0 < r.incarnation < 2**64 and s.incarnation == r.incarnation
        assert r.hard_state == HardState() and r.snapshot is None and r.entries == []
        assert r.bootstrap == CONF == s.bootstrap
        assert r.initial_snapshot() == Snapshot(SnapshotMeta(0, 0, CONF), b"")
    assert sorted(p.name for p in d.iterdir()) == ["LOCK", "META", "snap", "wal"]
    assert (d.stat().st_mode & 0o777) == 0o700


def test_no_bootstrap_means_no_configuration(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "n") as s:
        assert s.recovered.bootstrap is None and s.recovered.initial_snapshot() is None


def test_incarnation_is_stable_and_a_wipe_draws_a_new_one(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d, bootstrap=CONF) as s:
        first = s.incarnation
        s.append(ents(1, 3))
    for _ in range(2):
        with Storage.open(d) as s:
            assert s.incarnation == first and s.recovered.bootstrap == CONF
    shutil.rmtree(d)
    with Storage.open(d) as s:
        second = s.incarnation
        assert second != first and s.recovered.entries == [] and s.bootstrap is None
    for child in d.iterdir():  # wiping the contents of a kept directory (a mount point)
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    with Storage.open(d) as s:
        assert s.incarnation not in (first, second)


def test_bootstrap_mismatch_on_reopen(tmp_path: Path) -> None:
    d = tmp_path / "n"
    Storage.open(d, bootstrap=CONF).close()
    with pytest.raises(BootstrapMismatch):
        Storage.open(d, bootstrap=ConfState(voters=((1, 0xAA),)))
    Storage.open(d, bootstrap=CONF).close()
    Storage.open(d).close()


def test_a_joiner_adopts_the_bootstrap_it_learned_once_and_durably(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as s:
        s.append(ents(1, 2))
        s.sync()
        s.adopt_bootstrap(CONF)
        assert s.bootstrap == CONF
        assert s.recovered.bootstrap is None  # what open() found, unchanged
        s.adopt_bootstrap(CONF)  # the same again: nothing to do
        with pytest.raises(BootstrapMismatch):
            s.adopt_bootstrap(ConfState(voters=((1, 0xAA),)))
        with pytest.raises(InvalidStorageInput):
            s.adopt_bootstrap(ConfState(voters=((1, 2), (1, 3))))
    with Storage.open(d) as s:
        assert s.recovered.bootstrap == CONF
        assert s.recovered.initial_snapshot() == Snapshot(SnapshotMeta(0, 0, CONF), b"")
        assert [e.index for e in s.recovered.entries] == [1, 2]
    with pytest.raises(BootstrapMismatch):
        Storage.open(d, bootstrap=ConfState(voters=((1, 0xAA),)))
    # A directory created with a bootstrap keeps it.
    with Storage.open(tmp_path / "m", bootstrap=CONF) as s, pytest.raises(BootstrapMismatch):
        s.adopt_bootstrap(ConfState(voters=((1, 0xAA),)))


def test_adopting_leaves_the_old_or_the_new_meta_after_a_crash(tmp_path: Path) -> None:
    d = tmp_path / "n"
    Storage.open(d).close()
    before = (d / "META").read_bytes()
    # A crash after the temporary file was written but before the rename.
    (d / "META.tmp").write_bytes(b"half a new META")
    with Storage.open(d) as s:
        assert s.recovered.bootstrap is None and (d / "META").read_bytes() == before
        assert not (d / "META.tmp").exists()
        s.adopt_bootstrap(CONF)
    with Storage.open(d) as s:
        assert s.recovered.bootstrap == CONF


def test_cluster_init_can_choose_the_incarnation(tmp_path: Path) -> None:
    """Initialization writes a bootstrap naming every node's incarnation before the
    nodes' directories exist, so it may hand each node the incarnation to record."""
    d = tmp_path / "n"
    with Storage.open(d, bootstrap=CONF, incarnation=0xBB) as s:
        assert s.incarnation == 0xBB == s.recovered.incarnation
    Storage.open(d, incarnation=0xBB).close()
    with pytest.raises(BootstrapMismatch, match="incarnation"):
        Storage.open(d, incarnation=0xBC)
    for bad in (0, -1, 2**64, "7", True):
        with pytest.raises(InvalidStorageInput, match="incarnation"):
            Storage.open(tmp_path / "other", incarnation=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "conf",
    [
        ConfState(voters=((1, 2), (1, 3))),
        ConfState(voters=((1, 2),), learners=((1, 2),)),
        ConfState(voters=(("a", 2),)),  # type: ignore[arg-type]
        ConfState(voters=[(1, 2)]),  # type: ignore[arg-type]
        ((1, 2),),
    ],
)
def test_bad_bootstrap_is_refused(tmp_path: Path, conf: ConfState) -> None:
    with pytest.raises(InvalidStorageInput):
        Storage.open(tmp_path / "n", bootstrap=conf)
    assert not (tmp_path / "n").exists()


def test_one_storage_per_directory(tmp_path: Path) -> None:
    d = tmp_path / "n"
    s = Storage.open(d)
    with pytest.raises(StorageLocked):
        Storage.open(d)
    s.close()
    s.close()  # idempotent
    Storage.open(d).close()


def test_closed_storage_refuses_work(tmp_path: Path) -> None:
    s = Storage.open(tmp_path / "n")
    s.close()
    for call in (
        lambda: s.append(ents(1, 1)),
        lambda: s.set_hard_state(HardState(1)),
        s.sync,
        s.load_snapshot,
        lambda: s.save_snapshot(Snapshot(SnapshotMeta(1, 1, CONF), b"")),
    ):
        with pytest.raises(StorageClosed):
            call()


@pytest.mark.parametrize(
    "kwargs",
    [{"segment_bytes": 100}, {"segment_bytes": 2.5}, {"retain_snapshots": 0}],
)
def test_bad_options(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidStorageInput):
        Storage.open(tmp_path / "n", **kwargs)  # type: ignore[arg-type]


def test_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        Storage.open(f)


# ----------------------------------------------------- directory damage


def test_damaged_meta_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    Storage.open(d).close()
    meta = d / "META"
    good = meta.read_bytes()
    for damaged in (good[:10], good[:-1], good[:20] + bytes([good[20] ^ 1]) + good[21:], b""):
        meta.write_bytes(damaged)
        with pytest.raises(CorruptLog, match="META is damaged"):
            Storage.open(d)


def test_data_without_meta_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as s:
        s.append(ents(1, 50))
    (d / "META").unlink()
    with pytest.raises(StorageError, match="no META"):
        Storage.open(d)


def test_interrupted_creation_is_started_over(tmp_path: Path) -> None:
    d = tmp_path / "n"
    Storage.open(d).close()
    (d / "META").unlink()  # the creation died just before META was renamed into place
    (d / "META.tmp").write_bytes(b"partial")
    (d / "wal" / "0000000000000002-0000000000000001.wal.tmp").write_bytes(b"x")
    with Storage.open(d) as s:
        assert s.recovered.entries == []
    assert not (d / "META.tmp").exists()


def test_missing_wal_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    Storage.open(d).close()
    shutil.rmtree(d / "wal")
    with pytest.raises(CorruptLog, match="missing"):
        Storage.open(d)


def test_unknown_top_level_files_are_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "n"
    d.mkdir()
    (d / "lost+found").mkdir()
    with Storage.open(d) as s:
        s.append(ents(1, 2))
    with Storage.open(d) as s:
        assert s.last_index == 2
    assert (d / "lost+found").is_dir()


# ---------------------------------------------------------- hard state


def test_hard_state_last_one_wins(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as s:
        s.append(ents(1, 9))
        for hs in (HardState(1, None, 0), HardState(1, 2, 3), HardState(4, None, 5)):
            s.set_hard_state(hs)
            s.sync()
        s.set_hard_state(HardState(4, 3, 9))
        s.set_hard_state(HardState(4, 3, 9))  # unchanged: nothing queued
        assert s.hard_state == HardState(4, 3, 9)
    with Storage.open(d) as s:
        assert s.recovered.hard_state == HardState(4, 3, 9)


@pytest.mark.parametrize(
    ("hs", "match"),
    [
        (HardState(2, 7, 3), "term would go back"),
        (HardState(3, 8, 3), "durable vote"),
        (HardState(3, None, 3), "durable vote"),
        (HardState(3, 7, 2), "commit would go back"),
        (HardState(3, 7, 11), "past the last entry"),
        (HardState(-1, None, 0), "bad hard state"),
        (HardState(3, "me", 3), "bad hard state"),  # type: ignore[arg-type]
        (HardState(3.0, 7, 3), "bad hard state"),  # type: ignore[arg-type]
        ("hs", "takes a HardState"),
    ],
)
def test_dangerous_hard_states_are_refused(tmp_path: Path, hs: HardState, match: str) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as s:
        s.append(ents(1, 10))
        s.set_hard_state(HardState(3, 7, 3))
        with pytest.raises(InvalidStorageInput, match=match):
            s.set_hard_state(hs)
        s.set_hard_state(HardState(3, 7, 4))  # the legal successor still works
    with Storage.open(d) as s:
        assert s.recovered.hard_state == HardState(3, 7, 4)


def test_hard_state_survives_segment_compaction(tmp_path: Path) -> None:
    """Every segment opens with the current hard state, so dropping old segments
    never loses the last vote even when it was cast long ago."""
    d = tmp_path / "n"
    with Storage.open(d, segment_bytes=4096) as s:
        s.set_hard_state(HardState(5, 2, 0))
        s.sync()
        for b in range(40):
            s.append(
                [Entry(5, i, EntryKind.NORMAL, b"x" * 50) for i in range(b * 8 + 1, b * 8 + 9)]
            )
            s.sync()
        s.set_hard_state(HardState(5, 2, 300))
        s.save_snapshot(Snapshot(SnapshotMeta(300, 5, CONF), b"s"))
        assert s.segments[0].seq > 1
    with Storage.open(d, segment_bytes=4096) as s:
        assert s.recovered.hard_state == HardState(5, 2, 300)


# ------------------------------------------------------- durability switches


def count_flushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name, None)
        if real is None:
            continue

        def counting(fd: int, _real: object = real) -> None:
            calls.append(fd)
            _real(fd)  # type: ignore[operator]

        monkeypatch.setattr(os, name, counting)
    return calls


def test_fsync_is_on_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_flushes(monkeypatch)
    with Storage.open(tmp_path / "n") as s:
        before = len(calls)
        s.append(ents(1, 3))
        s.sync()
        assert len(calls) == before + 1 and s.wal_syncs == 1
        s.sync()  # nothing new: no flush
        assert len(calls) == before + 1 and s.wal_syncs == 1
        assert s.fsyncs >= 1


def test_unsafe_no_fsync_flushes_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = count_flushes(monkeypatch)
    d = tmp_path / "n"
    with caplog.at_level(logging.WARNING), Storage.open(d, unsafe_no_fsync=True) as s:
        s.append(ents(1, 3))
        s.set_hard_state(HardState(1, None, 2))
        s.sync()
        s.save_snapshot(Snapshot(SnapshotMeta(2, 1, CONF), b""))
        assert s.fsyncs == 0 and s.wal_syncs >= 1
    assert calls == []
    assert "unsafe_no_fsync=True" in caplog.text and "benchmarks only" in caplog.text
    with Storage.open(d) as s:  # the data is still written, just not flushed
        assert [e.index for e in s.recovered.entries] == [3]


def test_a_failed_flush_poisons_the_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "n"
    s = Storage.open(d)
    s.append(ents(1, 2))
    s.sync()

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    monkeypatch.setattr(os, "fsync", failing)
    s.append(ents(3, 3))
    with pytest.raises(StorageError, match="simulated"):
        s.sync()
    monkeypatch.undo()
    # Linux may have dropped the dirty pages: a retry could "succeed" and lie.
    with pytest.raises(StorageClosed, match="failed earlier"):
        s.sync()
    with pytest.raises(StorageClosed):
        s.append(ents(4, 4))
    s.close()
    with Storage.open(d) as s:
        assert s.last_index >= 2


# --------------------------------------------------------------- group commit


class GatedSyncer:
    """A fake storage whose first flush blocks until released."""

    def __init__(self) -> None:
        self.written = 0  # writes so far
        self.durable = 0  # writes covered by a completed flush
        self.calls = 0
        self.entered = trio.Event()
        self.release = threading.Event()

    def write(self) -> int:
        self.written += 1
        return self.written

    def sync(self) -> None:
        self.calls += 1
        covered = self.written  # a flush covers what was written before it began
        if self.calls == 1:
            trio.from_thread.run_sync(self.entered.set)
            self.release.wait()
        self.durable = max(self.durable, covered)


async def test_waiters_arriving_during_a_flush_share_the_next_one() -> None:
    fake = GatedSyncer()
    gc = GroupCommitter(fake)
    n = 32
    returned: list[tuple[int, int]] = []

    async def writer() -> None:
        mine = fake.write()
        await gc.commit()
        returned.append((mine, fake.durable))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await fake.entered.wait()  # flush 1 is running and covers writer 1 only
        for _ in range(n - 1):
            nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert returned == []
        fake.release.set()
    assert fake.calls == 2 and gc.flushes == 2
    assert len(returned) == n
    assert all(mine <= durable for mine, durable in returned)


async def test_group_commit_on_real_storage(tmp_path: Path) -> None:
    s = Storage.open(tmp_path / "n")
    durable = 0

    class Probe:
        def sync(self) -> None:
            nonlocal durable
            upto = s.last_index  # read before the flush takes its buffer
            s.sync()
            durable = max(durable, upto)

    gc = GroupCommitter(Probe())
    n = 64
    early: list[int] = []

    async def writer() -> None:
        for _ in range(3):
            index = s.last_index + 1
            s.append([Entry(1, index, EntryKind.NORMAL, b"x" * 100)])
            await gc.commit()
            if durable < index:
                early.append(index)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(writer)
    assert early == []
    # a flush may find its writers already taken by the previous one: then it is empty
    assert s.wal_syncs <= gc.flushes < 3 * n
    s.close()
    with Storage.open(tmp_path / "n") as s2:
        assert [e.index for e in s2.recovered.entries] == list(range(1, 3 * n + 1))


async def test_a_failed_flush_reaches_every_waiter_it_covered() -> None:
    class Broken:
        calls = 0

        def sync(self) -> None:
            self.calls += 1
            raise StorageError("disk on fire")

    gc = GroupCommitter(Broken())
    errors: list[str] = []

    async def writer() -> None:
        try:
            await gc.commit()
        except StorageError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(writer)
    assert errors == ["disk on fire"] * 5


async def test_cancelling_the_flushing_waiter_does_not_strand_the_others() -> None:
    fake = GatedSyncer()
    gc = GroupCommitter(fake)
    done: list[int] = []

    async def writer(cancel_scope: trio.CancelScope | None = None) -> None:
        mine = fake.write()
        if cancel_scope is None:
            await gc.commit()
        else:
            with cancel_scope:
                await gc.commit()
        done.append(mine)

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, scope)
        await fake.entered.wait()
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()  # the thread still runs to completion
        fake.release.set()
    assert sorted(done) == [1, 2] and fake.durable == 2 and fake.calls == 2


# -------------------------------------------------- crash/restart property

# An operation on a live storage: append a batch from a chosen point, bump the
# term, advance commit, sync, snapshot at commit, or crash and restart.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 6), st.integers(1, 5)),
        st.tuples(st.just("term"), st.booleans(), st.just(0)),
        st.tuples(st.just("commit"), st.integers(0, 4), st.just(0)),
        st.tuples(st.just("sync"), st.just(0), st.just(0)),
        st.tuples(st.just("snapshot"), st.just(0), st.just(0)),
        st.tuples(st.just("crash"), st.booleans(), st.just(0)),
    ),
    max_size=40,
)


class Model:
    """What a storage must hold: the log after the snapshot, hard state, snapshot."""

    def __init__(self) -> None:
        self.log: list[tuple[int, int]] = []  # (index, term) after the snapshot
        self.snap = (0, 0)
        self.hs = HardState()

    def copy(self) -> Model:
        m = Model()
        m.log, m.snap, m.hs = list(self.log), self.snap, HardState(*vars_of(self.hs))
        return m

    def last(self) -> int:
        return self.log[-1][0] if self.log else self.snap[0]


def vars_of(hs: HardState) -> tuple[int, int | None, int]:
    return hs.term, hs.vote, hs.commit


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops)
def test_restart_recovers_exactly_what_was_synced(
    script: list[tuple[str, object, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "n"
        s = Storage.open(d, segment_bytes=4096)
        live, durable = Model(), Model()
        live.hs = HardState(1, None, 0)
        s.set_hard_state(live.hs)
        try:
            for op, a, b in script:
                if op == "append":
                    assert isinstance(a, int)
                    lo = max(live.hs.commit, live.snap[0]) + 1
                    first = max(lo, live.last() + 1 - a)
                    term = live.hs.term
                    batch = [
                        Entry(term, i, EntryKind.NORMAL, b"%d" % i) for i in range(first, first + b)
                    ]
                    s.append(batch)
                    live.log = [x for x in live.log if x[0] < first] + [
                        (e.index, term) for e in batch
                    ]
                elif op == "term":
                    live.hs = HardState(live.hs.term + 1, 1 if a else None, live.hs.commit)
                    s.set_hard_state(live.hs)
                elif op == "commit":
                    assert isinstance(a, int)
                    c = min(live.last(), live.hs.commit + a)
                    live.hs = HardState(live.hs.term, live.hs.vote, c)
                    s.set_hard_state(live.hs)
                elif op == "sync":
                    s.sync()
                    durable = live.copy()
                elif op == "snapshot":
                    c = live.hs.commit
                    if c > live.snap[0]:
                        term = next(t for i, t in live.log if i == c)
                        s.save_snapshot(Snapshot(SnapshotMeta(c, term, CONF), b"%d" % c))
                        live.snap = (c, term)
                        live.log = [x for x in live.log if x[0] > c]
                        durable = live.copy()  # save_snapshot flushes the WAL too
                elif op == "crash":
                    s.close(sync=bool(a))
                    if a:
                        durable = live.copy()
                    s = Storage.open(d, segment_bytes=4096)
                    r = s.recovered
                    got_snap = (
                        (r.snapshot.meta.index, r.snapshot.meta.term) if r.snapshot else (0, 0)
                    )
                    assert got_snap == durable.snap
                    assert [(e.index, e.term) for e in r.entries] == durable.log
                    assert all(e.data == b"%d" % e.index for e in r.entries)
                    assert r.hard_state == durable.hs
                    live = durable.copy()
                    if live.hs.term == 0:  # nothing was synced yet: start term 1 again
                        live.hs = HardState(1, None, 0)
                        s.set_hard_state(live.hs)
        finally:
            s.close(sync=False)


def test_drawn_incarnations_fit_the_cores_63_bit_fields(tmp_path: Path) -> None:
    from raft import storage as storage_mod

    assert all(0 < storage_mod._new_incarnation() < 2**63 for _ in range(2000))
    with pytest.raises(InvalidStorageInput):
        Storage.open(tmp_path / "big", incarnation=2**63)

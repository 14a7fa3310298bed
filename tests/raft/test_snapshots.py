"""Snapshot files, pruning, WAL compaction, and recovery's choice of snapshot."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from raft.errors import CorruptLog, CorruptSnapshot, InvalidStorageInput
from raft.fsync import Syncer
from raft.snapshots import SnapshotStore
from raft.storage import Storage
from raft.types import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta

SMALL = 4096
CONF = ConfState(voters=((1, 11), (2, 22), (3, 33)), learners=((4, 44),))


def ents(first: int, last: int, term: int = 1, size: int = 40) -> list[Entry]:
    return [
        Entry(term, i, EntryKind.NORMAL, bytes([i % 256]) * size) for i in range(first, last + 1)
    ]


def snap(index: int, term: int = 1, data: bytes | None = None) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONF), data if data is not None else b"S%d" % index)


def snap_files(d: Path) -> list[str]:
    return sorted(p.name for p in (d / "snap").iterdir())


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)


# ------------------------------------------------------------------ the file


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path, key=b"k" * 32, incarnation=99, syncer=Syncer())


def test_file_round_trip(store: SnapshotStore) -> None:
    s = snap(5, 2, os.urandom(3000))
    f = store.save(s)
    assert f.path.name == "0000000000000005-0000000000000002.snap"
    assert store.load(f) == s
    assert store.files() == [f]


def test_every_truncation_and_every_bit_flip_is_detected(store: SnapshotStore) -> None:
    f = store.save(snap(5, 2, b"payload" * 3))
    full = f.path.read_bytes()
    for n in range(len(full)):
        f.path.write_bytes(full[:n])
        with pytest.raises(CorruptSnapshot):
            store.load(f)
    for off in range(len(full)):
        damaged = bytearray(full)
        damaged[off] ^= 0x80
        f.path.write_bytes(damaged)
        with pytest.raises(CorruptSnapshot) as info:
            store.load(f)
        assert info.value.path == str(f.path)
    f.path.write_bytes(full + b"\x00")
    with pytest.raises(CorruptSnapshot, match="size"):
        store.load(f)


def test_files_from_elsewhere_are_rejected(tmp_path: Path, store: SnapshotStore) -> None:
    f = store.save(snap(5))
    other_key = SnapshotStore(tmp_path, key=b"x" * 32, incarnation=99, syncer=Syncer())
    with pytest.raises(CorruptSnapshot, match="checksum"):
        other_key.load(f)
    other_incarnation = SnapshotStore(tmp_path, key=b"k" * 32, incarnation=98, syncer=Syncer())
    with pytest.raises(CorruptSnapshot, match="incarnation"):
        other_incarnation.load(f)
    renamed = f.path.with_name(SnapshotStore.file_name(6, 1))
    f.path.rename(renamed)
    with pytest.raises(CorruptSnapshot, match="unlike its name"):
        store.load(store.files()[0])


def test_prune_keeps_the_newest(store: SnapshotStore) -> None:
    for i in (3, 9, 5, 7, 1):
        store.save(snap(i))
    removed = store.prune(3)
    assert sorted(f.index for f in removed) == [1, 3]
    assert [f.index for f in store.files()] == [9, 7, 5]


# ---------------------------------------------------------- through Storage


def test_save_snapshot_then_recover(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 20))
        st.set_hard_state(HardState(1, 1, 15))
        st.sync()
        st.save_snapshot(snap(12))
        assert st.snapshot_index == 12 and st.term_at(12) == 1 and st.term_at(11) is None
        assert st.load_snapshot() == snap(12)
    with Storage.open(d) as st:
        r = st.recovered
        assert r.snapshot == snap(12)
        assert r.initial_snapshot() == snap(12)
        assert [e.index for e in r.entries] == list(range(13, 21))
        assert r.hard_state == HardState(1, 1, 15)
        assert st.load_snapshot() == snap(12)


def test_only_the_newest_three_are_kept_and_covered_segments_go(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d, segment_bytes=SMALL) as st:
        for b in range(50):
            st.append(ents(b * 10 + 1, b * 10 + 10))
            st.set_hard_state(HardState(1, None, b * 10 + 10))
            st.sync()
        before = st.segments
        for i in (100, 200, 300, 400):
            st.save_snapshot(snap(i))
        after = st.segments
        assert snap_files(d) == [SnapshotStore.file_name(i, 1) for i in (200, 300, 400)]
        # exactly the prefix whose entries the oldest kept snapshot (200) covers
        expected = [s for s in before if s.seq >= next(s.seq for s in before if s.max_index > 200)]
        assert [s.path for s in after] == [s.path for s in expected]
        assert len(after) < len(before)
        assert all(not s.path.exists() for s in before if s not in expected)
    with Storage.open(d, segment_bytes=SMALL) as st:
        assert st.recovered.snapshot == snap(400)
        assert [e.index for e in st.recovered.entries] == list(range(401, 501))


def test_corrupt_newest_falls_back_when_the_wal_covers_the_gap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "n"
    with Storage.open(d, segment_bytes=SMALL) as st:
        for b in range(50):
            st.append(ents(b * 10 + 1, b * 10 + 10))
            st.set_hard_state(HardState(1, None, b * 10 + 10))
            st.sync()
        for i in (100, 200, 300, 400):
            st.save_snapshot(snap(i))
    newest = d / "snap" / SnapshotStore.file_name(400, 1)
    flip(newest, 40)
    with caplog.at_level(logging.ERROR), Storage.open(d, segment_bytes=SMALL) as st:
        r = st.recovered
        assert r.snapshot == snap(300)
        assert [e.index for e in r.entries] == list(range(301, 501))
        assert r.hard_state.commit == 500
    assert "corrupt snapshot" in caplog.text
    assert not newest.exists() and newest.with_name(newest.name + ".corrupt").exists()
    with Storage.open(d, segment_bytes=SMALL) as st:  # the fallback is stable
        assert st.recovered.snapshot == snap(300)
        st.save_snapshot(snap(450))
    with Storage.open(d, segment_bytes=SMALL) as st:
        assert st.recovered.snapshot == snap(450)
        assert st.recovered.entries[0].index == 451


def test_corrupt_snapshots_without_wal_cover_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d, segment_bytes=SMALL) as st:
        for b in range(50):
            st.append(ents(b * 10 + 1, b * 10 + 10))
            st.set_hard_state(HardState(1, None, b * 10 + 10))
            st.sync()
        for i in (100, 200, 300):
            st.save_snapshot(snap(i))
    for i in (100, 200, 300):
        flip(d / "snap" / SnapshotStore.file_name(i, 1), 30)
    with pytest.raises(CorruptLog, match="missing") as info:
        Storage.open(d, segment_bytes=SMALL)
    assert SnapshotStore.file_name(300, 1) in str(info.value)
    assert len(snap_files(d)) == 3  # nothing was renamed while refusing


def test_corrupt_only_snapshot_falls_back_to_the_whole_wal(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:  # one big segment: nothing is dropped
        st.append(ents(1, 30))
        st.set_hard_state(HardState(1, None, 30))
        st.sync()
        st.save_snapshot(snap(20))
    flip(d / "snap" / SnapshotStore.file_name(20, 1), 25)
    with Storage.open(d) as st:
        assert st.recovered.snapshot is None
        assert [e.index for e in st.recovered.entries] == list(range(1, 31))


def test_installed_snapshot_discards_a_conflicting_log(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 10, term=1))
        st.set_hard_state(HardState(2, None, 3))
        st.sync()
        st.save_snapshot(snap(8, term=2))  # the leader's entry 8 has term 2: ours is stale
        assert st.last_index == 8 and st.term_at(9) is None
        st.set_hard_state(HardState(2, None, 8))
        st.append(ents(9, 9, term=2))
        st.sync()
    with Storage.open(d) as st:
        assert st.recovered.snapshot == snap(8, term=2)
        assert [(e.index, e.term) for e in st.recovered.entries] == [(9, 2)]


def test_installed_snapshot_past_the_log(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 3))
        st.sync()
        st.save_snapshot(snap(50, term=3))
        st.set_hard_state(HardState(3, None, 50))
        st.sync()
    with Storage.open(d) as st:
        assert st.recovered.snapshot == snap(50, term=3) and st.recovered.entries == []
        st.append(ents(51, 52, term=3))
    with Storage.open(d) as st:
        assert [e.index for e in st.recovered.entries] == [51, 52]


def test_lost_installed_snapshot_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 3))
        st.sync()
        st.save_snapshot(snap(50, term=3))
        st.set_hard_state(HardState(3, None, 50))
        st.append(ents(51, 52, term=3))
        st.sync()
    flip(d / "snap" / SnapshotStore.file_name(50, 3), 30)
    with pytest.raises(CorruptLog, match=r"entries 1\.\.50 are missing"):
        Storage.open(d)


@pytest.mark.parametrize("conflicting", [True, False])
def test_crash_between_snapshot_file_and_wal_marker(tmp_path: Path, conflicting: bool) -> None:
    """The file is durable, the marker is not: recovery decides as save_snapshot would
    have, and records the decision so a later restart replays the same log."""
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 10, term=1))
        st.set_hard_state(HardState(2, None, 5))
        st.sync()
    seg = next((d / "wal").glob("*.wal"))
    size = seg.stat().st_size
    term = 2 if conflicting else 1
    with Storage.open(d) as st:
        st.save_snapshot(snap(8, term=term))
    with open(seg, "r+b") as fh:  # the marker never reached the disk
        fh.truncate(size)
    with Storage.open(d) as st:
        want = [] if conflicting else [9, 10]
        assert st.recovered.snapshot == snap(8, term=term)
        assert [e.index for e in st.recovered.entries] == want
        st.append(ents(9, 12, term=2))
    with Storage.open(d) as st:
        assert [(e.index, e.term) for e in st.recovered.entries] == [(i, 2) for i in range(9, 13)]


def test_stale_and_conflicting_snapshots_are_refused(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "n") as st:
        st.append(ents(1, 10))
        st.set_hard_state(HardState(1, None, 9))
        st.save_snapshot(snap(5))
        with pytest.raises(InvalidStorageInput, match="not newer"):
            st.save_snapshot(snap(5))
        with pytest.raises(InvalidStorageInput, match="not newer"):
            st.save_snapshot(snap(4))
        with pytest.raises(InvalidStorageInput, match="committed"):
            st.save_snapshot(snap(7, term=2))  # would discard committed entries 8..9
        assert st.snapshot_index == 5 and st.last_index == 10


@pytest.mark.parametrize(
    "bad",
    [
        "not a snapshot",
        Snapshot(SnapshotMeta(0, 1, CONF), b""),
        Snapshot(SnapshotMeta(1, 0, CONF), b""),
        Snapshot(SnapshotMeta(1, 1, CONF), "text"),  # type: ignore[arg-type]
        Snapshot(SnapshotMeta(1, 1, ConfState(voters=((1, 1), (1, 2)))), b""),
        Snapshot(SnapshotMeta(1, 1, ConfState(voters=((1, -1),))), b""),
        Snapshot(SnapshotMeta(1, 1, "conf"), b""),  # type: ignore[arg-type]
    ],
)
def test_malformed_snapshots_are_refused(tmp_path: Path, bad: Snapshot) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 2))
        with pytest.raises(InvalidStorageInput):
            st.save_snapshot(bad)
    assert snap_files(d) == []


def test_snap_directory_leftovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 5))
        st.set_hard_state(HardState(1, None, 5))
        st.save_snapshot(snap(4))
    (d / "snap" / "README").write_text("hello")
    leftover = d / "snap" / (SnapshotStore.file_name(5, 1) + ".tmp")
    leftover.write_bytes(b"half")
    with caplog.at_level(logging.WARNING), Storage.open(d) as st:
        assert st.recovered.snapshot == snap(4)
    assert not leftover.exists() and (d / "snap" / "README").exists()
    assert "README" in caplog.text


def test_garbage_under_a_snapshot_name_is_treated_as_damage(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 5))
        st.set_hard_state(HardState(1, None, 5))
        st.save_snapshot(snap(4))
    fake = d / "snap" / SnapshotStore.file_name(5, 1)
    fake.write_bytes(b"garbage")
    with Storage.open(d) as st:  # the WAL still covers 5: fall back to the real one
        assert st.recovered.snapshot == snap(4)
        assert [e.index for e in st.recovered.entries] == [5]
    assert fake.with_name(fake.name + ".corrupt").exists()

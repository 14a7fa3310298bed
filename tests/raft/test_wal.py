"""The write-ahead log: framing, segments, truncation and crash recovery (through Storage)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from raft.errors import CorruptLog, CorruptRecord, InvalidStorageInput
from raft.storage import Storage
from raft.types import Entry, EntryKind, HardState
from raft.wal import HEADER_SIZE, RecordCodec, RecordType, scan_segment, segment_name

SMALL = 4096  # the smallest segment size Storage accepts


def ents(first: int, last: int, term: int = 1, size: int = 20) -> list[Entry]:
    return [
        Entry(term, i, EntryKind.NORMAL, i.to_bytes(4, "big") * (size // 4))
        for i in range(first, last + 1)
    ]


def seg_files(d: Path) -> list[Path]:
    return sorted((d / "wal").glob("*.wal"))


def state(st: Storage) -> tuple[HardState, list[tuple[int, int, bytes]]]:
    r = st.recovered
    return r.hard_state, [(e.index, e.term, e.data) for e in r.entries]


def build_log(d: Path) -> tuple[list[int], tuple[HardState, list[tuple[int, int, bytes]]]]:
    """Write five records, one sync each; return the file size after each and the
    state before the last record."""
    sizes = []
    with Storage.open(d) as st:
        sizes.append(seg_files(d)[0].stat().st_size)
        st.append(ents(1, 5))
        st.sync()
        sizes.append(seg_files(d)[0].stat().st_size)
        st.set_hard_state(HardState(1, 7, 3))
        st.sync()
        sizes.append(seg_files(d)[0].stat().st_size)
        st.append(ents(6, 8))
        st.sync()
        sizes.append(seg_files(d)[0].stat().st_size)
        st.append(ents(9, 9, size=60))
        st.sync()
        sizes.append(seg_files(d)[0].stat().st_size)
    with Storage.open(d) as st:
        assert [e.index for e in st.recovered.entries] == list(range(1, 10))
    expected_before_last = (HardState(1, 7, 3), [(e.index, e.term, e.data) for e in ents(1, 8)])
    return sizes, expected_before_last


# ------------------------------------------------------------------ framing


def test_frame_round_trip_and_scan() -> None:
    codec = RecordCodec(bytes(range(32)))
    payloads = [b"", b"a", os.urandom(1000)]
    data = b"".join(codec.frame(RecordType.ENTRIES, p) for p in payloads)
    records, torn = scan_segment("x", data, codec, last=False)
    assert torn is None
    assert [bytes(r.payload) for r in records] == payloads
    assert [r.offset for r in records] == [0, HEADER_SIZE, 2 * HEADER_SIZE + 1]


def test_a_record_framed_under_another_key_is_not_genuine() -> None:
    mine, theirs = RecordCodec(b"k" * 32), RecordCodec(b"K" * 32)
    data = mine.frame(RecordType.SEGMENT, b"head") + theirs.frame(RecordType.ENTRIES, b"x" * 50)
    with pytest.raises(CorruptRecord):
        scan_segment("x", data, mine, last=False)
    # In the last segment it is indistinguishable from a torn tail: cut, not trusted.
    records, torn = scan_segment("x", data, mine, last=True)
    assert len(records) == 1 and torn is not None and torn.offset == HEADER_SIZE + 4


def test_crafted_frame_inside_a_payload_does_not_count_as_valid_data() -> None:
    """A client can put any bytes in an entry; with a public checksum it could embed a
    frame that makes a torn tail look like mid-log corruption.  Keyed tags prevent it."""
    codec = RecordCodec(b"k" * 32)
    forged = RecordCodec(b"f" * 32).frame(RecordType.ENTRIES, b"payload")
    good = codec.frame(RecordType.SEGMENT, b"head")
    torn_record = codec.frame(RecordType.ENTRIES, b"z" * 30 + forged + b"z" * 30)
    data = good + torn_record[:-5]
    data = data[: len(good) + 3] + b"\x00" + data[len(good) + 4 :]  # damage its header too
    records, torn = scan_segment("x", data, codec, last=True)
    assert len(records) == 1 and torn is not None and torn.offset == len(good)


def test_codec_rejects_a_bad_key() -> None:
    with pytest.raises(Exception, match="32 bytes"):
        RecordCodec(b"short")


def test_unknown_record_type_with_a_genuine_header_is_an_error() -> None:
    codec = RecordCodec(b"k" * 32)
    data = codec.frame(RecordType.SEGMENT, b"h") + codec.frame(99, b"future")
    with pytest.raises(CorruptRecord, match="unknown record type 99"):
        scan_segment("x", data, codec, last=True)


# ---------------------------------------------------------------- round trip


def test_round_trip_entries_hard_state_and_kinds(tmp_path: Path) -> None:
    d = tmp_path / "n"
    batch = [  # bytes-like data is accepted and comes back as bytes
        Entry(1, 1, EntryKind.NOOP, b""),
        Entry(1, 2, EntryKind.NORMAL, b"\x00\xff" * 50),
        Entry(2, 3, EntryKind.CONF_CHANGE, b"cc"),
        Entry(2, 4, EntryKind.NORMAL, bytearray(b"ba")),  # type: ignore[arg-type]
    ]
    with Storage.open(d) as st:
        st.append(batch)
        st.set_hard_state(HardState(2, None, 4))
        st.sync()
    with Storage.open(d) as st:
        r = st.recovered
        assert r.hard_state == HardState(2, None, 4)
        assert r.entries == [Entry(e.term, e.index, e.kind, bytes(e.data)) for e in batch]
        assert all(type(e.kind) is EntryKind and type(e.data) is bytes for e in r.entries)
        assert st.last_index == 4 and st.term_at(3) == 2 and st.term_at(5) is None


def test_a_batch_is_one_write_syscall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    with Storage.open(tmp_path / "n") as st:
        monkeypatch.setattr(os, "write", counting_write)
        st.append(ents(1, 1000, size=100))
        st.set_hard_state(HardState(1, 1, 0))
        st.sync()
        assert len(writes) == 1 and writes[0] > 100_000
        monkeypatch.undo()


def test_close_without_sync_drops_queued_records(tmp_path: Path) -> None:
    d = tmp_path / "n"
    st = Storage.open(d)
    st.append(ents(1, 3))
    st.sync()
    st.append(ents(4, 6))
    st.set_hard_state(HardState(1, None, 2))
    st.close(sync=False)  # what a crash does to records not yet synced
    with Storage.open(d) as st:
        assert state(st) == (HardState(), [(e.index, e.term, e.data) for e in ents(1, 3)])
    with Storage.open(d) as st:
        st.append(ents(4, 4))
    with Storage.open(d) as st:  # a clean close syncs
        assert st.last_index == 4


# ---------------------------------------------------------------- truncation


def test_overwriting_a_suffix_persists_across_restarts(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        st.append(ents(1, 10, term=1))
        st.set_hard_state(HardState(1, None, 4))
        st.sync()
        st.append(ents(6, 8, term=2))  # a new leader's entries replace 6..10
        st.sync()
        assert st.last_index == 8
    with Storage.open(d) as st:
        got = [(e.index, e.term) for e in st.recovered.entries]
        assert got == [(i, 1) for i in range(1, 6)] + [(i, 2) for i in range(6, 9)]
        st.append(ents(9, 9, term=2))
        st.append(ents(5, 5, term=3))  # truncate again, before syncing
        st.sync()
    with Storage.open(d) as st:
        got = [(e.index, e.term) for e in st.recovered.entries]
        assert got == [(i, 1) for i in range(1, 5)] + [(5, 3)]
        assert st.term_at(5) == 3 and st.term_at(4) == 1


def test_truncation_that_was_not_synced_is_not_recovered(tmp_path: Path) -> None:
    d = tmp_path / "n"
    st = Storage.open(d)
    st.append(ents(1, 6, term=1))
    st.sync()
    st.append(ents(3, 3, term=2))
    st.close(sync=False)
    with Storage.open(d) as st:
        assert [(e.index, e.term) for e in st.recovered.entries] == [(i, 1) for i in range(1, 7)]


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (ents(3, 3), "gap"),
        ([Entry(1, 1, EntryKind.NORMAL, b""), Entry(1, 3, EntryKind.NORMAL, b"")], "consecutive"),
        ([Entry(2, 1, EntryKind.NORMAL, b""), Entry(1, 2, EntryKind.NORMAL, b"")], "decrease"),
        ([Entry(0, 1, EntryKind.NORMAL, b"")], ">= 1"),
        ([Entry(1.0, 1, EntryKind.NORMAL, b"")], "ints"),  # type: ignore[arg-type]
        ([Entry(1, 1, EntryKind.NORMAL, "text")], "bytes"),  # type: ignore[arg-type]
        ([Entry(1, 1, 7, b"")], "kind"),  # type: ignore[arg-type]
        ([Entry(1, 1, True, b"")], "kind"),  # type: ignore[arg-type]
        ([("not", "an", "entry")], "Entry"),
    ],
)
def test_bad_appends_are_refused_and_write_nothing(
    tmp_path: Path, batch: list[Entry], match: str
) -> None:
    d = tmp_path / "n"
    with Storage.open(d) as st:
        with pytest.raises(InvalidStorageInput, match=match):
            st.append(batch)
        assert st.last_index == 0
        st.append(ents(1, 1))
    with Storage.open(d) as st:
        assert st.last_index == 1


def test_entries_cannot_replace_committed_ones_or_go_below_the_previous_term(
    tmp_path: Path,
) -> None:
    with Storage.open(tmp_path / "n") as st:
        st.append(ents(1, 5, term=3))
        st.set_hard_state(HardState(3, None, 3))
        with pytest.raises(InvalidStorageInput, match="committed"):
            st.append(ents(3, 4, term=4))
        with pytest.raises(InvalidStorageInput, match="previous entry"):
            st.append(ents(5, 5, term=2))
        st.append(ents(4, 4, term=4))
        assert st.last_index == 4


# ---------------------------------------------------------------- torn tails


def test_every_cut_inside_the_last_record_is_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "n"
    sizes, expected = build_log(d)
    seg = seg_files(d)[0]
    full = seg.read_bytes()
    start = sizes[-2]
    assert len(full) == sizes[-1]
    for cut in range(start, len(full)):
        seg.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raft.wal"), Storage.open(d) as st:
            assert state(st) == expected, cut
        assert seg.stat().st_size == start
        if cut > start:
            assert f"cut a torn tail of {cut - start} bytes at offset {start}" in caplog.text


def test_cut_inside_an_earlier_record_keeps_the_prefix(tmp_path: Path) -> None:
    d = tmp_path / "n"
    sizes, _ = build_log(d)
    seg = seg_files(d)[0]
    seg.write_bytes(seg.read_bytes()[: sizes[2] + 7])  # lose record 4 entirely, 3 in part
    with Storage.open(d) as st:
        assert st.recovered.hard_state == HardState(1, 7, 3)
        assert [e.index for e in st.recovered.entries] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("how", ["garbage", "flip", "zeros"])
def test_overwritten_last_bytes_are_a_torn_tail(tmp_path: Path, how: str) -> None:
    d = tmp_path / "n"
    sizes, expected = build_log(d)
    seg = seg_files(d)[0]
    full = seg.read_bytes()
    start = sizes[-2]
    rng = random.Random(7)
    for k in range(1, len(full) - start + 1):
        if how == "garbage":
            tail = bytes(rng.randrange(256) for _ in range(k))
        elif how == "zeros":
            tail = bytes(k)
        else:
            tail = bytes([full[-k] ^ 0x10]) + full[len(full) - k + 1 :]
        if tail == full[len(full) - k :]:
            continue
        seg.write_bytes(full[: len(full) - k] + tail)
        with Storage.open(d) as st:
            assert state(st) == expected, k
        assert seg.stat().st_size == start


def test_every_single_bit_flip_in_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    d = tmp_path / "n"
    sizes, expected = build_log(d)
    seg = seg_files(d)[0]
    full = bytearray(seg.read_bytes())
    for off in range(sizes[-2], len(full)):
        damaged = bytearray(full)
        damaged[off] ^= 1 << (off % 8)
        seg.write_bytes(damaged)
        with Storage.open(d) as st:
            assert state(st) == expected, off


@pytest.mark.parametrize("extra", [b"\x00" * 4096, b"\xa7", b"\xa7W" + b"\x00" * 30])
def test_junk_after_the_last_record_is_cut(tmp_path: Path, extra: bytes) -> None:
    d = tmp_path / "n"
    sizes, _ = build_log(d)
    seg = seg_files(d)[0]
    seg.write_bytes(seg.read_bytes() + extra)
    with Storage.open(d) as st:
        assert st.last_index == 9
    assert seg.stat().st_size == sizes[-1]


# ------------------------------------------------------------ mid-log damage


def test_every_bit_flip_before_the_tail_is_refused_with_file_and_offset(tmp_path: Path) -> None:
    d = tmp_path / "n"
    sizes, _ = build_log(d)
    seg = seg_files(d)[0]
    full = bytearray(seg.read_bytes())
    # records 2 and 3 (hard state, entries 6..8) are followed by valid data
    for rec_start, rec_end in ((sizes[1], sizes[2]), (sizes[2], sizes[3])):
        for off in range(rec_start, rec_end):
            damaged = bytearray(full)
            damaged[off] ^= 0x04
            seg.write_bytes(damaged)
            with pytest.raises(CorruptRecord) as info:
                Storage.open(d)
            assert info.value.path == str(seg) and info.value.offset == rec_start
            assert str(seg) in str(info.value) and f"offset {rec_start}" in str(info.value)
    seg.write_bytes(full)
    with Storage.open(d) as st:  # nothing was cut while refusing
        assert st.last_index == 9


def test_damaged_segment_header_is_refused_even_in_the_last_segment(tmp_path: Path) -> None:
    d = tmp_path / "n"
    build_log(d)
    seg = seg_files(d)[0]
    data = bytearray(seg.read_bytes())
    data[HEADER_SIZE + 1] ^= 0xFF
    seg.write_bytes(data)
    with pytest.raises(CorruptRecord, match="first record") as info:
        Storage.open(d)
    assert info.value.offset == 0


def test_a_zeroed_middle_block_is_refused_not_cut(tmp_path: Path) -> None:
    """A hole followed by valid records is never taken for a torn tail (see docs)."""
    d = tmp_path / "n"
    sizes, _ = build_log(d)
    seg = seg_files(d)[0]
    data = bytearray(seg.read_bytes())
    data[sizes[1] : sizes[2]] = bytes(sizes[2] - sizes[1])
    seg.write_bytes(data)
    with pytest.raises(CorruptRecord, match="valid record follows"):
        Storage.open(d)


# ------------------------------------------------------------------ segments


def fill_segments(d: Path, batches: int = 40) -> None:
    with Storage.open(d, segment_bytes=SMALL) as st:
        st.set_hard_state(HardState(1, 3, 0))
        for b in range(batches):
            st.append(ents(b * 10 + 1, b * 10 + 10, size=40))
            st.set_hard_state(HardState(1, 3, b * 10 + 5))
            st.sync()


def test_segments_roll_over_and_recover(tmp_path: Path) -> None:
    d = tmp_path / "n"
    fill_segments(d)
    files = seg_files(d)
    assert len(files) > 3
    assert [f.name[:16] for f in files] == [f"{i:016x}" for i in range(1, len(files) + 1)]
    assert all(f.stat().st_size <= SMALL for f in files)
    with Storage.open(d, segment_bytes=SMALL) as st:
        assert [e.index for e in st.recovered.entries] == list(range(1, 401))
        assert st.recovered.hard_state == HardState(1, 3, 395)
        infos = st.segments
        assert [i.path for i in infos] == files
        # a segment's name carries the next index expected when it was opened
        for info in infos[1:]:
            assert info.first_index == int(info.path.name[17:33], 16)
            assert info.first_index % 10 == 1
        assert infos[-2].max_index >= infos[-1].first_index - 1


def test_a_big_batch_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    d = tmp_path / "n"
    with Storage.open(d, segment_bytes=SMALL) as st:
        st.append(ents(1, 2))
        st.sync()
        st.append(ents(3, 300, size=100))  # ~30 KB in one record
        st.append(ents(301, 301))
        st.sync()
    files = seg_files(d)
    assert len(files) == 3 and files[1].stat().st_size > SMALL
    with Storage.open(d, segment_bytes=SMALL) as st:
        assert st.last_index == 301


def test_damage_in_a_segment_that_is_not_the_last_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    fill_segments(d)
    first = seg_files(d)[0]
    data = first.read_bytes()
    first.write_bytes(data[:-3])  # even a short tail is corruption there
    with pytest.raises(CorruptRecord, match="not the last") as info:
        Storage.open(d, segment_bytes=SMALL)
    assert info.value.path == str(first)


def test_torn_tail_of_the_last_of_several_segments(tmp_path: Path) -> None:
    d = tmp_path / "n"
    fill_segments(d)
    last = seg_files(d)[-1]
    last.write_bytes(last.read_bytes()[:-1])
    with Storage.open(d, segment_bytes=SMALL) as st:
        assert st.last_index == 400  # the last batch precedes the cut record...
        assert st.recovered.hard_state.commit == 385  # ...its hard state, which is lost


def test_a_missing_segment_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    fill_segments(d)
    seg_files(d)[1].unlink()
    with pytest.raises(CorruptLog, match="0000000000000002 is missing"):
        Storage.open(d, segment_bytes=SMALL)


def test_a_segment_from_another_directory_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    build_log(a)
    build_log(b)
    foreign = seg_files(b)[0].read_bytes()
    (a / "wal" / segment_name(2, 10)).write_bytes(foreign)
    with pytest.raises(CorruptRecord) as info:
        Storage.open(a)
    assert info.value.offset == 0 and segment_name(2, 10) in info.value.path


def test_a_renamed_segment_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    fill_segments(d)
    files = seg_files(d)
    files[-1].unlink()
    files[0].rename(files[-1])  # content says seq 1, name says seq N
    files[0].write_bytes(b"")  # keep the sequence free of holes
    with pytest.raises(CorruptRecord):
        Storage.open(d, segment_bytes=SMALL)


def test_no_segment_at_all_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "n"
    build_log(d)
    seg_files(d)[0].unlink()
    with pytest.raises(CorruptLog, match="no WAL segment"):
        Storage.open(d)


def test_foreign_names_in_wal_are_ignored_and_tmp_leftovers_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "n"
    build_log(d)
    (d / "wal" / "notes.txt").write_text("operator notes")
    (d / "wal" / "0000000000000001-0000000000000001.wal~").write_bytes(b"editor backup")
    (d / "wal" / "sub").mkdir()
    tmp = d / "wal" / (segment_name(2, 10) + ".tmp")
    tmp.write_bytes(b"half a segment")
    with caplog.at_level(logging.WARNING), Storage.open(d) as st:
        assert st.last_index == 9
    assert not tmp.exists() and (d / "wal" / "notes.txt").exists()
    assert "ignoring" in caplog.text and "notes.txt" in caplog.text

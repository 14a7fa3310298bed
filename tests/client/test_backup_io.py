"""The file-system driver: file and directory backups, safe and all-or-nothing restores."""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from client.backup_format import (
    HEADER_SIZE,
    RECORD_OVERHEAD,
    ContentType,
    Encryptor,
    read_header,
)
from client.backup_io import IO_BLOCK, backup, backup_directory, backup_file, restore
from client.backup_key import BackupKey
from client.errors import (
    BackupError,
    ChunkAuthenticationError,
    HeaderError,
    RestoreError,
    TargetExists,
    TrailingData,
    TruncatedBackup,
    UnsafeArchiveMember,
    WrongKey,
)

CS = 64
KEY = BackupKey(bytes(range(32)))
OTHER_KEY = BackupKey(bytes(range(1, 33)))


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.bin").write_bytes(data_of(5 * CS + 3))
    (root / "empty").write_bytes(b"")
    (root / "sub" / "notes.txt").write_text("hello\n")
    (root / "sub" / "deeper" / "big.bin").write_bytes(data_of(3 * IO_BLOCK // 2, seed=1))
    (root / "caf\u00e9 \u2603.txt").write_text("unicode name\n")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    os.symlink("sub/notes.txt", root / "link-inside")
    os.symlink("deeper", root / "sub" / "dir-link")
    os.link(root / "a.bin", root / "hard-link")


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str, bool]]:
    """Relative path -> (kind, content or link target, executable?)."""
    out: dict[str, tuple[str, bytes | str, bool]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), False)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "", False)
            else:
                out[rel] = ("file", path.read_bytes(), bool(st.st_mode & stat.S_IXUSR))
    return out


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 7 * CS, IO_BLOCK + 5])
def test_file_round_trip(tmp_path: Path, size: int) -> None:
    src = tmp_path / "chat.db"
    data = data_of(size)
    src.write_bytes(data)
    dest = tmp_path / "store" / "chat.vbk"
    dest.parent.mkdir()
    info = backup_file(KEY, src, dest, chunk_size=CS)
    assert listing(dest.parent) == ["chat.vbk"]
    assert info.path == dest
    assert info.content is ContentType.FILE
    assert info.key_id == KEY.key_id
    assert info.plaintext_bytes == size
    assert info.backup_bytes == dest.stat().st_size
    assert info.chunks == size // CS + 1
    assert read_header(dest.read_bytes()).file_id == info.file_id
    out = tmp_path / "restored.db"
    rinfo = restore(KEY, dest, out)
    assert out.read_bytes() == data
    assert rinfo.path == out
    assert rinfo.content is ContentType.FILE
    assert rinfo.file_id == info.file_id
    assert rinfo.plaintext_bytes == size
    assert listing(tmp_path) == ["chat.db", "restored.db", "store"]


def test_file_round_trip_default_chunk_size(tmp_path: Path) -> None:
    data = data_of(2 * IO_BLOCK + 123)
    (tmp_path / "src").write_bytes(data)
    backup_file(KEY, tmp_path / "src", tmp_path / "b.vbk")
    restore(KEY, tmp_path / "b.vbk", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


def test_backup_and_restore_are_private(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x")
    backup_file(KEY, tmp_path / "src", tmp_path / "b.vbk")
    restore(KEY, tmp_path / "b.vbk", tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "b.vbk").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o600


# --- directories ----------------------------------------------------------------------------


def test_directory_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    store = tmp_path / "store"
    store.mkdir()
    info = backup(KEY, src, store, chunk_size=CS)
    assert info.content is ContentType.TAR
    assert info.path == store / "src.vbk"
    assert listing(store) == ["src.vbk"]
    out = tmp_path / "out"
    rinfo = restore(KEY, info.path, out)
    assert rinfo.content is ContentType.TAR
    assert rinfo.plaintext_bytes == info.plaintext_bytes
    assert snapshot(out) == snapshot(src)
    assert (out / "hard-link").stat().st_ino == (out / "a.bin").stat().st_ino
    assert listing(tmp_path) == ["out", "src", "store"]


def test_empty_directory_round_trip(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    backup_directory(KEY, tmp_path / "src", tmp_path / "b.vbk")
    restore(KEY, tmp_path / "b.vbk", tmp_path / "out")
    assert listing(tmp_path / "out") == []


def test_a_link_to_a_directory_backs_up_the_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f.txt").write_text("inside")
    os.symlink("real", tmp_path / "alias")
    backup_directory(KEY, tmp_path / "alias", tmp_path / "b.vbk")
    restore(KEY, tmp_path / "b.vbk", tmp_path / "out")
    assert (tmp_path / "out" / "f.txt").read_text() == "inside"


def test_backup_picks_file_or_directory_and_names_it(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "d").mkdir()
    store = tmp_path / "store"
    store.mkdir()
    assert backup(KEY, tmp_path / "f.txt", store).content is ContentType.FILE
    assert backup(KEY, tmp_path / "d", store).content is ContentType.TAR
    assert backup(KEY, tmp_path / "d", store, name="custom").path == store / "custom"
    assert listing(store) == ["custom", "d.vbk", "f.txt.vbk"]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_backup_refuses_bad_names(tmp_path: Path, name: str) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="invalid backup name"):
        backup(KEY, tmp_path / "f", tmp_path, name=name)


def test_backup_never_overwrites_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("new")
    dest = tmp_path / "f.vbk"
    dest.write_bytes(b"old backup")
    with pytest.raises(TargetExists):
        backup(KEY, tmp_path / "f", tmp_path)
    assert dest.read_bytes() == b"old backup"
    assert listing(tmp_path) == ["f", "f.vbk"]
    backup(KEY, tmp_path / "f", tmp_path, overwrite=True)
    restore(KEY, dest, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "new"


def test_failed_backup_leaves_the_store_untouched(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(FileNotFoundError):
        backup_file(KEY, tmp_path / "missing", store / "m.vbk")
    with pytest.raises(NotADirectoryError):
        backup_directory(KEY, store / "nothing", store / "n.vbk")
    assert listing(store) == []


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda root: os.symlink("/etc/passwd", root / "abs-link"),
        lambda root: os.symlink("../../outside", root / "sub" / "escaping-link"),
        lambda root: os.mkfifo(root / "fifo"),
    ],
    ids=["absolute-symlink", "escaping-symlink", "fifo"],
)
def test_unrestorable_entries_are_refused_at_backup_time(
    tmp_path: Path, make_bad: Callable[[Path], None]
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "ok.txt").write_text("fine")
    make_bad(src)
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(UnsafeArchiveMember) as info:
        backup(KEY, src, store, chunk_size=CS)
    assert "refused" in str(info.value)
    assert listing(store) == []


# --- restore: refusals and all-or-nothing -------------------------------------------------------


@pytest.fixture
def file_backup(tmp_path: Path) -> Path:
    (tmp_path / "src.bin").write_bytes(data_of(20 * CS + 7))
    return backup_file(KEY, tmp_path / "src.bin", tmp_path / "file.vbk", chunk_size=CS).path


@pytest.fixture
def dir_backup(tmp_path: Path) -> Path:
    src = tmp_path / "tree"
    src.mkdir()
    make_tree(src)
    return backup_directory(KEY, src, tmp_path / "tree.vbk", chunk_size=CS).path


def test_restore_never_overwrites(tmp_path: Path, file_backup: Path, dir_backup: Path) -> None:
    (tmp_path / "there").write_text("keep me")
    (tmp_path / "there-dir").mkdir()
    for backup_path in (file_backup, dir_backup):
        for target in ("there", "there-dir"):
            with pytest.raises(TargetExists):
                restore(KEY, backup_path, tmp_path / target)
    assert (tmp_path / "there").read_text() == "keep me"
    assert listing(tmp_path / "there-dir") == []


def test_restore_into_a_missing_directory(tmp_path: Path, file_backup: Path) -> None:
    with pytest.raises(RestoreError, match="not a directory"):
        restore(KEY, file_backup, tmp_path / "no" / "such" / "out")


def damage_truncate_mid_last(blob: bytes) -> bytes:
    return blob[:-5]


def damage_truncate_at_boundary(blob: bytes) -> bytes:
    # Drop the whole final record: the cut falls exactly on a chunk boundary.
    pos = HEADER_SIZE
    while True:
        length = int.from_bytes(blob[pos : pos + 4], "big")
        if length < CS:
            return blob[:pos]
        pos += length + RECORD_OVERHEAD


def damage_flip_last(blob: bytes) -> bytes:
    out = bytearray(blob)
    out[-3] ^= 0x10
    return bytes(out)


def damage_flip_first(blob: bytes) -> bytes:
    out = bytearray(blob)
    out[HEADER_SIZE + 10] ^= 0x01
    return bytes(out)


def damage_extend(blob: bytes) -> bytes:
    return blob + b"\x00" * 30


DAMAGES: list[tuple[Callable[[bytes], bytes], type[BackupError]]] = [
    (damage_truncate_mid_last, TruncatedBackup),
    (damage_truncate_at_boundary, TruncatedBackup),
    (damage_flip_last, ChunkAuthenticationError),
    (damage_flip_first, ChunkAuthenticationError),
    (damage_extend, TrailingData),
]


@pytest.mark.parametrize(("damage", "error"), DAMAGES, ids=lambda d: getattr(d, "__name__", ""))
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_failed_restore_leaves_nothing(
    tmp_path: Path,
    file_backup: Path,
    dir_backup: Path,
    damage: Callable[[bytes], bytes],
    error: type[BackupError],
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = file_backup if kind == "file" else dir_backup
    bad = tmp_path / "damaged.vbk"
    bad.write_bytes(damage(good.read_bytes()))
    out_parent = tmp_path / "restore-here"
    out_parent.mkdir()
    removed: list[list[str]] = []
    real_rmtree = shutil.rmtree

    def spy_rmtree(path: str | os.PathLike[str], ignore_errors: bool = False) -> None:
        removed.append(sorted(os.listdir(path)))
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", spy_rmtree)
    with pytest.raises(error):
        restore(KEY, bad, out_parent / "out")
    assert listing(out_parent) == []
    if kind == "dir" and damage in (damage_flip_last, damage_truncate_mid_last):
        # The archive had been fully extracted (the damage is in the final chunk, which
        # holds only tar padding) and was still thrown away.
        assert removed
        assert "a.bin" in removed[0]


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_wrong_key_restore_leaves_nothing(
    tmp_path: Path, file_backup: Path, dir_backup: Path, kind: str
) -> None:
    out_parent = tmp_path / "restore-here"
    out_parent.mkdir()
    with pytest.raises(WrongKey):
        restore(OTHER_KEY, file_backup if kind == "file" else dir_backup, out_parent / "o")
    assert listing(out_parent) == []


@pytest.mark.parametrize("content", [b"", b"VAULTDBK", b"not a backup at all" * 10])
def test_restore_of_something_else(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.vbk").write_bytes(content)
    with pytest.raises(HeaderError):
        restore(KEY, tmp_path / "x.vbk", tmp_path / "out")
    assert listing(tmp_path) == ["x.vbk"]


def encrypted_archive(tmp_path: Path, build: Callable[[tarfile.TarFile], None]) -> Path:
    """An authentic backup (made with the right key) of a hand-built tar archive."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    enc = Encryptor(KEY, rng=os.urandom, chunk_size=CS, content=ContentType.TAR)
    path = tmp_path / "crafted.vbk"
    path.write_bytes(bytes(enc.feed(raw.getvalue())) + bytes(enc.finish()))
    return path


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"pwned") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def add_device(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    tar.addfile(info)


def add_chain(tar: tarfile.TarFile) -> None:
    add_link(tar, "l", ".", tarfile.SYMTYPE)
    add_link(tar, "l2", "l/..", tarfile.SYMTYPE)
    add_file(tar, "l2/evil")


MALICIOUS: dict[str, Callable[[tarfile.TarFile], None]] = {
    "dotdot": lambda t: add_file(t, "../evil"),
    "nested-dotdot": lambda t: add_file(t, "ok/../../evil"),
    "abs-symlink": lambda t: add_link(t, "l", "/etc/passwd", tarfile.SYMTYPE),
    "escaping-symlink": lambda t: add_link(t, "l", "../evil", tarfile.SYMTYPE),
    "escaping-hardlink": lambda t: add_link(t, "l", "../evil", tarfile.LNKTYPE),
    "write-through-symlink": lambda t: add_chain(t),
    "device": lambda t: add_device(t, "dev"),
}


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_archive_is_refused_and_leaves_nothing(tmp_path: Path, name: str) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "before.txt").write_text("x")

    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "ok/a")
        MALICIOUS[name](tar)

    crafted = encrypted_archive(tmp_path, build)
    before = listing(tmp_path)
    with pytest.raises(UnsafeArchiveMember) as info:
        restore(KEY, crafted, tmp_path / "out")
    assert "refused" in str(info.value)
    assert listing(tmp_path) == before
    assert not (tmp_path / "evil").exists()


def test_absolute_member_names_land_inside_the_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    crafted = encrypted_archive(tmp_path, lambda tar: add_file(tar, str(outside)))
    restore(KEY, crafted, tmp_path / "out")
    assert not outside.exists()
    inside = tmp_path / "out" / str(outside).lstrip("/")
    assert inside.read_bytes() == b"pwned"


def test_tar_backup_with_a_malformed_archive(tmp_path: Path) -> None:
    enc = Encryptor(KEY, rng=os.urandom, chunk_size=CS, content=ContentType.TAR)
    path = tmp_path / "junk.vbk"
    path.write_bytes(bytes(enc.feed(data_of(3000))) + bytes(enc.finish()))
    with pytest.raises(RestoreError, match="malformed"):
        restore(KEY, path, tmp_path / "out")
    assert listing(tmp_path) == ["junk.vbk"]

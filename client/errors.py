"""Typed errors raised by the ``client`` package.

Everything the client library raises on purpose is a :class:`ClientError`, so a caller
handling untrusted input (typed-in keys, backup files from a cloud store, vault blobs) can
catch one base class. The subclasses say *what* went wrong and, for backup streams, *where*:

* :class:`InvalidKeyMaterial` -- raw key bytes of the wrong length.
* :class:`KeyParseError` and :class:`KeyCheckMismatch` -- a typed-in 64-digit key is
  malformed or has a typo.
* :class:`BackupError` and its subclasses -- a backup stream is not one we can decrypt:
  :class:`HeaderError` (not a backup, altered header), :class:`UnsupportedVersion`,
  :class:`WrongKey` (made under another key), and the :class:`BackupIntegrityError` family
  that names the chunk: :class:`ChunkAuthenticationError`, :class:`TruncatedBackup`,
  :class:`TrailingData`.
* :class:`RestoreError` -- the file-system side of a restore (target exists, unsafe archive
  member, unsupported file type at backup time).
* :class:`KeyWrapError` and its subclasses -- a wrapped backup key cannot be opened
  (:class:`WrappedKeyFormatError`, :class:`KeyUnwrapError`) or the export_key given is
  not 64 bytes (:class:`InvalidExportKey`).
* :class:`UsageError` -- the library was called out of order (feeding after ``finish``).
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class of every error raised on purpose by the ``client`` package."""


class UsageError(ClientError, RuntimeError):
    """An API was called in a state that does not allow it (a programming error)."""


# --- the 64-digit key ------------------------------------------------------------------


class InvalidKeyMaterial(ClientError, ValueError):
    """Raw key bytes (or an RNG's output) are not exactly 32 bytes."""


class KeyParseError(ClientError, ValueError):
    """Typed-in key text is malformed: wrong characters or wrong number of digits.

    ``position`` is the 0-based index in the text of the offending character, when there is
    one such character.
    """

    def __init__(self, message: str, *, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class KeyCheckMismatch(KeyParseError):
    """The digits are well formed but do not match their check digits: there is a typo.

    ``suspect_group`` is the 1-based group of four digits (1..16 for the key, 17 for the
    check digits) that most likely holds the typo, when a single error explains the
    mismatch; ``None`` when it cannot be told.
    """

    def __init__(self, message: str, *, suspect_group: int | None) -> None:
        super().__init__(message)
        self.suspect_group = suspect_group


# --- the backup format -----------------------------------------------------------------


class BackupError(ClientError):
    """A backup stream cannot be decrypted; nothing unverified was released."""


class HeaderError(BackupError):
    """The header is missing, truncated, not ours, or has been altered."""


class UnsupportedVersion(HeaderError):
    """The header is ours but names a format version this build cannot read."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"backup format version {version} is not supported (this build reads version 1)"
        )
        self.version = version


class WrongKey(BackupError):
    """The backup was made under a different backup key (its key id does not match)."""

    def __init__(self, *, expected_key_id: bytes, found_key_id: bytes) -> None:
        super().__init__(
            "wrong backup key: this backup was made under key id "
            f"{found_key_id.hex()}, but the key given has id {expected_key_id.hex()}"
        )
        self.expected_key_id = expected_key_id
        self.found_key_id = found_key_id


class BackupIntegrityError(BackupError):
    """The chunk stream is damaged; ``index`` is the 0-based chunk where it was noticed."""

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


class ChunkAuthenticationError(BackupIntegrityError):
    """Chunk ``index`` failed authentication: altered, reordered, or from another backup.

    ``final`` is true when the failing chunk was presented as the last one of the stream; a
    last chunk that fails may also have been cut short or extended, which no cipher can tell
    apart from an alteration.
    """

    def __init__(self, *, index: int, final: bool, detail: str = "") -> None:
        which = f"chunk {index} (the last one)" if final else f"chunk {index}"
        reason = detail or (
            "it was altered, cut short or extended"
            if final
            else "it was altered, moved, or taken from another backup"
        )
        super().__init__(f"{which} failed authentication: {reason}", index=index)
        self.final = final


class TruncatedBackup(BackupIntegrityError):
    """The stream ended before its final chunk: chunk ``index`` is missing or cut short."""


class TrailingData(BackupIntegrityError):
    """Bytes follow the final chunk (chunk ``index``); ``extra`` of them were seen."""

    def __init__(self, *, index: int, extra: int) -> None:
        super().__init__(
            f"{extra} unexpected byte(s) after the final chunk (chunk {index}): "
            "the backup was extended or two backups were concatenated",
            index=index,
        )
        self.extra = extra


# --- the file-system driver ------------------------------------------------------------


class RestoreError(ClientError):
    """A backup or restore could not be carried out on the file system."""


class TargetExists(RestoreError, FileExistsError):
    """The restore target already exists; restore never overwrites."""


class UnsafeArchiveMember(RestoreError):
    """An archive member would escape the restore directory or is not a plain file/dir/link.

    Raised at restore time by the tar data filter, and at backup time for entries that the
    restore would refuse (so that every backup made is restorable).
    """

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"archive member {member!r} is refused: {reason}")
        self.member = member
        self.reason = reason


# --- key wrapping ----------------------------------------------------------------------


class KeyWrapError(ClientError):
    """A wrapped backup key could not be produced or opened."""


class InvalidExportKey(KeyWrapError, ValueError):
    """The export_key given is not the 64 bytes OPAQUE produces."""


class WrappedKeyFormatError(KeyWrapError):
    """The wrapped-key blob is malformed (length, magic) or of an unknown version."""


class KeyUnwrapError(KeyWrapError):
    """The blob did not authenticate: wrong export_key (wrong password), wrong context,
    or an altered blob -- indistinguishable by design."""

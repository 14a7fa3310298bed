"""The interim replicated state machine: a key-value store with counters.

Keys and values are byte strings.  Commands are msgpack arrays
``["put", key, value]``, ``["get", key]``, ``["incr", key, delta]`` and
``["cas", key, expected, new]`` (``expected``/``new`` may be nil: "absent" and
"delete").  A counter is a value holding an ASCII decimal integer; ``incr``
of an absent key starts from 0.

:meth:`KVStore.apply` is deterministic and total: every node applying the same
log computes the same state and the same results, and a command that cannot
be decoded or executed yields a :class:`Failed` result (the same on every
node) instead of raising.  The vault state machine replaces this one later;
it implements :class:`raft.statemachine.StateMachine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack

from .errors import CommandError, CorruptState

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "Cas",
    "CasResult",
    "Command",
    "Failed",
    "Get",
    "Incr",
    "KVStore",
    "Put",
    "Result",
    "command_from_wire",
    "decode_command",
    "encode_command",
    "encode_put",
]

MAX_KEY_BYTES: Final = 4096
MAX_VALUE_BYTES: Final = 1 << 20
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_SNAPSHOT_VERSION: Final = 1
# One packer, reused: msgpack.packb builds a Packer per call, which was most of
# the cost of encoding a command.  Safe to share between threads under the GIL:
# pack() of plain values runs in C without releasing it or calling back into
# Python, and it resets itself if packing fails.
_pack: Final = msgpack.Packer(use_bin_type=True).pack


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes


@dataclass(frozen=True, slots=True)
class Incr:
    key: bytes
    delta: int = 1


@dataclass(frozen=True, slots=True)
class Cas:
    """Set ``key`` to ``new`` (None deletes it) if its value is ``expected`` (None: absent)."""

    key: bytes
    expected: bytes | None
    new: bytes | None


Command = Put | Get | Incr | Cas


@dataclass(frozen=True, slots=True)
class CasResult:
    swapped: bool
    current: bytes | None


@dataclass(frozen=True, slots=True)
class Failed:
    """A command that was committed but could not be executed (the same on every node)."""

    reason: str


Result = bytes | int | CasResult | Failed | None
"""put -> None; get -> the value or None; incr -> the new count; cas -> CasResult."""


def _check_key(key: object) -> bytes:
    if type(key) is not bytes:
        raise CommandError("a key must be bytes")
    if not 0 < len(key) <= MAX_KEY_BYTES:
        raise CommandError(f"a key must hold 1..{MAX_KEY_BYTES} bytes")
    return key


def _check_value(value: object, *, nullable: bool = False) -> bytes | None:
    if value is None and nullable:
        return None
    if type(value) is not bytes:
        raise CommandError("a value must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise CommandError(f"a value must hold at most {MAX_VALUE_BYTES} bytes")
    return value


def _check_delta(delta: object) -> int:
    if type(delta) is not int or not _INT64_MIN <= delta <= _INT64_MAX:
        raise CommandError("a delta must be a 64-bit signed integer")
    return delta


def encode_command(cmd: Command) -> bytes:
    """The log-entry form of ``cmd``.  Raises CommandError for values out of bounds."""
    wire: list[Any]
    if isinstance(cmd, Put):
        wire = ["put", _check_key(cmd.key), _check_value(cmd.value)]
    elif isinstance(cmd, Get):
        wire = ["get", _check_key(cmd.key)]
    elif isinstance(cmd, Incr):
        wire = ["incr", _check_key(cmd.key), _check_delta(cmd.delta)]
    elif isinstance(cmd, Cas):
        wire = [
            "cas",
            _check_key(cmd.key),
            _check_value(cmd.expected, nullable=True),
            _check_value(cmd.new, nullable=True),
        ]
    else:
        raise CommandError(f"not a command: {type(cmd).__name__}")
    packed: bytes = _pack(wire)
    return packed


def encode_put(key: object, value: object) -> bytes:
    """``encode_command(Put(key, value))`` without building the Put (the write
    hot path).  Raises CommandError for a key or value out of bounds."""
    packed: bytes = _pack(["put", _check_key(key), _check_value(value)])
    return packed


def decode_command(data: bytes) -> Command:
    """Parse a log entry's payload.  Raises CommandError for anything malformed."""
    try:
        wire = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
        raise CommandError(f"not msgpack: {exc}") from None
    return command_from_wire(wire)


_ARITY: Final = {"put": 2, "get": 1, "incr": 2, "cas": 3}


def command_from_wire(wire: object) -> Command:
    """Validate one command as msgpack decodes :func:`encode_command`'s bytes
    (an array starting with the command's name).  Raises CommandError."""
    if type(wire) is not list or not wire or type(wire[0]) is not str:
        raise CommandError("a command must be an array starting with its name")
    op = wire[0]
    arity = _ARITY.get(op)
    if arity is None:
        raise CommandError(f"unknown command {op[:32]!r}")
    if len(wire) != arity + 1:
        raise CommandError(f"{op} takes {arity} arguments, got {len(wire) - 1}")
    key = _check_key(wire[1])
    if op == "put":
        value = _check_value(wire[2])
        assert value is not None
        return Put(key, value)
    if op == "get":
        return Get(key)
    if op == "incr":
        return Incr(key, _check_delta(wire[2]))
    return Cas(key, _check_value(wire[2], nullable=True), _check_value(wire[3], nullable=True))


def _parse_counter(value: bytes | None) -> int | None:
    if value is None:
        return 0
    text = value[1:] if value[:1] == b"-" else value
    if not text or not text.isdigit() or len(value) > 20:
        return None
    return int(value)


class KVStore:
    """The key-value state machine.  ``applied_index`` is the last log index applied."""

    __slots__ = ("_data", "applied_index")

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self.applied_index = 0

    def __len__(self) -> int:
        return len(self._data)

    def apply(self, index: int, data: bytes) -> Result:
        """Apply the command committed at log ``index`` and return its result.

        Indexes must increase (they need not be contiguous: no-ops and
        membership changes take indexes this machine never sees).  Never raises
        for a bad command: it yields :class:`Failed`.  Raises CommandError only
        if ``index`` does not exceed ``applied_index`` (a driver bug, not a
        property of the log)."""
        if index <= self.applied_index:
            raise CommandError(f"entry {index} applied after {self.applied_index}")
        self.applied_index = index
        try:
            cmd = decode_command(data)
        except CommandError as exc:
            return Failed(str(exc))
        return self.execute(cmd)

    def apply_batch(self, index: int, commands: list[Any]) -> list[Result]:
        """Apply several commands committed together in the entry at log ``index``,
        in order; one result per command (as :meth:`apply` would give each).

        ``commands`` holds the commands as msgpack decoded them (what
        :func:`command_from_wire` takes): a batch entry is decoded in one call,
        not one per command."""
        if index <= self.applied_index:
            raise CommandError(f"entry {index} applied after {self.applied_index}")
        self.applied_index = index
        results: list[Result] = []
        append = results.append
        data = self._data
        for wire in commands:
            # Puts dominate write batches: validate and store them without
            # building a Put; everything else takes the general path.
            if (
                type(wire) is list
                and len(wire) == 3
                and wire[0] == "put"
                and type(key := wire[1]) is bytes
                and 0 < len(key) <= MAX_KEY_BYTES
                and type(value := wire[2]) is bytes
                and len(value) <= MAX_VALUE_BYTES
            ):
                data[key] = value
                append(None)
                continue
            try:
                append(self.execute(command_from_wire(wire)))
            except CommandError as exc:
                append(Failed(str(exc)))
        return results

    def execute(self, cmd: Command) -> Result:
        """Run one decoded command (mutating for put/incr/cas)."""
        data = self._data
        if isinstance(cmd, Get):
            return data.get(cmd.key)
        if isinstance(cmd, Put):
            data[cmd.key] = cmd.value
            return None
        if isinstance(cmd, Incr):
            current = _parse_counter(data.get(cmd.key))
            if current is None:
                return Failed(f"key {cmd.key[:64]!r} does not hold an integer")
            new = current + cmd.delta
            if not _INT64_MIN <= new <= _INT64_MAX:
                return Failed("counter would overflow 64 bits")
            data[cmd.key] = str(new).encode()
            return new
        current_value = data.get(cmd.key)
        if current_value != cmd.expected:
            return CasResult(False, current_value)
        if cmd.new is None:
            data.pop(cmd.key, None)
        else:
            data[cmd.key] = cmd.new
        return CasResult(True, cmd.new)

    def query(self, query: bytes) -> Result:
        """Answer an encoded read-only command (``get``) from local state.  Raises
        CommandError for anything else."""
        cmd = decode_command(query)
        if not isinstance(cmd, Get):
            raise CommandError("only get can be served as a read")
        return self._data.get(cmd.key)

    def snapshot(self) -> bytes:
        """The whole state (and ``applied_index``) as msgpack; keys in sorted order so
        that equal states give equal bytes."""
        body = {
            "v": _SNAPSHOT_VERSION,
            "applied": self.applied_index,
            "kv": [[k, self._data[k]] for k in sorted(self._data)],
        }
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed

    def restore(self, index: int, data: bytes) -> None:
        """Replace the state with a snapshot taken once log ``index`` was applied.
        Raises CorruptState (leaving the state untouched) if ``data`` is not one
        :meth:`snapshot` produced or disagrees with ``index``."""
        try:
            body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
        except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
            raise CorruptState(f"snapshot is not msgpack: {exc}") from None
        if type(body) is not dict or set(body) != {"v", "applied", "kv"}:
            raise CorruptState("snapshot must be a map with keys v, applied, kv")
        if body["v"] != _SNAPSHOT_VERSION:
            raise CorruptState(f"unsupported snapshot version {body['v']!r:.20}")
        applied, pairs = body["applied"], body["kv"]
        if type(applied) is not int or applied < 0:
            raise CorruptState("snapshot applied index must be a non-negative integer")
        if applied > index:
            raise CorruptState(f"snapshot of index {applied} restored as index {index}")
        if type(pairs) is not list:
            raise CorruptState("snapshot kv must be an array")
        new: dict[bytes, bytes] = {}
        try:
            for pair in pairs:
                if type(pair) is not list or len(pair) != 2:
                    raise CorruptState("snapshot kv must hold [key, value] pairs")
                key = _check_key(pair[0])
                value = _check_value(pair[1])
                assert value is not None
                if key in new:
                    raise CorruptState(f"snapshot repeats key {key[:64]!r}")
                new[key] = value
        except CommandError as exc:
            raise CorruptState(f"snapshot holds a bad pair: {exc}") from None
        self._data = new
        self.applied_index = index

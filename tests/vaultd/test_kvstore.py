"""vaultd.kvstore: deterministic apply, typed failures, snapshot round trips."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultd.errors import CommandError, CorruptState
from vaultd.kvstore import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Cas,
    CasResult,
    Command,
    Failed,
    Get,
    Incr,
    KVStore,
    Put,
    decode_command,
    encode_command,
    encode_put,
)

keys = st.binary(min_size=1, max_size=8)
values = st.binary(max_size=16)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, keys, values),
    st.builds(Get, keys),
    st.builds(Incr, keys, st.integers(-(2**63), 2**63 - 1)),
    st.builds(Cas, keys, st.none() | values, st.none() | values),
)


def test_put_get_incr_cas() -> None:
    kv = KVStore()
    assert kv.apply(1, encode_command(Put(b"a", b"1"))) is None
    assert kv.apply(2, encode_command(Get(b"a"))) == b"1"
    assert kv.apply(3, encode_command(Get(b"missing"))) is None
    assert kv.apply(5, encode_command(Incr(b"n", 5))) == 5  # indexes may skip
    assert kv.apply(6, encode_command(Incr(b"n", -7))) == -2
    assert kv.apply(7, encode_command(Incr(b"a"))) == 2
    assert kv.apply(8, encode_command(Cas(b"a", b"1", b"x"))) == CasResult(False, b"2")
    assert kv.apply(9, encode_command(Cas(b"a", b"2", b"x"))) == CasResult(True, b"x")
    assert kv.apply(10, encode_command(Cas(b"new", None, b"y"))) == CasResult(True, b"y")
    assert kv.apply(11, encode_command(Cas(b"new", b"y", None))) == CasResult(True, None)
    assert kv.query(encode_command(Get(b"new"))) is None
    assert kv.query(encode_command(Get(b"n"))) == b"-2"
    assert kv.applied_index == 11


def test_bad_commands_fail_deterministically_without_raising() -> None:
    kv = KVStore()
    kv.apply(1, encode_command(Put(b"s", b"text")))
    bad = [
        b"\xc1",
        msgpack.packb({"op": "put"}),
        msgpack.packb([]),
        msgpack.packb(["drop", b"k"]),
        msgpack.packb(["put", b"k"]),
        msgpack.packb(["put", "k", b"v"]),
        msgpack.packb(["put", b"", b"v"]),
        msgpack.packb(["put", b"k" * (MAX_KEY_BYTES + 1), b"v"]),
        msgpack.packb(["incr", b"k", 1.5]),
        msgpack.packb(["incr", b"k", True]),
        msgpack.packb(["incr", b"k", 2**63]),
        msgpack.packb(["cas", b"k", "str", None]),
    ]
    for i, data in enumerate(bad, start=2):
        result = kv.apply(i, data)
        assert isinstance(result, Failed), data
    assert isinstance(kv.apply(100, encode_command(Incr(b"s"))), Failed)
    kv.apply(101, encode_command(Put(b"big", str(2**63 - 1).encode())))
    assert kv.apply(102, encode_command(Incr(b"big"))) == Failed("counter would overflow 64 bits")
    assert kv.applied_index == 102


def test_apply_refuses_going_backwards() -> None:
    kv = KVStore()
    kv.apply(5, encode_command(Put(b"a", b"")))
    with pytest.raises(CommandError):
        kv.apply(5, encode_command(Put(b"a", b"")))


def test_query_serves_gets_only() -> None:
    kv = KVStore()
    with pytest.raises(CommandError):
        kv.query(encode_command(Put(b"a", b"b")))
    with pytest.raises(CommandError):
        kv.query(b"junk")


def test_encode_refuses_out_of_bounds_values() -> None:
    with pytest.raises(CommandError):
        encode_command(Put(b"", b"v"))
    with pytest.raises(CommandError):
        encode_command(Put(b"k", b"v" * (MAX_VALUE_BYTES + 1)))
    with pytest.raises(CommandError):
        encode_command(Incr(b"k", 2**64))
    with pytest.raises(CommandError):
        encode_command("put")  # type: ignore[arg-type]


@given(commands)
def test_commands_round_trip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@given(st.binary(max_size=64))
def test_decode_raises_only_command_error(data: bytes) -> None:
    try:
        cmd = decode_command(data)
    except CommandError:
        return
    assert decode_command(encode_command(cmd)) == cmd


@given(st.lists(commands, max_size=40))
def test_replicas_agree_and_snapshots_restore(cmds: list[Command]) -> None:
    a, b = KVStore(), KVStore()
    results_a = [a.apply(i, encode_command(c)) for i, c in enumerate(cmds, start=1)]
    half = len(cmds) // 2
    results_b = [b.apply(i, encode_command(c)) for i, c in enumerate(cmds[:half], start=1)]
    c = KVStore()
    c.restore(half, b.snapshot())
    results_b += [c.apply(i, encode_command(x)) for i, x in enumerate(cmds[half:], start=half + 1)]
    assert results_a == results_b
    assert a.snapshot() == c.snapshot()
    assert c.applied_index == len(cmds)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 2, "applied": 0, "kv": []}),
        msgpack.packb({"v": 1, "applied": -1, "kv": []}),
        msgpack.packb({"v": 1, "applied": 9, "kv": []}),
        msgpack.packb({"v": 1, "applied": 0, "kv": {}}),
        msgpack.packb({"v": 1, "applied": 0, "kv": [[b"k"]]}),
        msgpack.packb({"v": 1, "applied": 0, "kv": [["k", b"v"]]}),
        msgpack.packb({"v": 1, "applied": 0, "kv": [[b"k", b"v"], [b"k", b"w"]]}),
        msgpack.packb({"v": 1, "applied": 0, "kv": [], "extra": 1}),
    ],
)
def test_restore_refuses_bad_snapshots_and_keeps_state(data: bytes) -> None:
    kv = KVStore()
    kv.apply(1, encode_command(Put(b"keep", b"me")))
    with pytest.raises(CorruptState):
        kv.restore(5, data)
    assert kv.query(encode_command(Get(b"keep"))) == b"me"
    assert kv.applied_index == 1


def wire(data: bytes) -> object:
    """A command as the batch decoder hands it to apply_batch."""
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)


@given(st.lists(commands, min_size=1, max_size=30))
def test_a_batch_applies_like_its_commands_one_by_one(cmds: list[Command]) -> None:
    one, batched = KVStore(), KVStore()
    singles = [one.apply(i, encode_command(c)) for i, c in enumerate(cmds, start=1)]
    results = batched.apply_batch(7, [wire(encode_command(c)) for c in cmds])
    assert results == singles
    assert batched.applied_index == 7
    assert {k: v for k, v in batched._data.items()} == one._data


# Near-misses of a put: the batch's fast path for puts must refuse exactly what
# the general path refuses, with the same result.
near_puts = st.lists(
    st.one_of(
        st.just("put"),
        st.sampled_from(["get", "incr", "cas", "PUT", ""]),
        st.binary(max_size=3),
        st.binary(min_size=MAX_KEY_BYTES, max_size=MAX_KEY_BYTES + 1),
        st.none(),
        st.integers(-3, 3),
        st.text(max_size=3),
    ),
    max_size=5,
)
odd_wires = st.one_of(
    near_puts, st.binary(max_size=4), st.integers(-(2**63), 2**64 - 1), st.none(), st.text()
)


@given(st.lists(st.one_of(commands.map(lambda c: wire(encode_command(c))), odd_wires), max_size=20))
def test_a_batch_of_anything_matches_applying_each_encoding(wires: list[object]) -> None:
    one, batched = KVStore(), KVStore()
    singles = [one.apply(i, msgpack.packb(w)) for i, w in enumerate(wires, start=1)]
    assert batched.apply_batch(len(wires) + 1, wires) == singles
    assert batched._data == one._data


def test_a_batch_fails_bad_commands_one_by_one() -> None:
    kv = KVStore()
    results = kv.apply_batch(
        3, [wire(encode_command(Put(b"a", b"1"))), b"junk", wire(encode_command(Get(b"a")))]
    )
    assert results[0] is None and isinstance(results[1], Failed) and results[2] == b"1"
    with pytest.raises(CommandError):
        kv.apply_batch(3, [])


@given(st.binary(max_size=MAX_KEY_BYTES + 2), st.binary(max_size=64))
def test_encode_put_matches_encode_command(key: bytes, value: bytes) -> None:
    try:
        expected = encode_command(Put(key, value))
    except CommandError:
        with pytest.raises(CommandError):
            encode_put(key, value)
        return
    assert encode_put(key, value) == expected
    with pytest.raises(CommandError):
        encode_put("text", value)

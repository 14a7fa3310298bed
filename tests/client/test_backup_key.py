"""BackupKey: generation, the 64-digit form, its check digits and the parser."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.backup_key import (
    CHECK_DIGITS,
    KEY_DIGITS,
    KEY_ID_SIZE,
    KEY_SIZE,
    BackupKey,
    parse_key,
)
from client.errors import ClientError, InvalidKeyMaterial, KeyCheckMismatch, KeyParseError

raw_keys = st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE)
HEX = "0123456789abcdef"


def gf_mul(a: int, b: int) -> int:
    """Bitwise GF(2^8) multiplication modulo 0x11d (independent of the module's tables)."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return r


def reference_check(raw: bytes) -> str:
    c0 = 0
    c1 = 0
    alpha_power = 1
    for b in raw:
        alpha_power = gf_mul(alpha_power, 2)
        c0 ^= b
        c1 ^= gf_mul(alpha_power, b)
    return f"{c0:02x}{c1:02x}"


def all_digits(key: BackupKey) -> str:
    return key.to_digits().replace(" ", "") + key.check_digits()


# --- generation and the raw form ---------------------------------------------------------


def test_generate_uses_the_injected_rng() -> None:
    rng = random.Random(7).randbytes
    expected = random.Random(7).randbytes(KEY_SIZE)
    assert BackupKey.generate(rng).to_bytes() == expected


def test_generate_default_rng_gives_distinct_keys() -> None:
    assert BackupKey.generate() != BackupKey.generate()


@pytest.mark.parametrize("size", [0, 1, 16, 31, 33, 64])
def test_raw_key_of_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(InvalidKeyMaterial, match=f"got {size}"):
        BackupKey(bytes(size))
    with pytest.raises(InvalidKeyMaterial):
        BackupKey.generate(lambda n: bytes(size))


def test_raw_key_accepts_bytes_like() -> None:
    raw = bytes(range(32))
    assert BackupKey(bytearray(raw)) == BackupKey(memoryview(raw)) == BackupKey(raw)


@settings(deadline=None)
@given(raw_keys)
def test_repr_and_str_never_show_the_key(raw: bytes) -> None:
    key = BackupKey(raw)
    digits = all_digits(key)
    for text in (
        repr(key),
        str(key),
        f"{key}",
        f"{key!s:>90}",
        repr([key]),
        repr({"k": key}),
    ):
        assert raw.hex() not in text
        assert key.to_digits() not in text
        # No run of 8 key digits appears either (not even part of the key).
        assert all(digits[i : i + 8] not in text for i in range(0, KEY_DIGITS - 8))
        assert key.key_id.hex() in text


@settings(deadline=None)
@given(raw_keys, raw_keys)
def test_equality_and_hash(a: bytes, b: bytes) -> None:
    ka, kb = BackupKey(a), BackupKey(b)
    assert ka == BackupKey(a)
    assert hash(ka) == hash(BackupKey(a))
    assert (ka == kb) == (a == b)
    assert ka != a  # a key never equals its raw bytes
    assert len({ka, BackupKey(a)}) == 1


@settings(deadline=None)
@given(raw_keys, raw_keys)
def test_key_id_is_deterministic_sized_and_distinct(a: bytes, b: bytes) -> None:
    ka = BackupKey(a)
    assert len(ka.key_id) == KEY_ID_SIZE
    assert ka.key_id == BackupKey(a).key_id
    assert ka.key_id not in a
    if a != b:
        assert ka.key_id != BackupKey(b).key_id


# --- the written form ----------------------------------------------------------------------


@settings(deadline=None)
@given(raw_keys)
def test_digits_layout(raw: bytes) -> None:
    key = BackupKey(raw)
    groups = key.to_digits().split(" ")
    assert len(groups) == 16
    assert all(len(g) == 4 and set(g) <= set(HEX) for g in groups)
    assert "".join(groups) == raw.hex()
    assert len(key.check_digits()) == CHECK_DIGITS
    assert key.to_text() == f"{key.to_digits()} - {key.check_digits()}"


@settings(deadline=None)
@given(raw_keys)
def test_check_digits_match_an_independent_computation(raw: bytes) -> None:
    assert BackupKey(raw).check_digits() == reference_check(raw)


def test_check_digits_known_answer() -> None:
    # XOR of 0..31 is 0; the weighted sum is computed by the bitwise reference above.
    key = BackupKey(bytes(range(32)))
    assert key.check_digits()[:2] == "00"
    assert key.check_digits() == reference_check(bytes(range(32)))


# --- parsing: accepted forms ---------------------------------------------------------------


@settings(deadline=None)
@given(raw_keys)
def test_round_trip_text(raw: bytes) -> None:
    key = BackupKey(raw)
    assert parse_key(key.to_text()) == key
    assert BackupKey.from_digits(key.to_text()) == key
    assert parse_key(key.to_digits(), key.check_digits()) == key


@settings(deadline=None)
@given(raw_keys, st.randoms(use_true_random=False))
def test_any_grouping_case_and_separators_are_accepted(raw: bytes, rnd: random.Random) -> None:
    key = BackupKey(raw)
    seps = [" ", "-", "  ", "\t", "\n", "\u00a0", "\u2013", "\u2014", "\u2212", " - ", ""]
    out = []
    for ch in all_digits(key):
        out.append(ch.upper() if rnd.random() < 0.5 else ch)
        if rnd.random() < 0.3:
            out.append(rnd.choice(seps))
    text = rnd.choice(seps) + "".join(out) + rnd.choice(seps)
    assert parse_key(text) == key


def test_no_separators_at_all() -> None:
    key = BackupKey(bytes(range(100, 132)))
    assert parse_key(all_digits(key)) == key
    assert parse_key(all_digits(key).upper()) == key


def test_check_may_be_given_separately_with_separators() -> None:
    key = BackupKey(bytes(range(32)))
    check = key.check_digits()
    assert parse_key(key.to_digits(), f" {check[:2]}-{check[2:].upper()} ") == key


# --- parsing: malformed input --------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 42, b"00" * 34, bytearray(68), ["0"] * 68])
def test_non_text_is_refused(value: object) -> None:
    with pytest.raises(KeyParseError, match="must be text"):
        parse_key(value)  # type: ignore[arg-type]


def test_non_text_check_is_refused() -> None:
    key = BackupKey(bytes(32))
    with pytest.raises(KeyParseError, match="check digits must be text"):
        parse_key(key.to_digits(), b"0000")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", " ", " - - ", "\n\t"])
def test_empty_input(text: str) -> None:
    with pytest.raises(KeyParseError, match="found 0 hex digits"):
        parse_key(text)


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("g", ""),
        ("z", ""),
        ("x", ""),
        (".", ""),
        (":", ""),
        ("_", ""),
        ("/", ""),
        ("O", "did you mean the digit 0"),
        ("o", "did you mean the digit 0"),
        ("l", "did you mean the digit 1"),
        ("I", "did you mean the digit 1"),
        ("\u0663", ""),  # Arabic-Indic three: a digit to str.isdigit, not a hex digit
        ("\uff21", ""),  # fullwidth A
        ("\u00e9", ""),
        ("\x00", ""),
    ],
)
@pytest.mark.parametrize("where", [0, 1, 5, 40, 70, 85, 86])
def test_bad_character_is_reported_with_its_position(bad: str, hint: str, where: int) -> None:
    text = BackupKey(bytes(range(32))).to_text()
    assert len(text) == 86
    broken = text[:where] + bad + text[where:]
    with pytest.raises(KeyParseError) as info:
        parse_key(broken)
    assert not isinstance(info.value, KeyCheckMismatch)
    assert info.value.position == where
    assert f"at position {where}" in str(info.value)
    assert hint in str(info.value)


def test_bad_character_in_separate_check() -> None:
    key = BackupKey(bytes(32))
    with pytest.raises(KeyParseError, match="position 2 of the check digits") as info:
        parse_key(key.to_digits(), "00g0")
    assert info.value.position == 2


def test_missing_check_digits_gets_its_own_message() -> None:
    key = BackupKey(bytes(range(32)))
    with pytest.raises(KeyParseError, match="not the 4 check digits"):
        parse_key(key.to_digits())


@pytest.mark.parametrize("count", [1, 4, 32, 63, 65, 66, 67, 69, 72, 128])
def test_wrong_number_of_digits(count: int) -> None:
    text = ("0123456789abcdef" * 9)[:count]
    with pytest.raises(KeyParseError, match=f"found {count} hex digits"):
        parse_key(text)


@pytest.mark.parametrize("count", [0, 63, 65, 68])
def test_wrong_number_of_key_digits_with_separate_check(count: int) -> None:
    with pytest.raises(KeyParseError, match=f"found {count} hex digits in the key"):
        parse_key("a" * count, "0000")


@pytest.mark.parametrize("check", ["", "0", "000", "00000", "00000000"])
def test_wrong_number_of_check_digits(check: str) -> None:
    key = BackupKey(bytes(32))
    digits = sum(c in HEX for c in check)
    with pytest.raises(KeyParseError, match=f"found {digits} check digits"):
        parse_key(key.to_digits(), check)


def test_errors_are_client_errors_and_value_errors() -> None:
    with pytest.raises(ClientError):
        parse_key("zz")
    with pytest.raises(ValueError):
        parse_key("zz")


# --- typos ---------------------------------------------------------------------------------


def rebuild(digits: str) -> str:
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def expected_group(position: int) -> int:
    return position // 4 + 1


@settings(max_examples=25, deadline=None)
@given(raw_keys)
def test_every_single_digit_typo_is_caught_and_located(raw: bytes) -> None:
    digits = all_digits(BackupKey(raw))
    for pos, wrong in itertools.product(range(len(digits)), HEX):
        if wrong == digits[pos]:
            continue
        typo = digits[:pos] + wrong + digits[pos + 1 :]
        with pytest.raises(KeyCheckMismatch) as info:
            parse_key(rebuild(typo))
        assert info.value.suspect_group == expected_group(pos)
        assert "typo" in str(info.value)


@settings(max_examples=25, deadline=None)
@given(raw_keys)
def test_every_swap_of_two_digits_is_caught(raw: bytes) -> None:
    digits = all_digits(BackupKey(raw))
    for i, j in itertools.combinations(range(len(digits)), 2):
        if digits[i] == digits[j]:
            continue
        swapped = list(digits)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        with pytest.raises(KeyCheckMismatch):
            parse_key("".join(swapped))


@settings(max_examples=300, deadline=None)
@given(
    raw_keys,
    st.integers(0, KEY_DIGITS + CHECK_DIGITS - 1),
    st.integers(0, KEY_DIGITS + CHECK_DIGITS - 1),
    st.sampled_from(HEX),
    st.sampled_from(HEX),
)
def test_any_two_wrong_digits_are_caught(raw: bytes, i: int, j: int, a: str, b: str) -> None:
    digits = list(all_digits(BackupKey(raw)))
    digits[i] = a
    digits[j] = b
    typo = "".join(digits)
    if typo == all_digits(BackupKey(raw)):
        assert parse_key(typo) == BackupKey(raw)
    else:
        with pytest.raises(KeyCheckMismatch):
            parse_key(typo)


def test_typo_message_points_at_the_group() -> None:
    key = BackupKey(bytes(range(32)))
    digits = all_digits(key)
    pos = 4 * 6 + 2  # third digit of group 7
    typo = digits[:pos] + ("0" if digits[pos] != "0" else "1") + digits[pos + 1 :]
    with pytest.raises(KeyCheckMismatch, match=r"group 7 \(digits 25-28\)"):
        parse_key(rebuild(typo))


def test_typo_in_check_digits_says_so() -> None:
    key = BackupKey(bytes(range(32)))
    check = key.check_digits()
    wrong = ("1" if check[0] == "0" else "0") + check[1:]
    with pytest.raises(KeyCheckMismatch, match="check digits themselves") as info:
        parse_key(key.to_digits(), wrong)
    assert info.value.suspect_group == 17

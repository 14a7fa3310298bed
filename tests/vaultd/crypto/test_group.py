"""ristretto255 wrapper: encodings, arithmetic, hash-to-group, and the libsodium backend."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultd.crypto import group
from vaultd.crypto.errors import CryptoError, InvalidEncoding, InvalidInput

REPO_ROOT = Path(__file__).resolve().parents[3]

# RFC 9496 §A.1: the encoding of the generator B.
GENERATOR = bytes.fromhex("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76")
ONE = (1).to_bytes(32, "little")
FIELD_PRIME = 2**255 - 19

# RFC 9380 Appendix K.3, expand_message_xmd(SHA-512).
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
XMD_VECTORS = [
    (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (
        b"",
        0x80,
        "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
        "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
        "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
        "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
    ),
    (
        b"abc",
        0x80,
        "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11"
        "bdd7732d8b38adb4a0edc26a0cef4bb45217135456e58fbca1703cd6032cb134"
        "7ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b48843"
        "1851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1",
    ),
]

# RFC 9496 §A.1: encodings of 0*B .. 15*B.
GENERATOR_MULTIPLES = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
    "da80862773358b466ffadfe0b3293ab3d9fd53c5ea6c955358f568322daf6a57",
    "e882b131016b52c1d3337080187cf768423efccbb517bb495ab812c4160ff44e",
    "f64746d3c92b13050ed8d80236a7f0007c3b3f962f5ba793d19a601ebb1df403",
    "44f53520926ec81fbd5a387845beb7df85a96a24ece18738bdcfa6a7822a176d",
    "903293d8f2287ebe10e2374dc1a53e0bc887e592699f02d077d5263cdd55601c",
    "02622ace8f7303a31cafc63f8fc48fdc16e1c8c8d234b2f0d6685282a9076031",
    "20706fd788b2720a1ed2a5dad4952b01f413bcf0e7564de8cdc816689e2db95f",
    "bce83f8ba5dd2fa572864c24ba1810f9522bc6004afe95877ac73241cafdab42",
    "e4549ee16b9aa03099ca208c67adafcafa4c3f3e4e5303de6026e3ca8ff84460",
    "aa52e000df2e16f55fb1032fc33bc42742dad6bd5a8fc0be0167436c5948501f",
    "46376b80f409b29dc2b5f6f0c52591990896e5716f41477cd30085ab7f10301e",
    "e0c418f7c8d9c4cdd7395b93ea124f3ad99021bb681dfc3302a9d99a2e53e64e",
]

# RFC 9496 §A.2: encodings every implementation must reject.
RFC9496_INVALID = [
    # non-canonical field encodings
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    # negative field elements
    "0100000000000000000000000000000000000000000000000000000000000000",
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "ed57ffd8c914fb201471d1c3d245ce3c746fcbe63a3679d51b6a516ebebe0e20",
    "c34c4e1826e5d403b78e246e88aa051c36ccf0aafebffe137d148a2bf9104562",
    "c940e5a4404157cfb1628b108db051a8d439e1a421394ec4ebccb9ec92a8ac78",
    "47cfc5497c53dc8e61c91d17fd626ffb1c49e2bca94eed052281b510b1117a24",
    "f1c6165d33367351b0da8f6e4511010c68174a03b6581212c71c0e1d026c3c72",
    "87260f7a2f12495118360f02c26a470f450dadf34a413d21042b43b9d93e1309",
    # non-square x^2
    "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "4eac077a713c57b4f4397629a4145982c661f48044dd3f96427d40b147d9742f",
    "de6a7b00deadc788eb6b6c8d20c0ae96c2f2019078fa604fee5b87d6e989ad7b",
    "bcab477be20861e01e4a0e295284146a510150d9817763caf1a6f4b422d67042",
    "2a292df7e32cababbd9de088d1d1abec9fc0440f637ed2fba145094dc14bea08",
    "f4a9e534fc0d216c44b218fa0c42d99635a0127ee2e53c712f70609649fdff22",
    "8268436f8c4126196cf64b3c7ddbda90746a378625f9813dd9b8457077256731",
    "2810e5cbc2cc4d4eece54f61c6f69758e289aa7ab440b3cbeaa21995c2f4232b",
    # negative xy value
    "3eb858e78f5a7254d8c9731174a94f76755fd3941c0ac93735c07ba14579630e",
    "a45fdc55c76448c049a1ab33f17023edfb2be3581e9c7aade8a6125215e04220",
    "d483fe813c6ba647ebbfd3ec41adca1c6130c2beeee9d9bf065c8d151c5f396e",
    "8a2e1d30050198c65a54483123960ccc38aef6848e1ec8f5f780e8523769ba32",
    "32888462f8b486c68ad7dd9610be5192bbeaf3b443951ac1a8118419d9fa097b",
    "227142501b9d4355ccba290404bde41575b037693cef1f438c47f8fbf35d1165",
    "5c37cc491da847cfeb9281d407efc41e15144c876e0170b499a96a22ed31e01e",
    "445425117cb8c90edcbc7c1cc0e74f747f2c1efa5630a967c64f287792a48a4b",
    # s = -1, which gives y = 0
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]

# RFC 9496 §A.3: the one-way map from 64 uniform bytes.
ONE_WAY_MAP = [
    (
        "5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c1"
        "4d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6",
        "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46",
    ),
    (
        "f116b34b8f17ceb56e8732a60d913dd10cce47a6d53bee9204be8b44f6678b27"
        "0102a56902e2488c46120e9276cfe54638286b9e4b3cdb470b542d46c2068d38",
        "f26e5b6f7d362d2d2a94c5d0e7602cb4773c95a2e5c31a64f133189fa76ed61b",
    ),
    (
        "8422e1bbdaab52938b81fd602effb6f89110e1e57208ad12d9ad767e2e25510c"
        "27140775f9337088b982d83d7fcf0b2fa1edffe51952cbe7365e95c86eaf325c",
        "006ccd2a9e6867e6a2c5cea83d3302cc9de128dd2a9a57dd8ee7b9d7ffe02826",
    ),
    (
        "ac22415129b61427bf464e17baee8db65940c233b98afce8d17c57beeb7876c2"
        "150d15af1cb1fb824bbd14955f2b57d08d388aab431a391cfc33d5bafb5dbbaf",
        "f8f0c87cf237953c5890aec3998169005dae3eca1fbb04548c635953c817f92a",
    ),
    (
        "165d697a1ef3d5cf3c38565beefcf88c0f282b8e7dbd28544c483432f1cec767"
        "5debea8ebb4e5fe7d6f6e5db15f15587ac4d4d4a1de7191e0c1ca6664abcc413",
        "ae81e7dedf20a497e10c304a765c1767a42d6e06029758d2d7e8ef7cc4c41179",
    ),
    (
        "a836e6c9a9ca9f1e8d486273ad56a78c70cf18f0ce10abb1c7172ddd605d7fd2"
        "979854f47ae1ccf204a33102095b4200e5befc0465accc263175485f0e17ea5c",
        "e2705652ff9f5e44d3e841bf1c251cf7dddb77d140870d1ab2ed64f1a9ce8628",
    ),
    (
        "2cdc11eaeb95daf01189417cdddbf95952993aa9cb9c640eb5058d09702c7462"
        "2c9965a697a3b345ec24ee56335b556e677b30e6f90ac77d781064f866a3c982",
        "80bd07262511cdde4863f8a7434cef696750681cb9510eea557088f76d9e5065",
    ),
]

scalars = st.integers(min_value=1, max_value=group.ORDER - 1).map(
    lambda n: n.to_bytes(32, "little")
)


@pytest.mark.parametrize(("msg", "length", "expected"), XMD_VECTORS)
def test_expand_message_xmd_matches_rfc9380(msg: bytes, length: int, expected: str) -> None:
    assert group.expand_message_xmd(msg, XMD_DST, length).hex() == expected


def test_expand_message_xmd_hashes_an_oversize_dst() -> None:
    long_dst = b"x" * 256
    short = hashlib.sha512(b"H2C-OVERSIZE-DST-" + long_dst).digest()
    assert group.expand_message_xmd(b"m", long_dst, 64) == group.expand_message_xmd(b"m", short, 64)


@pytest.mark.parametrize("length", [0, -1, 255 * 64 + 1, 70000])
def test_expand_message_xmd_refuses_impossible_lengths(length: int) -> None:
    with pytest.raises(InvalidInput):
        group.expand_message_xmd(b"", XMD_DST, length)


def test_generator_encoding_matches_rfc9496() -> None:
    assert group.scalar_mult_base(ONE) == GENERATOR
    assert group.deserialize_element(GENERATOR) == GENERATOR


@pytest.mark.parametrize("n", range(1, 16))
def test_generator_multiples_match_rfc9496(n: int) -> None:
    expected = bytes.fromhex(GENERATOR_MULTIPLES[n])
    assert group.scalar_mult_base(n.to_bytes(32, "little")) == expected
    assert group.scalar_mult(n.to_bytes(32, "little"), GENERATOR) == expected
    assert group.deserialize_element(expected) == expected


@pytest.mark.parametrize("encoding", RFC9496_INVALID)
def test_rfc9496_invalid_encodings_are_refused(encoding: str) -> None:
    with pytest.raises(InvalidEncoding):
        group.deserialize_element(bytes.fromhex(encoding))
    with pytest.raises(InvalidEncoding):
        group.scalar_mult(ONE, bytes.fromhex(encoding))


@pytest.mark.parametrize(("uniform", "expected"), ONE_WAY_MAP)
def test_one_way_map_matches_rfc9496(uniform: str, expected: str) -> None:
    assert group.element_from_uniform_bytes(bytes.fromhex(uniform)).hex() == expected


def test_one_way_map_needs_64_bytes() -> None:
    with pytest.raises(InvalidInput):
        group.element_from_uniform_bytes(bytes(63))


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_element_of_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(InvalidEncoding):
        group.deserialize_element(bytes([1]) * length)


def test_identity_element_is_refused_although_libsodium_accepts_it() -> None:
    import pysodium

    assert pysodium.crypto_core_ristretto255_is_valid_point(bytes(32))
    with pytest.raises(InvalidEncoding, match="identity"):
        group.deserialize_element(bytes(32))


@pytest.mark.parametrize(
    "encoding",
    [
        FIELD_PRIME.to_bytes(32, "little"),  # s = p: not reduced
        (FIELD_PRIME + 2).to_bytes(32, "little"),  # s = p + 2 >= p
        b"\x01" + bytes(31),  # s = 1 is "negative" (odd)
        bytes(31) + b"\x80",  # top bit set
        GENERATOR[:31] + bytes([GENERATOR[31] | 0x80]),  # valid point, top bit set
        b"\xff" * 32,
    ],
)
def test_non_canonical_elements_are_refused(encoding: bytes) -> None:
    with pytest.raises(InvalidEncoding):
        group.deserialize_element(encoding)


@pytest.mark.parametrize("value", [group.ORDER, group.ORDER + 1, 2**256 - 1, 2**255])
def test_non_canonical_scalars_are_refused(value: int) -> None:
    with pytest.raises(InvalidEncoding, match="reduced"):
        group.deserialize_scalar(value.to_bytes(32, "little"))


def test_zero_scalar_is_refused_unless_allowed() -> None:
    with pytest.raises(InvalidEncoding, match="zero"):
        group.deserialize_scalar(bytes(32))
    assert group.deserialize_scalar(bytes(32), allow_zero=True) == bytes(32)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_scalar_of_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(InvalidEncoding):
        group.deserialize_scalar(bytes([1]) * length)


def test_arithmetic_refuses_bad_operands_with_typed_errors() -> None:
    with pytest.raises(InvalidEncoding):
        group.scalar_mult(ONE, bytes(32))  # identity point
    with pytest.raises(InvalidEncoding):
        group.scalar_mult(bytes(32), GENERATOR)  # product is the identity
    with pytest.raises(InvalidEncoding):
        group.scalar_mult(ONE, b"\xff" * 32)  # not a point
    with pytest.raises(InvalidEncoding):
        group.scalar_mult(ONE, GENERATOR[:31])
    with pytest.raises(InvalidEncoding):
        group.scalar_mult(ONE, GENERATOR[:31] + bytes([GENERATOR[31] | 0x80]))
    with pytest.raises(InvalidInput):
        group.scalar_mult_base(bytes(32))
    with pytest.raises(InvalidInput):
        group.scalar_invert(bytes(32))
    with pytest.raises(InvalidInput):
        group.scalar_invert(ONE[:31])
    with pytest.raises(InvalidInput):
        group.scalar_reduce(bytes(32))


@given(scalars, scalars)
def test_scalar_mult_composes_and_inverts(a: bytes, b: bytes) -> None:
    b_point = group.scalar_mult_base(b)
    ab_point = group.scalar_mult(a, b_point)
    ab = (int.from_bytes(a, "little") * int.from_bytes(b, "little")) % group.ORDER
    assert ab_point == group.scalar_mult_base(ab.to_bytes(32, "little"))
    assert group.scalar_mult(group.scalar_invert(a), ab_point) == b_point


@given(st.binary(min_size=64, max_size=64))
def test_scalar_reduce_is_integer_reduction(wide: bytes) -> None:
    expected = int.from_bytes(wide, "little") % group.ORDER
    assert group.scalar_reduce(wide) == expected.to_bytes(32, "little")


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=40))
def test_hash_to_group_gives_a_valid_element(msg: bytes, dst: bytes) -> None:
    element = group.hash_to_group(msg, dst)
    assert group.deserialize_element(element) == element
    assert group.hash_to_scalar(msg, dst) == group.scalar_reduce(
        group.expand_message_xmd(msg, dst, 64)
    )


@given(st.binary(min_size=32, max_size=32))
def test_any_32_bytes_either_decode_or_raise_invalid_encoding(data: bytes) -> None:
    try:
        group.deserialize_element(data)
    except CryptoError as exc:
        assert isinstance(exc, InvalidEncoding)


def test_random_scalar_uses_the_injected_rng_and_skips_zero() -> None:
    draws = [bytes(64), group.ORDER.to_bytes(64, "little"), b"\x07" + bytes(63)]

    def rng(n: int) -> bytes:
        assert n == 64
        return draws.pop(0)

    assert group.random_scalar(rng) == b"\x07" + bytes(31)
    assert draws == []


def test_random_scalar_refuses_a_short_rng() -> None:
    with pytest.raises(InvalidInput):
        group.random_scalar(lambda n: bytes(n - 1))


def test_backend_reports_a_ristretto_capable_libsodium() -> None:
    major, minor, patch = (int(x) for x in group.LIBSODIUM_VERSION.split(".")[:3])
    assert (major, minor, patch) >= (1, 0, 18)


def test_importing_the_backend_writes_nothing_to_the_temp_directory(tmp_path: Path) -> None:
    # rbcl unpacks its shared library into $TMPDIR on every import; pysodium must not.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), TEMP=str(tmpdir), TMP=str(tmpdir))
    code = (
        "from vaultd.crypto import group;assert group.scalar_mult_base((1).to_bytes(32, 'little'))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True)
    assert list(tmpdir.iterdir()) == []


def test_importing_the_backend_starts_no_helper_process() -> None:
    # ctypes.util.find_library would run /sbin/ldconfig; a sandbox may forbid exec.
    code = (
        "import subprocess\n"
        "def refuse(*args, **kwargs):\n"
        "    raise PermissionError('exec forbidden by the sandbox')\n"
        "subprocess.Popen = refuse\n"
        "from vaultd.crypto import group\n"
        "assert group.scalar_mult_base((1).to_bytes(32, 'little'))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)

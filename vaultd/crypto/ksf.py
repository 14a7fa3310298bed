"""Key-stretching profiles for OPAQUE: the KSF (Argon2id) parameters and the context string.

A :class:`KsfProfile` fixes everything both ends of an OPAQUE exchange must agree on beyond
the cipher suite: how the client stretches the OPRF output (RFC 9807 §4.3, ``Stretch``) and
the application context bound into the key exchange transcript (RFC 9807 §6.4.2). A stored
registration record names its profile by :attr:`KsfProfile.ref` (``"name@version"``), so
parameters can be strengthened later by adding a profile under a new version without
breaking records created under the old one.

Only the client runs the KSF; the server uses the profile for its context string alone.

Profiles:

* :data:`DEFAULT` -- Argon2id with RFC 9106's second recommended option (t=3, 64 MiB, p=4).
* :data:`OPAQUE_KE_COMPAT` -- the defaults of Facebook's opaque-ke (Argon2id m=19456 KiB,
  t=2, p=1, 16 zero bytes of salt, 64-byte output, empty context). Call the OPAQUE
  functions without client/server identities to interoperate with an opaque-ke peer.
* :data:`IDENTITY` -- no stretching, context "OPAQUE-POC": only for the RFC's test
  vectors. It is refused by :func:`get_profile` unless explicitly allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from vaultd.crypto.errors import InvalidInput, UnknownProfile

Algorithm = Literal["argon2id", "identity"]

_ZERO_SALT: Final = bytes(16)


@dataclass(frozen=True, slots=True)
class KsfProfile:
    """A named, versioned choice of KSF parameters and OPAQUE context.

    ``memory_kib`` is Argon2's m in KiB, ``iterations`` its t, ``lanes`` its p. The salt is
    fixed per profile: the KSF input is already a per-user OPRF output, so a salt adds
    nothing (RFC 9807 §4.3), but Argon2 requires one of at least 8 bytes.
    """

    name: str
    version: int
    algorithm: Algorithm
    context: bytes
    memory_kib: int = 0
    iterations: int = 0
    lanes: int = 0
    salt: bytes = _ZERO_SALT
    output_bytes: int = 64

    def __post_init__(self) -> None:
        if not self.name or "@" in self.name:
            raise InvalidInput("profile name must be non-empty and must not contain '@'")
        if self.version < 1:
            raise InvalidInput("profile version must be >= 1")
        if len(self.context) > 0xFFFF:
            raise InvalidInput("OPAQUE context must be at most 65535 bytes")
        if self.algorithm == "argon2id":
            if self.lanes < 1 or self.iterations < 1:
                raise InvalidInput("Argon2id needs lanes >= 1 and iterations >= 1")
            if self.memory_kib < 8 * self.lanes:
                raise InvalidInput("Argon2id needs memory_kib >= 8 * lanes")
            if len(self.salt) < 8:
                raise InvalidInput("Argon2id needs a salt of at least 8 bytes")
            if self.output_bytes < 4:
                raise InvalidInput("Argon2id output must be at least 4 bytes")
        elif self.algorithm != "identity":
            raise InvalidInput(f"unknown KSF algorithm {self.algorithm!r}")

    @property
    def ref(self) -> str:
        """The string a stored record uses to name this profile: ``"name@version"``."""
        return f"{self.name}@{self.version}"

    @property
    def insecure(self) -> bool:
        """True for the identity KSF, which must never protect a real password."""
        return self.algorithm == "identity"

    def stretch(self, data: bytes) -> bytes:
        """Apply the KSF to ``data`` (the OPRF output). Deterministic; costly by design."""
        if self.algorithm == "identity":
            return bytes(data)
        kdf = Argon2id(
            salt=self.salt,
            length=self.output_bytes,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(data)


DEFAULT: Final = KsfProfile(
    name="vaultd-argon2id",
    version=1,
    algorithm="argon2id",
    context=b"vaultd-OPAQUE-v1",
    memory_kib=64 * 1024,
    iterations=3,
    lanes=4,
)
"""RFC 9106 §4's second recommended option: Argon2id, t=3, 64 MiB, p=4."""

OPAQUE_KE_COMPAT: Final = KsfProfile(
    name="opaque-ke-compat",
    version=1,
    algorithm="argon2id",
    context=b"",
    memory_kib=19456,
    iterations=2,
    lanes=1,
)
"""opaque-ke's defaults (argon2 crate's Params::default(), zero salt, empty context)."""

IDENTITY: Final = KsfProfile(
    name="identity-test-vectors",
    version=1,
    algorithm="identity",
    context=b"OPAQUE-POC",
)
"""Identity KSF and the RFC 9807 test-vector context. Insecure: test vectors only."""

PROFILES: Final = MappingProxyType({p.ref: p for p in (DEFAULT, OPAQUE_KE_COMPAT, IDENTITY)})
"""Every profile this build knows, by :attr:`KsfProfile.ref`."""


def get_profile(ref: str, *, allow_insecure: bool = False) -> KsfProfile:
    """Return the profile a stored record names.

    Raises UnknownProfile for an unknown ref, and for an insecure profile (the identity KSF)
    unless ``allow_insecure`` is set.
    """
    profile = PROFILES.get(ref)
    if profile is None:
        raise UnknownProfile(f"no KSF profile {ref!r}; known: {', '.join(sorted(PROFILES))}")
    if profile.insecure and not allow_insecure:
        raise UnknownProfile(f"KSF profile {ref!r} is for test vectors only")
    return profile

"""Typed errors raised by ``vaultd.crypto``.

Every failure of the OPRF, OPAQUE and KSF code is a :class:`CryptoError`, so a caller that
handles untrusted input can catch one base class and never a bare ``ValueError`` from a
binding. The subclasses tell the caller *which* kind of failure happened:

* :class:`InvalidEncoding` -- bytes from the outside that are not a well-formed message:
  wrong length, a non-canonical scalar or group element, or the identity element.
* :class:`InvalidInput` -- a caller-supplied argument is out of range (an over-long
  password or identity, a zero scalar, a nonce of the wrong size, ...).
* :class:`AuthenticationFailed` and its subclasses -- the protocol ran but a MAC did not
  verify: typically a wrong password, or a message tampered with in transit.
* :class:`UnknownProfile` -- a stored record names a KSF profile this build does not know.
* :class:`BackendUnavailable` -- libsodium is missing or too old for ristretto255.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by ``vaultd.crypto``."""


class InvalidEncoding(CryptoError):
    """Bytes do not decode to a well-formed value (length, canonical form, identity)."""


class InvalidInput(CryptoError):
    """An argument supplied by the caller is outside what the protocol allows."""


class AuthenticationFailed(CryptoError):
    """A MAC check failed: wrong password or tampered message."""


class EnvelopeRecoveryError(AuthenticationFailed):
    """Client side: the envelope's tag did not verify (wrong password or altered KE2)."""


class ServerAuthenticationError(AuthenticationFailed):
    """Client side: the server's MAC in KE2 did not verify (wrong server key or altered KE2)."""


class ClientAuthenticationError(AuthenticationFailed):
    """Server side: the client's MAC in KE3 did not verify (wrong password or altered KE3)."""


class UnknownProfile(CryptoError):
    """No KSF profile is registered under the requested name and version."""


class BackendUnavailable(CryptoError):
    """The system libsodium cannot be loaded or lacks the ristretto255 functions."""

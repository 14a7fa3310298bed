"""Cryptography shared by the vault and its clients: OPRF, OPAQUE-3DH, key derivation.

Submodules (import them directly; this package re-exports nothing):

* ``vaultd.crypto.opaque`` -- OPAQUE-3DH (RFC 9807), ristretto255-SHA512: the messages,
  ``ServerSetup``, the RFC's operations (create_registration_request, ...,
  generate_ke1/2/3, server_finish), the unknown-user path and derive_server_randomness.
* ``vaultd.crypto.ksf`` -- named, versioned Argon2id profiles carrying the OPAQUE context.
* ``vaultd.crypto.oprf`` -- the RFC 9497 OPRF (mode 0) that OPAQUE is built on.
* ``vaultd.crypto.group`` -- ristretto255 over the system libsodium (via pysodium) and
  hashing to the group; the only module that touches libsodium.
* ``vaultd.crypto.errors`` -- ``CryptoError`` and its subclasses.

All of it is pure: randomness is injectable and defaults to ``secrets``. See docs/crypto.md.
"""

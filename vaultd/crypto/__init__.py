"""Cryptography shared by the vault and its clients: OPRF, OPAQUE-3DH, key derivation."""

"""The vaultd client library: backup keys, the encrypted backup format, vault access."""

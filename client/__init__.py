"""The vaultd client library: backup keys, the encrypted backup format, vault access.

* :mod:`client.backup_key` -- the 256-bit backup key and its 64-digit written form.
* :mod:`client.backup_format` -- pure streaming encryptor/decryptor cores of the backup
  format (docs/backup-format.md).
* :mod:`client.backup_io` -- backing up files and directories to a store, and restoring.
* :mod:`client.keywrap` -- wrapping the backup key under OPAQUE's export_key.
* :mod:`client.errors` -- the typed errors all of these raise.
"""

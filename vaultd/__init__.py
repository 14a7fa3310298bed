"""vaultd: the replicated backup-key vault daemon."""

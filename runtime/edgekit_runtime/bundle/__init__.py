"""The bundle: its format (write, read, verify, archive) and its ed25519 signature."""

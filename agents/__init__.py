"""Search agents behind a registry; they see only `spaces` types."""

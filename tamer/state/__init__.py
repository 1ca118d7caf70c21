"""Durable state: the SQLite database and the checkpoints on disk."""

"""Alembic migrations, run programmatically by `storage.migrate` (no alembic.ini needed)."""

"""Schema versioning with Alembic, driven from code: `Database.open` upgrades any older database in place."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import IMMEDIATE

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same in every bot process sharing one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x67686F7374  # "ghost"


def alembic_config() -> Config:
    """An in-memory Alembic config pointing at this package's migrations (no alembic.ini)."""
    config = Config()
    # ConfigParser interpolates '%': escape it so any install path works.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        # Two bot processes starting at once: the second waits here, then finds the schema at head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    before = _current(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
    after = _current(connection)
    if before != after:
        logger.info("database schema upgraded from %s to %s", before or "empty", after)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to `revision` in one transaction (SQLite: BEGIN IMMEDIATE, PostgreSQL: locked)."""
    async with engine.connect() as connection:
        connection = await connection.execution_options(**{IMMEDIATE: True})
        async with connection.begin():
            await connection.run_sync(_upgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current)

"""`Database`: the engine, its sessions and the repositories, opened and migrated in one call."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from storage.engine import create_engine, create_sessionmaker, create_sync_sqlite_engine, is_memory
from storage.migrate import current_revision, upgrade
from storage.outbox import OutboxRepository
from storage.repositories import (
    ConversationRepository,
    FeedbackRepository,
    StatsRepository,
    UserSettingsRepository,
    write_transaction,
)
from storage.runner import AsyncRunner, Runner, ThreadRunner

log = logging.getLogger(__name__)

SUPPORTED_BACKENDS = ("sqlite", "postgresql")


class Database:
    """Open with `await Database.open(url)`; close with `await db.close()` (or use `async with`)."""

    def __init__(self, engine: AsyncEngine, runner: Runner | None = None) -> None:
        if engine.dialect.name not in SUPPORTED_BACKENDS:
            raise ValueError(f"unsupported database {engine.dialect.name!r}: use SQLite or PostgreSQL")
        self.engine = engine
        self.sessions = create_sessionmaker(engine)
        self._runner = runner or self._default_runner(engine)
        self.conversations = ConversationRepository(self._runner)
        self.feedback = FeedbackRepository(self._runner)
        self.user_settings = UserSettingsRepository(self._runner)
        self.stats = StatsRepository(self._runner)
        self.outbox = OutboxRepository(self._runner)

    @staticmethod
    def _default_runner(engine: AsyncEngine) -> Runner:
        # A file SQLite database gets a blocking twin engine run in threads (see storage/runner.py).
        if engine.dialect.name == "sqlite" and not is_memory(engine.url):
            return ThreadRunner(create_sync_sqlite_engine(engine.url))
        return AsyncRunner(engine)

    @classmethod
    async def open(cls, url: str | URL, *, migrate: bool = True) -> Database:
        """Connect (creating a SQLite file and its folder on first run) and upgrade the schema to head."""
        engine = create_engine(url)
        try:
            db = cls(engine)
        except BaseException:
            await engine.dispose()
            raise
        try:
            if migrate:
                await upgrade(engine)
        except BaseException:
            await db.close()
            raise
        log.info("database ready: %s", db.url)
        return db

    @property
    def url(self) -> str:
        """The URL with any password hidden (safe for logs)."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def revision(self) -> str | None:
        """The schema revision the database is at."""
        return await current_revision(self.engine)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one write transaction (committed on success) for code outside the repositories here."""
        async with write_transaction(self.sessions) as session:
            yield session

    async def ping(self) -> bool:
        """True when the database answers (health checks)."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError) as exc:
            log.warning("database ping failed: %s", type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        await self._runner.close()
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

"""Engine and session setup: SQLite by default (WAL, foreign keys, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine_
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

# Execution option a write transaction sets so that SQLite starts it with BEGIN IMMEDIATE: the write lock is
# taken up front (waiting on busy_timeout) instead of failing with SQLITE_BUSY when a read snapshot is upgraded.
# With it, migrations also run as one transaction (the sqlite3 module would otherwise autocommit DDL).
IMMEDIATE = "ghostbot_sqlite_immediate"

_BUSY_TIMEOUT_S = 30

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def normalize_url(url: str | URL) -> URL:
    """Accept plain `sqlite:///…` / `postgresql://…` / `postgres://…` and pick the async driver."""
    parsed = make_url(url)
    if parsed.drivername in _DRIVERS:
        parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
    return parsed


def is_memory(url: str | URL) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def create_engine(url: str | URL) -> AsyncEngine:
    """Create the async engine; for a file SQLite database, create its folder first."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, pool_pre_ping=True)
    if is_memory(parsed):
        # One shared connection: every session sees the same in-memory database (tests, one task at a time).
        engine = create_async_engine(parsed, poolclass=StaticPool, connect_args={"timeout": _BUSY_TIMEOUT_S})
        _install_pragmas(engine.sync_engine)
        return engine
    database = parsed.database or ""
    if not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(parsed, connect_args={"timeout": _BUSY_TIMEOUT_S})
    _install_pragmas(engine.sync_engine)
    _install_immediate_begin(engine.sync_engine)
    return engine


def create_sync_sqlite_engine(url: str | URL) -> Engine:
    """A blocking (sqlite3) engine on the same SQLite file, with the same pragmas and transaction handling.

    The repositories run whole transactions on it in a worker thread: one thread hop per call instead of
    several per statement through aiosqlite, which is what makes hundreds of exchanges per second possible.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or is_memory(parsed):
        raise ValueError("a synchronous engine is only used for file SQLite databases")
    engine = create_sync_engine_(parsed.set(drivername="sqlite"), connect_args={"timeout": _BUSY_TIMEOUT_S})
    _install_pragmas(engine)
    _install_immediate_begin(engine)
    return engine


def _install_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
        _enable_wal(cursor)  # readers never block the writer
        cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores FKs unless asked
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, much faster commits
        cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the file to WAL, waiting out another connection's write lock.

    While the file is still in rollback mode (a new database, when two processes start at once), the switch
    needs the write lock. If another connection holds it, SQLite answers "database is locked" at once instead
    of calling the busy handler (waiting while holding a read lock could deadlock), so we wait here instead.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _install_immediate_begin(engine: Engine) -> None:
    """Start transactions that ask for it (`IMMEDIATE` execution option) with BEGIN IMMEDIATE.

    Everything else keeps the sqlite3 module's own behaviour: it opens a transaction right before the first
    INSERT/UPDATE/DELETE, so a session that reads and then writes takes the write lock (waiting on
    busy_timeout) at its first write instead of failing when another connection committed in between.
    Not used for :memory: databases: their single shared connection cannot hold two transactions at once.
    """

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if conn.get_execution_options().get(IMMEDIATE, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)

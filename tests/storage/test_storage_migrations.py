"""Schema versioning: fresh databases reach head, older ones are upgraded in place, models match migrations."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from storage import Base, ConversationKey, Database, UserRef, create_engine, head_revision, normalize_url
from storage.engine import create_sync_sqlite_engine
from storage.migrate import current_revision, upgrade

MY_TABLES = {
    "users",
    "pending_replies",
    "conversations",
    "messages",
    "message_refs",
    "processed_events",
    "feedback",
    "user_settings",
}
KEY = ConversationKey("telegram", "1", "1")


async def test_old_database_is_upgraded_in_place(db_url: str) -> None:
    engine = create_engine(db_url)
    await upgrade(engine, "0001")
    assert await current_revision(engine) == "0001"
    old = Database(engine)  # repositories over the 0001 schema, as the first release would write
    assert await old.conversations.commit_exchange(
        platform="telegram",
        event_id="u1",
        key=KEY,
        user=UserRef("telegram", "1", "A"),
        user_text="old question",
        user_tokens=2,
        assistant_text="old answer",
        assistant_tokens=2,
        sources=[],
        user_platform_message_id="5",
        assistant_platform_message_ids=["6"],
    )
    await old.user_settings.set("telegram", "1", "lang", "en")
    await old.close()

    db = await Database.open(db_url)
    try:
        assert await db.revision() == head_revision()
        assert [m.text for m in await db.conversations.history(KEY)] == ["old question", "old answer"]
        assert await db.user_settings.get("telegram", "1") == {"lang": "en"}
        assert await db.conversations.is_processed("telegram", "u1")
    finally:
        await db.close()
    again = await Database.open(db_url)  # at head already: a no-op
    try:
        assert await again.revision() == head_revision()
        assert len(await again.conversations.history(KEY)) == 2
    finally:
        await again.close()


async def test_migrations_match_models(db: Database) -> None:
    def diff(connection: object) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})  # type: ignore[arg-type]  # alembic types opts narrowly
        return compare_metadata(context, Base.metadata)

    async with db.engine.connect() as connection:
        differences = await connection.run_sync(diff)

    def touches_mine(item: object) -> bool:
        names = [
            x if isinstance(x, str) else getattr(getattr(x, "table", x), "name", None) for x in _flatten(item)
        ]
        return any(name in MY_TABLES for name in names)

    assert [d for d in differences if touches_mine(d)] == []


def _flatten(item: object) -> list[object]:
    if isinstance(item, (list, tuple)):
        return [y for x in item for y in _flatten(x)]
    return [item]


async def test_sqlite_pragmas_and_folder_creation(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "ghostbot.db"
    db = await Database.open(f"sqlite:///{path}")  # plain URL: the async driver is chosen for us
    try:
        assert path.exists()
        async with db.engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await connection.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
        assert await db.ping()
        assert db.dialect == "sqlite"
        # The blocking twin engine the repositories run on has the same settings.
        sync_engine = create_sync_sqlite_engine(f"sqlite:///{path}")
        try:
            with sync_engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        finally:
            sync_engine.dispose()
    finally:
        await db.close()


async def test_in_memory_database_is_migrated_and_shared() -> None:
    db = await Database.open("sqlite+aiosqlite:///:memory:")
    try:
        assert await db.revision() == head_revision()
        assert await db.conversations.commit_exchange(
            platform="cli",
            event_id="1",
            key=KEY,
            user=UserRef("cli", "1"),
            user_text="q",
            user_tokens=1,
            assistant_text="a",
            assistant_tokens=1,
            sources=[],
            user_platform_message_id=None,
            assistant_platform_message_ids=[],
        )
        assert len(await db.conversations.history(KEY)) == 2  # another session sees the same database
    finally:
        await db.close()


def test_normalize_url_and_password_hiding() -> None:
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgresql+asyncpg://u:p@h/db").drivername == "postgresql+asyncpg"


async def test_url_for_logs_hides_password() -> None:
    engine = create_engine("postgresql+asyncpg://bot:hunter2@127.0.0.1:1/ghost")
    db = Database(engine)
    try:
        assert "hunter2" not in db.url
        assert not await db.ping()  # nothing listens on port 1: a clean False, no exception
    finally:
        await db.close()


async def test_two_processes_starting_at_once_migrate_once(db_url: str) -> None:
    first, second = await asyncio.gather(Database.open(db_url), Database.open(db_url))
    try:
        assert await first.revision() == await second.revision() == head_revision()
        assert await first.conversations.mark_processed("telegram", "1")
        assert not await second.conversations.mark_processed("telegram", "1")
    finally:
        await first.close()
        await second.close()


async def test_switch_to_wal_waits_out_another_writer(tmp_path: Path) -> None:
    """A new file is still in rollback mode: another process's write lock must make us wait, not fail.

    SQLite refuses the WAL switch at once ("database is locked") rather than calling the busy handler; this is
    the race two bot processes starting on one new database run into.
    """
    path = tmp_path / "ghostbot.db"
    locked, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            # A rollback-journal file, as a new database is before anyone switched it to WAL.
            other.execute("CREATE TABLE elsewhere (x INTEGER)")
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO elsewhere VALUES (1)")
            locked.set()
            release.wait(10)
            other.execute("COMMIT")
        finally:
            other.close()

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        assert await asyncio.to_thread(locked.wait, 10)
        opening = asyncio.create_task(Database.open(f"sqlite:///{path}"))
        await asyncio.sleep(0.3)
        assert not opening.done()  # waiting on the lock, not failed
        release.set()
        db = await asyncio.wait_for(opening, 20)
    finally:
        release.set()
        await asyncio.to_thread(writer.join)
    try:
        assert await db.revision() == head_revision()
        async with db.engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    finally:
        await db.close()

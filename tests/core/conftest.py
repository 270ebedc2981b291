"""Shared fixtures for the conversation-core tests: a real database (migrated once, copied per test), a
real worker and manager, and test doubles only for the model and the retriever."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import ByteLevelBPETokenizer

from core.generators.base import Generator
from core.manager import ConversationManager
from core.settings import Settings
from core.types import ChatKind, Incoming, Source
from core.worker import GenerationWorker
from storage import Base, Database
from tests.core.core_doubles import BPEGenerator, ListRetriever, RecordingSink, train_tokenizer


@pytest.fixture(scope="session")
def bpe_tokenizer() -> ByteLevelBPETokenizer:
    return train_tokenizer()


@pytest.fixture
def bpe_generator(bpe_tokenizer: ByteLevelBPETokenizer) -> BPEGenerator:
    return BPEGenerator(bpe_tokenizer)


KB = [
    Source(
        0,
        "CWE-79",
        "cwe",
        "Cross-site Scripting",
        "https://cwe.mitre.org/data/definitions/79.html",
        "xss cross-site scripting injects script into pages viewed by other users",
    ),
    Source(
        0,
        "CWE-89",
        "cwe",
        "SQL Injection",
        "https://cwe.mitre.org/data/definitions/89.html",
        "sql injection builds queries from untrusted strings",
    ),
]


@pytest.fixture(scope="session")
def db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once; every test copies the file (migrations are the slow part of opening)."""
    path = tmp_path_factory.mktemp("core-db") / "template.db"

    async def build() -> None:
        db = await Database.open(f"sqlite+aiosqlite:///{path}")
        await db.close()

    asyncio.run(build())
    return path


@pytest.fixture
async def db(tmp_path: Path, db_template: Path) -> AsyncIterator[Database]:
    path = tmp_path / "core.db"
    shutil.copy(db_template, path)
    database = await Database.open(f"sqlite+aiosqlite:///{path}")
    yield database
    await database.close()


async def count_rows(db: Database) -> dict[str, int]:
    from sqlalchemy import func, select

    async with db.sessions() as session:
        return {
            t.name: int(await session.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
            if t.name
            in {
                "users",
                "conversations",
                "messages",
                "message_refs",
                "processed_events",
                "feedback",
                "user_settings",
                "pending_replies",
            }
        }


class Harness:
    """A real ConversationManager + GenerationWorker on a real database; only model and retriever are doubles."""

    def __init__(
        self, db: Database, generator: Generator, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self.db = db
        self.generator = generator
        self.settings = settings
        self.retriever = ListRetriever(KB)
        self.worker = GenerationWorker(
            generator, queue_size=settings.queue_size, timeout_s=settings.request_timeout_seconds
        )
        self.worker.start()
        self.manager = ConversationManager(db, self.retriever, self.worker, generator, settings, clock=clock)
        self._events = itertools.count(1)

    def incoming(
        self,
        text: str,
        *,
        user: str = "1",
        chat: str | None = None,
        group: bool = False,
        addressed: bool = True,
        event: str | None = None,
        thread: str | None = None,
        platform: str = "telegram",
        **extra: Any,
    ) -> Incoming:
        return Incoming(
            platform=platform,
            event_id=event or f"e{next(self._events)}",
            chat_id=chat or user,
            chat_kind=ChatKind.GROUP if group else ChatKind.DM,
            user_id=user,
            user_name=f"user {user}",
            text=text,
            addressed=addressed,
            thread_id=thread,
            platform_message_id=f"m{next(self._events)}",
            **extra,
        )

    async def send(self, text: str, **kw: Any) -> RecordingSink:
        sink = RecordingSink()
        await self.manager.handle(self.incoming(text, **kw), sink)
        return sink


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_harness(
    db: Database, bpe_tokenizer, clock: FakeClock
) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(generator: Generator | None = None, **overrides: Any) -> Harness:
        values: dict[str, Any] = {"rate_limit_per_minute": 600.0, "rate_limit_burst": 100}
        values.update(overrides)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        h = Harness(db, generator or BPEGenerator(bpe_tokenizer), settings, clock)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.worker.shutdown(drain=False, timeout=5)

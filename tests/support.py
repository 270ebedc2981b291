"""Helpers shared by tests that run the real app: settings for a temp database, the app with a folder indexed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bots.compose import App, open_app
from core.generators.base import Generator
from core.settings import Settings


def app_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """A temp SQLite file, BM25 only (no encoder to load), no packs, extractive answers, generous limits."""
    values: dict[str, Any] = dict(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        data_dir=tmp_path / "data",
        packs=[],
        dense_retrieval=False,
        generator="extractive",
        rate_limit_per_minute=600.0,
        rate_limit_burst=100,
        request_timeout_seconds=30.0,
        http_port=0,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def indexed_app(
    settings: Settings,
    tmp_path: Path,
    *,
    index: dict[str, str] | None = None,
    generator: Generator | None = None,
) -> AsyncIterator[App]:
    """The real app from `open_app`; `index` ({filename: text}) is written to a folder and indexed first."""
    async with open_app(settings, generator=generator, build_packs=False) as app:
        if index:
            folder = tmp_path / "docs"
            folder.mkdir(exist_ok=True)
            for name, text in index.items():
                (folder / name).write_text(text, encoding="utf-8")
            await app.indexer.index_paths([folder])
        yield app


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Wait until `check()` holds (a condition, not a fixed sleep); fail with a clear message after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)

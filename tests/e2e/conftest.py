"""End-to-end fixtures: the real app (storage, retrieval, manager, worker) behind the real
python-telegram-bot, talking to the loopback Bot API fake. Only the model is scripted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from tests.e2e.discord_fixtures import discord_bot as discord_bot  # re-exported: a fixture
from tests.e2e.discord_fixtures import world as world  # re-exported: a fixture
from tests.e2e.scripted import ScriptedGenerator as ScriptedGenerator  # re-exported
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.support import app_settings, indexed_app


def make_settings(fake: FakeTelegramAPI, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        telegram_bot_token=fake.token,
        telegram_api_base_url=fake.base_url,
        telegram_file_base_url=fake.file_base_url,
    )
    return app_settings(tmp_path, **{**values, **overrides})


@dataclass
class Harness:
    fake: FakeTelegramAPI
    settings: Settings
    app: Any  # bots.compose.App
    adapter: Any  # bots.telegram.TelegramAdapter
    generator: ScriptedGenerator


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def tg_fake() -> AsyncIterator[FakeTelegramAPI]:
    fake = FakeTelegramAPI()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@asynccontextmanager
async def running_bot(
    fake: FakeTelegramAPI,
    tmp_path: Path,
    generator: ScriptedGenerator | None = None,
    index: dict[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """The real app from `bots.compose.open_app` with the Telegram adapter polling the fake.

    `index` ({filename: text}) is written to a folder and indexed, so answers carry sources.
    """
    from bots.telegram import TelegramAdapter

    settings = make_settings(fake, tmp_path, **overrides)
    generator = generator or ScriptedGenerator()
    async with indexed_app(settings, tmp_path, index=index, generator=generator) as app:
        adapter = TelegramAdapter(settings, app.manager)
        await adapter.start()
        try:
            yield Harness(fake, settings, app, adapter, generator)
        finally:
            await adapter.stop()


@pytest.fixture
def bot_factory(tg_fake: FakeTelegramAPI, tmp_path: Path) -> Callable[..., Any]:
    """`async with bot_factory(**settings) as h:` — a running bot on this test's fake and database."""

    def factory(**kwargs: Any) -> Any:
        return running_bot(tg_fake, tmp_path, **kwargs)

    return factory

"""End-to-end fixtures: the real app (storage, retrieval, manager, worker) behind the real
python-telegram-bot, talking to the loopback Bot API fake. Only the model is scripted."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.generators.base import GenerationParams, PromptSpec
from core.settings import Settings
from tests.e2e.discord_fixtures import discord_bot as discord_bot  # re-exported: a fixture
from tests.e2e.discord_fixtures import world as world  # re-exported: a fixture
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.support import app_settings, indexed_app

Script = Callable[[PromptSpec], str]


def echo_script(spec: PromptSpec) -> str:
    """Default answer: says what it was asked and how much history it saw (proves history flows)."""
    return f"Answer to: {spec.question} (history turns: {len(spec.history)})"


@dataclass
class ScriptedGenerator:
    """Stands in for the model only: implements the Generator protocol with scripted text.

    Tokens are whitespace-separated words (counted exactly the same way everywhere); the
    answer streams word by word with an optional delay, polling `should_stop` like a model.
    """

    script: Script = echo_script
    delay: float = 0.0
    name: str = "scripted"
    context_length: int = 100_000
    specs: list[PromptSpec] = field(default_factory=list)
    gate: threading.Event | None = None  # when set, generation waits for it (to hold a request)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, spec: PromptSpec) -> int:
        parts = [
            spec.system,
            spec.question,
            *(p.text for p in spec.passages),
            *(t.content for t in spec.history),
        ]
        return sum(self.count_tokens(part) + 4 for part in parts)

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        self.specs.append(spec)
        if self.gate is not None:
            while not self.gate.wait(0.05):
                if should_stop():
                    return
        text = self.script(spec)
        for piece in _pieces(text):
            if should_stop():
                return
            if self.delay:
                time.sleep(self.delay)
            yield piece

    def close(self) -> None:
        pass


def _pieces(text: str) -> Iterator[str]:
    """Split into word-sized pieces that concatenate back to exactly `text`."""
    start = 0
    for index in range(1, len(text)):
        if text[index] in " \n" and text[index - 1] not in " \n":
            yield text[start:index]
            start = index
    if start < len(text):
        yield text[start:]


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

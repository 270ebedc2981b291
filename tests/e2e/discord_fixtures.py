"""Discord end-to-end fixtures: the real app (storage, retrieval, manager, worker) behind the
unmodified discord.py, talking to the loopback Discord fake. Only the model is scripted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from tests.e2e.scripted import ScriptedGenerator
from tests.fakes.discord_api import DiscordFake
from tests.support import app_settings, indexed_app

TOKEN = "discord-test-token"


@dataclass
class World:
    """The fake Discord server: one guild with a channel, a thread in it, a role, and users."""

    fake: DiscordFake
    guild: dict[str, Any]
    channel: dict[str, Any]
    thread: dict[str, Any]
    member_role: str
    alice: dict[str, Any]
    bob: dict[str, Any]
    stranger: dict[str, Any]


@dataclass
class DiscordHarness:
    world: World
    settings: Settings
    app: Any  # bots.compose.App
    adapter: Any  # bots.discord.DiscordAdapter
    generator: ScriptedGenerator

    @property
    def fake(self) -> DiscordFake:
        return self.world.fake


def discord_settings(world: World, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        discord_bot_token=TOKEN,
        discord_api_base_url=world.fake.api_base,
        discord_gateway_url=world.fake.gateway_url,
        discord_guild_ids=world.guild["id"],
    )
    return app_settings(tmp_path, **{**values, **overrides})


@pytest.fixture
async def world() -> AsyncIterator[World]:
    fake = DiscordFake(heartbeat_interval_ms=200)
    fake.token = TOKEN
    guild = fake.add_guild("security", roles=("member",))
    channel = fake.add_channel(guild, "general")
    thread = fake.add_thread(channel, "xss questions")
    await fake.start()
    try:
        yield World(
            fake,
            guild,
            channel,
            thread,
            fake.role_id(guild, "member"),
            fake.user("alice"),
            fake.user("bob"),
            fake.user("stranger"),
        )
    finally:
        await fake.close()


@asynccontextmanager
async def running_discord(
    world: World,
    tmp_path: Path,
    generator: ScriptedGenerator | None = None,
    index: dict[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[DiscordHarness]:
    """The real app from `bots.compose.open_app` with the Discord adapter connected to the fake."""
    from bots.discord import DiscordAdapter

    settings = discord_settings(world, tmp_path, **overrides)
    generator = generator or ScriptedGenerator()
    async with indexed_app(settings, tmp_path, index=index, generator=generator) as app:
        adapter = DiscordAdapter(settings, app.manager, guild_ready_timeout=0.1)
        await adapter.start()
        try:
            await adapter.wait_ready(10)
            yield DiscordHarness(world, settings, app, adapter, generator)
        finally:
            await adapter.stop(grace=5)


@pytest.fixture
def discord_bot(world: World, tmp_path: Path) -> Callable[..., Any]:
    """`async with discord_bot(generator=…, **settings) as h:` — a running bot on this test's fake."""

    def factory(**kwargs: Any) -> Any:
        return running_discord(world, tmp_path, **kwargs)

    return factory


# --- helpers the Discord tests share ----------------------------------------------------------
async def settled(h: DiscordHarness, timeout: float = 15.0) -> None:
    """Wait until the adapter has no event in flight (after something was pushed and acknowledged)."""
    client = h.adapter.client
    await h.fake.wait_for(lambda: client.in_flight == 0, timeout)


async def slash(
    h: DiscordHarness,
    name: str,
    options: dict[str, str] | None = None,
    *,
    user: dict[str, Any] | None = None,
    channel: dict[str, Any] | None = None,
    roles: list[str] | None = None,
    wait: bool = True,
) -> Any:
    """Push a slash command; with `wait`, return once the bot has finished answering it."""
    world = h.world
    state = await h.fake.push_slash(
        name,
        channel or world.channel,
        user or world.alice,
        options,
        roles=[world.member_role] if roles is None else roles,
    )
    if wait:
        await h.fake.wait_for(lambda: state.callback_type is not None, 10)
        await settled(h)
    return state


def contents(state: Any) -> list[str]:
    return [message["content"] for message in state.visible()]


def is_ephemeral(message: dict[str, Any]) -> bool:
    return bool(message["flags"] & 64)


def feedback_buttons(message: dict[str, Any]) -> list[str]:
    return [
        button.get("custom_id")
        for row in message.get("components", [])
        for button in row.get("components", [])
    ]

"""`DiscordAdapter`: what `ghostbot run` starts when DISCORD_BOT_TOKEN is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord
import discord.gateway
import discord.http
import yarl

from bots.discord.client import GhostClient
from core.manager import ConversationManager, InterruptedReply
from core.settings import Settings

log = logging.getLogger(__name__)


def configure_endpoints(settings: Settings) -> None:
    """Point discord.py at DISCORD_API_BASE_URL / DISCORD_GATEWAY_URL.

    discord.py has no public option for these, only class attributes (process-wide, so one
    Discord bot per process). Interaction and webhook calls use the same Route base."""
    discord.http.Route.BASE = settings.discord_api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class DiscordAdapter:
    """Runs the Discord bot on the current event loop.

    `await start()` logs in (raising `discord.LoginFailure` on a bad token), syncs the slash
    commands and connects the gateway in a background task; `await stop()` stops taking new
    events, lets replies in flight finish for up to `grace` seconds, then closes."""

    def __init__(
        self, settings: Settings, manager: ConversationManager, *, guild_ready_timeout: float = 2.0
    ) -> None:
        if settings.discord_bot_token is None:
            raise ValueError("DISCORD_BOT_TOKEN is not set")
        self._settings = settings
        self._manager = manager
        self._guild_ready_timeout = guild_ready_timeout
        self.client: GhostClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        configure_endpoints(self._settings)
        client = GhostClient(self._settings, self._manager, guild_ready_timeout=self._guild_ready_timeout)
        self.client = client
        assert self._settings.discord_bot_token is not None
        try:
            await client.login(self._settings.discord_bot_token.get_secret_value())
            # Before the gateway delivers new events: replies a killed process left half-sent say so.
            await self._manager.recover("discord", self.repair_interrupted)
        except BaseException:
            await client.close()  # release its HTTP session; LoginFailure names no token
            self.client = None
            raise
        self._task = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
        self._task.add_done_callback(self._gateway_done)
        log.info("Discord adapter started as %s", client.user)

    async def repair_interrupted(self, reply: InterruptedReply, notice: str) -> None:
        """Tell the user a reply was cut off by a crash: edit the message it had started, else send one."""
        assert self.client is not None
        http = self.client.http
        channel = reply.key.thread_id or reply.key.chat_id  # a thread's messages live in the thread
        params = discord.http.handle_message_parameters(content=notice)
        for message_id in reply.message_ids[:1]:
            try:
                await http.edit_message(channel, message_id, params=params)
                return
            except discord.HTTPException as exc:  # deleted, or an interaction reply we cannot edit
                log.info("discord: interrupted reply %s not editable (%s)", reply.id, exc.status)
        await http.send_message(channel, params=discord.http.handle_message_parameters(content=notice))

    async def wait_ready(self, timeout: float | None = None) -> None:
        if self.client is None:
            raise RuntimeError("start() first")
        await asyncio.wait_for(self.client.wait_until_ready(), timeout)

    async def stop(self, grace: float = 10.0) -> None:
        client, task = self.client, self._task
        if client is None:
            return
        await client.drain(grace)
        await client.close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        self.client = self._task = None
        log.info("Discord adapter stopped")

    @staticmethod
    def _gateway_done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("Discord gateway stopped: %s", type(error).__name__, exc_info=error)

"""The discord.py client: slash commands, channel Q&A, feedback buttons."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import discord
import yarl
from discord import app_commands

from bots.discord import convert
from bots.discord.documents import FollowupTarget, attachment_upload
from bots.discord.sinks import USER_INSTALL_FOLLOWUPS, DiscordSink, InteractionTarget, MessageTarget, Target
from core.commands import COMMANDS
from core.manager import ConversationManager
from core.settings import Settings
from core.types import Incoming

log = logging.getLogger(__name__)

DISCORD_GATEWAY = "wss://gateway.discord.gg/"
FAILURE = "Sorry, something went wrong while answering. Please try again in a moment."
UNREADABLE = (
    "I can't read replies that don't ping me. Mention me, keep \"@ON\" (ping) when replying, or use /ask."
)


class FeedbackView(discord.ui.View):
    """👍/👎 under an answer. Persistent (fixed custom ids, no timeout) so clicks work after a restart."""

    def __init__(self, on_click: Callable[[discord.Interaction, int], Awaitable[None]] | None = None) -> None:
        super().__init__(timeout=None)
        self._on_click = on_click

    @discord.ui.button(emoji="👍", style=discord.ButtonStyle.secondary, custom_id="fb:+1")
    async def helpful(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self._on_click is not None:
            await self._on_click(interaction, 1)

    @discord.ui.button(emoji="👎", style=discord.ButtonStyle.secondary, custom_id="fb:-1")
    async def unhelpful(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self._on_click is not None:
            await self._on_click(interaction, -1)

    @classmethod
    def template(cls) -> FeedbackView:
        """Buttons to attach to a message. Stopped on purpose: discord.py would otherwise keep one
        view per answered message in memory forever; the one listener added in setup_hook
        handles every click by custom id."""
        view = cls()
        view.stop()
        return view


# The slash commands without arguments: (name, answered publicly). Descriptions come from the core's
# command table, like /help's text. /ask and /settings take arguments and are declared below.
ARGUMENT_FREE: tuple[tuple[str, bool], ...] = (
    ("reset", False),
    ("sources", False),
    ("forget", False),
    ("stats", False),
    ("retry", True),  # a new answer, public like /ask
    ("cancel", False),
    ("help", False),
)
ASK_ABOUT_MESSAGE = "Ask GhostLM about this message"  # message context menu (≤ 32 characters)
ASK_ABOUT_PROMPT = "Explain this message:"
NO_TEXT_TO_ASK_ABOUT = "That message has no text I can read (only attachments or embeds)."
# Everywhere: a server that added the bot, the bot's DMs, group DMs and servers the bot is not in
# (a user install). Both need the install types enabled in the Developer Portal (see the README).
EVERY_CONTEXT = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)
EVERY_INSTALL = app_commands.AppInstallationType(guild=True, user=True)


def followup_limit(interaction: discord.Interaction) -> int | None:
    """Discord's follow-up cap: 5 per interaction when only the user installed the app (a server
    or group DM that did not add the bot, or the bot's DM through a user install); else none."""
    if interaction.is_user_integration() and not interaction.is_guild_integration():
        return USER_INSTALL_FOLLOWUPS
    return None


def _describe(name: str) -> str:
    return COMMANDS.get(name, name)[:100]  # Discord's limit for command descriptions


class GhostClient(discord.Client):
    def __init__(
        self, settings: Settings, manager: ConversationManager, *, guild_ready_timeout: float = 2.0
    ) -> None:
        intents = discord.Intents.default()
        # Privileged, so off unless asked for: Discord delivers the text of DMs, mentions and
        # pinging replies without it; only replies with "ping" switched off need it.
        intents.message_content = settings.discord_message_content
        super().__init__(
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),  # model output never pings anyone
            guild_ready_timeout=guild_ready_timeout,
        )
        self.settings = settings
        self.manager = manager
        # Installable by a server and by a user, usable in servers, DMs and group DMs: the defaults for
        # every command (app_commands.allowed_installs / allowed_contexts, set once for the whole tree).
        self.tree = app_commands.CommandTree(
            self, allowed_contexts=EVERY_CONTEXT, allowed_installs=EVERY_INSTALL
        )
        self._tasks: set[asyncio.Task[object]] = set()
        self._accepting = True
        self._register_commands()

    # --- lifecycle -------------------------------------------------------------------
    async def setup_hook(self) -> None:
        self.add_view(FeedbackView(self._on_feedback))
        if self.settings.discord_guild_ids:
            for guild_id in sorted(self.settings.discord_guild_ids):
                guild = discord.Object(id=int(guild_id))
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_connect(self) -> None:
        # READY names a resume URL; behind a proxy (a non-default DISCORD_GATEWAY_URL) resumes
        # must go through the configured gateway too, or they would bypass the proxy.
        configured = self.settings.discord_gateway_url
        if configured.rstrip("/") != DISCORD_GATEWAY.rstrip("/") and self.ws is not None:
            self.ws.gateway = yarl.URL(configured)

    async def drain(self, timeout: float) -> None:
        """Stop taking new events and give replies in flight up to `timeout` seconds."""
        self._accepting = False
        pending = [task for task in self._tasks if not task.done()]
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=5)

    # --- channel Q&A -----------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        if self.user is None or message.author.bot or message.webhook_id is not None:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        if not convert.is_addressed(message, self.user):
            return  # an unaddressed guild message: no API call, nothing stored
        if not self._accepting:
            return
        with self._tracked():
            incoming = convert.from_message(message, self.user)
            if self._content_hidden(message):
                if self.manager.admits(incoming):  # allowed users only, and rate limited
                    await MessageTarget(message).private(UNREADABLE)
                return
            if message.attachments:
                await self._documents(message, incoming)
                if not incoming.text.strip():
                    return  # only files: nothing to answer
            await self._handle(incoming, MessageTarget(message), feedback=True)

    async def _documents(self, message: discord.Message, incoming: Incoming) -> None:
        """Index each attached file into the sender's private documents (one event per attachment)."""
        for number, attachment in enumerate(message.attachments):
            event = dataclasses.replace(incoming, event_id=f"{message.id}:file{number}")
            target = MessageTarget(message)
            try:
                await self.manager.handle_document(event, attachment_upload(attachment), DiscordSink(target))
            except Exception:
                log.exception("indexing a Discord attachment failed")
            finally:
                await target.finish()

    def _content_hidden(self, message: discord.Message) -> bool:
        """A reply that did not ping us, read without the Message Content intent: Discord sent it
        without its text, so answering "empty message" would be wrong."""
        if self.intents.message_content or message.guild is None or self.user is None:
            return False
        mentioned = any(user.id == self.user.id for user in message.mentions)
        return not mentioned and not message.content

    # --- slash commands --------------------------------------------------------------
    def _register_commands(self) -> None:
        tree = self.tree
        for name, public in ARGUMENT_FREE:
            tree.add_command(
                app_commands.Command(
                    name=name, description=_describe(name), callback=self._argument_free(name, public)
                )
            )

        @tree.command(name="ask", description=_describe("ask"))
        @app_commands.describe(
            question="Your question",
            file="A PDF, Markdown, text or HTML document to index privately for you first",
        )
        async def ask(
            interaction: discord.Interaction, question: str, file: discord.Attachment | None = None
        ) -> None:
            if file is not None:
                await self._ask_with_file(interaction, question, file)
                return
            # Through the core's /ask, so a question that starts with "/" is still a question.
            await self._slash(interaction, f"/ask {question}", public=True)

        @tree.command(name="docs", description=_describe("docs"))
        @app_commands.describe(delete="Delete document number N of the list")
        async def docs(interaction: discord.Interaction, delete: int | None = None) -> None:
            await self._slash(interaction, "/docs" if delete is None else f"/docs delete {delete}")

        @tree.command(name="settings", description=_describe("settings"))
        @app_commands.describe(key="Setting to change (leave empty to list them)", value="New value")
        async def settings(
            interaction: discord.Interaction, key: str | None = None, value: str | None = None
        ) -> None:
            text = " ".join(part.strip() for part in ("/settings", key or "", value or "") if part.strip())
            await self._slash(interaction, text)

        @tree.context_menu(name=ASK_ABOUT_MESSAGE)
        async def ask_about(interaction: discord.Interaction, message: discord.Message) -> None:
            text = message.content.strip()
            if not text:
                await interaction.response.send_message(NO_TEXT_TO_ASK_ABOUT, ephemeral=True)
                return
            await self._slash(interaction, f"/ask {ASK_ABOUT_PROMPT}\n\n{text}", public=True)

        tree.on_error = self._on_tree_error

    def _argument_free(
        self, name: str, public: bool
    ) -> Callable[[discord.Interaction], Coroutine[Any, Any, None]]:
        async def callback(interaction: discord.Interaction) -> None:
            await self._slash(interaction, f"/{name}", public=public)

        return callback

    async def _slash(self, interaction: discord.Interaction, text: str, *, public: bool = False) -> None:
        if not self._accepting:
            await interaction.response.send_message(
                "I'm restarting, please try again in a minute.", ephemeral=True
            )
            return
        with self._tracked():
            # Acknowledge first, before any storage or queue work: Discord drops interactions that
            # are not answered within 3 seconds, however long the generation queue is.
            await interaction.response.defer(thinking=True, ephemeral=not public)
            incoming = convert.from_interaction(interaction, text)
            if not public:  # only the user sees the reply: a private context (their documents, /docs)
                incoming = dataclasses.replace(incoming, ephemeral=True)
            target = InteractionTarget(interaction, public=public, followup_limit=followup_limit(interaction))
            await self._handle(incoming, target, feedback=public)

    async def _ask_with_file(
        self, interaction: discord.Interaction, question: str, file: discord.Attachment
    ) -> None:
        """`/ask file:`: index the file privately, then answer the question, all ephemeral (a private context,
        so the answer may use the new document wherever the command was used)."""
        if not self._accepting:
            await interaction.response.send_message(
                "I'm restarting, please try again in a minute.", ephemeral=True
            )
            return
        with self._tracked():
            await interaction.response.defer(thinking=True, ephemeral=True)
            base = dataclasses.replace(
                convert.from_interaction(interaction, f"/ask {question}"), ephemeral=True
            )
            upload = dataclasses.replace(base, event_id=f"{interaction.id}:file", text="")
            status = InteractionTarget(interaction, public=False)
            try:
                await self.manager.handle_document(upload, attachment_upload(file), DiscordSink(status))
            except Exception:
                log.exception("indexing a Discord attachment failed")
            target = FollowupTarget(interaction, followup_limit=followup_limit(interaction))
            await self._handle(base, target, feedback=False)

    async def _on_tree_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        log.error("slash command /%s failed", getattr(interaction.command, "name", "?"), exc_info=error)

    # --- shared ------------------------------------------------------------------------
    async def _handle(self, incoming: Incoming, target: Target, *, feedback: bool) -> None:
        sink = DiscordSink(target, feedback_view=FeedbackView.template() if feedback else None)
        try:
            await self.manager.handle(incoming, sink)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling Discord event %s failed", incoming.event_id)
            try:
                await sink.notice(FAILURE, ephemeral=True)
            except discord.HTTPException:
                log.warning("could not tell the user about the failure")
        finally:
            await target.finish()

    @property
    def in_flight(self) -> int:
        """Events being answered right now."""
        return sum(1 for task in self._tasks if not task.done())

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _on_feedback(self, interaction: discord.Interaction, rating: int) -> None:
        message = interaction.message
        if message is None:
            await interaction.response.send_message("That answer is gone.", ephemeral=True)
            return
        chat_id, _, chat_kind = convert.location(interaction.channel, interaction.guild_id)
        if interaction.channel is None and interaction.channel_id is not None:
            chat_id = str(interaction.channel_id)
        saved = await self.manager.record_feedback(
            platform=convert.PLATFORM,
            chat_id=chat_id,
            user_id=str(interaction.user.id),
            platform_message_id=str(message.id),
            rating=rating,
            chat_kind=chat_kind,
            guild_id=str(interaction.guild_id) if interaction.guild_id else None,
            role_ids=convert.role_ids(interaction.user),
        )
        reply = (
            "Thanks for the feedback!"
            if saved
            else "I couldn't find that answer any more, so nothing was saved."
        )
        await interaction.response.send_message(reply, ephemeral=True)

"""The discord.py client: slash commands, channel Q&A, feedback buttons."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterator

import discord
import yarl
from discord import app_commands

from bots.discord import convert
from bots.discord.documents import FollowupTarget, attachment_upload
from bots.discord.sinks import DiscordSink, InteractionTarget, MessageTarget, Target
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


def _describe(name: str, fallback: str) -> str:
    """Slash-command descriptions come from the core's command table, like /help's text."""
    return COMMANDS.get(name, fallback)[:100]  # Discord's limit for command descriptions


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
        self.tree = app_commands.CommandTree(self)
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
            if self._content_hidden(message):
                await MessageTarget(message).private(UNREADABLE)
                return
            incoming = convert.from_message(message, self.user)
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

        @tree.command(name="ask", description=_describe("ask", "Ask the cybersecurity assistant a question"))
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

        @tree.command(name="docs", description=_describe("docs", "Your private documents"))
        @app_commands.describe(delete="Delete document number N of the list")
        async def docs(interaction: discord.Interaction, delete: int | None = None) -> None:
            await self._slash(interaction, "/docs" if delete is None else f"/docs delete {delete}")

        @tree.command(name="reset", description=_describe("reset", "Start a new conversation"))
        async def reset(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/reset")

        @tree.command(name="sources", description=_describe("sources", "Show the sources of the last answer"))
        async def sources(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/sources")

        @tree.command(name="forget", description=_describe("forget", "Delete everything stored about you"))
        async def forget(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/forget")

        @tree.command(name="settings", description=_describe("settings", "Show or change your settings"))
        @app_commands.describe(key="Setting to change (leave empty to list them)", value="New value")
        async def settings(
            interaction: discord.Interaction, key: str | None = None, value: str | None = None
        ) -> None:
            text = " ".join(part.strip() for part in ("/settings", key or "", value or "") if part.strip())
            await self._slash(interaction, text)

        @tree.command(name="stats", description=_describe("stats", "Usage statistics"))
        async def stats(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/stats")

        @tree.command(name="retry", description=_describe("retry", "Regenerate the last answer"))
        async def retry(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/retry", public=True)

        @tree.command(
            name="cancel",
            description=_describe("cancel", "Stop your question that is waiting or being answered"),
        )
        async def cancel(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/cancel")

        @tree.command(name="help", description=_describe("help", "What this bot can do"))
        async def help_(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/help")

        tree.on_error = self._on_tree_error

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
            await self._handle(incoming, InteractionTarget(interaction, public=public), feedback=public)

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
            await self._handle(base, FollowupTarget(interaction), feedback=False)

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

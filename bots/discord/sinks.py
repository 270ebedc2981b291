"""`ReplySink`s for Discord: one streaming/splitting policy, two transports.

An interaction reply lives in the deferred "original response" plus webhook follow-ups; a
channel reply lives in a reply to the user's message plus further channel messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

import discord

from bots import render
from bots.render import split_message
from bots.streaming import ThrottledEditor
from core.types import Answer, Source

log = logging.getLogger(__name__)

LIMIT = 2000  # Discord's message content limit, in characters
PLACEHOLDER = "⏳ Working on it…"
EMPTY_ANSWER = "(The model returned an empty answer.)"


def render_answer(answer: Answer) -> str:
    """The final text: answer body, then a sources footer (links in <> so Discord adds no previews)."""
    body = answer.text.strip() or EMPTY_ANSWER
    footer = sources_footer(render.cited_sources(answer.text, answer.sources))
    return f"{body}\n\n{footer}" if footer else body


def sources_footer(sources: Sequence[Source]) -> str:
    return render.sources_footer(
        sources, heading="**Sources**", escape=discord.utils.escape_markdown, link=lambda url: f"<{url}>"
    )


def preview(text: str) -> str:
    """What a streaming edit shows: plain text, cut to fit one message (the final reply splits)."""
    return text if len(text) <= LIMIT else text[: LIMIT - 2].rstrip() + " …"


class Target(Protocol):
    """Where one reply goes on Discord."""

    async def set_primary(self, text: str, view: discord.ui.View | None = None) -> int:
        """Create or replace the main reply message; returns its id."""

    async def add(self, text: str, view: discord.ui.View | None = None) -> int:
        """Another public message after the main one; returns its id."""

    async def private(self, text: str) -> None:
        """A message only the user sees where Discord allows it (ephemeral)."""

    async def status(self, text: str) -> None:
        """A transient progress line (queue position), updated in place."""

    async def typing(self) -> None:
        """Show that an answer is being produced."""

    async def finish(self) -> None:
        """Tidy up after the core is done with this reply."""


class DiscordSink:
    """Streams partial text into the main message (≤ 1 edit/s), then splits the final answer."""

    def __init__(
        self,
        target: Target,
        *,
        feedback_view: discord.ui.View | None = None,
        min_interval: float = 1.0,
    ) -> None:
        self._target = target
        self._feedback_view = feedback_view
        self._editor = ThrottledEditor(self._stream_edit, min_interval=min_interval)
        self._lock = asyncio.Lock()  # orders a late streaming edit before the final edit
        self._final = False
        self.delivered_ids: list[int] = []

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        for part in split_message(text, LIMIT):  # [] for blank text: Discord rejects empty messages
            if ephemeral:
                await self._target.private(part)
            elif not self.delivered_ids:
                self.delivered_ids.append(await self._target.set_primary(part))
            else:
                self.delivered_ids.append(await self._target.add(part))

    async def queued(self, position: int, eta_seconds: float) -> None:
        ahead = "you are next" if position <= 1 else f"position {position}"
        await self._target.status(f"⏳ Waiting in the queue ({ahead}, about {max(1, round(eta_seconds))} s).")

    async def started(self) -> None:
        await self._target.typing()

    async def partial(self, text_so_far: str) -> None:
        await self._editor.update(preview(text_so_far))

    async def final(self, answer: Answer) -> Sequence[str]:
        async with self._lock:
            self._final = True  # a streaming edit that is still queued must not overwrite this
        if answer.finish_reason not in ("stop", "length") and not self._editor.sent_text:
            # Nothing of an answer was shown: the failure is a notice for the asker only.
            for text in (answer.text, *answer.notices):
                await self.notice(text, ephemeral=True)
            return []
        parts = split_message(render_answer(answer), LIMIT) or [EMPTY_ANSWER]
        rated = answer.finish_reason in ("stop", "length") and bool(answer.text.strip())
        ids: list[int] = []
        for index, part in enumerate(parts):
            view = self._feedback_view if rated and index == len(parts) - 1 else None
            if index == 0:
                ids.append(await self._target.set_primary(part, view))
            else:
                ids.append(await self._target.add(part, view))
        self.delivered_ids = ids
        for extra in answer.notices:
            await self._target.private(extra)
        return [str(message_id) for message_id in ids]

    async def _stream_edit(self, text: str) -> None:
        async with self._lock:
            if not self._final:
                await self._target.set_primary(text)


class InteractionTarget:
    """A deferred slash-command reply: the original response plus webhook follow-ups.

    Discord gives the first follow-up after a defer the defer's visibility, so an ephemeral
    notice on a public defer first resolves the original with a placeholder (deleted at the
    end if no answer replaced it)."""

    def __init__(self, interaction: discord.Interaction, *, public: bool) -> None:
        self._interaction = interaction
        self._public = public
        self._resolved = False  # the original response shows something (no longer "thinking")
        self._placeholder = False  # what it shows is only our placeholder
        self._status_message: discord.WebhookMessage | None = None

    async def set_primary(self, text: str, view: discord.ui.View | None = None) -> int:
        kwargs = {"view": view} if view is not None else {}
        message = await self._interaction.edit_original_response(content=text, **kwargs)
        self._resolved, self._placeholder = True, False
        return message.id

    async def add(self, text: str, view: discord.ui.View | None = None) -> int:
        kwargs = {"view": view} if view is not None else {}
        message = await self._interaction.followup.send(text, ephemeral=not self._public, wait=True, **kwargs)
        return message.id

    async def private(self, text: str) -> None:
        if not self._resolved:
            if not self._public:
                await self.set_primary(text)
                return
            await self._interaction.edit_original_response(content=PLACEHOLDER)
            self._resolved, self._placeholder = True, True
        await self._interaction.followup.send(text, ephemeral=True, wait=True)

    async def status(self, text: str) -> None:
        if self._status_message is not None:
            with contextlib.suppress(discord.HTTPException):  # progress only: never fail the reply
                await self._status_message.edit(content=text)
            return
        if not self._resolved and self._public:
            await self._interaction.edit_original_response(content=PLACEHOLDER)
            self._resolved, self._placeholder = True, True
        self._status_message = await self._interaction.followup.send(text, ephemeral=True, wait=True)

    async def typing(self) -> None:
        """The deferred response already shows "… is thinking"."""

    async def finish(self) -> None:
        if self._resolved and not self._placeholder:
            return
        # Nothing (or only our placeholder) in the original response: remove it rather than
        # leave "is thinking…" or "Working on it…" in the channel forever.
        with contextlib.suppress(discord.HTTPException):
            await self._interaction.delete_original_response()


class MessageTarget:
    """A channel or DM reply: a reply to the user's message, then plain channel messages."""

    TYPING_EVERY = 8.0  # Discord shows typing for ~10 s per trigger

    def __init__(self, message: discord.Message) -> None:
        self._message = message
        self._primary: discord.Message | None = None
        self._typing_task: asyncio.Task[None] | None = None

    async def set_primary(self, text: str, view: discord.ui.View | None = None) -> int:
        self._stop_typing()
        kwargs = {"view": view} if view is not None else {}
        if self._primary is None:
            self._primary = await self._message.reply(text, mention_author=False, **kwargs)
        else:
            self._primary = await self._primary.edit(content=text, **kwargs)
        return self._primary.id

    async def add(self, text: str, view: discord.ui.View | None = None) -> int:
        kwargs = {"view": view} if view is not None else {}
        message = await self._message.channel.send(text, **kwargs)
        return message.id

    async def private(self, text: str) -> None:
        # Channel messages cannot be ephemeral: a separate reply keeps it apart from the answer.
        self._stop_typing()
        await self._message.reply(text, mention_author=False)

    async def status(self, text: str) -> None:
        await self.set_primary(text)

    async def typing(self) -> None:
        if self._typing_task is None and self._primary is None:
            self._typing_task = asyncio.create_task(self._keep_typing())

    async def finish(self) -> None:
        self._stop_typing()

    async def _keep_typing(self) -> None:
        try:
            while True:
                await self._message.channel.typing()
                await asyncio.sleep(self.TYPING_EVERY)
        except discord.HTTPException as error:  # cosmetic: the answer still follows
            log.debug("typing indicator failed: %s", error.status)

    def _stop_typing(self) -> None:
        if self._typing_task is not None:
            self._typing_task.cancel()
            self._typing_task = None

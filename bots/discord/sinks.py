"""`ReplySink`s for Discord: one streaming/splitting policy, two transports.

An interaction reply lives in the deferred "original response" plus webhook follow-ups; a
channel reply lives in a reply to the user's message plus further channel messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Protocol

import discord

from bots import render
from bots.render import split_message
from bots.streaming import ThrottledEditor
from core.types import Answer, MessageListener, Source

log = logging.getLogger(__name__)

LIMIT = 2000  # Discord's message content limit, in characters
PLACEHOLDER = "⏳ Working on it…"
EMPTY_ANSWER = "(The model returned an empty answer.)"
# Discord allows 5 follow-ups per interaction when only the user installed the app (not the server).
USER_INSTALL_FOLLOWUPS = 5
CUT_NOTE = "(Cut short: Discord allows only {n} follow-up messages here. Ask me in a DM for the rest.)"


_MASKED_LINK = re.compile(r"\]\s*\(")


def unmask_links(text: str) -> str:
    """Break Discord masked links (`[text](url)`) from documents or model output: shown as typed, the real
    URL visible, never a link whose label hides where it goes (a zero-width space between `]` and `(`)."""
    return _MASKED_LINK.sub(lambda m: m.group(0)[0] + "\u200b" + m.group(0)[1:], text)


_URL_UNSAFE = {">": "%3E", "<": "%3C", " ": "%20", "[": "%5B", "]": "%5D", "(": "%28", ")": "%29", "\n": ""}


def _link(url: str) -> str:
    """A URL in <> (no preview card); characters that could close the <> or form markdown are encoded."""
    return "<" + "".join(_URL_UNSAFE.get(c, c) for c in url) + ">"


def render_answer(answer: Answer) -> str:
    """The final text: answer body, then a sources footer (links in <> so Discord adds no previews)."""
    body = unmask_links(answer.text.strip()) or EMPTY_ANSWER
    footer = sources_footer(render.cited_sources(answer.text, answer.sources))
    return f"{body}\n\n{footer}" if footer else body


def sources_footer(sources: Sequence[Source]) -> str:
    return render.sources_footer(
        sources,
        heading="**Sources**",
        escape=lambda t: unmask_links(discord.utils.escape_markdown(t)),
        link=_link,
    )


def preview(text: str) -> str:
    """What a streaming edit shows: plain text, cut to fit one message (the final reply splits)."""
    text = unmask_links(text)
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

    def room(self) -> int | None:
        """How many more messages may follow the main one (None: no limit)."""


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
        self._listener: MessageListener | None = None

    def on_message(self, listener: MessageListener) -> None:
        """`core.types.ReportsMessages`: every public message of this reply is reported (crash repair edits it)."""
        self._listener = listener

    def _report(self, message_id: int) -> int:
        if self._listener is not None:
            self._listener(str(message_id))
        return message_id

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        for part in split_message(text, LIMIT):  # [] for blank text: Discord rejects empty messages
            if ephemeral:
                await self._target.private(part)
            elif not self.delivered_ids:
                self.delivered_ids.append(self._report(await self._target.set_primary(part)))
            else:
                self.delivered_ids.append(self._report(await self._target.add(part)))

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
        parts = fit_parts(split_message(render_answer(answer), LIMIT) or [EMPTY_ANSWER], self._target.room())
        rated = answer.finish_reason in ("stop", "length") and bool(answer.text.strip())
        ids: list[int] = []
        for index, part in enumerate(parts):
            view = self._feedback_view if rated and index == len(parts) - 1 else None
            if index == 0:
                ids.append(self._report(await self._target.set_primary(part, view)))
            else:
                ids.append(self._report(await self._target.add(part, view)))
        self.delivered_ids = ids
        for extra in answer.notices:
            await self._target.private(extra)
        return [str(message_id) for message_id in ids]

    async def _stream_edit(self, text: str) -> None:
        async with self._lock:
            if not self._final:
                self._report(await self._target.set_primary(text))


def fit_parts(parts: list[str], room: int | None) -> list[str]:
    """The main message plus at most `room` more; a cut answer ends with a note saying why."""
    if room is None or len(parts) <= room + 1:
        return parts
    kept = parts[: room + 1]
    note = CUT_NOTE.format(n=USER_INSTALL_FOLLOWUPS)
    last = split_message(kept[-1], LIMIT - len(note) - 2)
    kept[-1] = f"{last[0] if last else ''}\n\n{note}".strip()
    return kept


class InteractionTarget:
    """A deferred slash-command reply: the original response plus webhook follow-ups.

    Discord gives the first follow-up after a defer the defer's visibility, so an ephemeral
    notice on a public defer first resolves the original with a placeholder (deleted at the
    end if no answer replaced it). `followup_limit` caps the follow-ups (a user install in a
    place that did not add the bot gets 5); past it, private notices are dropped (logged)."""

    def __init__(
        self, interaction: discord.Interaction, *, public: bool, followup_limit: int | None = None
    ) -> None:
        self._interaction = interaction
        self._public = public
        self._followup_limit = followup_limit
        self._followups = 0
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
        self._followups += 1
        message = await self._interaction.followup.send(text, ephemeral=not self._public, wait=True, **kwargs)
        return message.id

    def room(self) -> int | None:
        if self._followup_limit is None:
            return None
        return max(0, self._followup_limit - self._followups)

    async def private(self, text: str) -> None:
        if not self._resolved:
            if not self._public:
                await self.set_primary(text)
                return
            await self._interaction.edit_original_response(content=PLACEHOLDER)
            self._resolved, self._placeholder = True, True
        if self.room() == 0:
            log.warning(
                "interaction %s: follow-up limit reached, a notice was not sent", self._interaction.id
            )
            return
        self._followups += 1
        await self._interaction.followup.send(text, ephemeral=True, wait=True)

    async def status(self, text: str) -> None:
        if self._status_message is not None:
            with contextlib.suppress(discord.HTTPException):  # progress only: never fail the reply
                await self._status_message.edit(content=text)
            return
        if self.room() is not None:
            return  # follow-ups are scarce here: keep them for the answer ("thinking…" is shown)
        if not self._resolved and self._public:
            await self._interaction.edit_original_response(content=PLACEHOLDER)
            self._resolved, self._placeholder = True, True
        self._followups += 1
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

    def room(self) -> int | None:
        return None  # channel messages: as many as the answer needs

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

"""`TelegramSink`: one reply in one chat — typing, a streamed plain-text message, the rendered final."""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from bots.render import cited_sources, sources_footer, split_message, utf16_len
from bots.streaming import ThrottledEditor
from bots.telegram.markup import to_telegram_html
from core.types import Answer, MessageListener

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 4096  # Telegram's limit, in UTF-16 code units after entity parsing
STREAM_LIMIT = 4000  # while streaming, longer text is shown cut (the final splits it properly)
TYPING_REFRESH_S = 4.5  # Telegram shows "typing…" for 5 s
FEEDBACK_UP, FEEDBACK_DOWN = "fb:+1", "fb:-1"
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)  # source URLs would otherwise unfurl
_FINAL_RETRIES = 5  # RetryAfter that outlived the rate limiter's own retries: the final is never dropped
# How a reply streams: "draft" = sendMessageDraft previews (private chats only), "edit" = one message
# edited in place, "off" = no streaming (typing until the finished answer).
StreamingMode = Literal["draft", "edit", "off"]
# A draft call answered with one of these means "not here" (an older Bot API server, a chat that is
# not private): that chat streams by edits from then on. A 429 or a network hiccup only skips a draft.
_DRAFT_UNSUPPORTED = (BadRequest, InvalidToken, EndPointNotFound, Forbidden)


class DraftChats:
    """Which chats may stream through drafts: one shared memory per adapter.

    A chat whose draft call failed with "unsupported" is remembered and streams by edits for the
    rest of this process (a restart tries drafts again, e.g. after a Bot API server upgrade)."""

    def __init__(self) -> None:
        self._unsupported: set[int] = set()

    def usable(self, chat_id: int) -> bool:
        return chat_id not in self._unsupported

    def unsupported(self, chat_id: int) -> None:
        self._unsupported.add(chat_id)


def new_draft_id() -> int:
    """A non-zero draft id (Telegram animates changes of drafts with the same id): one per answer."""
    return secrets.randbelow(2**31 - 1) + 1


def feedback_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("👍", callback_data=FEEDBACK_UP),
                InlineKeyboardButton("👎", callback_data=FEEDBACK_DOWN),
            ]
        ]
    )


def _not_modified(exc: BadRequest) -> bool:
    return "not modified" in exc.message.lower()


def _bad_entities(exc: BadRequest) -> bool:
    text = exc.message.lower()
    return "can't parse entities" in text or "can't find end" in text or "unsupported start tag" in text


class TelegramSink:
    """Implements `core.types.ReplySink` for one incoming message.

    While streaming (`streaming="edit"`), one plain-text message is edited through a
    `ThrottledEditor` (≤ 1 edit per `min_interval`, only after `min_growth` new characters). The
    final answer replaces it with HTML, split at 4096 units, the sources footer and 👍/👎 on the last
    part. With `streaming="draft"` (private chats) the same throttled text goes to one message
    draft (`sendMessageDraft`, one `draft_id` per answer) and the final answer is sent as new
    messages, which replace the draft in the client; if the draft call is refused, the chat is
    remembered in `drafts` and this reply carries on by edits. `streaming="off"` shows typing only.
    """

    def __init__(
        self,
        bot: Bot,
        chat_id: int,
        *,
        thread_id: int | None = None,
        reply_to: int | None = None,
        min_interval: float = 1.0,
        min_growth: int = 40,
        streaming: StreamingMode = "edit",
        drafts: DraftChats | None = None,
    ) -> None:
        self._bot = bot
        self._drafts = drafts or DraftChats()
        if streaming == "draft" and not self._drafts.usable(chat_id):
            streaming = "edit"
        self.streaming: StreamingMode = streaming
        self._draft_id = new_draft_id() if streaming == "draft" else 0
        self._drafted = False  # a draft of this answer is on the user's screen
        self._chat_id = chat_id
        self._thread_id = thread_id
        self._reply_to = reply_to
        self._min_interval = min_interval
        self._message_id: int | None = None  # the status / streamed message, edited in place
        self._streamed = False  # the message holds answer text (not only a queue status)
        self._shown = ""  # the text that message shows now
        self._last_write = 0.0  # monotonic time of the last send/edit of that message
        self._io = asyncio.Lock()  # one write at a time; the final waits for an edit in flight
        self._done = False
        self._started_at: float | None = None
        self._edit_task: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = None
        self._editor = ThrottledEditor(self._stream_edit, min_interval=min_interval, min_growth=min_growth)
        self._listener: MessageListener | None = None

    def on_message(self, listener: MessageListener) -> None:
        """`core.types.ReportsMessages`: every message this reply sends is reported (crash repair edits it)."""
        self._listener = listener

    # --- ReplySink ----------------------------------------------------------------------
    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        """Telegram has no ephemeral messages: a notice is a normal (split if long) message."""
        self._stop_typing()
        parts = split_message(text, MESSAGE_LIMIT, measure=utf16_len) or [text.strip() or "…"]
        async with self._io:
            for index, part in enumerate(parts):
                if index == 0 and self._message_id is not None and not self._streamed:
                    # Replace a queue status ("⏳ #2 in the queue") instead of leaving it behind.
                    await self._deliver(part, None, message_id=self._message_id)
                    self._message_id = None
                else:
                    await self._deliver(part, None)

    async def queued(self, position: int, eta_seconds: float) -> None:
        text = f"⏳ You are #{position} in the queue (about {max(1, round(eta_seconds))} s)."
        async with self._io:
            if self._done or self._streamed:
                return
            try:
                if self._message_id is None:
                    message = await self._call(self._send_message, text, None, None)
                    self._message_id, self._shown = message.message_id, text
                    self._last_write = time.monotonic()
                elif time.monotonic() - self._last_write >= self._min_interval:
                    await self._write_stream(text)
            except TelegramError as exc:  # a status line is cosmetic: the answer still comes
                log.info("queue status in chat %s not shown: %s", self._chat_id, type(exc).__name__)

    async def started(self) -> None:
        self._started_at = time.monotonic()
        if self._typing is None and not self._done:
            self._typing = asyncio.create_task(self._keep_typing(), name=f"typing:{self._chat_id}")

    async def partial(self, text_so_far: str) -> None:
        if self.streaming == "off":
            return
        # Edits run beside the stream, so a slow Telegram (or a 429 pause) never holds up the
        # reply; while one is in flight, newer text waits for the next partial or the final.
        if self._done or (self._edit_task is not None and not self._edit_task.done()):
            return
        self._edit_task = asyncio.create_task(self._editor.update(text_so_far), name=f"edit:{self._chat_id}")
        self._edit_task.add_done_callback(_log_failure)

    async def final(self, answer: Answer) -> Sequence[str]:
        self._done = True  # from here on, stream edits still queued in the editor are dropped
        self._stop_typing()
        body = answer.text.strip()
        if not body:
            body = "Cancelled." if answer.finish_reason == "cancelled" else "I could not produce an answer."
        if answer.notices:
            body = "\n".join(f"ℹ️ {notice}" for notice in answer.notices) + "\n\n" + body
        parts = [(part, "") for part in split_message(body, MESSAGE_LIMIT, measure=utf16_len)]
        footer = sources_footer(cited_sources(answer.text, answer.sources))
        if footer:
            last, _ = parts[-1]
            if utf16_len(f"{last}\n\n{footer}") <= MESSAGE_LIMIT:
                parts[-1] = (last, footer)
            else:
                parts += [("", piece) for piece in split_message(footer, MESSAGE_LIMIT, measure=utf16_len)]
        keyboard = feedback_keyboard() if answer.finish_reason in ("stop", "length") else None
        ids: list[str] = []
        async with self._io:
            for index, (text, foot) in enumerate(parts):
                markup = keyboard if index == len(parts) - 1 else None
                rendered = "\n\n".join(
                    p for p in (to_telegram_html(text) if text else "", _html_escape(foot)) if p
                )
                plain = "\n\n".join(p for p in (text, foot) if p)
                if index == 0 and self._message_id is not None:
                    message_id = await self._deliver(
                        plain, rendered, message_id=self._message_id, markup=markup
                    )
                else:
                    message_id = await self._deliver(plain, rendered, markup=markup)
                ids.append(str(message_id))
        return ids

    # --- streaming ------------------------------------------------------------------------
    async def _stream_edit(self, text: str) -> None:
        """The ThrottledEditor's edit: a draft, or first text → sendMessage (or edit the queue status)."""
        if utf16_len(text) > STREAM_LIMIT:
            text = split_message(text, STREAM_LIMIT - 2, measure=utf16_len)[0] + " …"
        async with self._io:
            if self._done or text == self._shown:
                return
            if self.streaming == "draft" and await self._write_draft(text):
                return
            self._streamed = True
            self._stop_typing()
            if self._message_id is None:
                if self._started_at is None:
                    self._started_at = time.monotonic()
                if time.monotonic() - self._started_at < self._min_interval:
                    # A fast answer arrives as one finished message instead of a send + edit.
                    return
                try:
                    message = await self._call(self._send_message, text, None, None)
                except TelegramError as exc:  # the final answer will be sent as a new message
                    log.info("stream start in chat %s failed: %s", self._chat_id, type(exc).__name__)
                    return
                self._message_id, self._shown, self._last_write = message.message_id, text, time.monotonic()
                return
            # A queue status was just written: keep the one-edit-per-interval floor.
            wait = self._min_interval - (time.monotonic() - self._last_write)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self._write_stream(text)
            except (
                TelegramError
            ) as exc:  # e.g. a 429 the limiter gave up on: the next edit or the final carries it
                log.info("stream edit in chat %s skipped: %s", self._chat_id, type(exc).__name__)

    async def _write_draft(self, text: str) -> bool:
        """Show `text` as this answer's draft. False when the chat turned out not to support drafts
        (the caller then streams by edits); a skipped draft (429, network) still counts as handled."""
        if not self._drafted:
            if self._started_at is None:
                self._started_at = time.monotonic()
            if time.monotonic() - self._started_at < self._min_interval:
                return True  # a fast answer arrives as one finished message, no draft at all
        try:
            await self._bot.send_message_draft(
                self._chat_id, self._draft_id, text, message_thread_id=self._thread_id
            )
        except _DRAFT_UNSUPPORTED as exc:
            log.info(
                "chat %s: drafts refused (%s); streaming by edits from now on",
                self._chat_id,
                type(exc).__name__,
            )
            self._drafts.unsupported(self._chat_id)
            self.streaming = "edit"
            return False
        except TelegramError as exc:  # e.g. a 429 the limiter gave up on: the next draft carries it
            log.info("draft in chat %s skipped: %s", self._chat_id, type(exc).__name__)
            return True
        self._streamed = True
        self._stop_typing()
        self._shown, self._last_write = text, time.monotonic()
        if not self._drafted and self._message_id is not None:
            # The draft takes over from a queue status: remove the status instead of leaving it behind.
            status, self._message_id = self._message_id, None
            try:
                await self._bot.delete_message(self._chat_id, status)
            except TelegramError as exc:
                log.info("queue status in chat %s not removed: %s", self._chat_id, type(exc).__name__)
        self._drafted = True
        return True

    async def _write_stream(self, text: str) -> None:
        assert self._message_id is not None
        try:
            await self._bot.edit_message_text(text, chat_id=self._chat_id, message_id=self._message_id)
        except BadRequest as exc:
            if not _not_modified(exc):
                raise
        self._shown, self._last_write = text, time.monotonic()

    async def _keep_typing(self) -> None:
        try:
            while not self._done and not self._streamed:
                await self._bot.send_chat_action(
                    self._chat_id, ChatAction.TYPING, message_thread_id=self._thread_id
                )
                await asyncio.sleep(TYPING_REFRESH_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # typing is cosmetic: never fail a reply over it
            log.debug("typing action failed in chat %s: %s", self._chat_id, type(exc).__name__)

    def _stop_typing(self) -> None:
        if self._typing is not None and self._typing is not asyncio.current_task():
            self._typing.cancel()
        self._typing = None

    # --- delivery ---------------------------------------------------------------------------
    async def _deliver(
        self,
        plain: str,
        rendered: str | None,
        *,
        message_id: int | None = None,
        markup: InlineKeyboardMarkup | None = None,
    ) -> int:
        """Send (or edit `message_id` into) one message, HTML first, plain text if Telegram
        rejects the entities. "Message is not modified" counts as delivered."""
        write = self._send_message if message_id is None else self._edit(message_id)
        try:
            if rendered is not None:
                try:
                    return (await self._call(write, rendered, ParseMode.HTML, markup)).message_id
                except BadRequest as exc:
                    if not _bad_entities(exc):
                        raise
                    log.warning(
                        "chat %s: Telegram rejected the HTML (%s); sending plain text",
                        self._chat_id,
                        exc.message,
                    )
            return (await self._call(write, plain, None, markup)).message_id
        except BadRequest as exc:
            if message_id is not None and _not_modified(exc):
                return message_id
            raise

    async def _call(
        self,
        write: Callable[[str, str | None, InlineKeyboardMarkup | None], Awaitable[Message]],
        text: str,
        parse_mode: str | None,
        markup: InlineKeyboardMarkup | None,
    ) -> Message:
        # AIORateLimiter already waits out 429s; this outer loop only catches one that outlived
        # its retries, because a finished answer must be delayed, never lost.
        for attempt in range(_FINAL_RETRIES + 1):
            try:
                return await write(text, parse_mode, markup)
            except RetryAfter as exc:
                if attempt == _FINAL_RETRIES:
                    raise
                await asyncio.sleep(_retry_seconds(exc) + 0.1)
        raise AssertionError("unreachable")

    async def _send_message(
        self, text: str, parse_mode: str | None, markup: InlineKeyboardMarkup | None
    ) -> Message:
        reply = ReplyParameters(self._reply_to, allow_sending_without_reply=True) if self._reply_to else None
        message = await self._bot.send_message(
            self._chat_id,
            text,
            parse_mode=parse_mode,
            reply_markup=markup,
            message_thread_id=self._thread_id,
            reply_parameters=reply,
            link_preview_options=_NO_PREVIEW,
        )
        if self._listener is not None:
            self._listener(str(message.message_id))
        return message

    def _edit(
        self, message_id: int
    ) -> Callable[[str, str | None, InlineKeyboardMarkup | None], Awaitable[Message]]:
        async def edit(text: str, parse_mode: str | None, markup: InlineKeyboardMarkup | None) -> Message:
            for attempt in range(_FINAL_RETRIES + 1):
                # Every edit of one message keeps the streaming floor, the final one included.
                wait = self._min_interval - (time.monotonic() - self._last_write)
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    result: Any = await self._bot.edit_message_text(
                        text,
                        chat_id=self._chat_id,
                        message_id=message_id,
                        parse_mode=parse_mode,
                        reply_markup=markup,
                        link_preview_options=_NO_PREVIEW,
                    )
                except NetworkError as exc:
                    # An edit is idempotent: a 5xx or a reset connection is retried (if the lost attempt
                    # took effect, the retry gets "not modified", which counts as delivered).
                    if isinstance(exc, BadRequest) or attempt == _FINAL_RETRIES:
                        raise
                    log.info("edit in chat %s failed (%s); retrying", self._chat_id, type(exc).__name__)
                    self._last_write = time.monotonic()  # back off one interval
                    continue
                self._shown, self._last_write = text, time.monotonic()
                return result  # a Message for bot messages (True only for inline messages)
            raise AssertionError("unreachable")

        return edit


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("stream edit failed: %s", type(task.exception()).__name__)


def _html_escape(text: str) -> str:
    return html.escape(text, quote=False)


def _retry_seconds(exc: RetryAfter) -> float:
    # `retry_after` warns (it turns into a timedelta in PTB 23); AIORateLimiter reads the same field.
    value = getattr(exc, "_retry_after", None)
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value or 1)

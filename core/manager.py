"""The conversation manager: one platform-neutral walk for every incoming message (see DESIGN.md).

unaddressed group message → return (nothing stored, no reply) → duplicate event → return → access policy →
rate limit → text checks (empty, too long, control characters) → command, or chat:
key → history → retrieve → budget → worker → sink (queued / started / partial / final) → commit.

Documented behaviour:
- A full queue gets an immediate "busy" notice; nothing is stored and the event is NOT marked processed, so a
  redelivery or a resend can succeed later. The same holds while the bot shuts down.
- A second question while the first is pending is refused politely (the user can /cancel the first).
- Cancelled, timed-out or failed answers are not stored (only the event id is, so a redelivery is not answered
  twice); the user is told what happened.
- /cancel is never rate limited (a user must always be able to stop a runaway answer); admins are never limited.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from core.access import REFUSAL, AccessPolicy
from core.answering import (  # noqa: F401  (the notices are re-exported for the adapters and tests)
    CANCELLED_NOTICE,
    CLOSED_NOTICE,
    CONFIG_NOTICE,
    EMPTY_ANSWER_NOTICE,
    ERROR_NOTICE,
    LENGTH_NOTICE,
    PENDING_NOTICE,
    SHORTENED_NOTICE,
    TIMEOUT_NOTICE,
    AnsweringPipeline,
    PassageSearch,
    busy_notice,
)
from core.budget import ContextTooSmall
from core.commands import CommandContext, CommandHandler, ParsedCommand, Preferences, parse_command
from core.generators.base import Generator
from core.prompt import EMPTY_NOTICE, sanitize_text
from core.ratelimit import RateLimiter, slow_down_message
from core.settings import Settings
from core.types import Answer, ChatKind, Incoming, ReplySink, Source
from core.worker import AlreadyPending, GenerationWorker, Piece, Queued, QueueFull, Started, WorkerClosed
from storage import ConversationKey, Database, StoredMessage, UnknownMessage, UserRef

logger = logging.getLogger(__name__)
_PREFS_CACHE_SIZE = 10_000


def too_long_notice(length: int, limit: int) -> str:
    return f"Your message is too long ({length} characters; the limit is {limit}). Please shorten it."


def _source_dict(source: Source) -> dict[str, Any]:
    return {
        "index": source.index,
        "ref": source.ref,
        "source": source.source,
        "title": source.title,
        "url": source.url,
    }


class ConversationManager:
    """Handles every `Incoming` for every adapter. Dependencies are passed in; nothing is global."""

    def __init__(
        self,
        db: Database,
        retriever: PassageSearch,
        worker: GenerationWorker,
        generator: Generator,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        access: AccessPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        history_limit: int = 60,
        prefs_ttl_s: float = 30.0,
    ) -> None:
        self.db = db
        self.worker = worker
        self.generator = generator
        self.settings = settings
        self.access = access or AccessPolicy.from_settings(settings)
        self.limiter = rate_limiter or RateLimiter(
            per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst, clock=clock
        )
        self.answering = AnsweringPipeline(retriever, generator, settings)
        self.context = self.answering.context
        self.prefs = Preferences(
            default_temperature=settings.temperature, max_new_tokens=settings.max_new_tokens
        )
        self.commands = CommandHandler(db, worker, self.access, self.prefs)
        self.history_limit = history_limit
        self.prefs_ttl_s = prefs_ttl_s
        self._clock = clock
        self._prefs_cache: OrderedDict[tuple[str, str], tuple[float, dict[str, str]]] = OrderedDict()
        self._inflight: set[tuple[str, str]] = set()
        self._secrets = settings.secret_values()

    # --- entry points -----------------------------------------------------------------------------------
    async def handle(self, incoming: Incoming, sink: ReplySink) -> None:
        """Process one message. Never raises for user-caused or model-caused problems; the user is told."""
        if incoming.chat_kind is ChatKind.GROUP and not incoming.addressed:
            return  # not for us: no storage, no reply
        event = (incoming.platform, incoming.event_id)
        if event in self._inflight:
            return  # a redelivery of a message we are answering right now
        self._inflight.add(event)
        try:
            await self._handle(incoming, sink)
        except Exception as exc:
            self._log_exception("handling a message failed", exc)
            try:
                await sink.notice(ERROR_NOTICE, ephemeral=True)
            except Exception as sink_exc:
                self._log_exception("could not tell the user about an error", sink_exc)
        finally:
            self._inflight.discard(event)

    async def record_feedback(
        self,
        *,
        platform: str,
        chat_id: str,
        user_id: str,
        platform_message_id: str,
        rating: int,
        chat_kind: ChatKind = ChatKind.GROUP,
        guild_id: str | None = None,
        role_ids: tuple[str, ...] = (),
    ) -> bool:
        """Rate the stored answer that `platform_message_id` belongs to. False when unknown or not allowed.

        The same access policy as a question applies (a button click in a public channel must not let a
        stranger past a guild/channel/role allow list)."""
        clicker = Incoming(
            platform=platform,
            event_id="feedback",
            chat_id=chat_id,
            chat_kind=chat_kind,
            user_id=user_id,
            user_name="",
            text="",
            guild_id=guild_id,
            role_ids=role_ids,
        )
        if rating not in (1, -1) or not self.access.check(clicker).allowed:
            return False
        message = await self.db.conversations.find_by_platform_message(platform, chat_id, platform_message_id)
        if message is None or message.role != "assistant":
            return False
        try:
            await self.db.feedback.record(
                platform=platform, user_id=user_id, message_id=message.id, rating=rating
            )
        except UnknownMessage:  # deleted by /forget or /reset between the lookup and the write
            return False
        return True

    def conversation_key(self, incoming: Incoming) -> ConversationKey:
        """DMs: per user. Groups: per user within the chat, or one shared history when configured."""
        shared = incoming.chat_kind is ChatKind.GROUP and self.settings.shared_group_history
        return ConversationKey(
            platform=incoming.platform,
            chat_id=incoming.chat_id,
            user_id=None if shared else incoming.user_id,
            thread_id=incoming.thread_id,
        )

    # --- the walk -----------------------------------------------------------------------------------------
    async def _handle(self, incoming: Incoming, sink: ReplySink) -> None:
        if await self.db.conversations.is_processed(incoming.platform, incoming.event_id):
            return
        decision = self.access.check(incoming)
        if not decision.allowed:
            logger.info("refused %s user %s: %s", incoming.platform, incoming.user_id, decision.reason)
            await self._reply(incoming, sink, REFUSAL, ephemeral=True)
            return
        text = sanitize_text(incoming.text)
        command = parse_command(text)
        is_admin = self.access.is_admin(incoming.platform, incoming.user_id)
        if not is_admin and not (command is not None and command.name == "cancel"):
            wait = self.limiter.check(incoming.platform, incoming.user_id)
            if wait > 0:
                await self._reply(incoming, sink, slow_down_message(wait), ephemeral=True)
                return
        if not text:
            await self._reply(incoming, sink, EMPTY_NOTICE)
            return
        limit = self.settings.max_message_chars
        if len(text) > limit:
            await self._reply(incoming, sink, too_long_notice(len(text), limit))
            return
        if command is None:
            await self._chat(incoming, sink, text)
        else:
            await self._command(incoming, sink, command, is_admin)

    async def _command(
        self, incoming: Incoming, sink: ReplySink, command: ParsedCommand, is_admin: bool
    ) -> None:
        if command.name == "ask":
            if not command.args:
                await self._reply(incoming, sink, "Usage: /ask QUESTION — for example /ask what is CWE-79?")
            else:
                await self._chat(incoming, sink, command.args)
            return
        if command.name == "retry":
            await self._retry(incoming, sink)
            return
        ctx = CommandContext(incoming.platform, incoming.user_id, self.conversation_key(incoming), is_admin)
        reply = await self.commands.run(command, ctx)
        if command.name in {"settings", "forget"}:
            self._prefs_cache.pop((incoming.platform, incoming.user_id), None)
        if command.name == "forget":
            self.limiter.forget(incoming.platform, incoming.user_id)
        personal = command.name in {"settings", "stats", "forget", "cancel"}
        await self._reply(incoming, sink, reply, ephemeral=personal)

    async def _retry(self, incoming: Incoming, sink: ReplySink) -> None:
        key = self.conversation_key(incoming)
        owner = self._owner(incoming)
        if self.worker.pending(owner):
            await self._reply(incoming, sink, PENDING_NOTICE, ephemeral=True)
            return
        scope = incoming.user_id if key.user_id is None else None  # shared history: only your own exchange
        removed = await self.db.conversations.delete_last_exchange(key, user_id=scope)
        if removed is None:
            await self._reply(incoming, sink, "There is no answer to retry yet — ask me something first.")
            return
        question, answer = removed
        committed = await self._chat(
            incoming,
            sink,
            question.text,
            user_message_id=question.platform_message_ids[0] if question.platform_message_ids else None,
        )
        if not committed:
            await self._restore(incoming, key, question, answer)

    async def _chat(
        self, incoming: Incoming, sink: ReplySink, question: str, *, user_message_id: str | None = None
    ) -> bool:
        """Answer `question` in the conversation; returns whether the exchange was stored."""
        owner = self._owner(incoming)
        if self.worker.pending(owner):  # cheap check before any database or retrieval work
            await self._reply(incoming, sink, PENDING_NOTICE, ephemeral=True)
            return False
        if not self.worker.accepting:
            await sink.notice(CLOSED_NOTICE, ephemeral=True)
            return False
        key = self.conversation_key(incoming)
        # Independent lookups, concurrently: retrieval is usually the slowest, the database hops overlap it.
        prefs, stored, retrieved = await asyncio.gather(
            self._user_prefs(incoming.platform, incoming.user_id),
            self.db.conversations.history(key, limit=self.history_limit),
            self.answering.retrieve(question),
        )
        try:
            prepared = self.answering.prepare(
                question, retrieved, history=[(m.role, m.text) for m in stored], prefs=prefs
            )
        except ContextTooSmall as exc:
            logger.error("prompt does not fit: %s", exc)
            await self._reply(incoming, sink, CONFIG_NOTICE)
            return False
        if prepared.direct is not None:  # small talk: a built-in reply, no model
            return await self._deliver(
                incoming, sink, key, question, Answer(text=prepared.direct), user_message_id
            )
        try:
            handle = self.worker.submit(owner, prepared.spec, prepared.params)
        except QueueFull as exc:
            await sink.notice(
                busy_notice(exc.eta_seconds), ephemeral=True
            )  # not marked: a resend may succeed
            return False
        except AlreadyPending:
            await self._reply(incoming, sink, PENDING_NOTICE, ephemeral=True)
            return False
        except WorkerClosed:
            await sink.notice(CLOSED_NOTICE, ephemeral=True)
            return False

        text, started = "", False
        try:
            async for event in handle:
                if isinstance(event, Piece):
                    text += event.text
                    await sink.partial(text)
                elif isinstance(event, Queued):
                    await sink.queued(event.position, event.eta_seconds)
                elif isinstance(event, Started):
                    started = True
                    await sink.started()
        finally:
            if not handle.done:  # the sink failed or this task was cancelled: free the model
                self.worker.cancel(owner)

        outcome = self.answering.finish(prepared, text, handle.finish_reason)
        if not outcome.ok:
            if handle.finish_reason == "error" and handle.error is not None:
                self._log_exception("generation failed", handle.error)
            if started:  # close the streaming message the adapter has opened
                await sink.final(
                    Answer(text=outcome.text, notices=outcome.notices, finish_reason=outcome.finish_reason)
                )
            else:
                await sink.notice(outcome.message, ephemeral=True)
            await self.db.conversations.mark_processed(incoming.platform, incoming.event_id)
            return False

        answer = Answer(
            text=outcome.text,
            sources=prepared.sources if prefs["sources"] == "on" else [],
            notices=outcome.notices,
            finish_reason=outcome.finish_reason,
        )
        return await self._deliver(
            incoming, sink, key, question, answer, user_message_id, sources=prepared.sources
        )

    async def _deliver(
        self,
        incoming: Incoming,
        sink: ReplySink,
        key: ConversationKey,
        question: str,
        answer: Answer,
        user_message_id: str | None,
        *,
        sources: Sequence[Source] = (),
    ) -> bool:
        """Send the finished answer and store the exchange with it (and the event id) at once."""
        answer_text = answer.text
        delivered = await sink.final(answer)
        return await self.db.conversations.commit_exchange(
            platform=incoming.platform,
            event_id=incoming.event_id,
            key=key,
            user=UserRef(incoming.platform, incoming.user_id, incoming.user_name),
            user_text=question,
            user_tokens=self.context.count(question),
            assistant_text=answer_text,
            assistant_tokens=self.context.count(answer_text),
            sources=[_source_dict(s) for s in sources],
            user_platform_message_id=user_message_id or incoming.platform_message_id,
            assistant_platform_message_ids=[str(x) for x in delivered],
        )

    # --- helpers -----------------------------------------------------------------------------------------
    async def _user_prefs(self, platform: str, user_id: str) -> dict[str, str]:
        """Effective per-user settings, cached briefly: they change rarely and are read on every message.
        Our own /settings and /forget invalidate at once; the TTL bounds staleness across bot processes."""
        key = (platform, user_id)
        now = self._clock()
        hit = self._prefs_cache.get(key)
        if hit is not None and hit[0] > now:
            self._prefs_cache.move_to_end(key)
            return hit[1]
        prefs = self.prefs.effective(await self.db.user_settings.get(platform, user_id))
        self._prefs_cache[key] = (now + self.prefs_ttl_s, prefs)
        self._prefs_cache.move_to_end(key)
        while len(self._prefs_cache) > _PREFS_CACHE_SIZE:
            self._prefs_cache.popitem(last=False)
        return prefs

    async def _restore(
        self, incoming: Incoming, key: ConversationKey, question: StoredMessage, answer: StoredMessage
    ) -> None:
        """Put back the exchange /retry removed when the new answer was not stored."""
        await self.db.conversations.commit_exchange(
            platform=incoming.platform,
            event_id=f"{incoming.event_id}#restore",
            key=key,
            user=UserRef(incoming.platform, incoming.user_id, incoming.user_name),
            user_text=question.text,
            user_tokens=question.token_count,
            assistant_text=answer.text,
            assistant_tokens=answer.token_count,
            sources=answer.sources,
            user_platform_message_id=question.platform_message_ids[0]
            if question.platform_message_ids
            else None,
            assistant_platform_message_ids=answer.platform_message_ids,
        )

    async def _reply(
        self, incoming: Incoming, sink: ReplySink, text: str, *, ephemeral: bool = False
    ) -> None:
        """A complete reply that ends the event: mark it processed (once), then send."""
        if await self.db.conversations.mark_processed(incoming.platform, incoming.event_id):
            await sink.notice(text, ephemeral=ephemeral)

    @staticmethod
    def _owner(incoming: Incoming) -> str:
        return f"{incoming.platform}:{incoming.user_id}"

    def _log_exception(self, what: str, exc: BaseException) -> None:
        """Log with the traceback, with every configured secret redacted."""
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        logger.error("%s:\n%s", what, detail)

"""The conversation manager: one platform-neutral walk for every incoming message (see DESIGN.md).

unaddressed group message → return (nothing stored, no reply) → duplicate event → return → access policy →
rate limit → text checks (empty, too long, control characters) → command, or chat:
key → history → retrieve → budget → worker → sink (queued / started / partial / final) → commit.

Documented behaviour:
- Delivery is at most once per event, with an outbox for crashes. The event id, the question and the answer are
  committed in one transaction (with /retry's removal of the exchange it replaces), so a redelivered event is
  never answered twice. Before the sink sends anything, the reply is recorded in the outbox
  (`db.outbox`: event, chat, the platform message ids the sink reports as it creates them, state); the commit
  removes it. `recover(platform, repair)`, called by each adapter at start, repairs what a killed process left:
  a reply that was final is stored; one cut off is edited (by the adapter) to INTERRUPTED_NOTICE and /retry
  asks its question again.
- Platforms do NOT redeliver after a crash: python-telegram-bot confirms an update on its next getUpdates
  (issued while the answer is generated), webhook mode answers 200 once the update is queued, and Discord's
  gateway replays nothing after a new session. So "not marked processed" below means a resend by the user (or a
  platform retry of an event we never acknowledged) can succeed, not that a crashed event comes back.
- A full queue gets an immediate "busy" notice; nothing is stored and the event is NOT marked processed. The
  same holds while the bot shuts down, for a second question while the first is pending (the user can /cancel
  the first), and for refusals (access denied, rate limited): refused events are not recorded.
- Cancelled, timed-out or failed answers are not stored (only the event id is, so a redelivery is not answered
  twice); the user is told what happened.
- /forget wins over an answer in flight: it deletes the user's outbox rows, and a commit that finds its row gone
  stores nothing (the user still sees that answer; no user, conversation or exchange is re-created).
- Processed event ids older than PROCESSED_EVENTS_RETENTION_HOURS are pruned by `maintain()` while the bot runs.
- /cancel is never rate limited (a user must always be able to stop a runaway answer); admins are never limited.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from core.redaction import Redactor
from core.settings import Settings
from core.types import Answer, ChatKind, Incoming, ReplySink, Source, watch_messages
from core.uploads import DocumentLibrary, IncomingFile, UploadRefused
from core.worker import AlreadyPending, GenerationWorker, Piece, Queued, QueueFull, Started, WorkerClosed
from storage import ConversationKey, Database, PendingReplyRow, StoredMessage, UnknownMessage, UserRef

logger = logging.getLogger(__name__)
_PREFS_CACHE_SIZE = 10_000

UPLOAD_FAILED_NOTICE = (
    "Sorry — I couldn't index that document, and nothing was stored. Please try again later."
)
NO_DOCUMENTS_NOTICE = "I can't index documents in this setup — please type your question instead."
INTERRUPTED_NOTICE = (
    "⚠️ I was restarted before I could finish this answer, so it was not saved. Send /retry to ask again."
)


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


class _Delivery:
    """Records the platform message ids a sink reports into the reply's outbox row, one write at a time."""

    def __init__(self, db: Database, reply_id: int, log: Callable[[str, BaseException], None]) -> None:
        self._db = db
        self._reply_id = reply_id
        self._log = log
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, message_id: str) -> None:
        task = asyncio.create_task(self._record(str(message_id)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, message_id: str) -> None:
        async with self._lock:
            try:
                await self._db.outbox.add_message_ids(self._reply_id, [message_id])
            except Exception as exc:  # the reply goes on; only a crash repair would miss this id
                self._log("could not record a delivered message id", exc)

    async def flush(self) -> None:
        """Wait for the ids reported so far to be written (before the row is committed or finished)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks))


InterruptedReply = PendingReplyRow  # what an adapter's repair gets: chat key, user, the ids it had sent
RepairInterrupted = Callable[[InterruptedReply, str], Awaitable[None]]


@dataclass
class RecoveryReport:
    finished: int = 0  # final answers a crash kept from being stored: stored now
    interrupted: int = 0  # replies cut off: the user was told (message edited, or a new one)
    failed: int = 0  # the platform refused the repair (logged; still marked, so never repeated)


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
        documents: DocumentLibrary | None = None,
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
        self.documents = documents
        self.commands = CommandHandler(db, worker, self.access, self.prefs, documents=documents)
        self.history_limit = history_limit
        self.prefs_ttl_s = prefs_ttl_s
        self._clock = clock
        self._prefs_cache: OrderedDict[tuple[str, str], tuple[float, dict[str, str]]] = OrderedDict()
        self._inflight: set[tuple[str, str]] = set()
        self._redact = Redactor(settings.secret_values())

    @property
    def retriever(self) -> PassageSearch:
        return self.answering.retriever

    @retriever.setter
    def retriever(self, retriever: PassageSearch) -> None:
        self.answering.retriever = retriever

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

    async def handle_document(self, incoming: Incoming, upload: IncomingFile, sink: ReplySink) -> bool:
        """A document the user sent: the same walk as a message (duplicate event, access policy, rate limit),
        then index it into the sender's private collection. Never raises; the user is told the outcome.
        Returns whether the document is now in their collection (so a caption question can follow)."""
        if incoming.chat_kind is ChatKind.GROUP and not incoming.addressed:
            return False
        event = (incoming.platform, incoming.event_id)
        if event in self._inflight:
            return False
        self._inflight.add(event)
        try:
            return await self._handle_document(incoming, upload, sink)
        except Exception as exc:
            self._log_exception("indexing an upload failed", exc)
            try:
                await self._reply(incoming, sink, UPLOAD_FAILED_NOTICE)
            except Exception as sink_exc:
                self._log_exception("could not tell the user about an error", sink_exc)
            return False
        finally:
            self._inflight.discard(event)

    async def _handle_document(self, incoming: Incoming, upload: IncomingFile, sink: ReplySink) -> bool:
        if await self.db.conversations.is_processed(incoming.platform, incoming.event_id):
            return False
        decision = self.access.check(incoming)
        if not decision.allowed:
            await self._reply(incoming, sink, REFUSAL, ephemeral=True)
            return False
        if not self.access.is_admin(incoming.platform, incoming.user_id):
            wait = self.limiter.check(incoming.platform, incoming.user_id)
            if wait > 0:
                await self._reply(incoming, sink, slow_down_message(wait), ephemeral=True)
                return False
        if self.documents is None:
            await self._reply(incoming, sink, NO_DOCUMENTS_NOTICE)
            return False

        async def progress(text: str) -> None:
            await sink.notice(text, ephemeral=True)

        try:
            reply = await self.documents.ingest(
                # The wording says where to ask later: right here only in a DM (an ephemeral reply is one-off).
                self._owner(incoming),
                upload,
                progress,
                private_context=incoming.chat_kind is ChatKind.DM,
            )
        except UploadRefused as refused:
            await self._reply(incoming, sink, str(refused), ephemeral=True)
            return False
        await self._reply(incoming, sink, reply, ephemeral=True)
        return True

    @staticmethod
    def is_private(incoming: Incoming) -> bool:
        """Contexts where only the user reads the answer (DMs, the web chat, ephemeral replies): there, and
        only there, their private documents are searched."""
        return incoming.chat_kind is ChatKind.DM or incoming.ephemeral

    def admits(self, incoming: Incoming) -> bool:
        """The access and rate checks alone, for adapter replies that skip `handle` ("I only read text")."""
        if not self.access.check(incoming).allowed:
            return False
        if self.access.is_admin(incoming.platform, incoming.user_id):
            return True
        return self.limiter.check(incoming.platform, incoming.user_id) == 0.0

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
        if rating not in (1, -1):
            return False
        message = await self._rated_answer(
            platform, chat_id, user_id, platform_message_id, chat_kind, guild_id, role_ids
        )
        if message is None:
            return False
        try:
            await self.db.feedback.record(
                platform=platform, user_id=user_id, message_id=message.id, rating=rating
            )
        except UnknownMessage:  # deleted by /forget or /reset between the lookup and the write
            return False
        return True

    async def withdraw_feedback(
        self,
        *,
        platform: str,
        chat_id: str,
        user_id: str,
        platform_message_id: str,
        chat_kind: ChatKind = ChatKind.GROUP,
        guild_id: str | None = None,
        role_ids: tuple[str, ...] = (),
    ) -> bool:
        """Remove the user's rating of that answer (a 👍/👎 reaction taken back). False when there was none."""
        message = await self._rated_answer(
            platform, chat_id, user_id, platform_message_id, chat_kind, guild_id, role_ids
        )
        if message is None:
            return False
        return await self.db.feedback.withdraw(platform=platform, user_id=user_id, message_id=message.id)

    async def _rated_answer(
        self,
        platform: str,
        chat_id: str,
        user_id: str,
        platform_message_id: str,
        chat_kind: ChatKind,
        guild_id: str | None,
        role_ids: tuple[str, ...],
    ) -> StoredMessage | None:
        """The stored assistant message a rating is about, if the rater may rate it."""
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
        if not self.access.check(clicker).allowed:
            return None
        message = await self.db.conversations.find_by_platform_message(platform, chat_id, platform_message_id)
        if message is None or message.role != "assistant":
            return None
        return message

    async def recover(self, platform: str, repair: RepairInterrupted | None) -> RecoveryReport:
        """Repair what a previous process left in the outbox for `platform`; call once at start, before the
        adapter takes new messages. A reply that was final is stored (it was being delivered); one cut off
        mid-generation is handed to `repair` with INTERRUPTED_NOTICE (edit its messages, or send the notice),
        then kept as interrupted so /retry asks its question again. `repair=None`: the platform cannot reach
        the user any more (an HTTP response, a terminal): the reply is only marked."""
        report = RecoveryReport()
        for row in await self.db.outbox.unfinished(platform):
            if row.state == "final":
                await self.db.outbox.commit_recovered(row.id)
                report.finished += 1
                continue
            if repair is not None:
                try:
                    await repair(row, INTERRUPTED_NOTICE)
                except Exception as exc:
                    report.failed += 1
                    self._log_exception(f"could not repair interrupted reply {row.id}", exc)
            await self.db.outbox.mark_interrupted(row.id)
            report.interrupted += 1
        if report.finished or report.interrupted:
            logger.info(
                "%s: %d interrupted replies repaired, %d finished answers stored (%d repairs failed)",
                platform,
                report.interrupted,
                report.finished,
                report.failed,
            )
        return report

    async def prune(self) -> int:
        """Forget processed-event ids and unretried interrupted replies older than the retention setting."""
        before = self.db_now() - timedelta(hours=self.settings.processed_events_retention_hours)
        return await self.db.conversations.prune_processed(before) + await self.db.outbox.prune_interrupted(
            before
        )

    async def maintain(self, *, interval_s: float | None = None) -> None:
        """Run `prune` now and then for as long as the bot runs (cancel the task to stop)."""
        hours = self.settings.processed_events_retention_hours
        interval = interval_s if interval_s is not None else min(3600.0, hours * 3600 / 4)
        while True:
            try:
                removed = await self.prune()
                logger.debug("pruned %d processed events / interrupted replies", removed)
            except Exception as exc:  # a locked or unreachable database: try again next time
                self._log_exception("pruning processed events failed", exc)
            await asyncio.sleep(interval)

    @staticmethod
    def db_now() -> datetime:
        return datetime.now(UTC)

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
            await sink.notice(REFUSAL, ephemeral=True)  # refused: not recorded as processed
            return
        text = sanitize_text(incoming.text)
        command = parse_command(text)
        is_admin = self.access.is_admin(incoming.platform, incoming.user_id)
        if not is_admin and not (command is not None and command.name == "cancel"):
            wait = self.limiter.check(incoming.platform, incoming.user_id)
            if wait > 0:
                await sink.notice(slow_down_message(wait), ephemeral=True)  # refused: not recorded
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
        # In a group, /stats shows only the caller's own numbers: everyone's totals are for a private chat.
        group_stats = command.name == "stats" and incoming.chat_kind is ChatKind.GROUP
        ctx = CommandContext(
            incoming.platform,
            incoming.user_id,
            self.conversation_key(incoming),
            is_admin and not group_stats,
            private=self.is_private(incoming),
        )
        reply = await self.commands.run(command, ctx)
        if command.name in {"settings", "forget"}:
            self._prefs_cache.pop((incoming.platform, incoming.user_id), None)
        if command.name == "forget":
            self.limiter.forget(incoming.platform, incoming.user_id)
        personal = command.name in {"settings", "stats", "forget", "cancel", "docs"}
        await self._reply(incoming, sink, reply, ephemeral=personal)

    async def _retry(self, incoming: Incoming, sink: ReplySink) -> None:
        """Ask again: the question a crash cut off, else the newest exchange, which the new answer replaces in
        the transaction that stores it (until then it stays; a failed retry or a /forget loses nothing else)."""
        key = self.conversation_key(incoming)
        owner = self._owner(incoming)
        if self.worker.pending(owner):
            await sink.notice(PENDING_NOTICE, ephemeral=True)  # busy: not recorded
            return
        interrupted = await self.db.outbox.take_interrupted(key, incoming.user_id)
        if interrupted is not None:
            await self._chat(incoming, sink, interrupted.question)
            return
        scope = incoming.user_id if key.user_id is None else None  # shared history: only your own exchange
        found = await self.db.conversations.last_exchange(key, user_id=scope)
        if found is None:
            await self._reply(incoming, sink, "There is no answer to retry yet — ask me something first.")
            return
        question, answer = found
        await self._chat(
            incoming,
            sink,
            question.text,
            user_message_id=question.platform_message_ids[0] if question.platform_message_ids else None,
            replaces=(question.id, answer.id),
        )

    async def _chat(
        self,
        incoming: Incoming,
        sink: ReplySink,
        question: str,
        *,
        user_message_id: str | None = None,
        replaces: tuple[int, ...] = (),
    ) -> bool:
        """Answer `question` in the conversation; returns whether the exchange was stored."""
        owner = self._owner(incoming)
        if self.worker.pending(owner):  # cheap check before any database or retrieval work
            await sink.notice(PENDING_NOTICE, ephemeral=True)  # busy: not recorded
            return False
        if not self.worker.accepting:
            await sink.notice(CLOSED_NOTICE, ephemeral=True)
            return False
        if self.worker.queue_depth >= self.worker.queue_size:  # full: refuse before any retrieval work
            await sink.notice(
                busy_notice(self.worker.estimate_wait(self.worker.queue_size + 1)), ephemeral=True
            )
            return False
        key = self.conversation_key(incoming)
        # Independent lookups, concurrently: retrieval is usually the slowest, the database hops overlap it.
        prefs, stored, retrieved = await asyncio.gather(
            self._user_prefs(incoming.platform, incoming.user_id),
            self.db.conversations.history(key, limit=self.history_limit),
            self.answering.retrieve(
                question, viewer=self._owner(incoming) if self.is_private(incoming) else None
            ),
        )
        history = [(m.role, m.text) for m in stored if m.id not in replaces]
        try:
            prepared = self.answering.prepare(question, retrieved, history=history, prefs=prefs)
        except ContextTooSmall as exc:
            logger.error("prompt does not fit: %s", exc)
            await self._reply(incoming, sink, CONFIG_NOTICE)
            return False
        handle = None  # small talk (prepared.direct) is a built-in reply: no model, same delivery
        if prepared.direct is None:
            try:
                handle = self.worker.submit(owner, prepared.spec, prepared.params)
            except QueueFull as exc:
                await sink.notice(
                    busy_notice(exc.eta_seconds), ephemeral=True
                )  # not marked: a resend may succeed
                return False
            except AlreadyPending:
                await sink.notice(PENDING_NOTICE, ephemeral=True)  # busy: not recorded
                return False
            except WorkerClosed:
                await sink.notice(CLOSED_NOTICE, ephemeral=True)
                return False

        text, started = "", False
        user = UserRef(incoming.platform, incoming.user_id, incoming.user_name)
        try:
            # The outbox row exists before the sink sends anything (queue status, stream, final).
            reply_id = await self.db.outbox.open(
                event_id=incoming.event_id,
                key=key,
                user=user,
                question=question,
                question_tokens=self.context.count(question),
                user_message_id=user_message_id or incoming.platform_message_id,
                replaces=list(replaces),
            )
            delivery = _Delivery(self.db, reply_id, self._log_exception)
            repairable = watch_messages(sink, delivery.report)
            if handle is None:
                text = prepared.direct or ""
            else:
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
            if handle is not None and not handle.done:  # the sink failed or this task was cancelled
                self.worker.cancel(owner)

        outcome = self.answering.finish(
            prepared, text, handle.finish_reason if handle is not None else "stop"
        )
        answer_text = outcome.text
        if not outcome.ok:
            if handle is not None and handle.finish_reason == "error" and handle.error is not None:
                self._log_exception("generation failed", handle.error)
            if started:  # close the streaming message the adapter has opened
                await sink.final(
                    Answer(text=outcome.text, notices=outcome.notices, finish_reason=outcome.finish_reason)
                )
            else:
                await sink.notice(outcome.message, ephemeral=True)
            await delivery.flush()
            await self.db.outbox.finish(reply_id, incoming.platform, incoming.event_id)
            return False

        sources = prepared.sources
        answer = Answer(
            text=answer_text,
            sources=sources if prefs["sources"] == "on" else [],
            notices=outcome.notices,
            finish_reason=outcome.finish_reason,
        )
        answer_tokens = self.context.count(answer_text)
        if repairable:  # a crash during delivery then stores the answer instead of calling it interrupted
            await delivery.flush()  # the streamed message's id is in the row before the final state
            await self.db.outbox.record_final(
                reply_id,
                answer=answer_text,
                answer_tokens=answer_tokens,
                sources=[_source_dict(s) for s in sources],
            )
        try:
            delivered = await sink.final(answer)
        except Exception:  # the user is told it failed (handle): store nothing, keep nothing pending
            await self.db.outbox.finish(reply_id, incoming.platform, incoming.event_id)
            raise
        await delivery.flush()
        # One transaction: the exchange, the event id, the outbox row's removal (and /retry's replacement).
        return await self.db.conversations.commit_exchange(
            platform=incoming.platform,
            event_id=incoming.event_id,
            key=key,
            user=user,
            user_text=question,
            user_tokens=self.context.count(question),
            assistant_text=answer_text,
            assistant_tokens=answer_tokens,
            sources=[_source_dict(s) for s in sources],
            user_platform_message_id=user_message_id or incoming.platform_message_id,
            assistant_platform_message_ids=[str(x) for x in delivered],
            outbox_id=reply_id,
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
        logger.error("%s:\n%s", what, self._redact(detail))

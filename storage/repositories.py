"""Small repositories over the chat tables. All SQL of the project lives in storage/.

Each public method is an async wrapper around one synchronous operation over a `Connection`, executed in one
transaction by a `Runner` (see storage/runner.py). Write operations start with BEGIN IMMEDIATE on SQLite, so a
transaction never has to upgrade a read snapshot to a write lock (which fails at once under contention).
Statements are Core statements (no identity map, no flush storms); the hot ones are built once per dialect
with bound parameters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    and_,
    bindparam,
    case,
    delete,
    distinct,
    false,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.engine import IMMEDIATE
from storage.models import (
    ROLE_ASSISTANT,
    ROLE_USER,
    Conversation,
    Feedback,
    Message,
    MessageRef,
    PendingReply,
    ProcessedEvent,
    User,
    UserSetting,
    utcnow,
)
from storage.runner import Runner
from storage.values import ConversationKey, FeedbackRow, StoredMessage, UnknownMessage, UserRef

Sessions = async_sessionmaker[AsyncSession]

users: Table = User.__table__  # type: ignore[assignment]
conversations: Table = Conversation.__table__  # type: ignore[assignment]
messages: Table = Message.__table__  # type: ignore[assignment]
message_refs: Table = MessageRef.__table__  # type: ignore[assignment]
processed_events: Table = ProcessedEvent.__table__  # type: ignore[assignment]
feedback: Table = Feedback.__table__  # type: ignore[assignment]
user_settings: Table = UserSetting.__table__  # type: ignore[assignment]
pending_replies: Table = PendingReply.__table__  # type: ignore[assignment]

_MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.role,
    messages.c.text,
    messages.c.token_count,
    messages.c.sources,
    messages.c.platform_message_ids,
    messages.c.created_at,
)
MAX_SETTING_KEY = 64
MAX_DISPLAY_NAME = 256


@asynccontextmanager
async def write_transaction(sessions: Sessions) -> AsyncIterator[AsyncSession]:
    """A session inside one write transaction: committed on success, rolled back on any error."""
    async with sessions() as session:
        await session.connection(execution_options={IMMEDIATE: True})
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def clean_text(text: str) -> str:
    """Make text storable on both engines: PostgreSQL rejects NUL, and lone surrogates are not UTF-8."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _insert(dialect: str, table: Table) -> Any:
    """INSERT with ON CONFLICT support (both engines speak the same upsert dialect)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _stored(row: Row[Any]) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        role=row.role,
        text=row.text,
        token_count=row.token_count,
        sources=list(row.sources or []),
        platform_message_ids=[str(x) for x in row.platform_message_ids or []],
        created_at=row.created_at,
    )


def _key_params(key: ConversationKey) -> dict[str, str]:
    return {
        "k_platform": key.platform,
        "k_chat": str(key.chat_id),
        "k_scope": str(key.user_id) if key.user_id is not None else "",
        "k_thread": str(key.thread_id) if key.thread_id is not None else "",
    }


_KEY_FILTER = and_(
    conversations.c.platform == bindparam("k_platform"),
    conversations.c.chat_id == bindparam("k_chat"),
    conversations.c.scope_user_id == bindparam("k_scope"),
    conversations.c.thread_id == bindparam("k_thread"),
)


def _user_id_query(platform: str, user_id: str) -> Any:
    return select(users.c.id).where(users.c.platform == platform, users.c.platform_user_id == user_id)


# --- statements built once per dialect (the per-message path) ------------------------------------------------


@cache
def _claim_event_stmt(dialect: str) -> Any:
    # ON CONFLICT DO NOTHING, not catching IntegrityError: on PostgreSQL a concurrent insert of the same key
    # makes this wait for the other transaction and then yield no row, without aborting ours.
    return (
        _insert(dialect, processed_events)
        .values(platform=bindparam("platform"), event_id=bindparam("event_id"), created_at=bindparam("now"))
        .on_conflict_do_nothing(index_elements=["platform", "event_id"])
        .returning(processed_events.c.id)
    )


@cache
def _upsert_user_stmt(dialect: str, refresh_name: bool) -> Any:
    stmt = _insert(dialect, users).values(
        platform=bindparam("platform"),
        platform_user_id=bindparam("user_id"),
        display_name=bindparam("name"),
        created_at=bindparam("now"),
        last_seen_at=bindparam("now"),
    )
    update: dict[str, Any] = {"last_seen_at": stmt.excluded.last_seen_at}
    if refresh_name:
        update["display_name"] = stmt.excluded.display_name
    return stmt.on_conflict_do_update(index_elements=["platform", "platform_user_id"], set_=update).returning(
        users.c.id
    )


@cache
def _upsert_conversation_stmt(dialect: str) -> Any:
    stmt = _insert(dialect, conversations).values(
        platform=bindparam("k_platform"),
        chat_id=bindparam("k_chat"),
        scope_user_id=bindparam("k_scope"),
        thread_id=bindparam("k_thread"),
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    return stmt.on_conflict_do_update(
        index_elements=["platform", "chat_id", "scope_user_id", "thread_id"],
        set_={"updated_at": stmt.excluded.updated_at},
    ).returning(conversations.c.id)


_INSERT_MESSAGE = messages.insert().returning(messages.c.id)
_IS_PROCESSED = select(processed_events.c.id).where(
    processed_events.c.platform == bindparam("platform"), processed_events.c.event_id == bindparam("event_id")
)
_HISTORY = (
    select(*_MESSAGE_COLUMNS)
    .join(conversations, conversations.c.id == messages.c.conversation_id)
    .where(_KEY_FILTER)
    .order_by(messages.c.id.desc())
    .limit(bindparam("limit"))
)


def _upsert_user(
    connection: Connection, platform: str, user_id: str, display_name: str | None, now: datetime
) -> int:
    """Create the user row or refresh it; returns its id (race-safe: ON CONFLICT, one round trip)."""
    name = clean_text(display_name or "")[:MAX_DISPLAY_NAME]
    stmt = _upsert_user_stmt(connection.dialect.name, bool(name))
    params = {"platform": platform, "user_id": str(user_id), "name": name, "now": now}
    return int(connection.execute(stmt, params).scalar_one())


def _claim_event(connection: Connection, platform: str, event_id: str, now: datetime) -> bool:
    params = {"platform": platform, "event_id": str(event_id), "now": now}
    return connection.execute(_claim_event_stmt(connection.dialect.name), params).first() is not None


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)


class _Repository:
    def __init__(self, runner: Runner) -> None:
        self._run = runner


class ConversationRepository(_Repository):
    """History, event deduplication and the right to be forgotten."""

    async def is_processed(self, platform: str, event_id: str) -> bool:
        return await self._run.read(self._is_processed, platform, event_id)

    @staticmethod
    def _is_processed(connection: Connection, platform: str, event_id: str) -> bool:
        return (
            connection.execute(_IS_PROCESSED, {"platform": platform, "event_id": str(event_id)}).first()
            is not None
        )

    async def mark_processed(self, platform: str, event_id: str) -> bool:
        """Record an event handled without history (commands). False when it was already recorded."""
        return await self._run.write(_claim_event, platform, event_id, utcnow())

    async def prune_processed(self, before: datetime) -> int:
        """Forget event ids older than `before` (platforms stop redelivering after a day or so)."""
        return await self._run.write(self._prune, before)

    @staticmethod
    def _prune(connection: Connection, before: datetime) -> int:
        return _rowcount(
            connection.execute(delete(processed_events).where(processed_events.c.created_at < before))
        )

    async def history(self, key: ConversationKey, limit: int = 200) -> list[StoredMessage]:
        """The newest `limit` messages of the conversation, oldest first."""
        return await self._run.read(self._history, key, limit)

    @staticmethod
    def _history(connection: Connection, key: ConversationKey, limit: int) -> list[StoredMessage]:
        rows = connection.execute(_HISTORY, {**_key_params(key), "limit": max(0, int(limit))}).all()
        return [_stored(row) for row in reversed(rows)]

    async def commit_exchange(
        self,
        *,
        platform: str,
        event_id: str,
        key: ConversationKey,
        user: UserRef,
        user_text: str,
        user_tokens: int,
        assistant_text: str,
        assistant_tokens: int,
        sources: list[dict[str, Any]],
        user_platform_message_id: str | None,
        assistant_platform_message_ids: list[str],
        outbox_id: int | None = None,
    ) -> bool:
        """Store the event id, the user turn and the assistant turn in ONE transaction.

        Returns False, writing nothing, when the event id was already processed (also when another process
        commits the same event concurrently).

        With `outbox_id` (see `OutboxRepository`) the same transaction deletes that outbox row and the messages
        it `replaces` (/retry). When the row is gone — `forget_user` deleted it while the answer was being
        delivered — only the event id is stored: a forgotten user is never re-created by an in-flight answer.
        """
        user_ids = [str(user_platform_message_id)] if user_platform_message_id else []
        return await self._run.write(
            self._commit_exchange,
            platform,
            event_id,
            key,
            user,
            (clean_text(user_text), int(user_tokens), user_ids),
            (
                clean_text(assistant_text),
                int(assistant_tokens),
                [str(x) for x in assistant_platform_message_ids],
            ),
            list(sources),
            outbox_id,
        )

    @staticmethod
    def _commit_exchange(
        connection: Connection,
        platform: str,
        event_id: str,
        key: ConversationKey,
        user: UserRef,
        question: tuple[str, int, list[str]],
        answer: tuple[str, int, list[str]],
        sources: list[dict[str, Any]],
        outbox_id: int | None = None,
    ) -> bool:
        now = utcnow()
        replaces: list[int] = []
        if outbox_id is not None:
            found = connection.execute(
                delete(pending_replies)
                .where(pending_replies.c.id == outbox_id)
                .returning(pending_replies.c.replaces)
            ).first()
            if found is None:  # forgotten meanwhile: store nothing about the user
                _claim_event(connection, platform, event_id, now)
                return False
            replaces = [int(x) for x in found.replaces or []]
        if not _claim_event(connection, platform, event_id, now):
            return False  # the runner commits an empty transaction: nothing was written
        if replaces:
            connection.execute(delete(messages).where(messages.c.id.in_(replaces)))
        user_row = _upsert_user(connection, user.platform, user.user_id, user.display_name, now)
        stmt = _upsert_conversation_stmt(connection.dialect.name)
        conversation = connection.execute(stmt, {**_key_params(key), "now": now}).scalar_one()
        row = {"conversation_id": conversation, "user_id": user_row, "created_at": now}
        question_id = connection.execute(
            _INSERT_MESSAGE,
            {
                **row,
                "reply_to_id": None,
                "role": ROLE_USER,
                "text": question[0],
                "token_count": question[1],
                "sources": [],
                "platform_message_ids": question[2],
            },
        ).scalar_one()
        answer_id = connection.execute(
            _INSERT_MESSAGE,
            {
                **row,
                "reply_to_id": question_id,
                "role": ROLE_ASSISTANT,
                "text": answer[0],
                "token_count": answer[1],
                "sources": sources,
                "platform_message_ids": answer[2],
            },
        ).scalar_one()
        refs = [{"message_id": question_id, "platform_message_id": x} for x in question[2]]
        refs += [{"message_id": answer_id, "platform_message_id": x} for x in answer[2]]
        if refs:
            connection.execute(message_refs.insert(), refs)
        return True

    async def attach_platform_messages(self, message_id: int, platform_message_ids: Sequence[str]) -> None:
        """Add platform ids to a stored message (e.g. an answer split into more parts after the commit)."""
        new = [str(x) for x in platform_message_ids]
        if new:
            await self._run.write(self._attach, message_id, new)

    @staticmethod
    def _attach(connection: Connection, message_id: int, new: list[str]) -> None:
        current = connection.execute(
            select(messages.c.platform_message_ids).where(messages.c.id == message_id)
        ).scalar_one_or_none()
        if current is None:
            raise UnknownMessage(message_id)
        added = [x for x in dict.fromkeys(new) if x not in current]
        if not added:
            return
        connection.execute(
            messages.update()
            .where(messages.c.id == message_id)
            .values(platform_message_ids=list(current) + added)
        )
        connection.execute(
            message_refs.insert(), [{"message_id": message_id, "platform_message_id": x} for x in added]
        )

    async def reset(self, key: ConversationKey) -> int:
        """Delete the conversation's messages (their refs and feedback go with them); returns how many."""
        return await self._run.write(self._reset, key)

    @staticmethod
    def _reset(connection: Connection, key: ConversationKey) -> int:
        conversation = select(conversations.c.id).where(_KEY_FILTER).scalar_subquery()
        stmt = delete(messages).where(messages.c.conversation_id == conversation)
        return _rowcount(connection.execute(stmt, _key_params(key)))

    async def last_assistant(self, key: ConversationKey) -> StoredMessage | None:
        return await self._run.read(self._last_assistant, key)

    @staticmethod
    def _last_assistant(connection: Connection, key: ConversationKey) -> StoredMessage | None:
        stmt = (
            select(*_MESSAGE_COLUMNS)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(_KEY_FILTER, messages.c.role == ROLE_ASSISTANT)
            .order_by(messages.c.id.desc())
            .limit(1)
        )
        row = connection.execute(stmt, _key_params(key)).first()
        return _stored(row) if row is not None else None

    async def last_exchange(
        self, key: ConversationKey, *, user_id: str | None = None
    ) -> tuple[StoredMessage, StoredMessage] | None:
        """The newest question/answer pair as (user turn, assistant turn), without removing it.

        /retry reads it here and names its ids in the outbox row, so the commit of the new answer removes it
        (see `commit_exchange`): nothing is lost when the new answer fails or the process dies.
        """
        return await self._run.read(self._last_exchange, key, user_id)

    @staticmethod
    def _last_exchange(
        connection: Connection, key: ConversationKey, user_id: str | None
    ) -> tuple[StoredMessage, StoredMessage] | None:
        stmt = (
            select(*_MESSAGE_COLUMNS, messages.c.reply_to_id)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(_KEY_FILTER, messages.c.role == ROLE_ASSISTANT)
            .order_by(messages.c.id.desc())
            .limit(1)
        )
        if user_id is not None:
            stmt = stmt.where(messages.c.user_id == _user_id_query(key.platform, user_id).scalar_subquery())
        answer = connection.execute(stmt, _key_params(key)).first()
        if answer is None or answer.reply_to_id is None:
            return None
        question = connection.execute(
            select(*_MESSAGE_COLUMNS).where(messages.c.id == answer.reply_to_id)
        ).first()
        if question is None:
            return None
        return _stored(question), _stored(answer)

    async def delete_last_exchange(
        self, key: ConversationKey, *, user_id: str | None = None
    ) -> tuple[StoredMessage, StoredMessage] | None:
        """Remove the newest question/answer pair (for /retry) and return it as (user turn, assistant turn).

        `user_id` restricts it to that user's newest exchange (useful in a shared group history).
        """
        return await self._run.write(self._delete_last_exchange, key, user_id)

    @staticmethod
    def _delete_last_exchange(
        connection: Connection, key: ConversationKey, user_id: str | None
    ) -> tuple[StoredMessage, StoredMessage] | None:
        found = ConversationRepository._last_exchange(connection, key, user_id)
        if found is not None:
            connection.execute(delete(messages).where(messages.c.id.in_([found[0].id, found[1].id])))
        return found

    async def find_by_platform_message(
        self, platform: str, chat_id: str, platform_message_id: str
    ) -> StoredMessage | None:
        """The stored message a platform message (a reply target, a reacted-to answer) belongs to."""
        return await self._run.read(self._find, platform, str(chat_id), str(platform_message_id))

    @staticmethod
    def _find(
        connection: Connection, platform: str, chat_id: str, platform_message_id: str
    ) -> StoredMessage | None:
        stmt = (
            select(*_MESSAGE_COLUMNS)
            .select_from(
                message_refs.join(messages, messages.c.id == message_refs.c.message_id).join(
                    conversations, conversations.c.id == messages.c.conversation_id
                )
            )
            .where(
                message_refs.c.platform_message_id == platform_message_id,
                conversations.c.platform == platform,
                conversations.c.chat_id == chat_id,
            )
            .order_by(messages.c.id.desc())
            .limit(1)
        )
        row = connection.execute(stmt).first()
        return _stored(row) if row is not None else None

    async def forget_user(self, platform: str, user_id: str) -> int:
        """Delete every row about the user; returns the number of rows removed.

        Removes their user row, settings, the feedback they gave, conversations scoped to them with all their
        messages, and their exchanges (question and answer) in shared group histories, with the refs and
        feedback attached to those messages, and their replies in the outbox (so an answer in flight is not
        stored when it finishes: see `commit_exchange`). Processed-event rows stay: they hold only (platform, event id) and
        keep redelivered events deduplicated.
        """
        return await self._run.write(self._forget_user, platform, str(user_id))

    @staticmethod
    def _forget_user(connection: Connection, platform: str, user_id: str) -> int:
        uid = connection.execute(_user_id_query(platform, user_id)).scalar_one_or_none()
        scoped = select(conversations.c.id).where(
            conversations.c.platform == platform, conversations.c.scope_user_id == user_id
        )
        theirs = or_(
            messages.c.conversation_id.in_(scoped), messages.c.user_id == uid if uid is not None else false()
        )
        doomed = select(messages.c.id).where(theirs)
        statements: list[Any] = [
            delete(feedback).where(
                or_(
                    feedback.c.message_id.in_(doomed),
                    feedback.c.user_id == uid if uid is not None else false(),
                )
            ),
            delete(message_refs).where(message_refs.c.message_id.in_(doomed)),
            delete(messages).where(theirs),
            delete(conversations).where(conversations.c.id.in_(scoped)),
            delete(pending_replies).where(
                pending_replies.c.platform == platform, pending_replies.c.user_id == user_id
            ),
        ]
        if uid is not None:
            statements += [
                delete(user_settings).where(user_settings.c.user_id == uid),
                delete(users).where(users.c.id == uid),
            ]
        return sum(_rowcount(connection.execute(statement)) for statement in statements)


class FeedbackRepository(_Repository):
    async def record(self, *, platform: str, user_id: str, message_id: int, rating: int) -> None:
        """Store a +1/-1 rating; a second rating by the same user of the same message replaces the first.

        Raises ValueError for another rating and UnknownMessage when the message is not stored.
        """
        if rating not in (1, -1):
            raise ValueError("rating must be +1 or -1")
        await self._run.write(self._record, platform, str(user_id), int(message_id), rating)

    @staticmethod
    def _record(connection: Connection, platform: str, user_id: str, message_id: int, rating: int) -> None:
        now = utcnow()
        uid = _upsert_user(connection, platform, user_id, None, now)
        if connection.execute(select(messages.c.id).where(messages.c.id == message_id)).first() is None:
            raise UnknownMessage(message_id)  # rolls the transaction back, user row included
        stmt = _insert(connection.dialect.name, feedback).values(
            message_id=message_id, user_id=uid, rating=rating, created_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["user_id", "message_id"],
            set_={"rating": stmt.excluded.rating, "created_at": stmt.excluded.created_at},
        )
        connection.execute(stmt)

    async def withdraw(self, *, platform: str, user_id: str, message_id: int) -> bool:
        """Remove the user's rating of the message (a reaction taken back); False when there was none."""
        return bool(await self._run.write(self._withdraw, platform, str(user_id), int(message_id)))

    @staticmethod
    def _withdraw(connection: Connection, platform: str, user_id: str, message_id: int) -> int:
        uid = connection.execute(_user_id_query(platform, user_id)).scalar_one_or_none()
        if uid is None:
            return 0
        result = connection.execute(
            delete(feedback).where(feedback.c.user_id == uid, feedback.c.message_id == message_id)
        )
        return int(result.rowcount or 0)

    async def export(self) -> list[FeedbackRow]:
        """Every rated answer with its question, oldest rating first."""
        return await self._run.read(self._export)

    @staticmethod
    def _export(connection: Connection) -> list[FeedbackRow]:
        question = messages.alias("question")
        stmt = (
            select(
                question.c.text.label("question"),
                messages.c.text.label("answer"),
                feedback.c.rating,
                users.c.platform,
                feedback.c.created_at,
            )
            .select_from(
                feedback.join(messages, messages.c.id == feedback.c.message_id)
                .join(users, users.c.id == feedback.c.user_id)
                .outerjoin(question, question.c.id == messages.c.reply_to_id)
            )
            .where(messages.c.role == ROLE_ASSISTANT)
            .order_by(feedback.c.id)
        )
        return [
            FeedbackRow(
                question=row.question or "",
                answer=row.answer,
                rating=row.rating,
                platform=row.platform,
                created_at=row.created_at,
            )
            for row in connection.execute(stmt).all()
        ]


class UserSettingsRepository(_Repository):
    async def get(self, platform: str, user_id: str) -> dict[str, str]:
        return await self._run.read(self._get, platform, str(user_id))

    @staticmethod
    def _get(connection: Connection, platform: str, user_id: str) -> dict[str, str]:
        stmt = (
            select(user_settings.c.key, user_settings.c.value)
            .join(users, users.c.id == user_settings.c.user_id)
            .where(users.c.platform == platform, users.c.platform_user_id == user_id)
        )
        return {row.key: row.value for row in connection.execute(stmt).all()}

    async def set(self, platform: str, user_id: str, key: str, value: str) -> None:
        if not key or len(key) > MAX_SETTING_KEY:
            raise ValueError(f"setting names are 1 to {MAX_SETTING_KEY} characters")
        await self._run.write(self._set, platform, str(user_id), key, clean_text(str(value)))

    @staticmethod
    def _set(connection: Connection, platform: str, user_id: str, key: str, value: str) -> None:
        now = utcnow()
        uid = _upsert_user(connection, platform, user_id, None, now)
        stmt = _insert(connection.dialect.name, user_settings).values(
            user_id=uid, key=key, value=value, updated_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["user_id", "key"],
            set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        )
        connection.execute(stmt)

    async def unset(self, platform: str, user_id: str, key: str) -> bool:
        """Remove one setting (back to the default); False when it was not set."""
        return await self._run.write(self._unset, platform, str(user_id), key)

    @staticmethod
    def _unset(connection: Connection, platform: str, user_id: str, key: str) -> bool:
        uid = _user_id_query(platform, user_id).scalar_subquery()
        stmt = delete(user_settings).where(user_settings.c.user_id == uid, user_settings.c.key == key)
        return _rowcount(connection.execute(stmt)) > 0


def _count_if(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _sum_if(condition: ColumnElement[bool], column: Any) -> Any:
    return func.coalesce(func.sum(case((condition, column), else_=0)), 0)


_IS_QUESTION = messages.c.role == ROLE_USER
_IS_ANSWER = messages.c.role == ROLE_ASSISTANT
_MESSAGE_COUNTS = (
    _count_if(_IS_QUESTION),
    _count_if(_IS_ANSWER),
    _sum_if(_IS_QUESTION, messages.c.token_count),
    _sum_if(_IS_ANSWER, messages.c.token_count),
)
_RATINGS = (_count_if(feedback.c.rating > 0), _count_if(feedback.c.rating < 0))


class StatsRepository(_Repository):
    async def user_stats(self, platform: str, user_id: str) -> dict[str, Any]:
        """questions, answers, tokens_in, tokens_out, conversations, feedback_up/down, first_seen, last_seen."""
        return await self._run.read(self._user_stats, platform, str(user_id))

    @staticmethod
    def _user_stats(connection: Connection, platform: str, user_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = dict.fromkeys(
            (
                "questions",
                "answers",
                "tokens_in",
                "tokens_out",
                "conversations",
                "feedback_up",
                "feedback_down",
            ),
            0,
        )
        stats.update(first_seen=None, last_seen=None)
        user = connection.execute(
            select(users.c.id, users.c.created_at, users.c.last_seen_at).where(
                users.c.platform == platform, users.c.platform_user_id == user_id
            )
        ).first()
        if user is None:
            return stats
        counts = connection.execute(
            select(*_MESSAGE_COUNTS, func.count(distinct(messages.c.conversation_id))).where(
                messages.c.user_id == user.id
            )
        ).one()
        ratings = connection.execute(select(*_RATINGS).where(feedback.c.user_id == user.id)).one()
        stats.update(
            questions=int(counts[0]),
            answers=int(counts[1]),
            tokens_in=int(counts[2]),
            tokens_out=int(counts[3]),
            conversations=int(counts[4]),
            feedback_up=int(ratings[0]),
            feedback_down=int(ratings[1]),
            first_seen=user.created_at,
            last_seen=user.last_seen_at,
        )
        return stats

    async def global_stats(self) -> dict[str, Any]:
        """users (and per platform), conversations, questions, answers, tokens, events, feedback counts."""
        return await self._run.read(self._global_stats)

    @staticmethod
    def _global_stats(connection: Connection) -> dict[str, Any]:
        per_platform = connection.execute(
            select(users.c.platform, func.count()).group_by(users.c.platform)
        ).all()
        n_conversations = connection.execute(select(func.count()).select_from(conversations)).scalar_one()
        counts = connection.execute(select(*_MESSAGE_COUNTS)).one()
        n_events = connection.execute(select(func.count()).select_from(processed_events)).scalar_one()
        ratings = connection.execute(select(*_RATINGS)).one()
        platforms = {row[0]: int(row[1]) for row in per_platform}
        return {
            "users": sum(platforms.values()),
            "users_by_platform": platforms,
            "conversations": int(n_conversations),
            "questions": int(counts[0]),
            "answers": int(counts[1]),
            "tokens_in": int(counts[2]),
            "tokens_out": int(counts[3]),
            "processed_events": int(n_events),
            "feedback_up": int(ratings[0]),
            "feedback_down": int(ratings[1]),
        }

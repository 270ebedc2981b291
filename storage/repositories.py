"""Small repositories over the chat tables. All SQL of the project lives in storage/.

Statements are Core statements on the mapped tables (no identity map, no flush) so that one exchange costs a
handful of round trips. Every write runs in `write_transaction`: on SQLite it starts with BEGIN IMMEDIATE, so a
transaction never has to upgrade a read snapshot to a write lock (which fails at once under contention).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Insert, Row, Table, and_, case, delete, distinct, false, func, or_, select
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
    ProcessedEvent,
    User,
    UserSetting,
    utcnow,
)
from storage.values import ConversationKey, FeedbackRow, StoredMessage, UnknownMessage, UserRef

Sessions = async_sessionmaker[AsyncSession]

users: Table = User.__table__  # type: ignore[assignment]
conversations: Table = Conversation.__table__  # type: ignore[assignment]
messages: Table = Message.__table__  # type: ignore[assignment]
message_refs: Table = MessageRef.__table__  # type: ignore[assignment]
processed_events: Table = ProcessedEvent.__table__  # type: ignore[assignment]
feedback: Table = Feedback.__table__  # type: ignore[assignment]
user_settings: Table = UserSetting.__table__  # type: ignore[assignment]

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


def _key_filter(key: ConversationKey) -> ColumnElement[bool]:
    return and_(
        conversations.c.platform == key.platform,
        conversations.c.chat_id == key.chat_id,
        conversations.c.scope_user_id == (key.user_id or ""),
        conversations.c.thread_id == (key.thread_id or ""),
    )


def _user_id_query(platform: str, user_id: str) -> Any:
    return select(users.c.id).where(users.c.platform == platform, users.c.platform_user_id == user_id)


class _Repository:
    def __init__(self, sessions: Sessions, dialect: str) -> None:
        self._sessions = sessions
        self._dialect = dialect

    async def _upsert_user(
        self, session: AsyncSession, platform: str, user_id: str, display_name: str | None, now: datetime
    ) -> int:
        """Create the user row or refresh it; returns its id (race-safe: ON CONFLICT, one round trip)."""
        stmt = _insert(self._dialect, users).values(
            platform=platform,
            platform_user_id=user_id,
            display_name=clean_text(display_name or "")[:MAX_DISPLAY_NAME],
            created_at=now,
            last_seen_at=now,
        )
        update: dict[str, Any] = {"last_seen_at": stmt.excluded.last_seen_at}
        if display_name:
            update["display_name"] = stmt.excluded.display_name
        stmt = stmt.on_conflict_do_update(index_elements=["platform", "platform_user_id"], set_=update)
        return (await session.execute(stmt.returning(users.c.id))).scalar_one()


class ConversationRepository(_Repository):
    """History, event deduplication and the right to be forgotten."""

    async def is_processed(self, platform: str, event_id: str) -> bool:
        async with self._sessions() as session:
            found = await session.scalar(
                select(processed_events.c.id).where(
                    processed_events.c.platform == platform, processed_events.c.event_id == event_id
                )
            )
        return found is not None

    async def mark_processed(self, platform: str, event_id: str) -> bool:
        """Record an event handled without history (commands). False when it was already recorded."""
        async with write_transaction(self._sessions) as session:
            return await self._claim_event(session, platform, event_id, utcnow())

    async def _claim_event(self, session: AsyncSession, platform: str, event_id: str, now: datetime) -> bool:
        # ON CONFLICT DO NOTHING, not catching IntegrityError: on PostgreSQL a concurrent insert of the same key
        # makes this wait for the other transaction and then yields no row, without aborting ours.
        stmt = (
            _insert(self._dialect, processed_events)
            .values(platform=platform, event_id=event_id, created_at=now)
            .on_conflict_do_nothing(index_elements=["platform", "event_id"])
            .returning(processed_events.c.id)
        )
        return (await session.execute(stmt)).first() is not None

    async def prune_processed(self, before: datetime) -> int:
        """Forget event ids older than `before` (platforms stop redelivering after a day or so)."""
        async with write_transaction(self._sessions) as session:
            result = await session.execute(delete(processed_events).where(processed_events.c.created_at < before))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def history(self, key: ConversationKey, limit: int = 200) -> list[StoredMessage]:
        """The newest `limit` messages of the conversation, oldest first."""
        stmt = (
            select(*_MESSAGE_COLUMNS)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(_key_filter(key))
            .order_by(messages.c.id.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
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
    ) -> bool:
        """Store the event id, the user turn and the assistant turn in ONE transaction.

        Returns False, writing nothing, when the event id was already processed (also when another process
        commits the same event concurrently).
        """
        now = utcnow()
        user_ids = [user_platform_message_id] if user_platform_message_id else []
        assistant_ids = [str(x) for x in assistant_platform_message_ids]
        async with write_transaction(self._sessions) as session:
            if not await self._claim_event(session, platform, event_id, now):
                await session.rollback()
                return False
            user_row = await self._upsert_user(session, user.platform, user.user_id, user.display_name, now)
            conversation = await self._conversation_id(session, key, now)
            question_id = await self._insert_message(
                session, conversation, user_row, None, ROLE_USER, user_text, user_tokens, [], user_ids, now
            )
            answer_id = await self._insert_message(
                session, conversation, user_row, question_id, ROLE_ASSISTANT, assistant_text, assistant_tokens,
                sources, assistant_ids, now,
            )
            refs = [{"message_id": question_id, "platform_message_id": x} for x in user_ids]
            refs += [{"message_id": answer_id, "platform_message_id": x} for x in assistant_ids]
            if refs:
                await session.execute(message_refs.insert(), refs)
        return True

    async def _conversation_id(self, session: AsyncSession, key: ConversationKey, now: datetime) -> int:
        """Get or create the conversation row (race-safe upsert, one round trip)."""
        stmt = _insert(self._dialect, conversations).values(
            platform=key.platform,
            chat_id=key.chat_id,
            scope_user_id=key.user_id or "",
            thread_id=key.thread_id or "",
            created_at=now,
            updated_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["platform", "chat_id", "scope_user_id", "thread_id"],
            set_={"updated_at": stmt.excluded.updated_at},
        )
        return (await session.execute(stmt.returning(conversations.c.id))).scalar_one()

    @staticmethod
    async def _insert_message(
        session: AsyncSession,
        conversation_id: int,
        user_id: int,
        reply_to_id: int | None,
        role: str,
        text: str,
        token_count: int,
        sources: list[dict[str, Any]],
        platform_message_ids: list[str],
        now: datetime,
    ) -> int:
        stmt = messages.insert().values(
            conversation_id=conversation_id,
            user_id=user_id,
            reply_to_id=reply_to_id,
            role=role,
            text=clean_text(text),
            token_count=int(token_count),
            sources=list(sources),
            platform_message_ids=platform_message_ids,
            created_at=now,
        )
        return (await session.execute(stmt.returning(messages.c.id))).scalar_one()

    async def attach_platform_messages(self, message_id: int, platform_message_ids: Sequence[str]) -> None:
        """Add platform ids to a stored message (e.g. an answer split into more parts after the commit)."""
        new = [str(x) for x in platform_message_ids]
        if not new:
            return
        async with write_transaction(self._sessions) as session:
            current = await session.scalar(
                select(messages.c.platform_message_ids).where(messages.c.id == message_id)
            )
            if current is None:
                raise UnknownMessage(message_id)
            merged = list(current) + [x for x in new if x not in current]
            await session.execute(
                messages.update().where(messages.c.id == message_id).values(platform_message_ids=merged)
            )
            await session.execute(
                message_refs.insert(),
                [{"message_id": message_id, "platform_message_id": x} for x in new if x not in current],
            )

    async def reset(self, key: ConversationKey) -> int:
        """Delete the conversation's messages (their refs and feedback go with them); returns how many."""
        conversation = select(conversations.c.id).where(_key_filter(key)).scalar_subquery()
        async with write_transaction(self._sessions) as session:
            result = await session.execute(delete(messages).where(messages.c.conversation_id == conversation))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def last_assistant(self, key: ConversationKey) -> StoredMessage | None:
        stmt = (
            select(*_MESSAGE_COLUMNS)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(_key_filter(key), messages.c.role == ROLE_ASSISTANT)
            .order_by(messages.c.id.desc())
            .limit(1)
        )
        async with self._sessions() as session:
            row = (await session.execute(stmt)).first()
        return _stored(row) if row is not None else None

    async def delete_last_exchange(
        self, key: ConversationKey, *, user_id: str | None = None
    ) -> tuple[StoredMessage, StoredMessage] | None:
        """Remove the newest question/answer pair (for /retry) and return it as (user turn, assistant turn).

        `user_id` restricts it to that user's newest exchange (useful in a shared group history).
        """
        stmt = (
            select(*_MESSAGE_COLUMNS, messages.c.reply_to_id)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(_key_filter(key), messages.c.role == ROLE_ASSISTANT)
            .order_by(messages.c.id.desc())
            .limit(1)
        )
        if user_id is not None:
            stmt = stmt.where(messages.c.user_id == _user_id_query(key.platform, user_id).scalar_subquery())
        async with write_transaction(self._sessions) as session:
            answer = (await session.execute(stmt)).first()
            if answer is None or answer.reply_to_id is None:
                return None
            question = (
                await session.execute(select(*_MESSAGE_COLUMNS).where(messages.c.id == answer.reply_to_id))
            ).first()
            if question is None:
                return None
            await session.execute(delete(messages).where(messages.c.id.in_([answer.id, question.id])))
        return _stored(question), _stored(answer)

    async def find_by_platform_message(
        self, platform: str, chat_id: str, platform_message_id: str
    ) -> StoredMessage | None:
        """The stored message a platform message (a reply target, a reacted-to answer) belongs to."""
        stmt = (
            select(*_MESSAGE_COLUMNS)
            .select_from(
                message_refs.join(messages, messages.c.id == message_refs.c.message_id).join(
                    conversations, conversations.c.id == messages.c.conversation_id
                )
            )
            .where(
                message_refs.c.platform_message_id == str(platform_message_id),
                conversations.c.platform == platform,
                conversations.c.chat_id == str(chat_id),
            )
            .order_by(messages.c.id.desc())
            .limit(1)
        )
        async with self._sessions() as session:
            row = (await session.execute(stmt)).first()
        return _stored(row) if row is not None else None

    async def forget_user(self, platform: str, user_id: str) -> int:
        """Delete every row about the user; returns the number of rows removed.

        Removes their user row, settings, the feedback they gave, conversations scoped to them with all their
        messages, and their exchanges (question and answer) in shared group histories, with the refs and
        feedback attached to those messages. Processed-event rows stay: they hold only (platform, event id) and
        keep redelivered events deduplicated.
        """
        async with write_transaction(self._sessions) as session:
            uid = await session.scalar(_user_id_query(platform, user_id))
            scoped = select(conversations.c.id).where(
                conversations.c.platform == platform, conversations.c.scope_user_id == user_id
            )
            theirs = or_(
                messages.c.conversation_id.in_(scoped),
                messages.c.user_id == uid if uid is not None else false(),
            )
            doomed = select(messages.c.id).where(theirs)
            statements = [
                delete(feedback).where(
                    or_(feedback.c.message_id.in_(doomed), feedback.c.user_id == uid if uid is not None else false())
                ),
                delete(message_refs).where(message_refs.c.message_id.in_(doomed)),
                delete(messages).where(theirs),
                delete(conversations).where(conversations.c.id.in_(scoped)),
            ]
            if uid is not None:
                statements += [
                    delete(user_settings).where(user_settings.c.user_id == uid),
                    delete(users).where(users.c.id == uid),
                ]
            removed = 0
            for statement in statements:
                result = await session.execute(statement)
                removed += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return removed


class FeedbackRepository(_Repository):
    async def record(self, *, platform: str, user_id: str, message_id: int, rating: int) -> None:
        """Store a +1/-1 rating; a second rating by the same user of the same message replaces the first."""
        if rating not in (1, -1):
            raise ValueError("rating must be +1 or -1")
        now = utcnow()
        async with write_transaction(self._sessions) as session:
            uid = await self._upsert_user(session, platform, user_id, None, now)
            if await session.scalar(select(messages.c.id).where(messages.c.id == message_id)) is None:
                raise UnknownMessage(message_id)
            stmt = _insert(self._dialect, feedback).values(
                message_id=message_id, user_id=uid, rating=rating, created_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["user_id", "message_id"],
                set_={"rating": stmt.excluded.rating, "created_at": stmt.excluded.created_at},
            )
            await session.execute(stmt)

    async def export(self) -> list[FeedbackRow]:
        """Every rated answer with its question, oldest rating first."""
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
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [
            FeedbackRow(
                question=row.question or "",
                answer=row.answer,
                rating=row.rating,
                platform=row.platform,
                created_at=row.created_at,
            )
            for row in rows
        ]


class UserSettingsRepository(_Repository):
    async def get(self, platform: str, user_id: str) -> dict[str, str]:
        stmt = (
            select(user_settings.c.key, user_settings.c.value)
            .join(users, users.c.id == user_settings.c.user_id)
            .where(users.c.platform == platform, users.c.platform_user_id == user_id)
        )
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return {row.key: row.value for row in rows}

    async def set(self, platform: str, user_id: str, key: str, value: str) -> None:
        if not key or len(key) > MAX_SETTING_KEY:
            raise ValueError(f"setting names are 1 to {MAX_SETTING_KEY} characters")
        now = utcnow()
        async with write_transaction(self._sessions) as session:
            uid = await self._upsert_user(session, platform, user_id, None, now)
            stmt = _insert(self._dialect, user_settings).values(
                user_id=uid, key=key, value=clean_text(value), updated_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["user_id", "key"],
                set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            )
            await session.execute(stmt)

    async def unset(self, platform: str, user_id: str, key: str) -> bool:
        """Remove one setting (back to the default); False when it was not set."""
        uid = _user_id_query(platform, user_id).scalar_subquery()
        async with write_transaction(self._sessions) as session:
            result = await session.execute(
                delete(user_settings).where(user_settings.c.user_id == uid, user_settings.c.key == key)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def _count_if(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _sum_if(condition: ColumnElement[bool], column: Any) -> Any:
    return func.coalesce(func.sum(case((condition, column), else_=0)), 0)


class StatsRepository(_Repository):
    async def user_stats(self, platform: str, user_id: str) -> dict[str, Any]:
        """questions, answers, tokens_in, tokens_out, conversations, feedback_up/down, first_seen, last_seen."""
        stats: dict[str, Any] = {
            "questions": 0,
            "answers": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "conversations": 0,
            "feedback_up": 0,
            "feedback_down": 0,
            "first_seen": None,
            "last_seen": None,
        }
        async with self._sessions() as session:
            user = (
                await session.execute(
                    select(users.c.id, users.c.created_at, users.c.last_seen_at).where(
                        users.c.platform == platform, users.c.platform_user_id == user_id
                    )
                )
            ).first()
            if user is None:
                return stats
            is_user, is_answer = messages.c.role == ROLE_USER, messages.c.role == ROLE_ASSISTANT
            counts = (
                await session.execute(
                    select(
                        _count_if(is_user),
                        _count_if(is_answer),
                        _sum_if(is_user, messages.c.token_count),
                        _sum_if(is_answer, messages.c.token_count),
                        func.count(distinct(messages.c.conversation_id)),
                    ).where(messages.c.user_id == user.id)
                )
            ).one()
            ratings = (
                await session.execute(
                    select(_count_if(feedback.c.rating > 0), _count_if(feedback.c.rating < 0)).where(
                        feedback.c.user_id == user.id
                    )
                )
            ).one()
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
        is_user, is_answer = messages.c.role == ROLE_USER, messages.c.role == ROLE_ASSISTANT
        async with self._sessions() as session:
            per_platform = (
                await session.execute(select(users.c.platform, func.count()).group_by(users.c.platform))
            ).all()
            n_conversations = await session.scalar(select(func.count()).select_from(conversations))
            counts = (
                await session.execute(
                    select(
                        _count_if(is_user),
                        _count_if(is_answer),
                        _sum_if(is_user, messages.c.token_count),
                        _sum_if(is_answer, messages.c.token_count),
                    )
                )
            ).one()
            n_events = await session.scalar(select(func.count()).select_from(processed_events))
            ratings = (
                await session.execute(select(_count_if(feedback.c.rating > 0), _count_if(feedback.c.rating < 0)))
            ).one()
        platforms = {row[0]: int(row[1]) for row in per_platform}
        return {
            "users": sum(platforms.values()),
            "users_by_platform": platforms,
            "conversations": int(n_conversations or 0),
            "questions": int(counts[0]),
            "answers": int(counts[1]),
            "tokens_in": int(counts[2]),
            "tokens_out": int(counts[3]),
            "processed_events": int(n_events or 0),
            "feedback_up": int(ratings[0]),
            "feedback_down": int(ratings[1]),
        }

"""ORM tables for chat history, deduplication, feedback and per-user settings.

Documents and chunks (the retrieval index) live in `storage.knowledge`. Every schema change here needs a new
revision under `storage/migrations/versions/`; `tests/storage` checks that the migrations produce exactly
these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from storage.base import Base

# INTEGER PRIMARY KEY is SQLite's rowid alias (fast, autoincrementing); BIGINT keeps PostgreSQL from overflowing.
BigId = BigInteger().with_variant(Integer(), "sqlite")

ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite has no time zones: stored as naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class User(Base):
    """A person on one platform; deleted with everything about them by `forget_user`."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Conversation(Base):
    """One history: per user in a chat, or shared by a group (`scope_user_id == ''`).

    Empty strings, not NULLs, mark "no user scope" / "no thread": NULLs are distinct in a unique constraint on
    both engines, so NULL-keyed rows could be duplicated by two concurrent first messages.
    """

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("platform", "chat_id", "scope_user_id", "thread_id"),
        Index("ix_conversations_scope", "platform", "scope_user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(128))
    scope_user_id: Mapped[str] = mapped_column(String(128), default="")
    thread_id: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Message(Base):
    """One turn. `user_id` is the human the turn belongs to: the author of a user turn, the asker of an
    assistant turn, so forgetting a user removes whole exchanges, also from shared group histories."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant', 'system')", name="role"),
        Index("ix_messages_conversation_order", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    reply_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    platform_message_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MessageRef(Base):
    """Lookup index from a platform message id (reply-to, reaction target) to our message."""

    __tablename__ = "message_refs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    platform_message_id: Mapped[str] = mapped_column(String(128), index=True)


class ProcessedEvent(Base):
    """A platform event already handled. Holds no personal data beyond (platform, event id), so it survives
    `forget_user`: a redelivered event must still be recognised and skipped."""

    __tablename__ = "processed_events"
    __table_args__ = (UniqueConstraint("platform", "event_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Feedback(Base):
    """A user's rating (+1 / -1) of one message; one row per user and message."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("user_id", "message_id"),
        CheckConstraint("rating IN (-1, 1)", name="rating"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    rating: Mapped[int] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UserSetting(Base):
    __tablename__ = "user_settings"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


REPLY_PENDING = "pending"  # generating / streaming: message ids are added as the adapter creates them
REPLY_FINAL = "final"  # the finished answer is recorded and being delivered; the commit deletes the row
REPLY_INTERRUPTED = "interrupted"  # found after a crash and the user told; kept so /retry can ask again


class PendingReply(Base):
    """The outbox: one reply between "accepted" and "stored", so a crash in between is found on restart.

    Written before the first message of the reply is sent; deleted in the same transaction that stores the
    exchange (or marks a failed event processed). `replaces` lists the message ids /retry will remove in that
    transaction. Holds the question (personal data): `forget_user` deletes the user's rows.
    """

    __tablename__ = "pending_replies"
    __table_args__ = (
        Index("ix_pending_replies_user", "platform", "user_id"),
        Index("ix_pending_replies_state", "platform", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(256))
    chat_id: Mapped[str] = mapped_column(String(128))
    scope_user_id: Mapped[str] = mapped_column(String(128), default="")
    thread_id: Mapped[str] = mapped_column(String(128), default="")
    user_id: Mapped[str] = mapped_column(String(128))
    user_name: Mapped[str] = mapped_column(String(256), default="")
    question: Mapped[str] = mapped_column(Text)
    question_tokens: Mapped[int] = mapped_column(Integer, default=0)
    user_message_id: Mapped[str] = mapped_column(String(128), default="")
    replaces: Mapped[list[int]] = mapped_column(JSON, default=list)
    message_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default=REPLY_PENDING)
    answer: Mapped[str] = mapped_column(Text, default="")
    answer_tokens: Mapped[int] = mapped_column(Integer, default=0)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

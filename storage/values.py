"""Plain values the repositories take and return (no ORM objects leave storage/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ConversationKey:
    """Which history a message belongs to.

    `user_id` is the platform user whose private history this is (DMs, and groups by default); None means the
    chat's shared history. `thread_id` separates Discord threads / Telegram topics.
    """

    platform: str
    chat_id: str
    user_id: str | None
    thread_id: str | None = None


@dataclass(frozen=True)
class UserRef:
    platform: str
    user_id: str
    display_name: str = ""


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: str  # "user" | "assistant"
    text: str
    token_count: int
    sources: list[dict[str, Any]] = field(default_factory=list)
    platform_message_ids: list[str] = field(default_factory=list)
    created_at: datetime | None = None


@dataclass(frozen=True)
class FeedbackRow:
    """One rated answer, for export (e.g. to build an evaluation or fine-tuning set)."""

    question: str
    answer: str
    rating: int  # +1 / -1
    platform: str
    created_at: datetime


@dataclass(frozen=True)
class PendingReplyRow:
    """One outbox row: a reply accepted but not (yet) stored. See `storage.models.PendingReply`."""

    id: int
    platform: str
    event_id: str
    key: ConversationKey
    user: UserRef
    question: str
    state: str  # "pending" | "final" | "interrupted"
    message_ids: list[str] = field(default_factory=list)
    answer: str = ""


class UnknownMessage(LookupError):
    """Feedback for a message id that is not (or no longer) stored."""

"""Persistence: SQLAlchemy 2 async on SQLite (default) or PostgreSQL (by URL), schema versioned with Alembic."""

from storage.base import Base
from storage.database import Database
from storage.engine import create_engine, create_sessionmaker, is_sqlite, normalize_url
from storage.migrate import head_revision
from storage.outbox import OutboxRepository
from storage.repositories import (
    ConversationRepository,
    FeedbackRepository,
    StatsRepository,
    UserSettingsRepository,
    write_transaction,
)
from storage.values import (
    ConversationKey,
    FeedbackRow,
    PendingReplyRow,
    StoredMessage,
    UnknownMessage,
    UserRef,
)

__all__ = [
    "Base",
    "ConversationKey",
    "ConversationRepository",
    "Database",
    "FeedbackRepository",
    "FeedbackRow",
    "OutboxRepository",
    "PendingReplyRow",
    "StatsRepository",
    "StoredMessage",
    "UnknownMessage",
    "UserRef",
    "UserSettingsRepository",
    "create_engine",
    "create_sessionmaker",
    "head_revision",
    "is_sqlite",
    "normalize_url",
    "write_transaction",
]

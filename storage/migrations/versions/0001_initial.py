"""Initial schema: users, conversations, messages, message refs, processed events, feedback, user settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, **kw)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, nullable=False),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("platform_user_id", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        _ts("created_at"),
        _ts("last_seen_at"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("platform", "platform_user_id", name="uq_users_platform"),
    )
    op.create_table(
        "conversations",
        sa.Column("id", BigId, nullable=False),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("scope_user_id", sa.String(128), nullable=False),
        sa.Column("thread_id", sa.String(128), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint("platform", "chat_id", "scope_user_id", "thread_id", name="uq_conversations_platform"),
    )
    op.create_index("ix_conversations_scope", "conversations", ["platform", "scope_user_id"])
    op.create_table(
        "messages",
        sa.Column("id", BigId, nullable=False),
        sa.Column("conversation_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=True),
        sa.Column("reply_to_id", BigId, nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("platform_message_ids", sa.JSON(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.CheckConstraint("role IN ('user', 'assistant', 'system')", name="ck_messages_role"),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"], name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_messages_user_id_users", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["reply_to_id"], ["messages.id"], name="fk_messages_reply_to_id_messages", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_messages_conversation_order", "messages", ["conversation_id", "id"])
    op.create_index("ix_messages_user_id", "messages", ["user_id"])
    op.create_index("ix_messages_reply_to_id", "messages", ["reply_to_id"])
    op.create_table(
        "message_refs",
        sa.Column("id", BigId, nullable=False),
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("platform_message_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_message_refs"),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name="fk_message_refs_message_id_messages", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_message_refs_message_id", "message_refs", ["message_id"])
    op.create_index("ix_message_refs_platform_message_id", "message_refs", ["platform_message_id"])
    op.create_table(
        "processed_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(256), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_processed_events"),
        sa.UniqueConstraint("platform", "event_id", name="uq_processed_events_platform"),
    )
    op.create_index("ix_processed_events_created_at", "processed_events", ["created_at"])
    op.create_table(
        "feedback",
        sa.Column("id", BigId, nullable=False),
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("rating", sa.SmallInteger(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.UniqueConstraint("user_id", "message_id", name="uq_feedback_user_id"),
        sa.CheckConstraint("rating IN (-1, 1)", name="ck_feedback_rating"),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name="fk_feedback_message_id_messages", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_feedback_user_id_users", ondelete="CASCADE"),
    )
    op.create_index("ix_feedback_message_id", "feedback", ["message_id"])
    op.create_table(
        "user_settings",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_user_settings"),
        sa.UniqueConstraint("user_id", "key", name="uq_user_settings_user_id"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_user_settings_user_id_users", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    for table in ("user_settings", "feedback", "processed_events", "message_refs", "messages", "conversations"):
        op.drop_table(table)
    op.drop_table("users")

"""The outbox: replies between "accepted" and "stored", found and repaired after a crash.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pending_replies",
        sa.Column("id", BigId, nullable=False),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(256), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("scope_user_id", sa.String(128), nullable=False),
        sa.Column("thread_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("user_name", sa.String(256), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("question_tokens", sa.Integer(), nullable=False),
        sa.Column("user_message_id", sa.String(128), nullable=False),
        sa.Column("replaces", sa.JSON(), nullable=False),
        sa.Column("message_ids", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("answer_tokens", sa.Integer(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pending_replies"),
    )
    op.create_index("ix_pending_replies_user", "pending_replies", ["platform", "user_id"])
    op.create_index("ix_pending_replies_state", "pending_replies", ["platform", "state"])


def downgrade() -> None:
    op.drop_table("pending_replies")

"""Private documents: knowledge documents may belong to one user (uploaded in chat).

`owner` is the core's user key ("telegram:42"); NULL for shared knowledge (packs, indexed folders).
Reads filter on it, so a private document is only ever seen by its owner.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("knowledge_documents", sa.Column("owner", sa.String(length=128), nullable=True))
    op.create_index(op.f("ix_knowledge_documents_owner"), "knowledge_documents", ["owner"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_knowledge_documents_owner"), table_name="knowledge_documents")
    # Plain ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35): a batch table copy would cascade-delete the chunks.
    op.drop_column("knowledge_documents", "owner")

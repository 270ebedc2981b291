"""Knowledge base: documents, chunks and their full-text index.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copies of the DDL at this revision (later changes to storage/knowledge.py get their own revision).
_SQLITE_SEARCH_DDL = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS knowledge_chunks_fts USING fts5("
    "text, title, ref, aliases, content='knowledge_chunks', content_rowid='id', "
    "tokenize='porter unicode61')",
    "CREATE TRIGGER IF NOT EXISTS knowledge_chunks_ai AFTER INSERT ON knowledge_chunks BEGIN "
    "INSERT INTO knowledge_chunks_fts(rowid, text, title, ref, aliases) "
    "VALUES (new.id, new.text, new.title, new.ref, new.aliases); END",
    "CREATE TRIGGER IF NOT EXISTS knowledge_chunks_ad AFTER DELETE ON knowledge_chunks BEGIN "
    "INSERT INTO knowledge_chunks_fts(knowledge_chunks_fts, rowid, text, title, ref, aliases) "
    "VALUES ('delete', old.id, old.text, old.title, old.ref, old.aliases); END",
    "CREATE TRIGGER IF NOT EXISTS knowledge_chunks_au AFTER UPDATE ON knowledge_chunks BEGIN "
    "INSERT INTO knowledge_chunks_fts(knowledge_chunks_fts, rowid, text, title, ref, aliases) "
    "VALUES ('delete', old.id, old.text, old.title, old.ref, old.aliases); "
    "INSERT INTO knowledge_chunks_fts(rowid, text, title, ref, aliases) "
    "VALUES (new.id, new.text, new.title, new.ref, new.aliases); END",
)
_POSTGRES_SEARCH_DDL = (
    "ALTER TABLE knowledge_chunks ADD COLUMN IF NOT EXISTS search_vector tsvector GENERATED ALWAYS AS ("
    "setweight(to_tsvector('english', coalesce(ref, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(title, '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(aliases, '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(text, '')), 'D')) STORED",
    "CREATE INDEX IF NOT EXISTS ix_knowledge_chunks_search_vector ON knowledge_chunks "
    "USING GIN (search_vector)",
    # Exact mentions (CVE / CAPEC ids) are phrase searches over unstemmed words.
    "CREATE INDEX IF NOT EXISTS ix_knowledge_chunks_simple_text ON knowledge_chunks "
    "USING GIN (to_tsvector('simple', text))",
)


def upgrade() -> None:
    op.create_table(
        "knowledge_documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("locator", sa.String(length=1024), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("prior", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_documents")),
        sa.UniqueConstraint("source", "locator", name=op.f("uq_knowledge_documents_source")),
    )
    op.create_index(
        op.f("ix_knowledge_documents_source"), "knowledge_documents", ["source"], unique=False
    )
    op.create_table(
        "knowledge_chunks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("ord", sa.Integer(), nullable=False),
        sa.Column("ref", sa.String(length=1024), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("aliases", sa.Text(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["knowledge_documents.id"],
            name=op.f("fk_knowledge_chunks_document_id_knowledge_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_chunks")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_knowledge_chunks_document_id"), "knowledge_chunks", ["document_id"], unique=False
    )
    op.create_index(op.f("ix_knowledge_chunks_ref"), "knowledge_chunks", ["ref"], unique=False)
    ddl = _SQLITE_SEARCH_DDL if op.get_bind().dialect.name == "sqlite" else _POSTGRES_SEARCH_DDL
    for statement in ddl:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("knowledge_chunks_ai", "knowledge_chunks_ad", "knowledge_chunks_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS knowledge_chunks_fts")
    op.drop_index(op.f("ix_knowledge_chunks_ref"), table_name="knowledge_chunks")
    op.drop_index(op.f("ix_knowledge_chunks_document_id"), table_name="knowledge_chunks")
    op.drop_table("knowledge_chunks")
    op.drop_index(op.f("ix_knowledge_documents_source"), table_name="knowledge_documents")
    op.drop_table("knowledge_documents")

"""Knowledge as entries with typed sections: chunk entry/section columns, entry names, relations.

Existing chunks are filled in from what 0002 stored (the pack a document came from, the chunk's
position and its "Heading: " text prefix); rebuilding a pack then replaces them with its new rows.
The full-text index is untouched: its triggers name their columns, and SQLite's ADD COLUMN keeps the
table (and so the FTS rowids) as it is.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen copies of the rules at this revision.
_KIND_OF_SOURCE = {"cwe": "weakness", "attack": "technique"}
_SECTION_OF_HEADING = {
    "Details": "description",
    "Description": "description",
    "Detection": "detection",
    "Mitigations": "mitigation",
    "Potential mitigations": "mitigation",
    "Common consequences": "consequence",
    "Related entries and observed examples": "relationship",
}


def upgrade() -> None:
    op.add_column(
        "knowledge_chunks", sa.Column("entry_ref", sa.String(length=1024), server_default="", nullable=False)
    )
    op.add_column(
        "knowledge_chunks",
        sa.Column("entry_kind", sa.String(length=32), server_default="document", nullable=False),
    )
    op.add_column(
        "knowledge_chunks",
        sa.Column("section", sa.String(length=32), server_default="description", nullable=False),
    )
    op.add_column("knowledge_chunks", sa.Column("heading", sa.Text(), server_default="", nullable=False))
    op.create_index(op.f("ix_knowledge_chunks_entry_ref"), "knowledge_chunks", ["entry_ref"], unique=False)
    op.add_column(
        "knowledge_documents", sa.Column("version", sa.String(length=64), server_default="", nullable=False)
    )
    op.create_table(
        "knowledge_entry_names",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("entry_ref", sa.String(length=1024), nullable=False),
        sa.Column("entry_kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["knowledge_documents.id"],
            name=op.f("fk_knowledge_entry_names_document_id_knowledge_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_entry_names")),
    )
    for column in ("document_id", "entry_ref", "key"):
        op.create_index(
            op.f(f"ix_knowledge_entry_names_{column}"), "knowledge_entry_names", [column], unique=False
        )
    op.create_table(
        "knowledge_relations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("entry_ref", sa.String(length=1024), nullable=False),
        sa.Column("entry_kind", sa.String(length=32), nullable=False),
        sa.Column("relation", sa.String(length=32), nullable=False),
        sa.Column("target_ref", sa.String(length=1024), nullable=False),
        sa.Column("target_kind", sa.String(length=32), nullable=False),
        sa.Column("target_name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["knowledge_documents.id"],
            name=op.f("fk_knowledge_relations_document_id_knowledge_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_relations")),
    )
    for column in ("document_id", "entry_ref"):
        op.create_index(
            op.f(f"ix_knowledge_relations_{column}"), "knowledge_relations", [column], unique=False
        )
    op.create_index("ix_knowledge_relations_target", "knowledge_relations", ["target_ref", "relation"])
    _backfill()


def _backfill() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT c.id, c.ref, c.ord, c.text, c.title, c.aliases, d.source, d.id "
            "FROM knowledge_chunks AS c JOIN knowledge_documents AS d ON d.id = c.document_id"
        )
    ).all()
    updates = []
    names = []
    named: set[int] = set()
    for chunk_id, ref, ord_, text, title, aliases, source, document_id in rows:
        is_pack = source not in ("file", "upload")  # user files and private uploads are documents
        kind = _KIND_OF_SOURCE.get(source, "document") if is_pack else "document"
        entry_ref = ref if is_pack else ref.rsplit("#", 1)[0]
        heading, section = "", "description"
        if is_pack and ord_ == 0:
            section = "summary"
        elif is_pack:
            head = text.split(": ", 1)[0]
            if head in _SECTION_OF_HEADING:
                heading, section = head, _SECTION_OF_HEADING[head]
        updates.append({"i": chunk_id, "r": entry_ref, "k": kind, "s": section, "h": heading})
        if is_pack and ord_ == 0 and document_id not in named:
            named.add(document_id)
            seen: set[str] = set()
            values = [("ref", ref), ("name", title)] + [
                ("alias", a) for a in (aliases or "").split(";") if a.strip()
            ]
            for role, value in values:
                key = " ".join(value.casefold().split())
                if key and key not in seen:
                    seen.add(key)
                    names.append(
                        {
                            "d": document_id,
                            "r": ref,
                            "k": kind,
                            "key": key[:512],
                            "n": value.strip(),
                            "o": role,
                        }
                    )
    if updates:
        bind.execute(
            sa.text(
                "UPDATE knowledge_chunks SET entry_ref = :r, entry_kind = :k, section = :s, heading = :h "
                "WHERE id = :i"
            ),
            updates,
        )
    if names:
        bind.execute(
            sa.text(
                "INSERT INTO knowledge_entry_names (document_id, entry_ref, entry_kind, key, name, role) "
                "VALUES (:d, :r, :k, :key, :n, :o)"
            ),
            names,
        )


def downgrade() -> None:
    op.drop_index("ix_knowledge_relations_target", table_name="knowledge_relations")
    for column in ("document_id", "entry_ref"):
        op.drop_index(op.f(f"ix_knowledge_relations_{column}"), table_name="knowledge_relations")
    op.drop_table("knowledge_relations")
    for column in ("document_id", "entry_ref", "key"):
        op.drop_index(op.f(f"ix_knowledge_entry_names_{column}"), table_name="knowledge_entry_names")
    op.drop_table("knowledge_entry_names")
    op.drop_column("knowledge_documents", "version")
    op.drop_index(op.f("ix_knowledge_chunks_entry_ref"), table_name="knowledge_chunks")
    for column in ("heading", "section", "entry_kind", "entry_ref"):
        op.drop_column("knowledge_chunks", column)

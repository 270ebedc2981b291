"""Knowledge tables: documents, their chunks (typed by entry and section), entry names and relations,
plus the full-text index DDL of each engine.

An *entry* is one thing the knowledge base knows about: a CWE weakness, an ATT&CK technique, group,
software, campaign, mitigation or data component, or a user's document. Every chunk carries its entry
(`entry_ref`, `entry_kind`) and the kind of text it holds (`section`) as columns, so answers can ask for
"the detection sections of T1558.003" directly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, or_
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from storage.base import Base

# What an entry is. "document" is anything indexed from a user's files.
ENTRY_KINDS = (
    "weakness",
    "technique",
    "group",
    "software",
    "campaign",
    "mitigation",
    "data_component",
    "document",
)
# What a chunk's text is about, within its entry.
SECTIONS = (
    "summary",
    "description",
    "mitigation",
    "detection",
    "consequence",
    "example",
    "procedure",
    "relationship",
)
DEFAULT_KIND = "document"
# How a name in `knowledge_entry_names` names its entry, most decisive first.
NAME_ROLES = ("ref", "name", "alias")
DEFAULT_SECTION = "description"

FTS_TABLE = "knowledge_chunks_fts"

# Column order of the FTS5 table; bm25() takes one weight per column in this order.
# Refs, titles and aliases are short and decisive, so a hit there outranks one in body text.
FTS_COLUMNS = ("text", "title", "ref", "aliases")
FTS_WEIGHTS = (1.0, 4.0, 6.0, 4.0)

# The triggers name their columns, so columns added later (entry_ref, section, ...) never disturb them.
SQLITE_SEARCH_DDL: tuple[str, ...] = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
    "text, title, ref, aliases, content='knowledge_chunks', content_rowid='id', "
    "tokenize='porter unicode61')",
    f"CREATE TRIGGER IF NOT EXISTS knowledge_chunks_ai AFTER INSERT ON knowledge_chunks BEGIN "
    f"INSERT INTO {FTS_TABLE}(rowid, text, title, ref, aliases) "
    "VALUES (new.id, new.text, new.title, new.ref, new.aliases); END",
    f"CREATE TRIGGER IF NOT EXISTS knowledge_chunks_ad AFTER DELETE ON knowledge_chunks BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text, title, ref, aliases) "
    "VALUES ('delete', old.id, old.text, old.title, old.ref, old.aliases); END",
    f"CREATE TRIGGER IF NOT EXISTS knowledge_chunks_au AFTER UPDATE ON knowledge_chunks BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text, title, ref, aliases) "
    "VALUES ('delete', old.id, old.text, old.title, old.ref, old.aliases); "
    f"INSERT INTO {FTS_TABLE}(rowid, text, title, ref, aliases) "
    "VALUES (new.id, new.text, new.title, new.ref, new.aliases); END",
)

POSTGRES_SEARCH_DDL: tuple[str, ...] = (
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


def install_search_index(connection: Connection) -> None:
    """Create the full-text index for the connection's dialect (for `create_all` setups and tests;
    the migration 0002 runs the same statements)."""
    statements = SQLITE_SEARCH_DDL if connection.dialect.name == "sqlite" else POSTGRES_SEARCH_DDL
    for statement in statements:
        connection.exec_driver_sql(statement)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def visible_to(viewer: str | None) -> ColumnElement[bool]:
    """The documents `viewer` may read: shared ones (owner NULL), and their own private ones."""
    if viewer is None:
        return Document.owner.is_(None)
    return or_(Document.owner.is_(None), Document.owner == viewer)


def name_key(name: str) -> str:
    """How entry names and aliases are compared: case-folded, inner whitespace collapsed."""
    return " ".join(name.casefold().split())


class Document(Base):
    """One indexed unit: a file, a CWE entry, an ATT&CK technique, group, software, ..."""

    __tablename__ = "knowledge_documents"
    __table_args__ = (UniqueConstraint("source", "locator"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64), index=True)  # "cwe" | "attack" | "file"
    locator: Mapped[str] = mapped_column(String(1024))  # "CWE-79" or an absolute file path
    title: Mapped[str] = mapped_column(Text, default="")
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    # How often practitioners meet this entry (0..1, from the pack data itself); a ranking prior.
    prior: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    # A private document's owner (the core's user key, "telegram:42"); NULL = shared knowledge.
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True, default=None)
    # The data release the document was built from ("v15", "4.14"); empty for user files.
    version: Mapped[str] = mapped_column(String(64), default="", server_default="")


class Chunk(Base):
    """A passage of a document: what search returns and what answers cite."""

    __tablename__ = "knowledge_chunks"
    # Never reuse a deleted chunk's id: the embedding matrix is keyed by chunk id.
    __table_args__: ClassVar[dict[str, bool]] = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_documents.id", ondelete="CASCADE"), index=True
    )
    ord: Mapped[int] = mapped_column(Integer)
    ref: Mapped[str] = mapped_column(String(1024), index=True)
    title: Mapped[str] = mapped_column(Text, default="")
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str] = mapped_column(Text)
    aliases: Mapped[str] = mapped_column(Text, default="")  # alternate names, searched like titles
    length: Mapped[int] = mapped_column(Integer, default=0)  # words, a cheap token estimate
    # The entry the chunk belongs to ("CWE-89", "T1558.003", "G0016", a file's name) and its kind.
    entry_ref: Mapped[str] = mapped_column(String(1024), default="", server_default="", index=True)
    entry_kind: Mapped[str] = mapped_column(String(32), default=DEFAULT_KIND, server_default=DEFAULT_KIND)
    # What the text is (one of SECTIONS) and the heading it came under ("Detection", "M1041 ...").
    section: Mapped[str] = mapped_column(String(32), default=DEFAULT_SECTION, server_default=DEFAULT_SECTION)
    heading: Mapped[str] = mapped_column(Text, default="", server_default="")


class EntryName(Base):
    """Every name and alias of an entry, keyed case-insensitively (`name_key`): "cozy bear" → G0016."""

    __tablename__ = "knowledge_entry_names"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_documents.id", ondelete="CASCADE"), index=True
    )
    entry_ref: Mapped[str] = mapped_column(String(1024), index=True)
    entry_kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(512), index=True)
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(8))  # NAME_ROLES: "ref", "name" or "alias"


class Relation(Base):
    """A typed link stored with the entry that owns it (its document): G0016 `uses` T1558.003,
    M1041 `mitigates` T1558.003, T1558.003 `subtechnique_of` T1558, T1558.003 `tactic` TA0006.
    Reverse questions ("which groups use T1558.003?") read the same rows from the other end."""

    __tablename__ = "knowledge_relations"
    __table_args__ = (Index("ix_knowledge_relations_target", "target_ref", "relation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_documents.id", ondelete="CASCADE"), index=True
    )
    entry_ref: Mapped[str] = mapped_column(String(1024), index=True)
    entry_kind: Mapped[str] = mapped_column(String(32))
    relation: Mapped[str] = mapped_column(String(32))
    target_ref: Mapped[str] = mapped_column(String(1024))
    target_kind: Mapped[str] = mapped_column(String(32), default="")
    target_name: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")  # e.g. the procedure text, cleaned

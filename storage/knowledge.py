"""Knowledge base tables (documents and their chunks) and the repository that searches them.

Full-text search is SQLite FTS5 (external content over `knowledge_chunks`, kept in sync by triggers)
on the default engine and a generated `tsvector` column with a GIN index on PostgreSQL; both sit behind
`KnowledgeRepository.fts_search`, so callers never see SQL.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from storage.base import Base

FTS_TABLE = "knowledge_chunks_fts"

# Column order of the FTS5 table; bm25() takes one weight per column in this order.
# Refs, titles and aliases are short and decisive, so a hit there outranks one in body text.
FTS_COLUMNS = ("text", "title", "ref", "aliases")
FTS_WEIGHTS = (1.0, 4.0, 6.0, 4.0)

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


class Document(Base):
    """One indexed unit: a file, a CWE entry, an ATT&CK technique."""

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


@dataclass(frozen=True)
class ChunkData:
    """A chunk to store."""

    ord: int
    ref: str
    title: str
    text: str
    url: str | None = None
    aliases: str = ""


@dataclass(frozen=True)
class DocumentData:
    """A document to store with all its chunks."""

    locator: str
    title: str
    content_hash: str
    url: str | None = None
    chunks: Sequence[ChunkData] = field(default_factory=tuple)
    prior: float = 0.0


@dataclass(frozen=True)
class SaveResult:
    locator: str
    document_id: int
    status: str  # "added" | "updated" | "unchanged"


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk with its document's source."""

    id: int
    document_id: int
    source: str
    locator: str
    ord: int
    ref: str
    title: str
    url: str | None
    text: str
    prior: float = 0.0


@dataclass(frozen=True)
class ChunkMeta:
    """What ranking needs of a chunk (no text: cheap to fetch for many candidates)."""

    id: int
    source: str
    ord: int
    ref: str
    prior: float


_WORD = re.compile(r"\w+", re.UNICODE)
# Question words and glue: OR-ing them would match nearly every chunk and only add noise and time.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "being",
        "but",
        "by",
        "can",
        "could",
        "do",
        "does",
        "did",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "so",
        "such",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "called",
        "call",
        "name",
        "term",
        "happens",
        "happen",
        "type",
        "kind",
        "known",
        "also",
        "about",
        "any",
        "some",
        "should",
        "s",
        "t",
    ]
)
MAX_QUERY_TERMS = 32

# Large indexes only: FTS5 scores every chunk that contains any query term (~3 µs each), so a term
# found in a big share of the chunks costs a lot of time while adding little to BM25 (its IDF is
# near zero). Such terms are dropped from the query; the rarest is always kept.
PRUNE_MIN_CHUNKS = 20_000
PRUNE_MAX_DF = 0.02
PRUNE_KEEP = 1
# ...and the kept terms together may name at most this share of the chunks (rarest terms first):
# a long question of many mid-frequency words would otherwise still score thousands of rows.
PRUNE_MAX_POSTINGS = 0.05
VOCABULARY_TTL_S = 600.0
STEM_MEMO_SIZE = 100_000


class _Stemmer:
    """Index terms of a word exactly as the FTS index makes them (SQLite's own porter tokenizer on a
    private in-memory table), memoised: `memory` → ["memori"], `__proto__` → ["proto"]."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE VIRTUAL TABLE words USING fts5(word, tokenize='porter unicode61')")
        self._db.execute("CREATE VIRTUAL TABLE words_terms USING fts5vocab(words, instance)")
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[str, ...]] = {}

    def terms(self, word: str) -> tuple[str, ...]:
        found = self._memo.get(word)
        if found is not None:
            return found
        with self._lock:
            self._db.execute("DELETE FROM words")
            self._db.execute("INSERT INTO words(word) VALUES (?)", (word,))
            rows = self._db.execute("SELECT term FROM words_terms ORDER BY offset").fetchall()
        found = tuple(str(row[0]) for row in rows)
        if len(self._memo) < STEM_MEMO_SIZE:
            self._memo[word] = found
        return found


@dataclass
class _Vocabulary:
    """Document frequency per indexed (Porter-stemmed) term, loaded from the FTS index."""

    chunks: int
    df: dict[str, int]
    loaded_at: float
    stemmer: _Stemmer = field(default_factory=_Stemmer)

    def df_of(self, word: str) -> int:
        """How many chunks the word's index terms are in (the most common of them, for a word the
        tokenizer splits); 0 when absent, as then it costs nothing to search."""
        return max((self.df.get(term, 0) for term in self.stemmer.terms(word)), default=0)

    def prune(self, terms: list[str]) -> list[str]:
        if self.chunks < PRUNE_MIN_CHUNKS or len(terms) <= PRUNE_KEEP:
            return terms
        known = {t: self.df_of(t) for t in terms}
        limit, budget = PRUNE_MAX_DF * self.chunks, PRUNE_MAX_POSTINGS * self.chunks
        chosen: set[str] = set()
        postings = 0
        for rank, term in enumerate(sorted(terms, key=lambda t: known[t])):
            if rank >= PRUNE_KEEP and (known[term] > limit or postings + known[term] > budget):
                break
            chosen.add(term)
            postings += known[term]
        return [t for t in terms if t in chosen]


def fts_terms(query: str) -> list[str]:
    """The searchable words of free text: lower-cased, stopwords dropped, de-duplicated, in order."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if word not in STOPWORDS and word not in seen:
            seen[word] = None
    return list(seen)[:MAX_QUERY_TERMS]


def sqlite_match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression that can never be a syntax error: each word quoted, OR-ed.

    Quoting makes operators typed by users (`NEAR`, `AND`, `*`, `-`, `"`) plain words."""
    terms = fts_terms(query)
    if not terms:
        return None
    return " OR ".join(f'"{term}"' for term in terms)


def sqlite_phrase_expression(phrase: str) -> str | None:
    """An FTS5 phrase query for consecutive words (e.g. `CVE-2021-44228` → "cve 2021 44228")."""
    words = _WORD.findall(phrase.lower())
    if not words:
        return None
    return '"' + " ".join(words) + '"'


def postgres_tsquery(query: str) -> str | None:
    terms = fts_terms(query)
    return " | ".join(terms) if terms else None


# --- private documents: who may read what -------------------------------------------------------------
# Every read that can reach a user takes `viewer` (the core's user key, or None): it sees the shared knowledge
# (owner NULL) plus the viewer's own private documents, never anyone else's. The filter is part of each
# query (FTS hits are filtered before their LIMIT), not applied to results afterwards.
_SQLITE_VISIBLE = "(d.owner IS NULL OR d.owner = :viewer)"
# Chunk ids of private documents the viewer may not see; small (uploads only). Written as IN over the
# documents so SQLite walks the owner index, then the chunks' document_id index (as a join, without table
# statistics, it scanned every chunk).
_SQLITE_HIDDEN_CHUNKS = (
    "SELECT hc.id FROM knowledge_chunks AS hc WHERE hc.document_id IN ("
    "SELECT hd.id FROM knowledge_documents AS hd WHERE hd.owner IS NOT NULL AND hd.owner IS NOT :viewer)"
)


def visible_to(viewer: str | None) -> ColumnElement[bool]:
    """The documents `viewer` may read: shared ones, and their own private ones."""
    if viewer is None:
        return Document.owner.is_(None)
    return or_(Document.owner.is_(None), Document.owner == viewer)


_SQLITE_META = text(
    "SELECT c.id, d.source, c.ord, c.ref, d.prior FROM knowledge_chunks AS c "
    "JOIN knowledge_documents AS d ON d.id = c.document_id "
    f"WHERE c.id IN (SELECT value FROM json_each(:ids)) AND {_SQLITE_VISIBLE}"
)

_SQLITE_RECORDS_SQL = (
    "SELECT c.id, c.document_id, d.source, d.locator, c.ord, c.ref, c.title, c.url, c.text, d.prior "
    "FROM knowledge_chunks AS c JOIN knowledge_documents AS d ON d.id = c.document_id "
    "WHERE c.id IN (SELECT value FROM json_each(:ids))"
)
_SQLITE_RECORDS = text(f"{_SQLITE_RECORDS_SQL} AND {_SQLITE_VISIBLE}")
_SQLITE_RECORDS_ALL = text(_SQLITE_RECORDS_SQL)  # maintenance (embedding every chunk), never for answers


@dataclass(frozen=True)
class OwnedDocument:
    """A private document, as its owner's /docs lists it."""

    id: int
    locator: str
    title: str
    chunks: int
    updated_at: datetime


class KnowledgeRepository:
    """Documents, chunks and full-text search."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._vocabulary: _Vocabulary | None = None

    # --- writing -------------------------------------------------------------------------

    async def upsert_document(
        self, source: str, locator: str, *, title: str, url: str | None, content_hash: str
    ) -> tuple[int, bool]:
        """Insert or update a document; returns (id, whether its content changed or it is new)."""
        async with self._sessions.begin() as session:
            document_id, status = await self._upsert(session, source, locator, title, url, content_hash)
        return document_id, status != "unchanged"

    async def replace_chunks(self, document_id: int, chunks: Sequence[ChunkData]) -> list[int]:
        """Replace every chunk of a document; returns the new chunk ids in order."""
        async with self._sessions.begin() as session:
            return await self._replace(session, document_id, chunks)

    async def save_documents(
        self, source: str, documents: Sequence[DocumentData], *, owner: str | None = None
    ) -> list[SaveResult]:
        """Upsert many documents in one transaction; chunks are rewritten only for changed ones.
        `owner` makes new documents private to that user (uploads)."""
        results: list[SaveResult] = []
        async with self._sessions.begin() as session:
            for doc in documents:
                document_id, status = await self._upsert(
                    session, source, doc.locator, doc.title, doc.url, doc.content_hash, doc.prior, owner
                )
                if status != "unchanged":
                    await self._replace(session, document_id, doc.chunks)
                results.append(SaveResult(doc.locator, document_id, status))
        return results

    async def delete_missing(
        self, source: str, keep: Iterable[str], *, under: Sequence[str] | None = None
    ) -> int:
        """Delete documents of `source` whose locator is not in `keep`; with `under`, only those whose
        locator starts with one of these prefixes (a re-indexed folder). Returns how many were deleted."""
        keep_set = set(keep)
        async with self._sessions.begin() as session:
            rows = (
                await session.execute(select(Document.id, Document.locator).where(Document.source == source))
            ).all()
            doomed = [
                row.id
                for row in rows
                if row.locator not in keep_set
                and (under is None or any(row.locator.startswith(prefix) for prefix in under))
            ]
            for start in range(0, len(doomed), 500):
                batch = doomed[start : start + 500]
                # Chunks first and explicitly: the FTS triggers see each row, whatever the FK pragma.
                await session.execute(delete(Chunk).where(Chunk.document_id.in_(batch)))
                await session.execute(delete(Document).where(Document.id.in_(batch)))
        return len(doomed)

    async def _upsert(
        self,
        session: AsyncSession,
        source: str,
        locator: str,
        title: str,
        url: str | None,
        content_hash: str,
        prior: float = 0.0,
        owner: str | None = None,
    ) -> tuple[int, str]:
        existing = (
            await session.execute(
                select(Document).where(Document.source == source, Document.locator == locator)
            )
        ).scalar_one_or_none()
        if existing is None:
            doc = Document(
                source=source,
                locator=locator,
                title=title,
                url=url,
                content_hash=content_hash,
                prior=prior,
                owner=owner,
            )
            session.add(doc)
            await session.flush()
            return doc.id, "added"
        if existing.content_hash == content_hash and existing.title == title and existing.url == url:
            existing.prior = prior  # ranking only: never a reason to rewrite chunks
            return existing.id, "unchanged"
        existing.title, existing.url, existing.prior = title, url, prior
        existing.content_hash, existing.updated_at = content_hash, _utcnow()
        await session.flush()
        return existing.id, "updated"

    async def _replace(
        self, session: AsyncSession, document_id: int, chunks: Sequence[ChunkData]
    ) -> list[int]:
        await session.execute(delete(Chunk).where(Chunk.document_id == document_id))
        rows = [
            Chunk(
                document_id=document_id,
                ord=c.ord,
                ref=c.ref,
                title=c.title,
                url=c.url,
                text=c.text,
                aliases=c.aliases,
                length=len(c.text.split()),
            )
            for c in chunks
        ]
        session.add_all(rows)
        await session.flush()
        return [row.id for row in rows]

    # --- reading -------------------------------------------------------------------------

    async def _sqlite_match(self, session: AsyncSession, query: str) -> str | None:
        """The FTS5 MATCH expression for user text: every kept term quoted (so `"`, `*`, `NEAR`, `-`
        are plain words), OR-ed; None when nothing searchable is left."""
        terms = fts_terms(query)
        if not terms:
            return None
        terms = (await self._sqlite_vocabulary(session)).prune(terms)
        return " OR ".join(f'"{term}"' for term in terms)

    async def fts_search(
        self, query: str, limit: int = 50, *, viewer: str | None = None
    ) -> list[tuple[int, float]]:
        """Full-text search over chunk text, title, ref and aliases: [(chunk id, score)], best first,
        higher score is better. Any user text is safe here. Only what `viewer` may read is searched."""
        async with self._sessions() as session:
            if session.bind.dialect.name == "sqlite":
                expression = await self._sqlite_match(session, query)
                if expression is None:
                    return []
                weights = ", ".join(str(w) for w in FTS_WEIGHTS)
                sql = text(
                    f"SELECT rowid, bm25({FTS_TABLE}, {weights}) AS score FROM {FTS_TABLE} "
                    f"WHERE {FTS_TABLE} MATCH :q AND rowid NOT IN ({_SQLITE_HIDDEN_CHUNKS}) "
                    "ORDER BY score LIMIT :limit"
                )
                params = {"q": expression, "limit": limit, "viewer": viewer}
                rows = (await session.execute(sql, params)).all()
                return [(int(row[0]), -float(row[1])) for row in rows]  # bm25(): lower is better
            tsquery = postgres_tsquery(query)
            if tsquery is None:
                return []
            sql = text(
                "SELECT c.id, ts_rank_cd(c.search_vector, q) AS score FROM knowledge_chunks AS c "
                "JOIN knowledge_documents AS d ON d.id = c.document_id, to_tsquery('english', :q) AS q "
                "WHERE c.search_vector @@ q AND (d.owner IS NULL OR d.owner = :viewer) "
                "ORDER BY score DESC LIMIT :limit"
            )
            rows = (await session.execute(sql, {"q": tsquery, "limit": limit, "viewer": viewer})).all()
            return [(int(row[0]), float(row[1])) for row in rows]

    async def fts_search_meta(
        self, query: str, limit: int = 50, *, viewer: str | None = None
    ) -> list[ChunkMeta]:
        """`fts_search`'s hits, best first, with their ranking metadata: on SQLite one statement
        (a search's first half runs while the query is being encoded; fewer round trips is less
        contention for the two cores)."""
        async with self._sessions() as session:
            if session.bind.dialect.name == "sqlite":
                expression = await self._sqlite_match(session, query)
                if expression is None:
                    return []
                weights = ", ".join(str(w) for w in FTS_WEIGHTS)
                sql = text(
                    "SELECT c.id, d.source, c.ord, c.ref, d.prior FROM ("
                    f"SELECT rowid, bm25({FTS_TABLE}, {weights}) AS score FROM {FTS_TABLE} "
                    f"WHERE {FTS_TABLE} MATCH :q AND rowid NOT IN ({_SQLITE_HIDDEN_CHUNKS}) "
                    "ORDER BY score LIMIT :limit) AS hits "
                    "JOIN knowledge_chunks AS c ON c.id = hits.rowid "
                    "JOIN knowledge_documents AS d ON d.id = c.document_id "
                    f"WHERE {_SQLITE_VISIBLE} ORDER BY hits.score"
                )
                params = {"q": expression, "limit": limit, "viewer": viewer}
                rows = (await session.execute(sql, params)).all()
                return [ChunkMeta(int(r[0]), r[1], int(r[2]), r[3], float(r[4])) for r in rows]
        ids = [cid for cid, _ in await self.fts_search(query, limit, viewer=viewer)]
        meta = await self.get_chunk_meta(ids, viewer=viewer)
        return [meta[cid] for cid in ids if cid in meta]

    async def _sqlite_vocabulary(self, session: AsyncSession) -> _Vocabulary:
        """The cached term frequencies, reloaded every few minutes (they drift slowly; only big
        indexes load them at all)."""
        vocabulary = self._vocabulary
        now = time.monotonic()
        if vocabulary is not None and now - vocabulary.loaded_at < VOCABULARY_TTL_S:
            return vocabulary
        chunks = int((await session.execute(select(func.count(Chunk.id)))).scalar_one())
        df: dict[str, int] = {}
        if chunks >= PRUNE_MIN_CHUNKS:
            await session.execute(
                text(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS temp.knowledge_vocab "
                    f"USING fts5vocab(main, {FTS_TABLE}, row)"
                )
            )
            rows = await session.execute(text("SELECT term, doc FROM temp.knowledge_vocab"))
            df = {str(term): int(doc) for term, doc in rows}
        stemmer = vocabulary.stemmer if vocabulary is not None else _Stemmer()
        self._vocabulary = _Vocabulary(chunks, df, now, stemmer)
        return self._vocabulary

    async def phrase_search(self, phrase: str, limit: int = 10, *, viewer: str | None = None) -> list[int]:
        """Chunks that mention `phrase` (e.g. a CVE or CAPEC id) as consecutive words, of what `viewer`
        may read."""
        async with self._sessions() as session:
            if session.bind.dialect.name == "sqlite":
                expression = sqlite_phrase_expression(phrase)
                if expression is None:
                    return []
                sql = text(
                    f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :q "
                    f"AND rowid NOT IN ({_SQLITE_HIDDEN_CHUNKS}) ORDER BY rank LIMIT :limit"
                )
                params = {"q": expression, "limit": limit, "viewer": viewer}
                rows = (await session.execute(sql, params)).all()
                return [int(row[0]) for row in rows]
            if not _WORD.search(phrase):
                return []
            # The phrase as typed: PostgreSQL's parser splits "CVE-2021-44228" in the query exactly as
            # in the text (hyphenated word, parts, signed number), so the positions line up.
            sql = text(
                "SELECT c.id FROM knowledge_chunks AS c JOIN knowledge_documents AS d "
                "ON d.id = c.document_id, phraseto_tsquery('simple', :q) AS q "
                "WHERE to_tsvector('simple', c.text) @@ q AND (d.owner IS NULL OR d.owner = :viewer) "
                "LIMIT :limit"
            )
            params = {"q": phrase.replace("\x00", ""), "limit": limit, "viewer": viewer}
            rows = (await session.execute(sql, params)).all()
            return [int(row[0]) for row in rows]

    async def get_chunks(
        self, ids: Sequence[int], *, viewer: str | None = None, all_owners: bool = False
    ) -> list[ChunkRecord]:
        """Chunks by id, in the order asked; ids that no longer exist or that `viewer` may not read are
        skipped. `all_owners` reads every private document too: for maintenance (embedding), never answers."""
        if not ids:
            return []
        found: dict[int, ChunkRecord] = {}
        visible = true() if all_owners else visible_to(viewer)
        async with self._sessions() as session:
            if session.bind.dialect.name == "sqlite":
                params = {"ids": json.dumps([int(i) for i in ids]), "viewer": viewer}
                if all_owners:
                    params.pop("viewer")
                sql = _SQLITE_RECORDS_ALL if all_owners else _SQLITE_RECORDS
                rows = await session.execute(sql, params)
                found = {int(row[0]): ChunkRecord(*row) for row in rows.all()}
                return [found[i] for i in ids if i in found]
            for start in range(0, len(ids), 500):
                batch = list(ids[start : start + 500])
                for record in await self._select_records(session, and_(Chunk.id.in_(batch), visible)):
                    found[record.id] = record
        return [found[i] for i in ids if i in found]

    async def get_chunk_meta(self, ids: Sequence[int], *, viewer: str | None = None) -> dict[int, ChunkMeta]:
        """Ranking metadata of chunks by id; ids that no longer exist or `viewer` may not read are absent."""
        found: dict[int, ChunkMeta] = {}
        if not ids:
            return found
        async with self._sessions() as session:
            if session.bind.dialect.name == "sqlite":
                # One statement with one JSON parameter: every search asks for a few hundred ids, and
                # building and binding an expanding IN per call cost more than the query itself.
                params = {"ids": json.dumps([int(i) for i in ids]), "viewer": viewer}
                rows = await session.execute(_SQLITE_META, params)
                for row in rows.all():
                    found[int(row[0])] = ChunkMeta(int(row[0]), row[1], int(row[2]), row[3], float(row[4]))
                return found
            for start in range(0, len(ids), 500):
                stmt = (
                    select(Chunk.id, Document.source, Chunk.ord, Chunk.ref, Document.prior)
                    .join(Document, Chunk.document_id == Document.id)
                    .where(Chunk.id.in_(list(ids[start : start + 500])), visible_to(viewer))
                )
                for row in (await session.execute(stmt)).all():
                    found[int(row[0])] = ChunkMeta(int(row[0]), row[1], int(row[2]), row[3], float(row[4]))
        return found

    async def find_by_ref(self, ref: str, *, viewer: str | None = None) -> list[ChunkRecord]:
        """Chunks whose ref is `ref` as given or upper-cased (pack refs are canonical upper case:
        `cwe-79` finds CWE-79), in document order, of what `viewer` may read. Uses the ref index."""
        condition = and_(Chunk.ref.in_(sorted({ref, ref.upper()})), visible_to(viewer))
        async with self._sessions() as session:
            records = await self._select_records(session, condition)
        return sorted(records, key=lambda r: (r.document_id, r.ord))

    async def content_hashes(self, source: str) -> dict[str, str]:
        """locator → content hash of every document of `source` (to skip unchanged files unread)."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(Document.locator, Document.content_hash).where(Document.source == source)
            )
            return {row.locator: row.content_hash for row in rows}

    async def chunk_versions(self) -> list[tuple[int, str, int]]:
        """(chunk id, its document's content hash, ord) of every chunk: identifies a chunk's content."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(Chunk.id, Document.content_hash, Chunk.ord)
                .join(Document, Chunk.document_id == Document.id)
                .order_by(Chunk.id)
            )
            return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def entry_names(self) -> list[tuple[int, str, str, str]]:
        """(summary chunk id, content hash, title, aliases) of every pack entry (not user files):
        what the entry-name vectors are built from."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(Chunk.id, Document.content_hash, Chunk.title, Chunk.aliases)
                .join(Document, Chunk.document_id == Document.id)
                .where(Chunk.ord == 0, Document.source != "file", Document.owner.is_(None))
                .order_by(Chunk.id)
            )
            return [(int(r[0]), str(r[1]), str(r[2]), str(r[3] or "")) for r in rows]

    async def chunk_ids(self) -> list[int]:
        async with self._sessions() as session:
            return list((await session.execute(select(Chunk.id).order_by(Chunk.id))).scalars())

    # --- private documents -------------------------------------------------------------------

    async def owned_documents(self, owner: str) -> list[OwnedDocument]:
        """The owner's private documents, oldest first, with their chunk counts."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(
                    Document.id,
                    Document.locator,
                    Document.title,
                    func.count(Chunk.id),
                    Document.updated_at,
                )
                .outerjoin(Chunk, Chunk.document_id == Document.id)
                .where(Document.owner == owner)
                .group_by(Document.id)
                .order_by(Document.id)
            )
            return [OwnedDocument(int(r[0]), str(r[1]), str(r[2]), int(r[3]), r[4]) for r in rows]

    async def hidden_chunk_ids(self, viewer: str | None) -> list[int]:
        """Ids of the private chunks `viewer` may not read (everyone's, without a viewer): what a search of
        a vector matrix holding every chunk must mask out. Served by the owner index."""
        condition: ColumnElement[bool] = Document.owner.is_not(None)
        if viewer is not None:
            condition = and_(condition, Document.owner != viewer)
        async with self._sessions() as session:
            owned = select(Document.id).where(condition)  # the owner index, then the document_id index
            rows = await session.execute(select(Chunk.id).where(Chunk.document_id.in_(owned)))
            return [int(cid) for cid in rows.scalars()]

    async def delete_owned(self, owner: str, document_ids: Sequence[int] | None = None) -> tuple[int, int]:
        """Delete the owner's private documents (all, or those of `document_ids` that are theirs) with their
        chunks and full-text rows, in one transaction. Returns (documents, chunks) deleted."""
        async with self._sessions.begin() as session:
            condition: ColumnElement[bool] = Document.owner == owner
            if document_ids is not None:
                condition = and_(condition, Document.id.in_([int(i) for i in document_ids]))
            doomed = list((await session.execute(select(Document.id).where(condition))).scalars())
            if not doomed:
                return 0, 0
            # Chunks first and explicitly: the FTS triggers see each row, whatever the FK pragma.
            chunks = await session.execute(delete(Chunk).where(Chunk.document_id.in_(doomed)))
            await session.execute(delete(Document).where(Document.id.in_(doomed)))
        return len(doomed), int(getattr(chunks, "rowcount", 0) or 0)

    async def count(self, source: str | None = None) -> tuple[int, int]:
        """(documents, chunks), of one source or all."""
        async with self._sessions() as session:
            doc_q = select(func.count(Document.id))
            chunk_q = select(func.count(Chunk.id))
            if source is not None:
                doc_q = doc_q.where(Document.source == source)
                chunk_q = chunk_q.join(Document, Chunk.document_id == Document.id).where(
                    Document.source == source
                )
            documents = (await session.execute(doc_q)).scalar_one()
            chunks = (await session.execute(chunk_q)).scalar_one()
        return int(documents), int(chunks)

    @staticmethod
    async def _select_records(session: AsyncSession, condition: object) -> list[ChunkRecord]:
        stmt = (
            select(
                Chunk.id,
                Chunk.document_id,
                Document.source,
                Document.locator,
                Chunk.ord,
                Chunk.ref,
                Chunk.title,
                Chunk.url,
                Chunk.text,
                Document.prior,
            )
            .join(Document, Chunk.document_id == Document.id)
            .where(condition)  # type: ignore[arg-type]
        )
        return [ChunkRecord(*row) for row in (await session.execute(stmt)).all()]


__all__ = [
    "Chunk",
    "ChunkData",
    "ChunkMeta",
    "ChunkRecord",
    "Document",
    "DocumentData",
    "KnowledgeRepository",
    "OwnedDocument",
    "SaveResult",
    "fts_terms",
    "install_search_index",
    "sqlite_match_expression",
    "visible_to",
]

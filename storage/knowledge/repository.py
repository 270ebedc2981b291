"""`KnowledgeRepository`: documents, typed chunks, entry names and relations; full-text search.

Full-text search is SQLite FTS5 (external content over `knowledge_chunks`, kept in sync by triggers)
on the default engine and a generated `tsvector` column with a GIN index on PostgreSQL; both sit behind
`fts_search` / `fts_search_meta`, so callers never see SQL.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, case, delete, func, select, text, true
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from storage.knowledge import query as q
from storage.knowledge.records import (
    ChunkData,
    ChunkMeta,
    ChunkRecord,
    DocumentData,
    EntryRecord,
    OwnedDocument,
    RelatedEntry,
    SaveResult,
)
from storage.knowledge.schema import (
    DEFAULT_KIND,
    DEFAULT_SECTION,
    FTS_TABLE,
    FTS_WEIGHTS,
    Chunk,
    Document,
    EntryName,
    Relation,
    _utcnow,
    name_key,
    visible_to,
)

# How a relation reads from its target's side ("G0016 uses T1003" = "T1003 used_by G0016").
INVERSE_RELATIONS = {
    "uses": "used_by",
    "mitigates": "mitigated_by",
    "detects": "detected_by",
    "subtechnique_of": "has_subtechnique",
    "child_of": "parent_of",
    "attributed_to": "attributed",
    "tactic": "tactic_of",
    "related_attack_pattern": "related_weakness",
}
_INVERSE_TO_STORED = {inverse: stored for stored, inverse in INVERSE_RELATIONS.items()}

# --- private documents: who may read what ---------------------------------------------------------
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

_META_COLUMNS = "c.id, d.source, c.ord, c.ref, d.prior, c.section, c.entry_kind"
_RECORD_COLUMNS = (
    "c.id, c.document_id, d.source, d.locator, c.ord, c.ref, c.title, c.url, c.text, d.prior, "
    "c.entry_ref, c.entry_kind, c.section, c.heading, d.version"
)
_SQLITE_META = text(
    f"SELECT {_META_COLUMNS} FROM knowledge_chunks AS c "
    "JOIN knowledge_documents AS d ON d.id = c.document_id "
    f"WHERE c.id IN (SELECT value FROM json_each(:ids)) AND {_SQLITE_VISIBLE}"
)
_SQLITE_RECORDS_SQL = (
    f"SELECT {_RECORD_COLUMNS} "
    "FROM knowledge_chunks AS c JOIN knowledge_documents AS d ON d.id = c.document_id "
    "WHERE c.id IN (SELECT value FROM json_each(:ids))"
)
_SQLITE_RECORDS = text(f"{_SQLITE_RECORDS_SQL} AND {_SQLITE_VISIBLE}")
_SQLITE_RECORDS_ALL = text(_SQLITE_RECORDS_SQL)  # maintenance (embedding every chunk), never for answers
_BM25_WEIGHTS = ", ".join(str(w) for w in FTS_WEIGHTS)
# The one BM25 query per engine: hits (best first) with their ranking metadata and score (higher
# is better), optionally only of some sections (`:sections` a JSON list, or NULL for all).
_SQLITE_BM25 = text(
    f"SELECT {_META_COLUMNS}, -f.score FROM ("
    f"SELECT rowid, bm25({FTS_TABLE}, {_BM25_WEIGHTS}) AS score FROM {FTS_TABLE} "
    f"WHERE {FTS_TABLE} MATCH :q AND rowid NOT IN ({_SQLITE_HIDDEN_CHUNKS}) "
    "ORDER BY score LIMIT :inner) AS f "
    "JOIN knowledge_chunks AS c ON c.id = f.rowid "
    "JOIN knowledge_documents AS d ON d.id = c.document_id "
    f"WHERE {_SQLITE_VISIBLE} "
    "AND (:sections IS NULL OR c.section IN (SELECT value FROM json_each(:sections))) "
    "ORDER BY f.score LIMIT :limit"
)
_POSTGRES_BM25 = text(
    f"SELECT {_META_COLUMNS}, ts_rank_cd(c.search_vector, tq) AS score "
    "FROM knowledge_chunks AS c JOIN knowledge_documents AS d ON d.id = c.document_id, "
    "to_tsquery('english', :q) AS tq WHERE c.search_vector @@ tq "
    "AND (d.owner IS NULL OR d.owner = :viewer) "
    "AND (CAST(:sections AS text) IS NULL OR c.section IN "
    "(SELECT json_array_elements_text(CAST(:sections AS json)))) "
    "ORDER BY score DESC, c.id LIMIT :limit"
)
# With a section filter the FTS side keeps this many times more hits before filtering.
_SECTION_FILTER_FANOUT = 8


class KnowledgeRepository:
    """Documents, chunks, entries and full-text search.

    Entry-level reads for answering (all case-insensitive where names are concerned):
    `find_entries` (by ref, name or alias), `get_entry`, `list_entries` (by kind),
    `entry_chunks` (chunks of given entries, filtered by section, in document order),
    `related` (a technique's mitigations, the groups that use it, its parent / sub-techniques,
    its tactics, ...) and `entry_name_index` (every name → entry, to spot names in questions).

    Private documents (uploads, `owner` set): every chunk read that can reach an answer takes `viewer` and
    sees the shared knowledge plus the viewer's own documents only. Entries (names, relations) are shared
    knowledge: their reads never return a private document's rows.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._vocabulary: q.Vocabulary | None = None

    # --- writing -------------------------------------------------------------------------

    async def upsert_document(
        self, source: str, locator: str, *, title: str, url: str | None, content_hash: str
    ) -> tuple[int, bool]:
        """Insert or update a document; returns (id, whether its content changed or it is new)."""
        async with self._sessions.begin() as session:
            document_id, status = await self._upsert(
                session, source, DocumentData(locator, title, content_hash, url)
            )
        return document_id, status != "unchanged"

    async def replace_chunks(self, document_id: int, chunks: Sequence[ChunkData]) -> list[int]:
        """Replace every chunk of a document; returns the new chunk ids in order."""
        async with self._sessions.begin() as session:
            locator = (
                await session.execute(select(Document.locator).where(Document.id == document_id))
            ).scalar_one()
            return await self._replace(session, document_id, DocumentData(locator, "", "", chunks=chunks))

    async def save_documents(
        self, source: str, documents: Sequence[DocumentData], *, owner: str | None = None
    ) -> list[SaveResult]:
        """Upsert many documents in one transaction; chunks, names and relations are rewritten only
        for changed ones (a rebuilt pack replaces the rows of every entry whose content changed).
        `owner` makes new documents private to that user (uploads)."""
        results: list[SaveResult] = []
        async with self._sessions.begin() as session:
            for doc in documents:
                document_id, status = await self._upsert(session, source, doc, owner)
                if status != "unchanged":
                    await self._replace(session, document_id, doc)
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
                # Children first and explicitly: the FTS triggers see each row, whatever the FK pragma.
                for table in (Chunk, EntryName, Relation):
                    await session.execute(delete(table).where(table.document_id.in_(batch)))
                await session.execute(delete(Document).where(Document.id.in_(batch)))
        return len(doomed)

    @staticmethod
    async def _upsert(
        session: AsyncSession, source: str, doc: DocumentData, owner: str | None = None
    ) -> tuple[int, str]:
        existing = (
            await session.execute(
                select(Document).where(Document.source == source, Document.locator == doc.locator)
            )
        ).scalar_one_or_none()
        if existing is None:
            row = Document(
                source=source,
                locator=doc.locator,
                title=doc.title,
                url=doc.url,
                content_hash=doc.content_hash,
                prior=doc.prior,
                version=doc.version,
                owner=owner,
            )
            session.add(row)
            await session.flush()
            return row.id, "added"
        # Ranking prior and data version only: never a reason to rewrite chunks.
        existing.prior, existing.version = doc.prior, doc.version
        if (
            existing.content_hash == doc.content_hash
            and existing.title == doc.title
            and existing.url == doc.url
        ):
            return existing.id, "unchanged"
        existing.title, existing.url = doc.title, doc.url
        existing.content_hash, existing.updated_at = doc.content_hash, _utcnow()
        await session.flush()
        return existing.id, "updated"

    @staticmethod
    async def _replace(session: AsyncSession, document_id: int, doc: DocumentData) -> list[int]:
        for table in (Chunk, EntryName, Relation):
            await session.execute(delete(table).where(table.document_id == document_id))
        entry_ref = doc.entry_ref or doc.locator
        entry_kind = doc.entry_kind or DEFAULT_KIND
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
                entry_ref=c.entry_ref or entry_ref,
                entry_kind=c.entry_kind or entry_kind,
                section=c.section or DEFAULT_SECTION,
                heading=c.heading,
            )
            for c in doc.chunks
        ]
        session.add_all(rows)
        names: dict[str, tuple[str, str]] = {}
        if doc.names or doc.aliases:
            for role, values in (("ref", [entry_ref]), ("name", doc.names), ("alias", doc.aliases)):
                for value in values:
                    key = name_key(value)
                    if key and key not in names:
                        names[key] = (role, " ".join(value.split()))
        session.add_all(
            EntryName(
                document_id=document_id,
                entry_ref=entry_ref,
                entry_kind=entry_kind,
                key=key[:512],
                name=name,
                role=role,
            )
            for key, (role, name) in names.items()
        )
        session.add_all(
            Relation(
                document_id=document_id,
                entry_ref=entry_ref,
                entry_kind=entry_kind,
                relation=r.relation,
                target_ref=r.target_ref,
                target_kind=r.target_kind,
                target_name=r.target_name,
                description=r.description,
            )
            for r in dict.fromkeys(doc.relations)
        )
        await session.flush()
        return [row.id for row in rows]

    # --- full-text search ----------------------------------------------------------------

    async def fts_search(
        self,
        query: str,
        limit: int = 50,
        *,
        viewer: str | None = None,
        sections: Sequence[str] | None = None,
    ) -> list[tuple[int, float]]:
        """Full-text search over chunk text, title, ref and aliases: [(chunk id, score)], best first,
        higher score is better; with `sections`, only chunks of those sections. Only what `viewer`
        may read is searched. Any user text is safe here."""
        return [(meta.id, score) for meta, score in await self._bm25(query, limit, viewer, sections)]

    async def fts_search_meta(
        self,
        query: str,
        limit: int = 50,
        *,
        viewer: str | None = None,
        sections: Sequence[str] | None = None,
    ) -> list[ChunkMeta]:
        """`fts_search`'s hits, best first, with their ranking metadata, in one statement (a search's
        first half runs while the query is being encoded; fewer round trips, less contention)."""
        return [meta for meta, _ in await self._bm25(query, limit, viewer, sections)]

    async def _bm25(
        self, query: str, limit: int, viewer: str | None, sections: Sequence[str] | None
    ) -> list[tuple[ChunkMeta, float]]:
        wanted = json.dumps(list(sections)) if sections is not None else None
        async with self._sessions() as session:
            if session.get_bind().dialect.name == "sqlite":
                expression = q.sqlite_match_expression(query, await self._sqlite_vocabulary(session))
                if expression is None:
                    return []
                inner = limit if sections is None else limit * _SECTION_FILTER_FANOUT
                params: dict[str, Any] = {"q": expression, "inner": inner, "limit": limit, "viewer": viewer}
                rows = (await session.execute(_SQLITE_BM25, {**params, "sections": wanted})).all()
            else:
                tsquery = q.postgres_tsquery(query)
                if tsquery is None:
                    return []
                params = {"q": tsquery, "limit": limit, "sections": wanted, "viewer": viewer}
                rows = (await session.execute(_POSTGRES_BM25, params)).all()
        return [(_meta(row), float(row[7])) for row in rows]

    async def _sqlite_vocabulary(self, session: AsyncSession) -> q.Vocabulary:
        """The cached term frequencies, reloaded every few minutes (they drift slowly; only big
        indexes load them at all)."""
        vocabulary = self._vocabulary
        now = time.monotonic()
        if vocabulary is not None and now - vocabulary.loaded_at < q.VOCABULARY_TTL_S:
            return vocabulary
        chunks = int((await session.execute(select(func.count(Chunk.id)))).scalar_one())
        df: dict[str, int] = {}
        if chunks >= q.PRUNE_MIN_CHUNKS:
            await session.execute(
                text(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS temp.knowledge_vocab "
                    f"USING fts5vocab(main, {FTS_TABLE}, row)"
                )
            )
            rows = await session.execute(text("SELECT term, doc FROM temp.knowledge_vocab"))
            df = {str(term): int(doc) for term, doc in rows}
        stemmer = vocabulary.stemmer if vocabulary is not None else q.Stemmer()
        self._vocabulary = q.Vocabulary(chunks, df, now, stemmer)
        return self._vocabulary

    async def phrase_search(self, phrase: str, limit: int = 10, *, viewer: str | None = None) -> list[int]:
        """Chunks that mention `phrase` (e.g. a CVE or CAPEC id) as consecutive words, of what `viewer`
        may read."""
        async with self._sessions() as session:
            if session.get_bind().dialect.name == "sqlite":
                expression = q.sqlite_phrase_expression(phrase)
                if expression is None:
                    return []
                sql = text(
                    f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :q "
                    f"AND rowid NOT IN ({_SQLITE_HIDDEN_CHUNKS}) ORDER BY rank LIMIT :limit"
                )
                params = {"q": expression, "limit": limit, "viewer": viewer}
                rows = (await session.execute(sql, params)).all()
                return [int(row[0]) for row in rows]
            if not q.WORD.search(phrase):
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

    # --- chunks --------------------------------------------------------------------------

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
            if session.get_bind().dialect.name == "sqlite":
                params: dict[str, Any] = {"ids": json.dumps([int(i) for i in ids])}
                if not all_owners:
                    params["viewer"] = viewer
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
            if session.get_bind().dialect.name == "sqlite":
                # One statement with one JSON parameter: every search asks for a few hundred ids, and
                # building and binding an expanding IN per call cost more than the query itself.
                params = {"ids": json.dumps([int(i) for i in ids]), "viewer": viewer}
                rows = await session.execute(_SQLITE_META, params)
                for row in rows.all():
                    found[int(row[0])] = _meta(row)
                return found
            for start in range(0, len(ids), 500):
                stmt = (
                    select(
                        Chunk.id,
                        Document.source,
                        Chunk.ord,
                        Chunk.ref,
                        Document.prior,
                        Chunk.section,
                        Chunk.entry_kind,
                    )
                    .join(Document, Chunk.document_id == Document.id)
                    .where(Chunk.id.in_(list(ids[start : start + 500])), visible_to(viewer))
                )
                for row in (await session.execute(stmt)).all():
                    found[int(row[0])] = _meta(row)
        return found

    async def find_by_ref(self, ref: str, *, viewer: str | None = None) -> list[ChunkRecord]:
        """Chunks whose ref is `ref` as given or upper-cased (pack refs are canonical upper case:
        `cwe-79` finds CWE-79), in document order, of what `viewer` may read. Uses the ref index."""
        condition = and_(Chunk.ref.in_(sorted({ref, ref.upper()})), visible_to(viewer))
        async with self._sessions() as session:
            records = await self._select_records(session, condition)
        return sorted(records, key=lambda r: (r.document_id, r.ord))

    async def entry_chunks(
        self,
        refs: Sequence[str],
        sections: Sequence[str] | None = None,
        *,
        limit_per_entry: int | None = None,
        viewer: str | None = None,
    ) -> list[ChunkRecord]:
        """The chunks of the given entries (refs as stored, or upper-cased: "t1558.003" works),
        optionally only of some `sections` ("detection", "mitigation", ...), grouped by entry in the
        order of `refs`, each entry's chunks in document order; at most `limit_per_entry` per entry.

        `entry_chunks(["T1558.003"], ["detection"])` → its detection texts (x_mitre_detection and the
        data-component `detects` descriptions); `entry_chunks(["CWE-89"], ["mitigation"])` → its
        potential mitigations, whole sentences. Private documents only for their owner (`viewer`)."""
        wanted = list(dict.fromkeys(r for ref in refs for r in (ref, ref.upper())))
        if not wanted:
            return []
        condition: Any = and_(Chunk.entry_ref.in_(wanted), visible_to(viewer))
        if sections is not None:
            if not sections:
                return []
            condition = condition & Chunk.section.in_(list(sections))
        async with self._sessions() as session:
            records = await self._select_records(session, condition)
        by_ref: dict[str, list[ChunkRecord]] = defaultdict(list)
        for record in sorted(records, key=lambda r: (r.document_id, r.ord)):
            by_ref[record.entry_ref].append(record)
        out: list[ChunkRecord] = []
        seen: set[str] = set()
        for ref in refs:
            for key in (ref, ref.upper()):
                if key in by_ref and key not in seen:
                    seen.add(key)
                    out.extend(by_ref[key][:limit_per_entry])
        return out

    # --- entries -------------------------------------------------------------------------

    async def find_entries(
        self, name: str, *, kinds: Sequence[str] | None = None, limit: int = 10
    ) -> list[EntryRecord]:
        """Entries whose ref, name or alias is `name`, compared case-insensitively with collapsed
        whitespace: "Mimikatz" → S0002, "cozy bear" → G0016, "Kerberoasting" → T1558.003,
        "SQL injection" → CWE-89 (its alternate term), "cwe-89" → CWE-89. A ref match comes first,
        then own names, then aliases; ties go to the more prominent entry (prior)."""
        key = name_key(name)
        if not key:
            return []
        role_rank = case({"ref": 0, "name": 1}, value=EntryName.role, else_=2)
        stmt = (
            select(EntryName.document_id, EntryName.name, EntryName.role)
            .join(Document, Document.id == EntryName.document_id)
            .where(EntryName.key == key[:512], Document.owner.is_(None))
            .order_by(role_rank, Document.prior.desc(), EntryName.entry_ref)
            .limit(limit * 2)
        )
        if kinds is not None:
            stmt = stmt.where(EntryName.entry_kind.in_(list(kinds)))
        async with self._sessions() as session:
            hits = (await session.execute(stmt)).all()
            order = list(dict.fromkeys(int(h[0]) for h in hits))[:limit]
            matched: dict[int, tuple[str, str]] = {}
            for h in hits:
                matched.setdefault(int(h[0]), (str(h[1]), str(h[2])))
            entries = await self._entries(session, EntryName.document_id.in_(order))
        by_doc = {doc_id: entry for doc_id, entry in entries}
        return [_with_match(by_doc[doc_id], *matched[doc_id]) for doc_id in order if doc_id in by_doc]

    async def get_entry(self, ref: str) -> EntryRecord | None:
        """The entry with this ref (as stored or upper-cased), or None."""
        async with self._sessions() as session:
            entries = await self._entries(
                session, EntryName.entry_ref.in_(sorted({ref, ref.upper()})) & (EntryName.role == "ref")
            )
        return entries[0][1] if entries else None

    async def list_entries(
        self, kind: str, *, source: str | None = None, limit: int | None = None
    ) -> list[EntryRecord]:
        """Entries of one kind ("group", "software", "mitigation", ...), most prominent first."""
        condition: Any = (EntryName.entry_kind == kind) & (EntryName.role == "ref")
        if source is not None:
            condition = condition & (Document.source == source)
        async with self._sessions() as session:
            entries = [e for _, e in await self._entries(session, condition)]
        entries.sort(key=lambda e: (-e.prior, e.ref))
        return entries[:limit] if limit is not None else entries

    async def related(
        self,
        ref: str,
        relations: Sequence[str] | None = None,
        *,
        tactic: str | None = None,
        limit: int | None = None,
    ) -> list[RelatedEntry]:
        """Entries linked to `ref`, read from its side, most prominent first within each relation.

        Relations of a technique: "mitigated_by" (mitigations, with the technique-specific advice as
        `description`), "detected_by" (data components, with what to look for), "used_by" (groups,
        software, campaigns, with the procedure text), "subtechnique_of" (its parent),
        "has_subtechnique" (its children), "tactic" (TA ids with tactic names). Of a group or software:
        "uses" (techniques and software); of a campaign also "attributed_to"; of a mitigation
        "mitigates"; of a data component "detects"; of a weakness "child_of", "parent_of",
        "related_attack_pattern". `relations` None means all.

        `tactic` (a name such as "Persistence" or "credential-access", or an id such as "TA0003")
        keeps only the techniques of that tactic: `related("G0016", ["uses"], tactic="persistence")`
        is what APT29 does for persistence."""
        refs = sorted({ref, ref.upper()})
        wanted = set(relations) if relations is not None else None
        out: list[RelatedEntry] = []
        async with self._sessions() as session:
            outgoing = [r for r in INVERSE_RELATIONS if wanted is None or r in wanted]  # stored names
            if outgoing:
                target = Document.__table__.alias("target")
                stmt = (
                    select(
                        Relation.relation,
                        Relation.target_ref,
                        Relation.target_kind,
                        Relation.target_name,
                        Relation.description,
                        func.coalesce(target.c.prior, 0.0),
                    )
                    .outerjoin(
                        EntryName,
                        (EntryName.entry_ref == Relation.target_ref) & (EntryName.role == "ref"),
                    )
                    .outerjoin(target, (target.c.id == EntryName.document_id) & target.c.owner.is_(None))
                    .join(Document, Document.id == Relation.document_id)
                    .where(
                        Relation.entry_ref.in_(refs),
                        Relation.relation.in_(outgoing),
                        Document.owner.is_(None),
                    )
                )
                for row in (await session.execute(stmt)).all():
                    out.append(RelatedEntry(row[0], row[1], row[2], row[3], row[4], float(row[5])))
            incoming = [
                stored
                for inverse, stored in _INVERSE_TO_STORED.items()
                if wanted is None or inverse in wanted
            ]
            if incoming:
                stmt = (
                    select(
                        Relation.relation,
                        Relation.entry_ref,
                        Relation.entry_kind,
                        Document.title,
                        Relation.description,
                        Document.prior,
                    )
                    .join(Document, Document.id == Relation.document_id)
                    .where(
                        Relation.target_ref.in_(refs),
                        Relation.relation.in_(incoming),
                        Document.owner.is_(None),
                    )
                )
                for row in (await session.execute(stmt)).all():
                    out.append(
                        RelatedEntry(INVERSE_RELATIONS[row[0]], row[1], row[2], row[3], row[4], float(row[5]))
                    )
            if tactic is not None:
                key = name_key(tactic.replace("-", " ").replace("_", " "))
                in_tactic = set(
                    (
                        await session.execute(
                            select(Relation.entry_ref)
                            .join(Document, Document.id == Relation.document_id)
                            .where(
                                Document.owner.is_(None),
                                Relation.relation == "tactic",
                                (func.lower(Relation.target_name) == key)
                                | (Relation.target_ref == tactic.strip().upper()),
                            )
                        )
                    ).scalars()
                )
                out = [r for r in out if r.ref in in_tactic]
        out = list({(r.relation, r.ref): r for r in out}.values())
        order = {name: i for i, name in enumerate(relations or ())}
        out.sort(key=lambda r: (order.get(r.relation, len(order)), r.relation, -r.prior, r.ref))
        return out[:limit] if limit is not None else out

    async def entry_name_index(self, kinds: Sequence[str] | None = None) -> list[tuple[str, str, str, str]]:
        """(key, entry ref, entry kind, role) for every ref, name and alias of every entry: what a
        question's mentions are matched against (`key` is `name_key(name)`, lower case)."""
        stmt = (
            select(EntryName.key, EntryName.entry_ref, EntryName.entry_kind, EntryName.role)
            .join(Document, Document.id == EntryName.document_id)
            .where(Document.owner.is_(None))
            .order_by(EntryName.id)
        )
        if kinds is not None:
            stmt = stmt.where(EntryName.entry_kind.in_(list(kinds)))
        async with self._sessions() as session:
            return [(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in (await session.execute(stmt)).all()]

    @staticmethod
    async def _entries(session: AsyncSession, condition: Any) -> list[tuple[int, EntryRecord]]:
        """(document id, entry) for the shared entries whose name rows meet `condition`, with their aliases."""
        ids_stmt = (
            select(EntryName.document_id)
            .join(Document, Document.id == EntryName.document_id)
            .where(condition, Document.owner.is_(None))
            .distinct()
        )
        stmt = (
            select(
                EntryName.document_id,
                EntryName.entry_ref,
                EntryName.entry_kind,
                EntryName.name,
                EntryName.role,
                Document.title,
                Document.url,
                Document.source,
                Document.prior,
                Document.version,
            )
            .join(Document, Document.id == EntryName.document_id)
            .where(EntryName.document_id.in_(ids_stmt))
            .order_by(EntryName.id)
        )
        rows = (await session.execute(stmt)).all()
        aliases: dict[int, list[str]] = defaultdict(list)
        base: dict[int, Any] = {}
        for row in rows:
            doc_id = int(row[0])
            if row[4] == "ref":
                base[doc_id] = row
            elif row[4] == "alias":
                aliases[doc_id].append(str(row[3]))
        return [
            (
                doc_id,
                EntryRecord(
                    ref=str(row[1]),
                    kind=str(row[2]),
                    title=str(row[5]),
                    url=row[6],
                    source=str(row[7]),
                    prior=float(row[8]),
                    version=str(row[9] or ""),
                    aliases=tuple(aliases[doc_id]),
                ),
            )
            for doc_id, row in base.items()
        ]

    # --- bookkeeping ---------------------------------------------------------------------

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
            # Children first and explicitly: the FTS triggers see each row, whatever the FK pragma.
            chunks = await session.execute(delete(Chunk).where(Chunk.document_id.in_(doomed)))
            for table in (EntryName, Relation):
                await session.execute(delete(table).where(table.document_id.in_(doomed)))
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

    async def count_by_kind(self, source: str | None = None) -> dict[tuple[str, str], int]:
        """(entry kind, section) → number of chunks, of one source or all."""
        stmt = select(Chunk.entry_kind, Chunk.section, func.count(Chunk.id)).group_by(
            Chunk.entry_kind, Chunk.section
        )
        if source is not None:
            stmt = stmt.join(Document, Chunk.document_id == Document.id).where(Document.source == source)
        async with self._sessions() as session:
            return {(str(r[0]), str(r[1])): int(r[2]) for r in (await session.execute(stmt)).all()}

    @staticmethod
    async def _select_records(session: AsyncSession, condition: Any) -> list[ChunkRecord]:
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
                Chunk.entry_ref,
                Chunk.entry_kind,
                Chunk.section,
                Chunk.heading,
                Document.version,
            )
            .join(Document, Chunk.document_id == Document.id)
            .where(condition)
        )
        return [ChunkRecord(*row) for row in (await session.execute(stmt)).all()]


def _meta(row: Any) -> ChunkMeta:
    return ChunkMeta(
        int(row[0]), str(row[1]), int(row[2]), str(row[3]), float(row[4]), str(row[5]), str(row[6])
    )


def _with_match(entry: EntryRecord, name: str, role: str) -> EntryRecord:
    return replace(entry, matched=name, matched_role=role)


__all__ = ["INVERSE_RELATIONS", "KnowledgeRepository"]

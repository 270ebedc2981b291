"""Revision 0003 (entries with typed sections) upgrades a 0002 database that already holds chunks, on both
engines, and the knowledge tables match their models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from storage import Base, Database, create_engine, head_revision
from storage.knowledge import ChunkData, DocumentData, KnowledgeRepository
from storage.migrate import current_revision, upgrade

KNOWLEDGE_TABLES = {"knowledge_documents", "knowledge_chunks", "knowledge_entry_names", "knowledge_relations"}

_DOC = (
    "INSERT INTO knowledge_documents (id, source, locator, title, url, content_hash, prior, updated_at) "
    "VALUES (:id, :source, :locator, :title, NULL, 'h', 0.5, CURRENT_TIMESTAMP)"
)
_CHUNK = (
    "INSERT INTO knowledge_chunks (document_id, ord, ref, title, url, text, aliases, length) "
    "VALUES (:doc, :ord, :ref, :title, NULL, :text, :aliases, 3)"
)


async def test_0002_database_with_chunks_is_upgraded(db_url: str) -> None:
    engine = create_engine(db_url)
    await upgrade(engine, "0002")
    assert await current_revision(engine) == "0002"
    async with engine.begin() as connection:  # rows as the 0002 indexer wrote them
        for doc in (
            {"id": 1, "source": "cwe", "locator": "CWE-89", "title": "SQL Injection"},
            {"id": 2, "source": "attack", "locator": "T1558.003", "title": "Kerberoasting"},
            {"id": 3, "source": "file", "locator": "/notes/a.md", "title": "A"},
        ):
            await connection.execute(text(_DOC), doc)
        for chunk in (
            {
                "doc": 1,
                "ord": 0,
                "ref": "CWE-89",
                "title": "SQL Injection",
                "aliases": "SQL injection; SQLi",
                "text": "CWE-89: SQL Injection. The product builds queries from input.",
            },
            {
                "doc": 1,
                "ord": 1,
                "ref": "CWE-89",
                "title": "SQL Injection",
                "aliases": "SQL injection; SQLi",
                "text": "Potential mitigations: Use prepared statements.",
            },
            {
                "doc": 2,
                "ord": 0,
                "ref": "T1558.003",
                "title": "Kerberoasting",
                "aliases": "",
                "text": "T1558.003: Kerberoasting.",
            },
            {
                "doc": 2,
                "ord": 1,
                "ref": "T1558.003",
                "title": "Kerberoasting",
                "aliases": "",
                "text": "Detection: Event ID 4769 with RC4 encryption.",
            },
            {"doc": 3, "ord": 0, "ref": "a.md#1", "title": "A", "aliases": "", "text": "golden ticket notes"},
        ):
            await connection.execute(text(_CHUNK), chunk)
    await engine.dispose()

    db = await Database.open(db_url)
    try:
        assert await db.revision() == head_revision()
        repo = KnowledgeRepository(db.sessions)
        detection = await repo.entry_chunks(["t1558.003"], ["detection"])
        assert [(c.section, c.heading, c.entry_kind) for c in detection] == [
            ("detection", "Detection", "technique")
        ]
        assert detection[0].body == "Event ID 4769 with RC4 encryption."
        mitigation = await repo.entry_chunks(["CWE-89"], ["mitigation"])
        assert [c.entry_kind for c in mitigation] == ["weakness"] and "prepared" in mitigation[0].text
        assert [c.section for c in await repo.entry_chunks(["CWE-89"])] == ["summary", "mitigation"]
        files = await repo.entry_chunks(["a.md"])
        assert [(c.entry_kind, c.section) for c in files] == [("document", "description")]
        assert [e.ref for e in await repo.find_entries("sqli")] == ["CWE-89"]  # aliases backfilled
        assert [e.ref for e in await repo.find_entries("KERBEROASTING")] == ["T1558.003"]
        # The full-text index still covers the old rows...
        hits = await repo.get_chunks([cid for cid, _ in await repo.fts_search("4769")])
        assert [c.ref for c in hits] == ["T1558.003"]
        # ...and a rebuilt entry replaces its rows, names included.
        await repo.save_documents(
            "attack",
            [
                DocumentData(
                    "T1558.003",
                    "Kerberoasting",
                    "h2",
                    entry_kind="technique",
                    names=["Kerberoasting"],
                    aliases=["Roasting"],
                    chunks=[ChunkData(0, "T1558.003", "Kerberoasting", "New text.", section="summary")],
                )
            ],
        )
        assert await repo.fts_search("4769") == []
        assert [c.text for c in await repo.entry_chunks(["T1558.003"])] == ["New text."]
        assert [e.ref for e in await repo.find_entries("roasting")] == ["T1558.003"]
    finally:
        await db.close()


async def test_knowledge_migrations_match_models(db: Database) -> None:
    def diff(connection: object) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})  # type: ignore[arg-type]
        return compare_metadata(context, Base.metadata)

    async with db.engine.connect() as connection:
        differences = await connection.run_sync(diff)
    mine = [d for d in differences if _tables(d) & KNOWLEDGE_TABLES]
    # The PostgreSQL search column and its indexes live outside the models (raw DDL, like SQLite's FTS5).
    mine = [d for d in mine if "search_vector" not in repr(d) and "simple_text" not in repr(d)]
    assert mine == []


def _tables(item: object) -> set[str]:
    if isinstance(item, (list, tuple)):
        return {name for x in item for name in _tables(x)}
    name = item if isinstance(item, str) else getattr(getattr(item, "table", item), "name", None)
    return {name} if isinstance(name, str) else set()

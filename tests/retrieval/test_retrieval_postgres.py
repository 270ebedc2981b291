"""The same repository on PostgreSQL (tsvector + GIN, ts_rank_cd) when a throwaway server can be started."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from storage.database import Database
from storage.knowledge import ChunkData, DocumentData, KnowledgeRepository
from tests.storage.conftest import _admin, postgres_server  # noqa: F401  (session fixture: a server)

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_repo(postgres_server: str) -> AsyncIterator[KnowledgeRepository]:  # noqa: F811
    name = f"ghostbot_retrieval_{os.getpid()}"
    await _admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin(postgres_server, f'CREATE DATABASE "{name}"')
    db = await Database.open(f"{postgres_server}/{name}")
    try:
        yield KnowledgeRepository(db.sessions)
    finally:
        await db.close()
        await _admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def doc(locator: str, text: str, title: str = "T", digest: str = "h") -> DocumentData:
    return DocumentData(locator, title, digest, chunks=[ChunkData(0, locator, title, text)])


async def test_postgres_search_matches_sqlite_behaviour(pg_repo: KnowledgeRepository) -> None:
    await pg_repo.save_documents(
        "cwe",
        [
            doc("CWE-89", "queries built by concatenating user input", title="SQL Injection"),
            doc("CWE-79", "observed example CVE-2006-3568 in a guestbook", title="Cross-site Scripting"),
            doc("CWE-1", "a body that mentions injection once among many words here"),
        ],
    )
    hits = await pg_repo.fts_search('sql "injection* NEAR -')
    records = await pg_repo.get_chunks([cid for cid, _ in hits])
    assert records[0].ref == "CWE-89"  # title weighs more than body
    assert {r.ref for r in records} == {"CWE-89", "CWE-1"}
    with_meta = await pg_repo.fts_search_meta('sql "injection* NEAR -')
    assert [m.id for m in with_meta] == [cid for cid, _ in hits] and with_meta[0].source == "cwe"
    assert await pg_repo.fts_search("what is the") == []
    assert await pg_repo.entry_names() and await pg_repo.get_chunk_meta([]) == {}
    for hostile in ['"', "a:b & | ! <->", "(((", "foo_bar", "\x00", "-x*", "é'ü"]:
        await pg_repo.fts_search(hostile)  # never a tsquery syntax error
        await pg_repo.phrase_search(hostile)
    mention = await pg_repo.get_chunks(await pg_repo.phrase_search("CVE-2006-3568"))
    assert [r.ref for r in mention] == ["CWE-79"]
    assert [r.ref for r in await pg_repo.find_by_ref("cwe-79")] == ["CWE-79"]
    assert await pg_repo.delete_missing("cwe", ["CWE-79", "CWE-1"]) == 1
    assert await pg_repo.fts_search("concatenating") == []
    assert await pg_repo.count() == (2, 2)


async def test_postgres_entries_sections_and_relations(pg_repo: KnowledgeRepository) -> None:
    from storage.knowledge import RelationData

    await pg_repo.save_documents(
        "attack",
        [
            DocumentData(
                "T1558.003",
                "Kerberoasting",
                "h",
                entry_kind="technique",
                names=["Kerberoasting"],
                chunks=[
                    ChunkData(
                        0,
                        "T1558.003",
                        "Kerberoasting",
                        "T1558.003: Kerberoasting tickets.",
                        section="summary",
                    ),
                    ChunkData(
                        1,
                        "T1558.003",
                        "Kerberoasting",
                        "Detection: Event ID 4769 for kerberos tickets.",
                        section="detection",
                        heading="Detection",
                    ),
                ],
                version="v15",
            ),
            DocumentData(
                "G0016",
                "APT29",
                "h",
                entry_kind="group",
                names=["APT29"],
                aliases=["Cozy Bear"],
                relations=[RelationData("uses", "T1558.003", "technique", "Kerberoasting", "APT29 roasted.")],
                chunks=[
                    ChunkData(0, "G0016", "APT29", "G0016: APT29 uses kerberos tickets.", section="summary")
                ],
            ),
        ],
    )
    assert [e.ref for e in await pg_repo.find_entries("COZY bear")] == ["G0016"]
    assert (await pg_repo.get_entry("t1558.003")).version == "v15"  # type: ignore[union-attr]
    detection = await pg_repo.entry_chunks(["T1558.003"], ["detection"])
    assert [c.body for c in detection] == ["Event ID 4769 for kerberos tickets."]
    hits = await pg_repo.fts_search_meta("kerberos tickets", sections=["detection"])
    assert [m.section for m in hits] == ["detection"]
    assert len(await pg_repo.fts_search("kerberos tickets")) == 3
    used_by = await pg_repo.related("T1558.003", ["used_by"])
    assert [(r.ref, r.kind, r.name, r.description) for r in used_by] == [
        ("G0016", "group", "APT29", "APT29 roasted.")
    ]
    assert [r.ref for r in await pg_repo.related("G0016", ["uses"])] == ["T1558.003"]
    assert [e.ref for e in await pg_repo.list_entries("group")] == ["G0016"]


async def test_postgres_private_documents_are_seen_by_their_owner_only(pg_repo: KnowledgeRepository) -> None:
    await pg_repo.save_documents("cwe", [doc("CWE-79", "shared text about quokka scripting")])
    [mine] = await pg_repo.save_documents(
        "upload", [doc("telegram:1/h/notes.md", "private quokka runbook CVE-2099-0001")], owner="telegram:1"
    )
    shared = {r.ref for r in await pg_repo.get_chunks([c for c, _ in await pg_repo.fts_search("quokka")])}
    assert shared == {"CWE-79"}
    owner_hits = await pg_repo.fts_search("quokka", viewer="telegram:1")
    assert len(owner_hits) == 2
    assert len(await pg_repo.fts_search_meta("quokka", viewer="telegram:2")) == 1
    assert await pg_repo.phrase_search("CVE-2099-0001", viewer="telegram:2") == []
    assert len(await pg_repo.phrase_search("CVE-2099-0001", viewer="telegram:1")) == 1
    assert await pg_repo.find_by_ref("telegram:1/h/notes.md") == []
    assert len(await pg_repo.find_by_ref("telegram:1/h/notes.md", viewer="telegram:1")) == 1
    ids = [c for c, _ in owner_hits]
    assert len(await pg_repo.get_chunk_meta(ids)) == 1 and len(await pg_repo.get_chunks(ids)) == 1
    assert len(await pg_repo.get_chunks(ids, all_owners=True)) == 2
    assert len(await pg_repo.hidden_chunk_ids("telegram:2")) == 1
    assert (
        len(await pg_repo.hidden_chunk_ids(None)) == 1 and await pg_repo.hidden_chunk_ids("telegram:1") == []
    )
    assert [d.id for d in await pg_repo.owned_documents("telegram:1")] == [mine.document_id]
    assert await pg_repo.delete_owned("telegram:1") == (1, 1)
    assert await pg_repo.count() == (1, 1)

"""Private documents uploaded in chat: type checks, bounds, owner-only retrieval, /docs, /forget.

Real database, repository, indexer, retriever and embedding matrix; the encoder is a small bag-of-words hash
(so the dense path and the matrix are exercised without loading MiniLM)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, text

from core.retrieval.dense import DenseIndex
from core.retrieval.indexer import Indexer
from core.retrieval.retriever import Retriever
from core.understanding import understand
from core.uploads import (
    BOMB,
    EMPTY,
    ENCRYPTED,
    NOT_UTF8,
    DocumentLibrary,
    FileTooLarge,
    IncomingFile,
    UploadRefused,
)
from storage import Database
from storage.knowledge import Chunk, ChunkData, Document, DocumentData, KnowledgeRepository, RelationData
from tests.pdfs import flate_bomb_pdf, text_pdf

ALICE, BOB = "telegram:1", "telegram:2"
SECRET = "The Zanzibar incident runbook: rotate the quokka credentials, then page the night owl team."


class HashEmbedder:
    """Bag-of-words vectors hashed into 64 dimensions, unit length: similar words, similar vectors."""

    def __init__(self) -> None:
        self.query_executor = ThreadPoolExecutor(max_workers=1)
        self.fail = False

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("encoder broke")
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, t in enumerate(texts):
            for word in re.findall(r"\w+", t.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] /= norm if norm else 1.0
        return out


class Parts:
    def __init__(self, db: Database, tmp_path: Path) -> None:
        self.db = db
        self.repo = KnowledgeRepository(db.sessions)
        self.embedder = HashEmbedder()
        self.dense = DenseIndex(tmp_path / "emb")
        self.indexer = Indexer(self.repo, self.embedder, self.dense)  # type: ignore[arg-type]
        self.retriever = Retriever(self.repo, self.embedder, self.dense)  # type: ignore[arg-type]
        self.library = DocumentLibrary(self.repo, self.indexer, max_upload_mb=1)
        self.progress: list[str] = []

    async def report(self, message: str) -> None:
        self.progress.append(message)

    async def upload(
        self, owner: str, data: bytes, name: str, mime: str | None = None, size: int | None = -1
    ) -> str:
        async def download(limit: int) -> bytes:
            if len(data) > limit:
                raise FileTooLarge
            return data

        declared = len(data) if size == -1 else size
        return await self.library.ingest(
            owner, IncomingFile(name, mime, declared, download), self.report, private_context=True
        )

    async def counts(self) -> tuple[int, int, int]:
        """(documents, chunks, FTS rows)."""
        async with self.db.sessions() as session:
            docs = (await session.execute(select(func.count(Document.id)))).scalar_one()
            chunks = (await session.execute(select(func.count(Chunk.id)))).scalar_one()
            fts = (await session.execute(text("SELECT count(*) FROM knowledge_chunks_fts"))).scalar_one()
        return int(docs), int(chunks), int(fts)


@pytest.fixture
def parts(db: Database, tmp_path: Path) -> Parts:
    return Parts(db, tmp_path)


async def refs(parts: Parts, query: str, viewer: str | None, mode: Any = "hybrid") -> list[str]:
    return [s.ref for s in await parts.retriever.search(query, 4, mode=mode, viewer=viewer)]


async def test_a_pdf_is_indexed_privately_for_its_owner_only(parts: Parts) -> None:
    pdf = text_pdf(["Intro page about nothing much.", SECRET], title="Runbook")
    reply = await parts.upload(ALICE, pdf, "runbook.pdf", "application/pdf")
    assert "Indexed “runbook.pdf” (2 pages, 2 chunks)" in reply and "/docs" in reply
    assert parts.progress == ["Indexing “runbook.pdf”… 2 chunks"]
    question = "what do we rotate in the zanzibar incident quokka"
    for mode in ("hybrid", "bm25", "dense"):
        assert "runbook.pdf#2" in await refs(parts, question, ALICE, mode), mode
        assert await refs(parts, question, BOB, mode) == [], mode  # another user
        assert await refs(parts, question, None, mode) == [], mode  # a group / shared context
    sources = await parts.retriever.search(question, 4, viewer=ALICE)
    assert sources[0].source == "runbook.pdf"  # the file name, never the owner's key
    # others' private vectors are masked inside the cosine ranking, not dropped afterwards
    private = await parts.repo.hidden_chunk_ids(BOB)
    assert len(private) == 2 and await parts.repo.hidden_chunk_ids(ALICE) == []
    vector = parts.embedder.encode([question])[0]
    assert len(parts.dense.search(vector, 5)) == 2
    assert parts.dense.search(vector, 5, exclude=private) == []
    assert parts.dense.search(vector, 5, exclude=private[:1])[0][0] == private[1]
    # the dense matrix holds the private chunks (it is filtered in the queries, not by omission)
    assert len(parts.dense.entries()) == 2


async def test_intent_aware_retrieval_and_entry_reads_keep_uploads_private(parts: Parts) -> None:
    """The answering path (`Retriever.retrieve`, entry chunks, names, relations) filters like `search`."""
    pdf = text_pdf(["Intro page about nothing much.", SECRET], title="Runbook")
    await parts.upload(ALICE, pdf, "runbook.pdf", "application/pdf")
    question = understand("How do I detect the zanzibar incident with the quokka credentials?")
    found = await parts.retriever.retrieve(question, 4, viewer=ALICE)
    assert "runbook.pdf#2" in [p.ref for p in found.passages]
    assert all(p.source == "runbook.pdf" for p in found.passages)  # never the owner's key
    for viewer in (BOB, None):
        assert (await parts.retriever.retrieve(question, 4, viewer=viewer)).passages == []
    assert await parts.repo.entry_chunks(["runbook.pdf"]) == []
    assert await parts.repo.entry_chunks(["runbook.pdf"], viewer=BOB) == []
    assert len(await parts.repo.entry_chunks(["runbook.pdf"], viewer=ALICE)) == 2
    # a private document's names and relations (none from uploads today) are never entries
    doc = DocumentData(
        locator=f"{ALICE}/y/g.md",
        title="G9999",
        content_hash="h",
        entry_ref="G9999",
        entry_kind="group",
        names=("Quokka Gang",),
        relations=(RelationData("uses", "T1003"),),
        chunks=[ChunkData(0, "G9999", "Quokka Gang", "private group")],
    )
    await parts.repo.save_documents("upload", [doc], owner=ALICE)
    assert await parts.repo.find_entries("quokka gang") == []
    assert await parts.repo.get_entry("G9999") is None
    assert await parts.repo.related("T1003", ["used_by"]) == []
    assert all(ref != "G9999" for _, ref, _, _ in await parts.repo.entry_name_index())


async def test_the_owner_filter_is_in_every_query(parts: Parts) -> None:
    """Exact-id lookup, phrase search, chunk fetches: none returns another owner's rows."""
    doc = DocumentData(
        locator=f"{ALICE}/x/notes.md",
        title="notes",
        content_hash="h",
        chunks=[ChunkData(0, "CWE-99999", "mine", "private mention of CVE-2099-0001 here")],
    )
    [saved] = await parts.repo.save_documents("upload", [doc], owner=ALICE)
    [chunk_id] = await parts.repo.chunk_ids()
    assert await parts.repo.find_by_ref("CWE-99999") == []
    assert await parts.repo.find_by_ref("CWE-99999", viewer=BOB) == []
    assert len(await parts.repo.find_by_ref("CWE-99999", viewer=ALICE)) == 1
    assert await parts.repo.phrase_search("CVE-2099-0001", viewer=BOB) == []
    assert await parts.repo.phrase_search("CVE-2099-0001", viewer=ALICE) == [chunk_id]
    assert await parts.repo.get_chunks([chunk_id]) == []
    assert await parts.repo.get_chunk_meta([chunk_id], viewer=BOB) == {}
    assert await parts.repo.fts_search("private mention") == []
    assert [c for c, _ in await parts.repo.fts_search("private mention", viewer=ALICE)] == [chunk_id]
    assert await parts.repo.entry_names() == []  # never a pack entry's name vector
    assert [s.ref for s in await parts.retriever.search("CVE-2099-0001", viewer=ALICE)] == ["CWE-99999"]
    assert await parts.retriever.search("CVE-2099-0001", viewer=BOB) == []
    assert saved.status == "added"


async def test_docs_delete_and_forget_remove_chunks_fts_rows_and_embeddings(parts: Parts) -> None:
    await parts.upload(ALICE, b"# Alpha\nalpha notes about quokka rotation", "alpha.md")
    await parts.upload(ALICE, b"beta notes about zanzibar", "beta.txt", "text/plain")
    await parts.upload(BOB, b"bob's own notes about zanzibar", "bob.txt")
    listing = await parts.library.describe(ALICE)
    assert "1. alpha.md — 1 chunks" in listing and "2. beta.txt — 1 chunks" in listing
    assert "bob.txt" not in listing
    assert await parts.counts() == (3, 3, 3) and len(parts.dense.entries()) == 3

    assert await parts.library.delete(ALICE, 3) == "There is no document 3; /docs lists yours (1–2)."
    assert await parts.library.delete(ALICE, 1) == "Deleted “alpha.md” (1 chunks)."
    assert await parts.counts() == (2, 2, 2) and len(parts.dense.entries()) == 2
    assert await refs(parts, "quokka rotation", ALICE) == ["beta.txt#1"]  # dense: the nearest left

    assert await parts.library.forget(ALICE) == 1
    assert await parts.counts() == (1, 1, 1)
    bob_chunks = set(await parts.repo.chunk_ids())
    assert set(parts.dense.entries()) == bob_chunks  # Alice's embeddings are gone, Bob's stay
    assert await refs(parts, "zanzibar", ALICE) == []
    assert await refs(parts, "zanzibar", BOB) == ["bob.txt#1"]


async def test_the_same_file_twice_is_indexed_once(parts: Parts) -> None:
    await parts.upload(ALICE, b"gamma notes", "g.txt")
    assert "already sent me" in await parts.upload(ALICE, b"gamma notes", "g-copy.txt")
    assert (await parts.counts())[0] == 1


BAD_FILES: list[tuple[str, bytes, str, str | None, str]] = [
    ("encrypted PDF", text_pdf([SECRET], password="hunter2"), "locked.pdf", "application/pdf", ENCRYPTED),
    ("flate bomb PDF", flate_bomb_pdf(), "bomb.pdf", "application/pdf", BOMB),
    (
        "exe renamed .pdf",
        b"MZ\x90\x00\x03" + b"\x00" * 200,
        "invoice.pdf",
        "application/pdf",
        "a Windows program",
    ),
    ("zip renamed .md", b"PK\x03\x04" + b"\x00" * 100, "notes.md", "text/markdown", "a ZIP archive"),
    ("text named .pdf", b"just some text", "fake.pdf", "application/pdf", "not a PDF"),
    ("PDF without text", text_pdf(["", ""]), "scan.pdf", "application/pdf", EMPTY),
    ("empty text", b"  \n\t\n", "empty.txt", "text/plain", EMPTY),
    ("invalid UTF-8", "résumé".encode("latin-1") + b" notes", "cv.txt", "text/plain", NOT_UTF8),
    ("too large (declared)", b"x", "big.txt", "text/plain", "too large"),
    ("too large (real)", b"y" * (1024 * 1024 + 1), "big2.txt", "text/plain", "too large (more than 1 MB)"),
]


@pytest.mark.parametrize(
    ("case", "data", "name", "mime", "expected"), BAD_FILES, ids=[c[0] for c in BAD_FILES]
)
async def test_bad_files_are_refused_and_nothing_is_stored(
    parts: Parts, case: str, data: bytes, name: str, mime: str | None, expected: str
) -> None:
    size = 50 * 1024 * 1024 if case == "too large (declared)" else (None if "real" in case else -1)
    with pytest.raises(UploadRefused) as refused:
        await parts.upload(ALICE, data, name, mime, size)
    assert expected in str(refused.value)
    assert await parts.counts() == (0, 0, 0)
    assert parts.dense.entries() == {}
    assert parts.progress == []


async def test_an_embedding_failure_takes_the_rows_back(parts: Parts) -> None:
    parts.embedder.fail = True
    with pytest.raises(RuntimeError):
        await parts.upload(ALICE, b"delta notes about quokkas", "d.txt")
    assert await parts.counts() == (0, 0, 0)
    parts.embedder.fail = False
    await parts.upload(ALICE, b"delta notes about quokkas", "d.txt")  # and it can be sent again
    assert await parts.counts() == (1, 1, 1)


async def test_private_documents_are_searched_only_in_private_contexts(make_harness: Any) -> None:
    """The manager asks the retriever for the user's documents in DMs and ephemeral replies, never in groups."""
    h = make_harness()
    await h.send("what is xss?")
    await h.send("what is xss?", group=True, chat="-5")
    await h.send("what is xss?", group=True, chat="-5", ephemeral=True)
    await h.send("what is xss?", user="2", platform="discord")
    assert h.retriever.viewers == ["telegram:1", None, "telegram:1", "discord:2"]

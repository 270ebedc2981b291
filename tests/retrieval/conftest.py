"""Shared fixtures: one MiniLM encoder per session, a migrated SQLite database per test, pack slices."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from core.retrieval.embedder import Embedder
from core.retrieval.packs import AttackPack, CwePack, PackEntry
from storage.database import Database
from storage.knowledge import KnowledgeRepository

CWE_SLICE = ("CWE-79", "CWE-89", "CWE-22", "CWE-78", "CWE-352", "CWE-502", "CWE-798")
ATTACK_SLICE = ("T1059", "T1059.001", "T1003.001", "T1486", "T1566.001", "T1110.003")


class CountingEmbedder(Embedder):
    """The real encoder, memoised across tests (the shared CPU is slow) and counting requests:
    `requested` is how many texts the indexer asked to embed, cached or not."""

    def __init__(self) -> None:
        super().__init__()
        self.requested = 0
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.requested += len(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, super().encode(missing)))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


@pytest.fixture(scope="session")
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture(scope="session")
def pack_entries() -> dict[str, list[PackEntry]]:
    """Every entry of both packs, parsed once per session (~10 s on a quiet core)."""
    return {"cwe": list(CwePack().entries()), "attack": list(AttackPack().entries())}


@pytest.fixture(scope="session")
def pack_slices(pack_entries: dict[str, list[PackEntry]]) -> dict[str, list[PackEntry]]:
    cwe = [e for e in pack_entries["cwe"] if e.ref in CWE_SLICE]
    attack = [e for e in pack_entries["attack"] if e.ref in ATTACK_SLICE]
    return {"cwe": cwe, "attack": attack}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}")
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def repo(db: Database) -> KnowledgeRepository:
    return KnowledgeRepository(db.sessions)


def minimal_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with a text layer, built by hand (offsets computed, so readers accept it)."""
    ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"({escaped}) Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)

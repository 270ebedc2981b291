"""Retrieval: knowledge packs and user folders → chunks in storage → exact-id, BM25 and dense search.

`create_retrieval(settings, sessions)` wires a `Retriever` and an `Indexer` that share one lazily
loaded encoder (only when `settings.dense_retrieval` is on).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.retrieval.dense import DenseIndex
from core.retrieval.embedder import Embedder, EmbedderError
from core.retrieval.indexer import Indexer, IndexReport
from core.retrieval.packs import PACK_NAMES, PackUnavailableError
from core.retrieval.retriever import FusionConfig, Retriever, format_sources
from core.settings import Settings
from storage.knowledge import KnowledgeRepository


def dense_directory(data_dir: Path, embedder: Embedder) -> Path:
    """Where this encoder's matrix lives: vectors from different weights never mix."""
    return Path(data_dir) / "embeddings" / embedder.fingerprint


def create_retrieval(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> tuple[Retriever, Indexer]:
    repository = KnowledgeRepository(sessions)
    embedder: Embedder | None = None
    dense: DenseIndex | None = None
    if settings.dense_retrieval:
        embedder = Embedder(settings.embedder_path)
        dense = DenseIndex(dense_directory(settings.data_dir, embedder))
    return Retriever(repository, embedder, dense), Indexer(repository, embedder, dense)


__all__ = [
    "PACK_NAMES",
    "DenseIndex",
    "Embedder",
    "EmbedderError",
    "FusionConfig",
    "IndexReport",
    "Indexer",
    "KnowledgeRepository",
    "PackUnavailableError",
    "Retriever",
    "create_retrieval",
    "dense_directory",
    "format_sources",
]

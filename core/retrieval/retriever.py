"""Search the knowledge base: exact ids first, then BM25, dense cosine over chunks and dense cosine over
entry names, fused by reciprocal rank."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar

import numpy as np

from core.retrieval.dense import DenseIndex
from core.retrieval.embedder import Embedder, EmbedderError
from core.retrieval.ids import find_ids
from core.retrieval.indexer import UPLOAD_SOURCE, upload_name
from core.types import Source
from storage.knowledge import ChunkMeta, ChunkRecord, KnowledgeRepository

log = logging.getLogger(__name__)

Mode = Literal["hybrid", "bm25", "dense"]
MAX_QUERY_CHARS = 2000  # a question longer than this is a paste; its start says what it is about


@dataclass(frozen=True)
class FusionConfig:
    """Reciprocal rank fusion: score(entry) = Σ weight / (rrf_k + rank), × (1 + prior_weight × prior).

    Defaults were chosen by benchmarks/retrieval_tune.py on the tuning half of the practitioner
    questions only (ties broken towards fewer knobs); the other half is the held-out check."""

    candidates: int = 50  # chunk hits taken from each list (100 scored the same, and costs more)
    rrf_k: float = 5.0
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    # Questions often paraphrase an entry's name ("accepts any TLS certificate" ~ "Improper
    # Certificate Validation"), which long passages dilute: the query against names alone.
    name_weight: float = 1.0
    prior_weight: float = 1.0
    summary_weight: float = 0.0  # extra lists: each list's ranking of pack summaries alone


class Retriever:
    def __init__(
        self,
        repository: KnowledgeRepository,
        embedder: Embedder | None = None,
        dense: DenseIndex | None = None,
        fusion: FusionConfig = FusionConfig(),
    ) -> None:
        self._repo = repository
        self._embedder = embedder if dense is not None else None
        self._dense = dense if embedder is not None else None
        self.fusion = fusion

    @property
    def embedder(self) -> Embedder | None:
        """The query encoder (None when dense retrieval is off or was disabled)."""
        return self._embedder

    @property
    def dense_enabled(self) -> bool:
        return self._embedder is not None

    async def search(
        self, query: str, k: int = 4, *, mode: Mode = "hybrid", viewer: str | None = None
    ) -> list[Source]:
        """Up to k passages for `query`, numbered 1..k: entries named by an exact id in the query
        come first, then the best of the hybrid search. One passage per CWE/ATT&CK entry.

        `viewer` (a user key such as "telegram:42", only in that user's private contexts) adds their
        private documents to what is searched; without it only shared knowledge is. Every query below
        filters on it."""
        query = clean_query(query)
        if not query or k <= 0:
            return []
        picked: list[ChunkRecord] = []
        refs: set[str] = set()

        def take(record: ChunkRecord) -> None:
            if record.ref not in refs and len(picked) < k:
                refs.add(record.ref)
                picked.append(record)

        for exact in find_ids(query):
            if exact.has_own_entry:
                records = await self._repo.find_by_ref(exact.ref, viewer=viewer)
                if records:
                    take(records[0])  # the overview chunk names and defines the entry
            else:
                hits = await self._repo.phrase_search(exact.ref, k, viewer=viewer)
                for record in await self._repo.get_chunks(hits, viewer=viewer):
                    take(record)
        if len(picked) < k:
            for record in await self._hybrid(query, k + len(picked), mode, viewer):
                take(record)
        return [self._to_source(i, record) for i, record in enumerate(picked, start=1)]

    async def _hybrid(self, query: str, k: int, mode: Mode, viewer: str | None) -> list[ChunkRecord]:
        lists, meta = await self.candidates(query, mode, viewer=viewer)
        cfg = self.fusion
        if mode != "hybrid":
            # A single signal ranks on its own (the baselines the fusion is measured against).
            cfg = replace(cfg, prior_weight=0.0, summary_weight=0.0, name_weight=0.0)
        best = [m.id for m in fuse(lists, meta, cfg)[:k]]
        return await self._repo.get_chunks(best, viewer=viewer)  # texts only for the winners

    async def candidates(
        self, query: str, mode: Mode = "hybrid", *, viewer: str | None = None
    ) -> tuple[list[tuple[float, list[int]]], dict[int, ChunkMeta]]:
        """The ranked chunk-id lists to fuse, each with its weight, and the chunks they name (only chunks
        `viewer` may read: the metadata query filters the dense hits, whose matrix holds every chunk)."""
        cfg = self.fusion
        # BM25, and the ranking metadata of its hits, run in the database driver's thread while the
        # encoder runs in its own: only the dense hits' metadata is fetched after encoding.
        bm25 = (
            asyncio.ensure_future(self._bm25(query, cfg.candidates, viewer))
            if mode in ("hybrid", "bm25")
            else None
        )
        dense_hits: tuple[list[int], list[int]] | None = None
        bm25_hits: tuple[list[int], dict[int, ChunkMeta]] | None = None
        try:
            embedder = self._embedder
            if mode in ("hybrid", "dense") and embedder is not None:
                with_names = mode == "hybrid" and cfg.name_weight > 0
                loop = asyncio.get_running_loop()
                # Others' private chunks are masked out of the cosine ranking itself (their ids come from
                # the database while the query is encoded), so they never take a candidate slot.
                hidden = asyncio.ensure_future(self._repo.hidden_chunk_ids(viewer))
                try:
                    vector = await loop.run_in_executor(embedder.query_executor, self._encode_query, query)
                finally:
                    exclude = await hidden
                if vector is not None:
                    dense_hits = await loop.run_in_executor(
                        embedder.query_executor,
                        self._dense_search,
                        vector,
                        cfg.candidates,
                        with_names,
                        exclude,
                    )
        finally:
            if bm25 is not None:
                bm25_hits = await bm25  # never left pending, even when the dense side failed
        lists: list[tuple[float, list[int]]] = []
        meta: dict[int, ChunkMeta] = {}
        if bm25_hits is not None:
            lists.append((cfg.bm25_weight, bm25_hits[0]))
            meta.update(bm25_hits[1])
        if dense_hits is not None:
            chunks, names = dense_hits
            missing = list(dict.fromkeys(cid for cid in (*chunks, *names) if cid not in meta))
            if missing:
                meta.update(await self._repo.get_chunk_meta(missing, viewer=viewer))
            # Hits the viewer may not read (others' private documents) have no metadata: drop them.
            lists.append((cfg.dense_weight, [cid for cid in chunks if cid in meta]))
            if names:
                lists.append((cfg.name_weight, [cid for cid in names if cid in meta]))
        return lists, meta

    async def _bm25(
        self, query: str, limit: int, viewer: str | None
    ) -> tuple[list[int], dict[int, ChunkMeta]]:
        hits = await self._repo.fts_search_meta(query, limit, viewer=viewer)
        return [m.id for m in hits], {m.id: m for m in hits}

    def _encode_query(self, query: str) -> np.ndarray | None:
        """The query's vector, on the encoder's own query thread; None when dense retrieval is off."""
        embedder = self._embedder
        if embedder is None or self._dense is None:
            return None
        try:
            return embedder.encode([query])[0]
        except EmbedderError:
            # Broken weights must not take answers down: keep BM25 and exact ids, say why once.
            log.exception("dense retrieval disabled")
            self._embedder = None
            return None

    def _dense_search(
        self, vector: np.ndarray, limit: int, with_names: bool, exclude: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """(chunk ids by cosine, summary chunk ids by cosine of their entry's name), best first, never one
        of `exclude` (private chunks the viewer may not read)."""
        dense = self._dense
        if dense is None:
            return [], []
        chunks = [cid for cid, _ in dense.search(vector, limit, exclude=exclude)]
        names = [cid for cid, _ in dense.names.search(vector, limit)] if with_names else []
        return chunks, names

    @staticmethod
    def _to_source(index: int, record: ChunkRecord) -> Source:
        if record.source == "file":
            source = record.locator
        elif record.source == UPLOAD_SOURCE:
            source = upload_name(record.locator)  # the file name, never the owner part of the locator
        else:
            source = record.source
        return Source(
            index=index,
            ref=record.ref,
            source=source,
            title=record.title,
            url=record.url,
            text=record.text,
        )


def clean_query(query: str) -> str:
    """User text made safe for the tokenizer and the database: lone surrogates replaced, control
    characters dropped, whitespace collapsed, length capped."""
    query = query.encode("utf-8", "replace").decode("utf-8")
    query = "".join(ch if ch.isprintable() else " " for ch in query)
    return " ".join(query.split())[:MAX_QUERY_CHARS]


class _Rankable(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def ref(self) -> str: ...
    @property
    def ord(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def prior(self) -> float: ...


R = TypeVar("R", bound=_Rankable)


def fuse(lists: Sequence[tuple[float, Sequence[int]]], records: dict[int, R], cfg: FusionConfig) -> list[R]:
    """Reciprocal rank fusion at the entry level, best first, with each entry's best chunk.

    An entry (a ref) ranks in each list by its best chunk; its fused score is scaled up by its prior
    (prominence in the pack data), which settles near-ties between a well-known weakness and its
    obscure variants in favour of the one practitioners usually mean."""
    ref_score: dict[str, float] = {}
    chunk_score: dict[int, float] = {}
    if cfg.summary_weight:
        # A pack entry's summary (name + definition) is its most focused text: how the summaries
        # alone rank is a second opinion that long, detail-heavy chunks cannot crowd out.
        summaries = [
            (weight * cfg.summary_weight, [c for c in ranked if c in records and _is_summary(records[c])])
            for weight, ranked in lists
        ]
        lists = [*lists, *summaries]
    for weight, ranked in lists:
        ref_rank: dict[str, int] = {}
        for rank, cid in enumerate(ranked):
            record = records.get(cid)
            if record is None:
                continue  # deleted since the matrix was written
            chunk_score[cid] = chunk_score.get(cid, 0.0) + weight / (cfg.rrf_k + rank + 1)
            ref_rank.setdefault(record.ref, len(ref_rank))
        for ref, rank in ref_rank.items():
            ref_score[ref] = ref_score.get(ref, 0.0) + weight / (cfg.rrf_k + rank + 1)
    best_chunk: dict[str, int] = {}
    for cid, score in chunk_score.items():
        ref = records[cid].ref
        if ref not in best_chunk or score > chunk_score[best_chunk[ref]]:
            best_chunk[ref] = cid
    final = {
        ref: score * (1.0 + cfg.prior_weight * records[best_chunk[ref]].prior)
        for ref, score in ref_score.items()
    }
    return [records[best_chunk[ref]] for ref in sorted(final, key=lambda ref: -final[ref])]


def _is_summary(record: _Rankable) -> bool:
    return record.ord == 0 and record.source not in ("file", UPLOAD_SOURCE)


def format_sources(sources: Sequence[Source]) -> str:
    """The `/sources` listing: one line per passage with its number, ref, title and link."""
    lines = []
    for s in sources:
        label = s.title if s.title and s.title != s.ref else ""
        line = f"[{s.index}] {s.ref}" + (f" — {label}" if label else "")
        if s.url:
            line += f" <{s.url}>"
        lines.append(line)
    return "\n".join(lines)

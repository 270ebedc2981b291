"""Search the knowledge base: exact ids first, then BM25, dense cosine over chunks and dense cosine over
entry names, fused by reciprocal rank."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

import numpy as np

from core.retrieval.dense import DenseIndex
from core.retrieval.embedder import Embedder, EmbedderError
from core.retrieval.ids import find_ids
from core.retrieval.indexer import UPLOAD_SOURCE, upload_name
from core.retrieval.linking import EntityLinker, Link, primary_links, words_of
from core.types import Source
from storage.knowledge import ChunkMeta, ChunkRecord, KnowledgeRepository, RelatedEntry

if TYPE_CHECKING:  # core.understanding imports core.retrieval.ids
    from core.understanding import Understood

log = logging.getLogger(__name__)

Mode = Literal["hybrid", "bm25", "dense"]
_PACK_SOURCES = ("cwe", "attack")  # entries with typed sections; everything else is a user's document
_URL_PATHS = {"G": "groups", "S": "software", "C": "campaigns", "M": "mitigations", "T": "techniques"}
_GROUPISH = re.compile(r"\b(?:groups?|actors?|apts?|adversar\w*|threat)\b", re.I)
_SOFTWARE = re.compile(r"\b(?:software|malware|tools?|ransomware|backdoors?|rats?|implants?)\b", re.I)
_CAMPAIGN = re.compile(r"\bcampaigns?\b", re.I)
_PARENT = re.compile(r"\b(?:parent|sub-?technique of|child of|belongs? to|under which)\b", re.I)
_CHILDREN = re.compile(r"\b(?:sub-?techniques|children|child techniques|variants)\b", re.I)
_TACTIC = re.compile(r"\btactics?\b", re.I)


@dataclass(frozen=True)
class Retrieval:
    """What answers a question: intent-ordered passages, the entries the question named, and how close
    the knowledge base came (1.0 when an entry was named; else the best dense cosine of the search)."""

    passages: list[Source]
    linked: tuple[str, ...] = ()
    confidence: float = 0.0
    lexical: float = 0.0  # share of the question's informative words found in the first passage


MAX_QUERY_CHARS = 2000  # a question longer than this is a paste; its start says what it is about
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
        self.linker = EntityLinker(repository)

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

    async def retrieve(self, question: Understood, k: int = 4, *, viewer: str | None = None) -> Retrieval:
        """Passages that answer `question`'s intent. Entities named in the question are linked first and
        the sections answering the intent are taken from their entries (the detection chunks of
        T1558.003 for "how do I detect Kerberoasting?"); compare takes both entries, relationship the
        related entries, identify and list a ranked list of candidate entries. With nothing linked, the
        hybrid search ranks the entries (with an extra BM25 list of the intent's sections)."""
        query = clean_query(question.text)
        if not query or k <= 0:
            return Retrieval([])
        intent = question.intent
        links = await self.linker.link(query)
        if (links and intent not in ("identify", "list")) or (links and links[0].role == "id"):
            want = 2 if intent == "compare" else 1
            chosen = primary_links(links, want)
            refs = tuple(link.ref for link in chosen)
            records, related = await self._sections_of(refs, question, query, chosen, k)
            if records or related:
                passages = [self._to_source(0, r) for r in records] + [_related_source(r) for r in related]
                room = max(k, 8) if related else max(k, 2 * len(refs))  # a list of related entries
                return Retrieval(_numbered(passages[:room]), refs, 1.0, 1.0)
        # Nothing (useful) linked: rank entries by the hybrid search.
        sections = [s for s in question.sections if s != "summary"] or None
        lists, meta, cosine = await self._candidates(query, "hybrid", viewer=viewer, sections=sections)
        ranked = fuse(lists, meta, self.fusion)
        if not ranked:
            return Retrieval([], (), cosine)
        if intent in ("identify", "list", "compare", "relationship"):
            # Candidate entries, best first, each by its summary (files: their best chunk).
            best = ranked[: max(k, 4) if intent in ("identify", "list") else k]
            records = await self._summaries(best, viewer)
        else:
            top = ranked[0]
            wanted = await self._entry_sections(top.ref, question.sections, k)
            summary = await self._summaries([top], viewer)
            others = await self._summaries(ranked[1:k], viewer)
            records = (summary + wanted + others)[: max(k, len(wanted) + 1)]
        passages = [self._to_source(0, r) for r in records]
        return Retrieval(_numbered(passages), (), cosine, _lexical(query, passages))

    async def _summaries(
        self, ranked: Sequence[ChunkMeta | ChunkRecord], viewer: str | None
    ) -> list[ChunkRecord]:
        """Each ranked entry's summary chunk (a file's best chunk stays as it is), in rank order."""
        pack_refs = [m.ref for m in ranked if m.source in _PACK_SOURCES]
        summaries = {
            r.entry_ref or r.ref: r
            for r in await self._repo.entry_chunks(pack_refs, ["summary"], limit_per_entry=1)
        }
        records = {
            r.id: r
            for r in await self._repo.get_chunks(
                [m.id for m in ranked if m.source not in _PACK_SOURCES], viewer=viewer
            )
        }
        out: list[ChunkRecord] = []
        for m in ranked:
            record = summaries.get(m.ref) if m.source in _PACK_SOURCES else records.get(m.id)
            if record is not None:
                out.append(record)
        return out

    async def _entry_sections(self, ref: str, sections: Sequence[str], k: int) -> list[ChunkRecord]:
        chunks = await self._repo.entry_chunks([ref], [s for s in sections if s != "summary"] or ["summary"])
        order = {name: i for i, name in enumerate(sections)}
        return sorted(chunks, key=lambda r: order.get(r.section, len(order)))[: max(k, 6)]

    async def _sections_of(
        self, refs: Sequence[str], question: Understood, query: str, links: Sequence[Link], k: int
    ) -> tuple[list[ChunkRecord], list[RelatedEntry]]:
        """The chunks (and related entries) of the linked entries that answer the intent."""
        intent = question.intent
        summaries = await self._repo.entry_chunks(list(refs), ["summary"], limit_per_entry=1)
        if intent == "compare":
            described = await self._repo.entry_chunks(list(refs), ["description"], limit_per_entry=1)
            by_ref = {r.entry_ref: [r] for r in summaries}
            for r in described:
                by_ref.setdefault(r.entry_ref, []).append(r)
            return [r for ref in refs for r in by_ref.get(ref, [])], []
        if intent == "relationship" or (intent == "list" and _CHILDREN.search(query)):
            related = await self._related(refs[0], query, k)
            if related:
                return summaries[:1], related
            return summaries, []
        if intent in ("define", "identify", "list"):
            described = await self._repo.entry_chunks(list(refs), ["description"], limit_per_entry=1)
            return summaries + described, []
        wanted = await self._entry_sections(refs[0], question.sections, k)
        if intent in ("prevent", "detect") and not wanted:
            # No section of its own (a group, a mitigation entry): what it is, then who/what relates.
            return summaries, await self._related(refs[0], query, k)
        return summaries + wanted, []

    async def _related(self, ref: str, query: str, k: int) -> list[RelatedEntry]:
        """Related entries for a relationship question, chosen by what it asks ("which groups use",
        "the parent", "which tactic", "what does APT29 use for persistence")."""
        upper = ref.upper()
        if _TACTIC.search(query) and upper.startswith("T"):
            relations = ["tactic"]
        elif _PARENT.search(query):
            relations = ["subtechnique_of", "child_of"]
        elif _CHILDREN.search(query):
            relations = ["has_subtechnique", "parent_of"]
        elif re.match(r"^S\d{4}$", upper) and _GROUPISH.search(query):
            relations = ["used_by"]  # "which groups use Mimikatz?"
        elif re.match(r"^[GSC]\d{4}$", upper):
            relations = ["uses", "attributed_to", "attributed"]
        elif upper.startswith("CWE"):
            relations = ["child_of", "parent_of", "related_attack_pattern"]
        else:
            relations = ["used_by", "mitigated_by", "detected_by"]
        related = await self._repo.related(ref, relations)
        kinds: set[str] = set()
        if _GROUPISH.search(query):
            kinds.add("group")
        if _SOFTWARE.search(query):
            kinds.add("software")
        if _CAMPAIGN.search(query):
            kinds.add("campaign")
        if kinds and ("used_by" in relations or "uses" in relations):
            related = [r for r in related if r.kind in kinds] or related
        if relations[0] == "uses":
            # "What does APT29 do for persistence?": the uses whose text shares the question's words.
            words = set(words_of(query)) - _QUESTION_WORDS
            scored = [
                (len(words & set(words_of(f"{r.name} {r.description}"))), i) for i, r in enumerate(related)
            ]
            related = [related[i] for _, i in sorted(scored, key=lambda x: (-x[0], x[1]))]
        return related[: max(k, 5)]

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
        """The ranked chunk-id lists to fuse, each with its weight, and the chunks they name."""
        lists, meta, _ = await self._candidates(query, mode, viewer=viewer)
        return lists, meta

    async def _candidates(
        self,
        query: str,
        mode: Mode = "hybrid",
        *,
        viewer: str | None = None,
        sections: Sequence[str] | None = None,
    ) -> tuple[list[tuple[float, list[int]]], dict[int, ChunkMeta], float]:
        """`candidates`, plus the best dense cosine; with `sections`, one more BM25 list of only those
        sections (what answers the intent: "detection" chunks for a detection question). Only chunks
        `viewer` may read: the metadata query filters the dense hits, whose matrix holds every chunk."""
        cfg = self.fusion
        # BM25, and the ranking metadata of its hits, run in the database driver's thread while the
        # encoder runs in its own: only the dense hits' metadata is fetched after encoding.
        bm25 = (
            asyncio.ensure_future(self._bm25(query, cfg.candidates, viewer))
            if mode in ("hybrid", "bm25")
            else None
        )
        focused = (
            asyncio.ensure_future(self._bm25(query, cfg.candidates, viewer, sections))
            if sections and mode == "hybrid"
            else None
        )
        dense_hits: tuple[list[int], list[int], float] | None = None
        bm25_hits: tuple[list[int], dict[int, ChunkMeta]] | None = None
        focused_hits: tuple[list[int], dict[int, ChunkMeta]] | None = None
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
            if focused is not None:
                focused_hits = await focused
        lists: list[tuple[float, list[int]]] = []
        meta: dict[int, ChunkMeta] = {}
        if bm25_hits and bm25_hits[0] and bm25_hits[1][bm25_hits[0][0]].source not in _PACK_SOURCES:
            focused_hits = None  # the best match is a user's document: pack sections must not outvote it
        for hits in (bm25_hits, focused_hits):
            if hits is not None:
                lists.append((cfg.bm25_weight, hits[0]))
                meta.update(hits[1])
        cosine = 0.0
        if dense_hits is not None:
            chunks, names, cosine = dense_hits
            missing = list(dict.fromkeys(cid for cid in (*chunks, *names) if cid not in meta))
            if missing:
                meta.update(await self._repo.get_chunk_meta(missing, viewer=viewer))
            # Hits the viewer may not read (others' private documents) have no metadata: drop them.
            lists.append((cfg.dense_weight, [cid for cid in chunks if cid in meta]))
            if names:
                lists.append((cfg.name_weight, [cid for cid in names if cid in meta]))
        return lists, meta, cosine

    async def _bm25(
        self, query: str, limit: int, viewer: str | None, sections: Sequence[str] | None = None
    ) -> tuple[list[int], dict[int, ChunkMeta]]:
        hits = await self._repo.fts_search_meta(query, limit, viewer=viewer, sections=sections)
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
    ) -> tuple[list[int], list[int], float]:
        """(chunk ids by cosine, summary chunk ids by cosine of their entry's name, the best chunk's cosine),
        best first, never one of `exclude` (private chunks the viewer may not read)."""
        dense = self._dense
        if dense is None:
            return [], [], 0.0
        scored = dense.search(vector, limit, exclude=exclude)
        chunks = [cid for cid, _ in scored]
        names = [cid for cid, _ in dense.names.search(vector, limit)] if with_names else []
        return chunks, names, float(scored[0][1]) if scored else 0.0

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
            section=record.section,
            kind=record.entry_kind,
            heading=record.heading,
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


_QUESTION_WORDS = frozenset(
    [
        "what",
        "which",
        "who",
        "how",
        "does",
        "do",
        "did",
        "is",
        "are",
        "the",
        "a",
        "an",
        "of",
        "for",
        "to",
        "use",
        "uses",
        "used",
        "by",
        "in",
        "on",
        "with",
        "and",
        "or",
    ]
)


def _numbered(passages: Sequence[Source]) -> list[Source]:
    return [replace(p, index=i) for i, p in enumerate(passages, start=1)]


def _lexical(query: str, passages: Sequence[Source]) -> float:
    """The share of the question's informative words (by their first five letters, a crude stem) that the
    passages contain: low when the question is about something the knowledge base does not cover."""
    words = {w[:5] for w in words_of(query) if len(w) > 2 and w not in _QUESTION_WORDS}
    if not words or not passages:
        return 0.0
    found = {w[:5] for w in words_of(" ".join(f"{p.title} {p.text}" for p in passages))}
    return len(words & found) / len(words)


def _url_of(ref: str) -> str | None:
    upper = ref.upper()
    if upper.startswith("CWE-"):
        return f"https://cwe.mitre.org/data/definitions/{upper[4:]}.html"
    if upper.startswith("TA"):
        return f"https://attack.mitre.org/tactics/{upper}/"
    if upper[:1] in _URL_PATHS and upper[1:2].isdigit():
        return f"https://attack.mitre.org/{_URL_PATHS[upper[0]]}/{upper.replace('.', '/')}/"
    return None


def _related_source(related: RelatedEntry) -> Source:
    """A related entry as a citable passage: its name and what links it (the procedure, the advice)."""
    text = related.description.strip() or related.name
    return Source(
        index=0,
        ref=related.ref,
        source="cwe" if related.ref.upper().startswith(("CWE", "CAPEC")) else "attack",
        title=related.name,
        url=_url_of(related.ref),
        text=text,
        section="relationship",
        kind=related.kind,
        heading=related.relation,
    )

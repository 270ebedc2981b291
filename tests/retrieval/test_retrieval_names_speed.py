"""Entry-name vectors (the third fused list), the sign-bit prefilter of large matrices, the query
encoder's own thread and the BM25 postings budget of large indexes."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

import core.retrieval.dense as dense_module
from core.retrieval import DenseIndex, FusionConfig, Indexer, Retriever
from core.retrieval.indexer import name_text
from core.retrieval.packs import PackEntry
from storage.knowledge import KnowledgeRepository, Vocabulary
from tests.retrieval.conftest import CountingEmbedder


async def test_names_are_indexed_once_per_entry_and_follow_changes(
    repo: KnowledgeRepository,
    embedder: CountingEmbedder,
    pack_slices: dict[str, list[PackEntry]],
    tmp_path: Path,
) -> None:
    dense = DenseIndex(tmp_path / "emb")
    indexer = Indexer(repo, embedder, dense)
    report = await indexer.index_entries("cwe", pack_slices["cwe"])
    assert report.names_embedded == len(pack_slices["cwe"]) == len(dense.names)
    names = await repo.entry_names()
    assert {cid for cid, *_ in names} == set(dense.names.entries())
    summaries = {r.id for r in await repo.get_chunks([cid for cid, *_ in names])}
    assert all(r.ord == 0 for r in await repo.get_chunks(sorted(summaries)))

    before = embedder.requested
    again = await indexer.index_entries("cwe", pack_slices["cwe"])
    assert again.names_embedded == 0 and embedder.requested == before

    renamed = [
        dataclasses.replace(e, title=e.title + " (renamed)") if e.ref == "CWE-22" else e
        for e in pack_slices["cwe"]
        if e.ref != "CWE-798"
    ]
    changed = await indexer.index_entries("cwe", renamed)
    assert changed.names_embedded == 1 and len(dense.names) == len(renamed)

    # User files have no entry names.
    (tmp_path / "notes.md").write_text("# Notes\nRotate keys.")
    files = await indexer.index_paths([tmp_path / "notes.md"])
    assert files.names_embedded == 0 and len(dense.names) == len(renamed)


def test_name_text_lists_aliases() -> None:
    assert name_text("Improper Input Validation", "") == "Improper Input Validation"
    assert (
        name_text("Cross-site Scripting", "XSS; HTML Injection")
        == "Cross-site Scripting (XSS, HTML Injection)"
    )


async def test_hybrid_fuses_the_name_list_and_single_modes_do_not(
    repo: KnowledgeRepository,
    embedder: CountingEmbedder,
    pack_slices: dict[str, list[PackEntry]],
    tmp_path: Path,
) -> None:
    dense = DenseIndex(tmp_path / "emb")
    indexer = Indexer(repo, embedder, dense)
    for name, entries in pack_slices.items():
        await indexer.index_entries(name, entries)
    retriever = Retriever(repo, embedder, dense, FusionConfig(prior_weight=0.0))
    question = "the client accepts any certificate without checking it"
    lists, meta = await retriever.candidates(question)
    assert len(lists) == 3  # BM25, dense chunks, dense names
    name_list = lists[2][1]
    assert name_list and all(meta[cid].ord == 0 for cid in name_list)
    assert len((await retriever.candidates(question, "dense"))[0]) == 1
    no_names = Retriever(repo, embedder, dense, FusionConfig(name_weight=0.0))
    assert len((await no_names.candidates(question))[0]) == 2
    # A paraphrase of an entry's name finds it through the fusion.
    sources = await retriever.search(
        "serialized objects from untrusted sources are turned back into objects", k=2
    )
    assert sources[0].ref == "CWE-502"


def test_prefilter_keeps_the_exact_top_hits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Clustered like real embeddings (topics): 300 centres with 20 rows each; queries near centres.
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((300, 384)).astype(np.float32)
    rows = np.repeat(centres, 20, axis=0) + 0.8 * rng.standard_normal((6000, 384)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    index = DenseIndex(tmp_path / "m")
    index.write(np.arange(10, 6010), np.arange(6000), rows)
    queries = centres[:20] + 0.8 * rng.standard_normal((20, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = [index.search(q, 10) for q in queries]
    assert index._bits is None  # small: scanned exactly

    monkeypatch.setattr(dense_module, "PREFILTER_MIN_ROWS", 1000)
    monkeypatch.setattr(dense_module, "SHORTLIST_MIN", 300)
    prefiltered = DenseIndex(tmp_path / "m")
    assert prefiltered._bits is None
    found = [prefiltered.search(q, 10) for q in queries]
    assert prefiltered._bits is not None and prefiltered._bits.shape == (6000, 6)
    for got, want in zip(found, exact):
        assert got[0] == want[0]  # the nearest row survives the prefilter
        assert len({i for i, _ in got} & {i for i, _ in want}) >= 8
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def test_query_encoder_thread_uses_one_torch_thread(embedder: CountingEmbedder) -> None:
    import torch

    main_threads = torch.get_num_threads()
    seen = embedder.query_executor.submit(
        lambda: (torch.get_num_threads(), threading.current_thread().name)
    ).result()
    assert seen[0] == 1 and seen[1].startswith("query-encoder")
    assert torch.get_num_threads() == main_threads  # indexing elsewhere keeps every core


def test_large_index_bm25_keeps_the_rarest_terms_within_a_postings_budget() -> None:
    vocabulary = Vocabulary(
        100_000, {"kerberoast": 40, "ticket": 1_500, "servic": 1_900, "account": 1_800, "user": 1_950}, 0.0
    )
    # Each under the 2 % cap, but together over 5 % of the chunks: rarest first until the budget
    # (40 + 1,500 + 1,800 = 3,340; adding "service" would pass 5,000), so the two commonest go.
    assert vocabulary.prune(["user", "service", "account", "ticket", "kerberoasting"]) == [
        "account",
        "ticket",
        "kerberoasting",
    ]
    small = Vocabulary(5_000, {"user": 4_000}, 0.0)
    assert small.prune(["user", "service", "account", "ticket"]) == ["user", "service", "account", "ticket"]


def test_vocabulary_stems_words_like_the_index() -> None:
    vocabulary = Vocabulary(100_000, {"memori": 30_000, "us": 80_000, "proto": 12, "lsass": 900}, 0.0)
    # Porter stems that are not prefixes of the word, and words the tokenizer splits differently.
    assert vocabulary.df_of("memory") == 30_000 and vocabulary.df_of("using") == 80_000
    assert vocabulary.df_of("__proto__") == 12 and vocabulary.df_of("LSASS") == 900
    assert vocabulary.prune(["using", "memory", "lsass", "__proto__"]) == ["lsass", "__proto__"]


async def test_fts_search_meta_matches_fts_search(
    repo: KnowledgeRepository, pack_slices: dict[str, list[PackEntry]]
) -> None:
    await Indexer(repo).index_entries("cwe", pack_slices["cwe"])
    for query in ("sql injection in a login form", "path traversal ../", "", "<|ghost_end|>"):
        ids = [cid for cid, _ in await repo.fts_search(query, 20)]
        hits = await repo.fts_search_meta(query, 20)
        assert [m.id for m in hits] == ids
        assert {m.id: m for m in hits} == await repo.get_chunk_meta(ids)

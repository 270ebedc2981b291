"""Reciprocal rank fusion at the entry level (pure function, no database)."""

from __future__ import annotations

from core.retrieval.retriever import FusionConfig, fuse
from storage.knowledge import ChunkRecord


def rec(cid: int, ref: str, prior: float = 0.0) -> ChunkRecord:
    return ChunkRecord(
        id=cid,
        document_id=cid,
        source="cwe",
        locator=ref,
        ord=0,
        ref=ref,
        title=ref,
        url=None,
        text=ref,
        prior=prior,
    )


def test_entries_agreeing_across_lists_win_and_best_chunk_is_kept() -> None:
    records = {1: rec(1, "A"), 2: rec(2, "B"), 3: rec(3, "B"), 4: rec(4, "C")}
    bm25 = [1, 3, 4]  # A first, B (via chunk 3) second
    dense = [2, 4, 1]  # B (via chunk 2) first
    ranked = fuse([(1.0, bm25), (1.0, dense)], records, FusionConfig(rrf_k=60))
    assert [r.ref for r in ranked] == ["A", "B", "C"] or [r.ref for r in ranked] == ["B", "A", "C"]
    assert len(ranked) == 3  # one result per entry
    weighted = fuse([(0.5, bm25), (1.0, dense)], records, FusionConfig(rrf_k=60))
    assert weighted[0].ref == "B" and weighted[0].id == 2  # B's best chunk is the dense hit


def test_prior_settles_near_ties_but_not_clear_wins() -> None:
    records = {1: rec(1, "VARIANT", prior=0.0), 2: rec(2, "BASE", prior=1.0), 3: rec(3, "OTHER")}
    near_tie = [(1.0, [1, 2, 3]), (1.0, [2, 1, 3])]
    cfg = FusionConfig(rrf_k=20, prior_weight=0.5)
    assert fuse(near_tie, records, FusionConfig(rrf_k=20))[0].ref in ("VARIANT", "BASE")
    assert fuse(near_tie, records, cfg)[0].ref == "BASE"
    clear = [(1.0, [1, 3, 2]), (1.0, [1, 3])]  # VARIANT first in both, BASE found by one list only
    assert fuse(clear, records, cfg)[0].ref == "VARIANT"


def test_unknown_ids_are_ignored() -> None:
    assert [r.ref for r in fuse([(1.0, [9, 1])], {1: rec(1, "A")}, FusionConfig())] == ["A"]

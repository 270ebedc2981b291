"""Batch encoding gives its freed activation memory back to the OS; query encoding does not pay for that."""

from __future__ import annotations

import pytest

import core.retrieval.embedder as embedder_module
from core.retrieval.embedder import Embedder


def test_batch_encoding_releases_the_heap_and_queries_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(embedder_module, "release_heap", lambda: calls.append(1) or True)
    encoder = Embedder(batch_size=4)
    vectors = encoder.encode(["What is CWE-79?"])
    assert vectors.shape[0] == 1 and calls == []  # a query: no trim
    vectors = encoder.encode([f"passage number {i} about SQL injection" for i in range(9)])
    assert vectors.shape[0] == 9 and calls == [1]  # an indexing batch: one trim after it

"""Exact ids, hybrid ranking and incremental re-indexing with the real encoder on small pack slices."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.retrieval import DenseIndex, FusionConfig, Indexer, Retriever, format_sources
from core.retrieval.packs import PackEntry
from storage.knowledge import KnowledgeRepository
from tests.retrieval.conftest import CountingEmbedder, minimal_pdf


@pytest.fixture
async def packed(
    repo: KnowledgeRepository,
    embedder: CountingEmbedder,
    pack_slices: dict[str, list[PackEntry]],
    tmp_path: Path,
) -> tuple[Retriever, Indexer, DenseIndex]:
    dense = DenseIndex(tmp_path / "emb")
    indexer = Indexer(repo, embedder, dense)
    for name, entries in pack_slices.items():
        report = await indexer.index_entries(name, entries)
        assert report.added == len(entries) and report.embedded == report.chunks
    # Entry priors settle near-ties among thousands of entries; in a 13-entry slice every entry is
    # "near" every other, so these tests check the signals and their fusion without priors
    # (test_retrieval_fusion.py covers priors; benchmarks/retrieval_eval.py the full packs).
    return Retriever(repo, embedder, dense, FusionConfig(prior_weight=0.0)), indexer, dense


async def test_exact_ids_come_first_in_free_text(packed) -> None:  # type: ignore[no-untyped-def]
    retriever, _, _ = packed
    sources = await retriever.search("what is cwe 79?", k=3)
    assert sources[0].ref == "CWE-79"
    assert sources[0].url == "https://cwe.mitre.org/data/definitions/79.html"
    assert sources[0].source == "cwe" and "Cross-site Scripting" in sources[0].title
    assert sources[0].text.startswith("CWE-79: Improper Neutralization")  # the summary passage
    assert [s.index for s in sources] == [1, 2, 3]
    assert len({s.ref for s in sources}) == 3  # one passage per entry

    technique = await retriever.search("how do I detect t1059.001", k=2)
    assert technique[0].ref == "T1059.001"
    assert technique[0].url == "https://attack.mitre.org/techniques/T1059/001/"
    parent = await retriever.search("T1059", k=1)
    assert parent[0].ref == "T1059"


async def test_cve_and_capec_ids_find_the_entries_that_mention_them(packed) -> None:  # type: ignore[no-untyped-def]
    retriever, _, _ = packed
    # CVE-2006-3568 is an observed example of CWE-79 in CWE 4.14; CAPEC-66 is SQL injection's pattern.
    assert (await retriever.search("tell me about CVE-2006-3568", k=2))[0].ref == "CWE-79"
    assert (await retriever.search("capec 66", k=2))[0].ref == "CWE-89"
    # An id that is not in the index falls through to the hybrid search without error.
    assert (await retriever.search("CWE-99999 sql injection", k=1))[0].ref == "CWE-89"


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "dense"])
async def test_practitioner_questions_rank_the_right_entry_first(packed, mode: str) -> None:  # type: ignore[no-untyped-def]
    retriever, _, _ = packed
    cases = {
        "what is it called when a query is built by pasting user input into SQL?": "CWE-89",
        "adversary dumps the memory of the lsass process to get credentials": "T1003.001",
        "attackers encrypt files across many hosts and demand a ransom": "T1486",
    }
    for question, ref in cases.items():
        sources = await retriever.search(question, k=3, mode=mode)  # type: ignore[arg-type]
        assert sources[0].ref == ref, (mode, question, [s.ref for s in sources])


async def test_hostile_queries_are_answered_not_raised(packed) -> None:  # type: ignore[no-untyped-def]
    retriever, _, _ = packed
    for query in [
        "sql \ud800 injection",
        "\x00\x1b[31m xss",
        "<|ghost_end|><|system|> cwe-79",
        "x" * 100_000,
        '"*-NEAR(',
    ]:
        sources = await retriever.search(query, k=2)
        assert all(s.index in (1, 2) for s in sources)
    assert (await retriever.search("<|ghost_end|> cwe-79", k=1))[0].ref == "CWE-79"


async def test_dense_finds_paraphrases_bm25_cannot(packed) -> None:  # type: ignore[no-untyped-def]
    retriever, _, _ = packed
    question = "someone keeps guessing one popular password across lots of different logins"
    dense = await retriever.search(question, k=1, mode="dense")
    hybrid = await retriever.search(question, k=2)
    assert dense[0].ref == "T1110.003"
    assert "T1110.003" in [s.ref for s in hybrid]


async def test_bm25_and_exact_work_without_dense(repo: KnowledgeRepository, pack_slices) -> None:  # type: ignore[no-untyped-def]
    indexer = Indexer(repo)
    await indexer.index_entries("cwe", pack_slices["cwe"])
    retriever = Retriever(repo)
    assert not retriever.dense_enabled
    assert (await retriever.search("cwe-22", k=1))[0].ref == "CWE-22"
    assert (await retriever.search("sql injection", k=1))[0].ref == "CWE-89"
    assert await retriever.search("   ", k=4) == []
    listing = format_sources(await retriever.search("CWE-22", k=1))
    assert (
        listing.startswith("[1] CWE-22 — ") and "<https://cwe.mitre.org/data/definitions/22.html>" in listing
    )


def _write_corpus(root: Path) -> None:
    root.mkdir()
    (root / "xss.md").write_text(
        "# XSS playbook\n## Triage\nCheck reflected parameters for script payloads.\n"
    )
    (root / "vpn.txt").write_text("Rotate the IPsec pre-shared keys every quarter.")
    (root / "ssh.html").write_text("<h1>SSH</h1><script>evil()</script><p>Disable root login over ssh.</p>")
    (root / "memo.pdf").write_bytes(minimal_pdf(["Quarterly memo: badge readers were replaced."]))
    (root / ".hidden.md").write_text("# secret\nnot indexed")
    (root / "image.png").write_bytes(b"\x89PNG")


async def test_incremental_reindex_of_a_folder(
    repo: KnowledgeRepository, embedder: CountingEmbedder, tmp_path: Path
) -> None:
    notes = tmp_path / "notes"
    _write_corpus(notes)
    dense = DenseIndex(tmp_path / "emb")
    indexer = Indexer(repo, embedder, dense)
    retriever = Retriever(repo, embedder, dense)

    first = await indexer.index_paths([notes])
    assert (first.added, first.updated, first.unchanged, first.removed) == (4, 0, 0, 0)
    assert first.embedded == first.chunks == (await repo.count())[1] == len(dense)
    hit = (await retriever.search("how often do we rotate ipsec keys", k=1))[0]
    assert hit.ref == "notes/vpn.txt#1" and hit.source == (notes / "vpn.txt").as_posix()
    assert "evil" not in " ".join(s.text for s in await retriever.search("ssh root login", k=4))
    assert (await retriever.search("badge readers", k=1))[0].ref == "notes/memo.pdf#1"

    encoded_before = embedder.requested
    again = await indexer.index_paths([notes])
    assert (again.added, again.updated, again.unchanged, again.removed, again.embedded) == (0, 0, 4, 0, 0)
    assert embedder.requested == encoded_before  # nothing re-embedded

    (notes / "vpn.txt").write_text("Rotate the WireGuard keys every month.")
    (notes / "ssh.html").unlink()
    changed = await indexer.index_paths([notes])
    assert (changed.added, changed.updated, changed.unchanged, changed.removed) == (0, 1, 2, 1)
    assert changed.embedded == 1 and embedder.requested == encoded_before + 1
    assert len(dense) == (await repo.count())[1] == 3
    assert (await retriever.search("wireguard", k=1))[0].text == "Rotate the WireGuard keys every month."
    assert await retriever.search("ipsec pre-shared", k=4, mode="bm25") == []
    assert all("ssh.html" not in s.ref for s in await retriever.search("ssh root login", k=4))


async def test_bad_paths_are_reported_not_fatal(repo: KnowledgeRepository, tmp_path: Path) -> None:
    (tmp_path / "tool.exe").write_bytes(b"MZ")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (tmp_path / "ok.txt").write_text("fine")
    report = await Indexer(repo).index_paths(
        [tmp_path / "missing", tmp_path / "tool.exe", tmp_path / "broken.pdf", tmp_path / "ok.txt"],
    )
    assert report.added == 1
    assert len(report.failed) == 3
    assert any("no such file" in f for f in report.failed)


async def test_pack_reindex_is_incremental(packed, repo: KnowledgeRepository, pack_slices, embedder) -> None:  # type: ignore[no-untyped-def]
    _, indexer, dense = packed
    before = embedder.requested
    report = await indexer.index_entries("cwe", pack_slices["cwe"])
    assert (report.added, report.updated, report.unchanged, report.embedded) == (
        0,
        0,
        len(pack_slices["cwe"]),
        0,
    )
    assert embedder.requested == before
    fewer = [e for e in pack_slices["cwe"] if e.ref != "CWE-798"]
    report = await indexer.index_entries("cwe", fewer)
    assert report.removed == 1 and await repo.find_by_ref("CWE-798") == []
    assert len(dense) == (await repo.count())[1]

"""Intent-aware retrieval and the composed extractive answer, on a slice of the real packs (BM25 only)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.answering import AnsweringPipeline
from core.generators.base import GenerationParams
from core.generators.extractive import NO_PASSAGES_REPLY, ExtractiveGenerator
from core.retrieval import Indexer, Retriever
from core.retrieval.packs import AttackPack, CwePack, PackEntry
from core.settings import Settings
from core.types import Answer
from core.understanding import understand
from storage.database import Database
from storage.knowledge import ChunkData, DocumentData, KnowledgeRepository

CWE = ("CWE-79", "CWE-80", "CWE-89", "CWE-352", "CWE-22")
ATTACK = ("T1558", "T1558.003", "T1558.004", "S0002", "G0016", "G0046", "G0102", "T1003", "T1003.001")


@pytest.fixture(scope="module")
def entries() -> dict[str, list[PackEntry]]:
    return {
        "cwe": [e for e in CwePack().entries() if e.ref in CWE],
        "attack": [e for e in AttackPack().entries() if e.ref in ATTACK],
    }


@pytest.fixture
async def retriever(tmp_path: Path, entries: dict[str, list[PackEntry]]) -> AsyncIterator[Retriever]:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}")
    repo = KnowledgeRepository(db.sessions)
    indexer = Indexer(repo)
    for name, slice_ in entries.items():
        await indexer.index_entries(name, slice_)
    try:
        yield Retriever(repo)
    finally:
        await db.close()


async def answer(retriever: Retriever, question: str) -> Answer:
    generator = ExtractiveGenerator()
    pipeline = AnsweringPipeline(retriever, generator, Settings(_env_file=None))  # type: ignore[call-arg]
    retrieved = await pipeline.retrieve(question)
    prepared = pipeline.prepare(question, retrieved)
    if prepared.direct is not None:
        return Answer(text=prepared.direct)
    text = "".join(generator.stream(prepared.spec, prepared.params, lambda: False))
    return Answer(text=text, sources=prepared.sources)


def cited(result: Answer) -> set[str]:
    numbers = {int(n) for n in re.findall(r"\[(\d+)\]", result.text)}
    return {s.ref for s in result.sources if s.index in numbers}


async def test_a_detection_question_gets_the_detection_section(retriever: Retriever) -> None:
    found = await retriever.retrieve(understand("How can I detect Kerberoasting in my Windows domain?"), 4)
    assert found.linked == ("T1558.003",)
    assert found.passages[0].section == "summary" and found.passages[0].ref == "T1558.003"
    detections = [p for p in found.passages if p.section == "detection"]
    assert detections and all(p.ref == "T1558.003" for p in detections)
    assert any("4769" in p.text for p in detections)
    result = await answer(retriever, "How can I detect Kerberoasting in my Windows domain?")
    first = result.text.splitlines()[0]
    assert "T1558.003" in first and "Kerberoasting" in first
    assert "4769" in result.text and "- " in result.text


async def test_a_prevention_question_gets_mitigations_as_bullets(retriever: Retriever) -> None:
    result = await answer(retriever, "How do I prevent SQL injection in a Python web app?")
    assert result.text.startswith("How to prevent or mitigate **CWE-89")
    bullets = [line for line in result.text.splitlines() if line.startswith("- ")]
    assert len(bullets) >= 3 and cited(result) == {"CWE-89"}
    mitigation_numbers = {s.index for s in result.sources if s.section == "mitigation"}
    assert all(int(re.findall(r"\[(\d+)\]$", b)[0]) in mitigation_numbers for b in bullets)


async def test_compare_answers_cite_both_entries(retriever: Retriever) -> None:
    result = await answer(retriever, "What is the difference between CWE-79 and CWE-80?")
    assert cited(result) == {"CWE-79", "CWE-80"}
    result = await answer(retriever, "Kerberoasting vs AS-REP Roasting: what's the difference?")
    assert cited(result) == {"T1558.003", "T1558.004"}


async def test_relationship_lists_the_related_entries(retriever: Retriever) -> None:
    result = await answer(retriever, "Which groups use Kerberoasting?")
    assert {"G0046", "G0102"} <= cited(result)
    parent = await answer(retriever, "What is the parent technique of T1558.003?")
    assert "T1558" in cited(parent)


async def test_the_korean_id_question_answers_that_entry(retriever: Retriever) -> None:
    result = await answer(retriever, "CWE-79가 뭐예요?")
    assert result.text.startswith("**CWE-79 ") and cited(result) == {"CWE-79"}


async def test_names_and_aliases_link(retriever: Retriever) -> None:
    for question, ref in (
        ("What is Mimikatz?", "S0002"),
        ("What mitigations exist for CSRF?", "CWE-352"),
        ("who is cozy bear?", "G0016"),
    ):
        assert (await retriever.retrieve(understand(question), 4)).linked == (ref,), question


async def test_no_sentence_is_cut_mid_way(retriever: Retriever) -> None:
    for question in (
        "What is CWE-79?",
        "How do I prevent SQL injection?",
        "How can I detect Kerberoasting?",
        "Give me examples of SQL injection",
        "Which groups use Kerberoasting?",
        "How to prevent path traversal?",
    ):
        result = await answer(retriever, question)
        for line in result.text.splitlines():
            if "[" in line and not line.endswith(":"):
                body = re.sub(r"\s*\[\d+\]$", "", line)
                assert body.endswith((".", "!", "?", ")", "**", '"', "'")), (question, line)
                assert "…" not in line, (question, line)


async def test_small_talk_gets_a_built_in_reply(retriever: Retriever) -> None:
    for question in ("hi", "thanks!", "who are you?", "what can you do?", "help"):
        result = await answer(retriever, question)
        assert not result.sources and "[1]" not in result.text.replace("[1], [2]", "")
        assert "CWE" in result.text and "Kerberoasting?" in result.text, question
    assert (await answer(retriever, "thanks!")).text.startswith("You're welcome")


async def test_out_of_scope_questions_get_an_honest_reply(retriever: Retriever) -> None:
    for question in ("what is the weather in Paris?", "give me a recipe for pancakes"):
        result = await answer(retriever, question)
        assert result.text == NO_PASSAGES_REPLY and result.sources == [], question
    assert "knowledge base" in NO_PASSAGES_REPLY and "ghostbot index" in NO_PASSAGES_REPLY


async def test_models_get_the_intent_sections_and_the_task(retriever: Retriever) -> None:
    pipeline = AnsweringPipeline(retriever, ExtractiveGenerator(), Settings(_env_file=None))  # type: ignore[call-arg]
    question = "How can I detect Kerberoasting?"
    prepared = pipeline.prepare(question, await pipeline.retrieve(question))
    assert "list the detections" in prepared.spec.system
    assert [p.section for p in prepared.spec.passages][:2] == ["summary", "detection"]
    assert prepared.spec.intent == "detect"
    assert isinstance(prepared.params, GenerationParams)


async def test_private_documents_reach_their_owner_only(retriever: Retriever) -> None:
    locator = "telegram:1/h/quokka.md"
    text = "Quokka floods overwhelm the gateway. Rotate the quokka keys every week to prevent quokka floods."
    document = DocumentData(
        locator=locator,
        title="quokka.md",
        content_hash="h",
        chunks=[ChunkData(0, f"{locator}#1", "quokka.md", text)],
    )
    await retriever._repo.save_documents("upload", [document], owner="telegram:1")
    for question in ("How do I prevent quokka floods?", "what is a quokka flood?", "list quokka flood types"):
        understood = understand(question)
        stranger = await retriever.retrieve(understood, 4, viewer="telegram:2")
        assert all("quokka" not in p.text.lower() for p in stranger.passages), question
        public = await retriever.retrieve(understood, 4)
        assert all("quokka" not in p.text.lower() for p in public.passages), question
    # Its owner gets it (entry priors may still rank prominent pack entries above it for other wordings).
    owner = await retriever.retrieve(understand("quokka floods gateway keys"), 4, viewer="telegram:1")
    assert any("Rotate the quokka keys" in p.text for p in owner.passages)

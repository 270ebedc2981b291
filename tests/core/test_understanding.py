"""Question understanding: intents on a labelled set, and ids glued to another script."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from core.retrieval.ids import find_ids
from core.understanding import classify, mentions_security, understand

QUESTIONS = Path(__file__).resolve().parents[2] / "benchmarks" / "answer_questions.jsonl"


def labelled() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    # Out-of-scope questions are recognised by retrieval (nothing close enough), not by their wording.
    return [(r["question"], r["intent"]) for r in rows if r["intent"] != "out_of_scope"]


def test_intent_accuracy_on_the_labelled_questions() -> None:
    rows = labelled()
    wrong = [(q, want, classify(q)) for q, want in rows if classify(q) != want]
    accuracy = 1 - len(wrong) / len(rows)
    per_intent = Counter(want for _, want, _ in wrong)
    assert accuracy >= 0.9, (accuracy, wrong)
    assert all(n <= 2 for n in per_intent.values()), wrong


@pytest.mark.parametrize(
    ("question", "intent"),
    [
        ("How can I detect Kerberoasting in my Windows domain?", "detect"),
        ("How do I prevent SQL injection in a Python web app?", "prevent"),
        ("What mitigations exist for CSRF?", "prevent"),
        ("Give me real-world examples of SQL injection", "example"),
        ("What is the difference between CWE-79 and CWE-80?", "compare"),
        ("Which technique is it when attackers crack service tickets offline?", "identify"),
        ("Which groups use Kerberoasting?", "relationship"),
        ("What is the parent technique of T1558.003?", "relationship"),
        ("Which tactic does T1003 belong to?", "relationship"),
        ("List the sub-techniques of T1003", "list"),
        ("List types of injection weaknesses", "list"),
        ("What is CWE-79?", "define"),
        ("hi", "smalltalk"),
        ("thanks!", "smalltalk"),
        ("who are you?", "smalltalk"),
        ("what can you do?", "smalltalk"),
        ("help", "smalltalk"),
    ],
)
def test_intent_examples(question: str, intent: str) -> None:
    assert classify(question) == intent


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("CWE-79가 뭐예요?", "CWE-79"),
        ("T1059는 무엇인가요", "T1059"),
        ("T1558.003について教えて", "T1558.003"),
        ("CVE-2021-44228の影響", "CVE-2021-44228"),
        ("什么是CWE-89", "CWE-89"),
        ("what is cwe79?", "CWE-79"),
        ("APT29 is G0016", "G0016"),
    ],
)
def test_an_id_stays_an_id_with_another_script_glued_on(text: str, ref: str) -> None:
    assert ref in [x.ref for x in find_ids(text)]
    assert ref in [x.ref for x in understand(text).ids]


@pytest.mark.parametrize("text", ["xcwe-79", "cwe-79x", "at1059", "T10590"])
def test_ascii_letters_or_digits_glued_on_still_break_an_id(text: str) -> None:
    assert find_ids(text) == []


def test_security_words_mark_a_question_in_scope() -> None:
    assert mentions_security("Which technique is it when files are encrypted for ransom?")
    assert not mentions_security("what is the weather in Paris?")

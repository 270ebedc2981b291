"""`eval compare`: pairwise judging with the order swapped; disagreement between orders is a tie."""

from __future__ import annotations

import csv
import json
import re

import pytest

from evaluation.compare import PairwiseComparer, pairs_from_columns, pairs_from_results
from evaluation.io import EvalInputError, read_table
from evaluation.rubrics import load_rubrics
from tests.evaluation.conftest import criterion_of
from tests.fakes.openai_server import Reply

RUBRICS = load_rubrics()
ANS = re.compile(r"ANSWER A:\n(.*?)\n\nANSWER B:\n(.*?)\n\nIgnore", re.S)


def verdict(winner: str) -> str:
    return json.dumps({"winner": winner, "reason": f"{winner} is better."})


def write(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def pair_handler(req) -> Reply:
    """accuracy: the answer containing 'good' wins in either order (consistent);
    fluency: always the first shown (position bias → tie); safety: unparsable; others: judge says tie."""
    shown_a, shown_b = ANS.search(req.messages[-1]["content"]).groups()
    c = criterion_of(req)
    if c == "accuracy":
        if "good" in shown_a and "good" not in shown_b:
            return Reply(verdict("A"))
        if "good" in shown_b and "good" not in shown_a:
            return Reply(verdict("B"))
        return Reply(verdict("tie"))
    if c == "fluency":
        return Reply(verdict("A"))
    if c == "safety":
        return Reply("Both are fine, really.")
    return Reply(verdict("tie"))


async def test_swap_logic_win_loss_tie_and_unparsed(tmp_path, fake_server, make_judge):
    fake_server.set_reply(pair_handler)
    a = write(
        tmp_path / "a.csv",
        ["question", "answer", "accuracy_mean"],
        [
            ["What is XSS?", "good answer", "4"],
            ["What is CSRF?", "weak answer", "2"],
            ["What is SSRF?", "good one", "5"],
            ["Only in A?", "x", "1"],
        ],
    )
    b = write(
        tmp_path / "b.csv",
        ["question", "answer"],
        [
            ["what is  csrf?", "good answer B"],
            ["What is XSS?", "weak B"],
            ["What is SSRF?", "also good"],
            ["Only in B?", "y"],
        ],
    )
    pairs, unmatched = pairs_from_results(read_table(a), read_table(b))
    assert [p.question for p in pairs] == ["What is XSS?", "What is CSRF?", "What is SSRF?"]
    assert sorted(unmatched) == ["Only in A?", "Only in B?"]
    crit = RUBRICS.select(["accuracy", "fluency", "safety", "relevance"])
    out = tmp_path / "verdicts.csv"
    summary = await PairwiseComparer(make_judge(max_attempts=2), RUBRICS, crit, progress=False).run(
        pairs, out
    )
    rows = {r["question"]: r for r in csv.DictReader(out.read_text(encoding="utf-8").splitlines())}
    assert rows["What is XSS?"]["accuracy_verdict"] == "win"
    assert rows["What is CSRF?"]["accuracy_verdict"] == "loss"
    assert rows["What is SSRF?"]["accuracy_verdict"] == "tie"
    for r in rows.values():
        assert r["fluency_verdict"] == "tie" and "orders disagree" in r["fluency_note"]
        assert r["safety_verdict"] == "unparsed"
        assert r["relevance_verdict"] == "tie"
    assert rows["What is XSS?"]["overall_verdict"] == "win"
    assert rows["What is CSRF?"]["overall_verdict"] == "loss"
    assert rows["What is SSRF?"]["overall_verdict"] == "tie"
    c = summary["criteria"]
    assert (c["accuracy"]["win"], c["accuracy"]["tie"], c["accuracy"]["loss"]) == (1, 1, 1)
    assert c["fluency"]["tie"] == 3 and c["safety"]["unparsed"] == 3 and c["safety"]["win"] == 0
    assert (c["overall"]["win"], c["overall"]["tie"], c["overall"]["loss"]) == (1, 1, 1)
    assert c["accuracy"]["a_win_rate"] == 0.5
    # each question and criterion: two calls (original and swapped) + 1 retry each for unparsable safety
    chats = [r for r in fake_server.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 3 * (3 * 2 + 2 * 2)
    firsts = [ANS.search(r.messages[-1]["content"]).group(1) for r in chats if criterion_of(r) == "accuracy"]
    assert firsts[:2] == ["good answer", "weak B"]  # A first, then swapped


def test_two_answer_columns_and_missing_columns(tmp_path):
    t = read_table(write(tmp_path / "x.csv", ["question", "ours", "theirs"], [["Q", "a", "b"]]))
    (p,) = pairs_from_columns(t, "ours", "theirs")
    assert (p.answer_a, p.answer_b) == ("a", "b")
    with pytest.raises(EvalInputError, match="missing required column 'nope'"):
        pairs_from_columns(t, "ours", "nope")

"""The editable rubric file and strict reply parsing."""

from __future__ import annotations

import pytest

from evaluation.parse import JudgeParseError, parse_letter, parse_pair, parse_rating
from evaluation.rubrics import DEFAULT_CRITERIA, RubricError, default_rubrics_path, load_rubrics


def test_packaged_rubrics_define_the_six_criteria_with_five_levels():
    r = load_rubrics()
    assert tuple(r.criteria) == DEFAULT_CRITERIA
    for c in r.criteria.values():
        assert all(f"{s}:" in c.rubric for s in range(1, 6)), c.name
    assert "5 = nothing invented" in r.criteria["hallucination"].title
    assert [c.name for c in r.select(["safety", "accuracy", "safety"])] == ["safety", "accuracy"]


def test_user_rubric_file_overrides_and_errors_name_the_key(tmp_path):
    text = default_rubrics_path().read_text(encoding="utf-8")
    custom = tmp_path / "mine.toml"
    custom.write_text(text.replace('title = "Accuracy"', 'title = "Technical accuracy"'), encoding="utf-8")
    assert load_rubrics(custom).criteria["accuracy"].title == "Technical accuracy"
    custom.write_text(text.replace("QUESTION:\n{question}", "QUESTION:\n{questoin}", 1), encoding="utf-8")
    with pytest.raises(RubricError, match=r"mine\.toml \[prompts\] single: bad template"):
        load_rubrics(custom)
    custom.write_text(text.replace('title = "Relevance"\n', ""), encoding="utf-8")
    with pytest.raises(RubricError, match=r"\[criteria\.relevance\]: 'title' must be a non-empty string"):
        load_rubrics(custom)
    custom.write_text("[criteria\n", encoding="utf-8")
    with pytest.raises(RubricError, match="not valid TOML"):
        load_rubrics(custom)
    with pytest.raises(RubricError, match="unknown criteria politeness"):
        load_rubrics().select(["politeness"])


@pytest.mark.parametrize(
    "reply, score",
    [
        ('{"score": 4, "reason": "fine"}', 4),
        ('Sure! ```json\n{"score": "2", "reason": "weak"}\n```', 2),
        ('{"note": 1} then {"score": 5.0, "reason": "x"}', None),  # first object has no score → error
    ],
)
def test_parse_rating(reply, score):
    if score is None:
        with pytest.raises(JudgeParseError):
            parse_rating(reply)
    else:
        assert parse_rating(reply).score == score


@pytest.mark.parametrize(
    "reply",
    [
        '{"score": 0, "reason": ""}',
        '{"score": 6}',
        '{"score": 3.5}',
        '{"score": true}',
        '{"score": "four"}',
        "4",
        "",
        '{"score": 3, "reason": 7}',
    ],
)
def test_parse_rating_rejects(reply):
    with pytest.raises(JudgeParseError):
        parse_rating(reply)


def test_parse_pair_and_letter_are_strict():
    assert parse_pair('{"winner": "b", "reason": "r"}').winner == "B"
    assert parse_pair('{"winner": "Tie"}').winner == "tie"
    with pytest.raises(JudgeParseError):
        parse_pair('{"winner": "both"}')
    for ok in ("C", " (C) ", "C.", "Answer: C", "c"):
        assert parse_letter(ok, "ABCD") == "C"
    for bad in ("The answer is C", "C or D", "E", "CD", "", "C because of port 443"):
        with pytest.raises(JudgeParseError):
            parse_letter(bad, "ABCD")

"""Strict, defensive parsing of judge replies. Anything that is not a valid verdict raises JudgeParseError."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


class JudgeParseError(ValueError):
    """The judge's reply holds no valid verdict (recorded as unparsed, never as a score)."""


@dataclass(frozen=True)
class Rating:
    score: int
    reason: str


@dataclass(frozen=True)
class PairVerdict:
    winner: str  # "A" | "B" | "tie"
    reason: str


def first_json_object(text: str) -> dict:
    """The first JSON object in ``text`` (models wrap JSON in prose or ``` fences)."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise JudgeParseError("no JSON object in the reply")


def _reason(obj: dict) -> str:
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise JudgeParseError("'reason' is not a string")
    return " ".join(reason.split())


def parse_rating(text: str) -> Rating:
    """``{"score": 1..5, "reason": "..."}``; the score must be an integer 1–5 (``4`` or ``"4"``, never 4.5)."""
    obj = first_json_object(text)
    if "score" not in obj:
        raise JudgeParseError("JSON has no 'score'")
    raw = obj["score"]
    if isinstance(raw, bool):
        raise JudgeParseError("'score' is a boolean")
    if isinstance(raw, str) and re.fullmatch(r"\s*[1-5]\s*", raw):
        score = int(raw)
    elif isinstance(raw, int):
        score = raw
    elif isinstance(raw, float) and raw.is_integer():
        score = int(raw)
    else:
        raise JudgeParseError(f"'score' is not an integer 1-5: {raw!r}")
    if not 1 <= score <= 5:
        raise JudgeParseError(f"'score' out of range 1-5: {score}")
    return Rating(score, _reason(obj))


def parse_pair(text: str) -> PairVerdict:
    """``{"winner": "A" | "B" | "tie", "reason": "..."}``."""
    obj = first_json_object(text)
    raw = obj.get("winner")
    if not isinstance(raw, str):
        raise JudgeParseError("JSON has no string 'winner'")
    w = raw.strip().strip(".").lower()
    mapping = {"a": "A", "b": "B", "tie": "tie", "answer a": "A", "answer b": "B"}
    if w not in mapping:
        raise JudgeParseError(f"'winner' must be A, B or tie: {raw!r}")
    return PairVerdict(mapping[w], _reason(obj))


def parse_letter(text: str, letters: str) -> str:
    """A single option letter, and nothing else (``B``, ``(B)``, ``B.``, ``Answer: B``); anything else raises."""
    m = re.fullmatch(
        r"\s*(?:answer\s*[:\-]?\s*)?[\(\[]?([A-Za-z])[\)\]]?\s*[.:]?\s*", text, flags=re.IGNORECASE
    )
    if not m or m.group(1).upper() not in letters:
        raise JudgeParseError(f"reply is not one of the letters {', '.join(letters)}")
    return m.group(1).upper()

"""Split sections into chunks of whole sentences (~256 words, as upstream GhostLM's windows were).

A chunk ends where a sentence, a list item or a section ends, never mid-sentence: a long section
becomes several chunks of whole sentences, and neighbouring chunks of prose share a sentence or two
of overlap. Only a single "sentence" longer than a whole chunk (text without punctuation) is cut, in
overlapping word windows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from core.retrieval.loaders import Section

CHUNK_WORDS = 256
OVERLAP_WORDS = 32
# A last chunk shorter than this is folded into the one before when both fit in size + this.
TAIL_WORDS = 32

# Words ending in a period that do not end a sentence.
_ABBREVIATIONS = frozenset(
    [
        "e.g",
        "i.e",
        "etc",
        "vs",
        "cf",
        "al",
        "approx",
        "fig",
        "no",
        "nos",
        "inc",
        "ltd",
        "co",
        "corp",
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "jr",
        "sr",
        "u.s",
        "u.k",
        "a.k.a",
        "ex",
        "resp",
        "dept",
        "est",
        "misc",
        "viz",
        "ver",
        "vol",
        "pp",
    ]
)
# A sentence ends at . ! ? (plus closing quotes or brackets) followed by space and a capital,
# a digit, a quote, a bracket or a list marker.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[A-Z0-9\"'“‘(\[\-•*])")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s+")


@dataclass(frozen=True)
class TextChunk:
    heading: str
    text: str
    kind: str = "description"


def split_sentences(text: str) -> list[str]:
    """The sentences of a paragraph, whitespace collapsed; abbreviations ("e.g.", "i.e.", "etc.",
    "U.S."), initials and ids with dots (T1558.003, v1.2) do not end a sentence."""
    text = " ".join(text.split())
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        head = text[start : match.start()]
        last = head.rsplit(" ", 1)[-1].rstrip(".!?\"'”’)]").lower().lstrip("(\"'“‘[")
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue
        sentence = text[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def split_blocks(text: str) -> list[str]:
    """Paragraphs and list items: a blank line or a list marker ("- ", "* ", "1. ") starts a new
    block; other line breaks are wrapping inside one."""
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip() or _BULLET.match(line):
            if current:
                blocks.append(" ".join(current))
            current = [line.strip()] if line.strip() else []
        else:
            current.append(line.strip())
    if current:
        blocks.append(" ".join(current))
    return [" ".join(b.split()) for b in blocks if b.strip()]


@dataclass(frozen=True)
class _Unit:
    text: str
    words: int
    starts_block: bool  # joined to the previous unit with a line break, not a space
    prose: bool  # a sentence of a paragraph (may be repeated as overlap), not a list item


def _units(text: str, size: int, overlap: int) -> list[_Unit]:
    units: list[_Unit] = []
    for block in split_blocks(text):
        is_item = bool(_BULLET.match(block))
        if is_item and len(block.split()) <= size:
            units.append(_Unit(block, len(block.split()), True, False))
            continue
        for i, sentence in enumerate(split_sentences(block)):
            words = sentence.split()
            if len(words) <= size:
                units.append(_Unit(sentence, len(words), i == 0, not is_item))
                continue
            step = size - overlap  # no punctuation to cut at: overlapping word windows
            for j, start in enumerate(range(0, max(len(words) - overlap, 1), step)):
                piece = words[start : start + size]
                units.append(_Unit(" ".join(piece), len(piece), i == 0 and j == 0, False))
    return units


def _join(units: list[_Unit]) -> str:
    out = ""
    for i, unit in enumerate(units):
        if i:
            out += "\n" if unit.starts_block else " "
        out += unit.text
    return out


def chunk_sections(
    sections: Iterable[Section], size: int = CHUNK_WORDS, overlap: int = OVERLAP_WORDS
) -> list[TextChunk]:
    """Chunks of at most ~`size` words of whole sentences and list items, each keeping its section's
    heading and kind; a section never shares a chunk with another, so every chunk's heading is true
    for all its text. Consecutive chunks of prose repeat up to `overlap` words of whole sentences."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need size > 0 and 0 <= overlap < size")
    chunks: list[TextChunk] = []
    for section in sections:
        kind = getattr(section, "kind", "description")
        groups: list[list[_Unit]] = []
        current: list[_Unit] = []
        words = 0
        for unit in _units(section.text, size, overlap):
            if current and words + unit.words > size:
                # "… as follows:" belongs with what follows it.
                held = [current.pop()] if len(current) > 1 and current[-1].text.endswith(":") else []
                groups.append(current)
                carried: list[_Unit] = []
                carried_words = 0
                for previous in reversed(current):
                    if not previous.prose or carried_words + previous.words > overlap:
                        break
                    carried.insert(0, previous)
                    carried_words += previous.words
                if len(carried) == len(current):
                    carried, carried_words = [], 0
                current = carried + held
                words = carried_words + sum(u.words for u in held)
            current.append(unit)
            words += unit.words
        if current:
            groups.append(current)
        if len(groups) > 1:
            last_new = [u for u in groups[-1] if u not in groups[-2]]
            tail = sum(u.words for u in last_new)
            if tail < TAIL_WORDS and sum(u.words for u in groups[-2]) + tail <= size + TAIL_WORDS:
                groups[-2] = groups[-2] + last_new
                groups.pop()
        chunks.extend(TextChunk(section.heading, _join(group), kind) for group in groups)
    return chunks

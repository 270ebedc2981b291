"""Split sections into overlapping word windows (~256 words, 32 overlap, as upstream GhostLM did)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.retrieval.loaders import Section

CHUNK_WORDS = 256
OVERLAP_WORDS = 32


@dataclass(frozen=True)
class TextChunk:
    heading: str
    text: str


def chunk_sections(
    sections: Iterable[Section], size: int = CHUNK_WORDS, overlap: int = OVERLAP_WORDS
) -> list[TextChunk]:
    """Windows of at most `size` words, each keeping its section heading as title.

    A section never shares a chunk with another, so every chunk's title is true for all its text;
    a short tail window is folded into the previous one instead of standing alone."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need size > 0 and 0 <= overlap < size")
    chunks: list[TextChunk] = []
    step = size - overlap
    for section in sections:
        words = section.text.split()
        if not words:
            continue
        starts = list(range(0, max(len(words) - overlap, 1), step))
        # A last window of fewer than `overlap` new words adds little: extend the previous one.
        if len(starts) > 1 and len(words) - starts[-1] <= overlap * 2:
            starts.pop()
        for i, start in enumerate(starts):
            end = len(words) if i == len(starts) - 1 else start + size
            chunks.append(TextChunk(section.heading, " ".join(words[start:end])))
    return chunks

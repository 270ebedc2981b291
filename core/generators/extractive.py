"""The no-model backend: answers by quoting the most relevant sentences of the retrieved passages.

Used when no model is configured. It never invents text: every sentence it prints is copied from a passage and
cited ``[n]``. Token counts are a word-piece estimate (see :mod:`core.generators.estimate`); nothing is fed to a
model, so the count only has to be consistent for the budget.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

from core.generators.base import GenerationParams, PromptSpec
from core.generators.estimate import word_piece_estimate
from core.generators.render import render_turns

NO_PASSAGES_REPLY = (
    "I couldn't find anything about that in the knowledge base. "
    "Try rephrasing or index your documents with `ghostbot index`."
)
INTRO = "Here is what the knowledge base says:"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_TERM = re.compile(r"[\w][\w.\-]*\w|\w", re.UNICODE)
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it its me of on or should that the this to "
    "was what when where which who why will with you your about into my we our they them there their than "
    "tell explain describe please".split()
)


def query_terms(text: str) -> set[str]:
    terms = set()
    for raw in _TERM.findall(text.lower()):
        for term in {raw, *re.split(r"[.\-]", raw)}:  # "cwe-79" matches "CWE-79" and "79"
            if term and term not in _STOPWORDS and (len(term) > 1 or term.isdigit()):
                terms.add(term)
    return terms


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _shorten(sentence: str, max_words: int) -> str:
    words = sentence.split()
    return sentence if len(words) <= max_words else " ".join(words[:max_words]) + " …"


class ExtractiveGenerator:
    """Quotes up to `max_passages` passages, `sentences_per_passage` best sentences each, with citations."""

    name = "extractive"

    def __init__(self, *, context_length: int = 4096, max_passages: int = 3, sentences_per_passage: int = 2,
                 max_sentence_words: int = 60) -> None:
        self.context_length = context_length
        self.max_passages = max_passages
        self.sentences_per_passage = sentences_per_passage
        self.max_sentence_words = max_sentence_words
        self.last_finish_reason: str | None = None  # of the latest stream: "stop" | "cancelled"

    def load(self) -> None:
        """Nothing to load (same startup hook as the model backends)."""

    def count_tokens(self, text: str) -> int:
        return word_piece_estimate(text)

    def prompt_tokens(self, spec: PromptSpec) -> int:
        # The same rendered prompt as the model backends, so budgets trim the same way; +4 per turn for roles.
        return sum(self.count_tokens(t.content) + 4 for t in render_turns(spec)) + 2

    def _best_sentences(self, text: str, terms: set[str]) -> tuple[int, list[str]]:
        sentences = split_sentences(text)
        scored = [(len(terms & query_terms(s)), i) for i, s in enumerate(sentences)]
        best = sorted((x for x in scored if x[0] > 0), key=lambda x: (-x[0], x[1]))[: self.sentences_per_passage]
        chosen = sorted(i for _, i in best)  # keep the passage's own order so the quote reads naturally
        return sum(score for score, _ in best), [sentences[i] for i in chosen]

    def answer_blocks(self, spec: PromptSpec, max_tokens: int) -> list[str]:
        """The quote blocks (without the intro) for `spec`, within roughly `max_tokens` tokens."""
        terms = query_terms(spec.question)
        scored = [(number, *self._best_sentences(p.text, terms)) for number, p in enumerate(spec.passages, 1)]
        if scored and not any(score for _, score, _ in scored):
            # No word overlap anywhere: retrieval still ranked passage 1 best (e.g. a dense match), quote its lead.
            scored = [(1, 1, split_sentences(spec.passages[0].text)[: self.sentences_per_passage])]
        blocks: list[str] = []
        used = self.count_tokens(INTRO)
        for number, score, sentences in scored:
            if len(blocks) >= self.max_passages:
                break
            if score == 0:
                continue
            if not sentences:
                continue
            quote = " ".join(_shorten(s, self.max_sentence_words) for s in sentences)
            block = f"> {quote} [{number}]"
            cost = self.count_tokens(block)
            if blocks and used + cost > max_tokens:
                break
            blocks.append(block)
            used += cost
        return blocks

    def stream(self, spec: PromptSpec, params: GenerationParams,
               should_stop: Callable[[], bool]) -> Iterator[str]:
        blocks = self.answer_blocks(spec, params.max_new_tokens)
        self.last_finish_reason = "stop"
        if not blocks:
            yield NO_PASSAGES_REPLY
            return
        yield INTRO
        for block in blocks:
            if should_stop():
                self.last_finish_reason = "cancelled"
                return
            yield "\n\n" + block

    def close(self) -> None:
        return None

"""The no-model backend: answers by quoting the most relevant sentences of the retrieved passages.

Used when no model is configured. It never invents text: every sentence it prints is copied from a passage and
cited ``[n]``. Token counts are a word-piece estimate (see :mod:`core.generators.estimate`); nothing is fed to a
model, so the count only has to be consistent for the budget.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

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
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "of",
        "on",
        "or",
        "should",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "about",
        "into",
        "my",
        "we",
        "our",
        "they",
        "them",
        "there",
        "their",
        "than",
        "tell",
        "explain",
        "describe",
        "please",
    ]
)


_ID = re.compile(r"(?:cwe|capec|cve)-[\d-]+|t\d{4}(?:\.\d{3})?")


def query_terms(text: str) -> set[str]:
    terms = set()
    for raw in _TERM.findall(text.lower()):
        if _ID.fullmatch(raw):
            # An id matches only itself (and a sub-technique its parent): "CWE-79" must not match "CAPEC-79".
            terms.update({raw, raw.split(".")[0]})
            continue
        for term in {raw, *re.split(r"[.\-]", raw)}:  # "cross-site" matches "cross-site", "cross", "site"
            if term and term not in _STOPWORDS and (len(term) > 1 or term.isdigit()):
                terms.add(term)
    return terms


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


# Catalogue metadata lines: true, but not what "explain X" wants first.
_METADATA = re.compile(
    r"(?:tactics|platforms|abstraction|status|data sources|detection|mitigations?|related [\w ]+|"
    r"permissions required|defense bypassed|version)\s*:|(?:sub-technique|child|parent) of\b",
    re.IGNORECASE,
)
_MARKDOWN_HEADING = re.compile(r"(?:^|\s)#{1,6}\s+")


def _shorten(sentence: str, max_words: int) -> str:
    # Source text may carry markdown heading marks ("### Windows"): inside a quote they are noise.
    words = _MARKDOWN_HEADING.sub(" ", sentence).split()
    return " ".join(words) if len(words) <= max_words else " ".join(words[:max_words]) + " …"


class ExtractiveGenerator:
    """Quotes up to `max_passages` passages, `sentences_per_passage` best sentences each, with citations."""

    name = "extractive"

    def __init__(
        self,
        *,
        context_length: int = 4096,
        max_passages: int = 3,
        sentences_per_passage: int = 2,
        max_sentence_words: int = 60,
        lead_sentences: int = 3,
    ) -> None:
        self.context_length = context_length
        self.lead_sentences = lead_sentences
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
        best = sorted((x for x in scored if x[0] > 0), key=lambda x: (-x[0], x[1]))[
            : self.sentences_per_passage
        ]
        chosen = sorted(i for _, i in best)  # keep the passage's own order so the quote reads naturally
        return sum(score for score, _ in best), [sentences[i] for i in chosen]

    def _lead(self, text: str, terms: set[str]) -> list[str]:
        """The top passage opens with its definition: quote its title sentence and the first sentences
        that are prose rather than metadata ("Tactics: …", "Platforms: …"), plus its best-matching ones."""
        sentences = split_sentences(text)
        prose = [i for i, sentence in enumerate(sentences) if i == 0 or not _METADATA.match(sentence)]
        lead = set(prose[: self.lead_sentences])
        _, best = self._best_sentences(text, terms)
        chosen = sorted(lead | {sentences.index(s) for s in best})[: self.lead_sentences + 1]
        return [sentences[i] for i in chosen]

    def answer_blocks(self, spec: PromptSpec, max_tokens: int) -> list[str]:
        """The quote blocks (without the intro) for `spec`, within roughly `max_tokens` tokens.

        Passage 1 is retrieval's best match and is always quoted from its lead. Later passages are quoted
        only when they share an informative term with the question — one that not every passage contains
        (so "CWE" in "What is CWE-79?" does not pull in every other CWE).
        """
        if not spec.passages:
            return []
        all_terms = query_terms(spec.question)
        terms = all_terms
        if len(spec.passages) > 1:
            per_passage = [query_terms(p.text) for p in spec.passages]
            terms = {t for t in all_terms if not all(t in seen for seen in per_passage)}
        # Quote passage 1 when it matches at all, or when nothing does (e.g. a purely dense match).
        lead_first = self._best_sentences(spec.passages[0].text, all_terms)[0] > 0 or not any(
            self._best_sentences(p.text, terms)[0] for p in spec.passages[1:]
        )
        blocks: list[str] = []
        used = self.count_tokens(INTRO)
        for number, passage in enumerate(spec.passages, 1):
            if len(blocks) >= self.max_passages:
                break
            if number == 1 and lead_first:
                sentences = self._lead(passage.text, all_terms)
            else:
                score, sentences = self._best_sentences(passage.text, terms)
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

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
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

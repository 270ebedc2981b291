"""Query analysis for full-text search: the searchable terms of user text, pruning of very common
terms on large indexes, and the one MATCH / tsquery builder per engine."""

from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass, field

WORD = re.compile(r"\w+", re.UNICODE)
# Question words and glue: OR-ing them would match nearly every chunk and only add noise and time.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "being",
        "but",
        "by",
        "can",
        "could",
        "do",
        "does",
        "did",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "so",
        "such",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "called",
        "call",
        "name",
        "term",
        "happens",
        "happen",
        "type",
        "kind",
        "known",
        "also",
        "about",
        "any",
        "some",
        "should",
        "s",
        "t",
    ]
)
MAX_QUERY_TERMS = 32

# Large indexes only: FTS5 scores every chunk that contains any query term (~3 µs each), so a term
# found in a big share of the chunks costs a lot of time while adding little to BM25 (its IDF is
# near zero). Such terms are dropped from the query; the rarest is always kept.
PRUNE_MIN_CHUNKS = 20_000
PRUNE_MAX_DF = 0.02
PRUNE_KEEP = 1
# ...and the kept terms together may name at most this share of the chunks (rarest terms first):
# a long question of many mid-frequency words would otherwise still score thousands of rows.
PRUNE_MAX_POSTINGS = 0.05
VOCABULARY_TTL_S = 600.0
STEM_MEMO_SIZE = 100_000


class Stemmer:
    """Index terms of a word exactly as the FTS index makes them (SQLite's own porter tokenizer on a
    private in-memory table), memoised: `memory` → ["memori"], `__proto__` → ["proto"]."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE VIRTUAL TABLE words USING fts5(word, tokenize='porter unicode61')")
        self._db.execute("CREATE VIRTUAL TABLE words_terms USING fts5vocab(words, instance)")
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[str, ...]] = {}

    def terms(self, word: str) -> tuple[str, ...]:
        found = self._memo.get(word)
        if found is not None:
            return found
        with self._lock:
            self._db.execute("DELETE FROM words")
            self._db.execute("INSERT INTO words(word) VALUES (?)", (word,))
            rows = self._db.execute("SELECT term FROM words_terms ORDER BY offset").fetchall()
        found = tuple(str(row[0]) for row in rows)
        if len(self._memo) < STEM_MEMO_SIZE:
            self._memo[word] = found
        return found


@dataclass
class Vocabulary:
    """Document frequency per indexed (Porter-stemmed) term, loaded from the FTS index."""

    chunks: int
    df: dict[str, int]
    loaded_at: float
    stemmer: Stemmer = field(default_factory=Stemmer)

    def df_of(self, word: str) -> int:
        """How many chunks the word's index terms are in (the most common of them, for a word the
        tokenizer splits); 0 when absent, as then it costs nothing to search."""
        return max((self.df.get(term, 0) for term in self.stemmer.terms(word)), default=0)

    def prune(self, terms: list[str]) -> list[str]:
        if self.chunks < PRUNE_MIN_CHUNKS or len(terms) <= PRUNE_KEEP:
            return terms
        known = {t: self.df_of(t) for t in terms}
        limit, budget = PRUNE_MAX_DF * self.chunks, PRUNE_MAX_POSTINGS * self.chunks
        chosen: set[str] = set()
        postings = 0
        for rank, term in enumerate(sorted(terms, key=lambda t: known[t])):
            if rank >= PRUNE_KEEP and (known[term] > limit or postings + known[term] > budget):
                break
            chosen.add(term)
            postings += known[term]
        return [t for t in terms if t in chosen]


def fts_terms(query: str) -> list[str]:
    """The searchable words of free text: lower-cased, stopwords dropped, de-duplicated, in order."""
    seen: dict[str, None] = {}
    for word in WORD.findall(query.lower()):
        if word not in STOPWORDS and word not in seen:
            seen[word] = None
    return list(seen)[:MAX_QUERY_TERMS]


def sqlite_match_expression(query: str, vocabulary: Vocabulary | None = None) -> str | None:
    """The one FTS5 MATCH builder: an expression that can never be a syntax error, each kept term
    quoted (so `"`, `*`, `NEAR`, `-` typed by users are plain words), OR-ed. With the index's
    `vocabulary`, very common terms of a large index are pruned first. None when nothing searchable
    is left."""
    terms = fts_terms(query)
    if terms and vocabulary is not None:
        terms = vocabulary.prune(terms)
    if not terms:
        return None
    return " OR ".join(f'"{term}"' for term in terms)


def sqlite_phrase_expression(phrase: str) -> str | None:
    """An FTS5 phrase query for consecutive words (e.g. `CVE-2021-44228` → "cve 2021 44228")."""
    words = WORD.findall(phrase.lower())
    if not words:
        return None
    return '"' + " ".join(words) + '"'


def postgres_tsquery(query: str) -> str | None:
    """The PostgreSQL counterpart of `sqlite_match_expression`: the terms OR-ed for `to_tsquery`
    (`fts_terms` keeps only word characters, so no tsquery operator survives)."""
    terms = fts_terms(query)
    return " | ".join(terms) if terms else None

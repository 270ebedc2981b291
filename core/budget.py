"""Context budget: trim a `PromptSpec` until the generator's exact prompt length fits.

`budget = context_length − max_new_tokens − reserve`, counted with the generator's own tokenizer.
Priority (highest first): system text, the newest user turn, passages (own sub-budget; shortened before they
are dropped), then history from newest to oldest in whole user/assistant pairs.

This runs on every message, so it is built to be cheap: per-text token counts are cached (history texts repeat
from message to message), cut points are found by binary search on the token count, and the exact
`generator.prompt_tokens(spec)` is called only a handful of times to measure overheads and to verify the result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

from core.generators.base import ChatTurn, Generator, PromptSpec
from core.types import Source

QUESTION_MARKER = " … [message shortened]"
PASSAGE_MARKER = " …"
# Below this many tokens a shortened passage is not worth its citation; drop the lowest-ranked one instead.
MIN_PASSAGE_TOKENS = 24
# How far back (in characters) a cut may move to land on a word boundary.
_WORD_BACKOFF_CHARS = 48


class ContextTooSmall(ValueError):
    """The system text (plus a minimal question) alone does not fit the budget: a configuration error."""


@dataclass(frozen=True)
class FitResult:
    spec: PromptSpec
    prompt_tokens: int
    dropped_pairs: int
    shortened_passages: int
    dropped_passages: int
    question_truncated: bool


def compute_budget(context_length: int, max_new_tokens: int, reserve: int) -> int:
    """Prompt tokens available: `context_length − max_new_tokens − reserve`."""
    return context_length - max_new_tokens - reserve


def effective_max_new_tokens(context_length: int, requested: int, reserve: int) -> int:
    """Clamp the answer length so the prompt keeps at least half of the context (small models: 512)."""
    return max(1, min(requested, (context_length - reserve) // 2))


class TokenCounter:
    """`generator.count_tokens` behind an LRU cache keyed by the text."""

    def __init__(self, generator: Generator, maxsize: int = 4096) -> None:
        self.generator = generator
        self._cached: Callable[[str], int] = functools.lru_cache(maxsize=maxsize)(generator.count_tokens)

    def __call__(self, text: str) -> int:
        return self._cached(text)

    def uncached(self, text: str) -> int:
        """For one-off strings (cut candidates) that would only evict useful entries."""
        return self.generator.count_tokens(text)


def cut_to_tokens(text: str, max_tokens: int, count: Callable[[str], int], marker: str) -> str:
    """A longest prefix of `text` (moved back to a word boundary when one is near) such that
    `count(prefix + marker) <= max_tokens`; returns `prefix + marker`, or "" when not even the marker fits.

    Bracketed interpolation search on the character count: token density is nearly uniform, so two to four
    probes usually land within a token of the limit, and every probe encodes only a short prefix (a huge text
    is never encoded whole). Bisection steps guarantee progress when the density is uneven.
    """
    base = count(marker)
    if base > max_tokens:
        return ""

    def value(n_chars: int) -> int:
        return count(text[:n_chars].rstrip() + marker)

    size = len(text)
    lo, f_lo = 0, base  # longest prefix known to fit
    hi, f_hi = size + 1, -1  # shortest prefix known not to fit (f_hi < 0: none known yet)
    guess = min(size, max(8, max_tokens * 4))
    same_side = 0
    last_fit: bool | None = None
    while hi - lo > 1 and f_lo < max_tokens:
        v = value(guess)
        fit = v <= max_tokens
        if fit:
            lo, f_lo = guess, v
        else:
            hi, f_hi = guess, v
        same_side = same_side + 1 if fit == last_fit else 0
        last_fit = fit
        if lo == size or hi - lo <= 1 or f_lo >= max_tokens - 1:
            break
        if f_hi < 0:  # no upper bound yet: extrapolate from the density so far, overshooting a little
            density = max(f_lo - base, 1) / max(lo, 1)
            guess = min(size, lo + int((max_tokens - f_lo) / density * 1.15) + 1)
        elif same_side >= 2:  # interpolation is creeping from one side: bisect
            guess = (lo + hi) // 2
        else:
            share = (max_tokens - f_lo) / max(f_hi - f_lo, 1)
            guess = lo + int((hi - lo) * share)
        guess = min(max(guess, lo + 1), hi - 1)
    cut = lo
    if cut < size:
        window = text[max(0, cut - _WORD_BACKOFF_CHARS) : cut + 1]
        space = max(window.rfind(" "), window.rfind("\n"))
        if space > 0:
            boundary = max(0, cut - _WORD_BACKOFF_CHARS) + space
            if boundary > 0 and value(boundary) <= max_tokens:
                cut = boundary
    return text[:cut].rstrip() + marker


class ContextBudget:
    """Fits prompt specs for one generator. Holds the token cache; one instance per generator."""

    def __init__(
        self, generator: Generator, *, passage_fraction: float = 0.5, cache_size: int = 4096
    ) -> None:
        if not 0.0 <= passage_fraction <= 1.0:
            raise ValueError("passage_fraction must be between 0 and 1")
        self.generator = generator
        self.passage_fraction = passage_fraction
        self.count = TokenCounter(generator, cache_size)

    def fit(self, spec: PromptSpec, *, budget: int) -> FitResult:
        gen = self.generator

        # 1. System text and the newest user turn are kept; the question is shortened only if it alone overflows.
        question = spec.question
        question_truncated = False
        bare = PromptSpec(system=spec.system, passages=(), history=(), question=question)
        base = gen.prompt_tokens(bare)
        if base > budget:
            question, base = self._shorten_question(spec.system, question, budget)
            question_truncated = True
        avail = budget - base

        # 2. Passages: their own sub-budget, never more than what is left.
        passages, shortened, dropped = self._fit_passages(
            spec, question, base, min(avail, int(budget * self.passage_fraction))
        )
        core = PromptSpec(system=spec.system, passages=passages, history=(), question=question)
        core_tokens = gen.prompt_tokens(core) if passages else base
        # Estimation slack (BPE merges across joins): shrink passages until the exact count fits.
        while core_tokens > budget and passages:
            passages, more_short, more_drop = self._shrink_last(passages, core_tokens - budget)
            shortened, dropped = shortened + more_short, dropped + more_drop
            core = replace(core, passages=passages)
            core_tokens = gen.prompt_tokens(core)

        # 3. History: whole pairs, newest first, in what remains.
        pairs = _pairs(spec.history)
        keep = self._history_pairs_that_fit(pairs, core, core_tokens, base, budget)
        final = replace(core, history=_flatten(pairs[len(pairs) - keep :]))
        total = gen.prompt_tokens(final) if keep else core_tokens
        while total > budget and keep:
            keep -= 1
            final = replace(core, history=_flatten(pairs[len(pairs) - keep :]))
            total = gen.prompt_tokens(final)
        return FitResult(
            spec=final,
            prompt_tokens=total,
            dropped_pairs=len(pairs) - keep,
            shortened_passages=shortened,
            dropped_passages=dropped,
            question_truncated=question_truncated,
        )

    # --- question -------------------------------------------------------------------------------------
    def _shorten_question(self, system: str, question: str, budget: int) -> tuple[str, int]:
        gen = self.generator
        floor = gen.prompt_tokens(PromptSpec(system=system, passages=(), history=(), question=""))
        overhead = floor - self.count.uncached("")  # everything but the question text itself
        allowed = budget - overhead
        while True:
            short = cut_to_tokens(question, allowed, self.count.uncached, QUESTION_MARKER)
            if not short:
                raise ContextTooSmall(
                    f"the system text needs {floor} of {budget} prompt tokens; no room for a question"
                )
            total = gen.prompt_tokens(PromptSpec(system=system, passages=(), history=(), question=short))
            if total <= budget:
                return short, total
            allowed -= total - budget  # join effects: take the excess off and cut again

    # --- passages -------------------------------------------------------------------------------------
    def _fit_passages(
        self, spec: PromptSpec, question: str, base: int, sub_budget: int
    ) -> tuple[tuple[Source, ...], int, int]:
        """Estimate each passage's cost as overhead + text tokens, then water-fill the sub-budget:
        passages shorter than the fair share stay whole, longer ones are cut to it; when the share falls
        below MIN_PASSAGE_TOKENS the lowest-ranked passage is dropped and the share recomputed.
        (Estimates only: the caller verifies with the exact count.)"""
        passages = spec.passages
        if not passages or sub_budget <= 0:
            return (), 0, len(passages)
        # Headers (number, title, ref, separators), measured exactly on passages with empty texts: short.
        hollow = PromptSpec(spec.system, tuple(replace(p, text="") for p in passages), (), question)
        overhead = -(-(self.generator.prompt_tokens(hollow) - base) // len(passages)) + 1
        # Rendering may prefix every line (quoting): one token per line is a fair allowance.
        text_tokens = [self.count(p.text) + p.text.count("\n") for p in passages]
        if overhead * len(passages) + sum(text_tokens) <= sub_budget:
            return passages, 0, 0
        kept = len(passages)
        share: int | None = None
        while kept:
            sizes = text_tokens[:kept]
            share = _water_level(sizes, sub_budget - overhead * kept)
            if share is not None and (share >= MIN_PASSAGE_TOKENS or max(sizes) <= share):
                break
            kept -= 1
        if not kept or share is None:
            return (), 0, len(passages)
        out: list[Source] = []
        shortened = 0
        for p, size in zip(passages[:kept], text_tokens):
            if size > share:
                out.append(replace(p, text=cut_to_tokens(p.text, share, self.count.uncached, PASSAGE_MARKER)))
                shortened += 1
            else:
                out.append(p)
        return tuple(out), shortened, len(passages) - kept

    def _shrink_last(self, passages: tuple[Source, ...], excess: int) -> tuple[tuple[Source, ...], int, int]:
        """Take `excess` tokens off the lowest-ranked passage; drop it when too little would remain."""
        last = passages[-1]
        target = self.count(last.text) - excess - 1
        if target < MIN_PASSAGE_TOKENS:
            return passages[:-1], 0, 1
        short = cut_to_tokens(last.text, target, self.count.uncached, PASSAGE_MARKER)
        if not short:
            return passages[:-1], 0, 1
        return (*passages[:-1], replace(last, text=short)), 1, 0

    # --- history --------------------------------------------------------------------------------------
    def _history_pairs_that_fit(
        self,
        pairs: list[tuple[ChatTurn, ChatTurn]],
        core: PromptSpec,
        core_tokens: int,
        bare_tokens: int,
        budget: int,
    ) -> int:
        """Newest pairs first, by cached per-text counts plus the per-pair overhead (role tokens, separators)
        measured on an empty pair. An estimate: the caller verifies and drops more if needed."""
        if not pairs:
            return 0
        room = budget - core_tokens
        bare = PromptSpec(core.system, (), (), core.question)
        empty_pair = (ChatTurn("user", ""), ChatTurn("assistant", ""))
        per_pair = max(0, self.generator.prompt_tokens(replace(bare, history=empty_pair)) - bare_tokens)
        keep = 0
        for user, assistant in reversed(pairs):
            room -= self.count(user.content) + self.count(assistant.content) + per_pair
            if room < 0:
                break
            keep += 1
        return keep


def fit_prompt(
    spec: PromptSpec,
    generator: Generator,
    *,
    budget: int,
    passage_fraction: float,
    context: ContextBudget | None = None,
) -> FitResult:
    """Trim `spec` so `generator.prompt_tokens(result.spec) <= budget` (see module docstring).
    Pass a long-lived `context` to reuse its token cache across messages."""
    ctx = context or ContextBudget(generator, passage_fraction=passage_fraction)
    return ctx.fit(spec, budget=budget)


def _pairs(history: tuple[ChatTurn, ...]) -> list[tuple[ChatTurn, ChatTurn]]:
    """Whole user→assistant pairs, oldest first; orphan turns are skipped."""
    out: list[tuple[ChatTurn, ChatTurn]] = []
    i = 0
    while i < len(history) - 1:
        if history[i].role == "user" and history[i + 1].role == "assistant":
            out.append((history[i], history[i + 1]))
            i += 2
        else:
            i += 1
    return out


def _flatten(pairs: list[tuple[ChatTurn, ChatTurn]]) -> tuple[ChatTurn, ...]:
    return tuple(turn for pair in pairs for turn in pair)


def _water_level(sizes: list[int], room: int) -> int | None:
    """Largest per-item cap c with sum(min(s, c)) <= room; None when room < 0. Items under the cap stay whole."""
    if room < 0:
        return None
    if sum(sizes) <= room:
        return max(sizes, default=0)
    remaining, left = room, len(sizes)
    for size in sorted(sizes):
        cap = remaining // left
        if size > cap:
            return cap
        remaining -= size
        left -= 1
    return remaining

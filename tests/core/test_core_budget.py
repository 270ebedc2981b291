"""Context budget: priorities, whole pairs, shortening, and the hard bound (property test)."""

from __future__ import annotations

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.budget import (
    PASSAGE_MARKER,
    QUESTION_MARKER,
    ContextBudget,
    ContextTooSmall,
    compute_budget,
    cut_to_tokens,
    fit_prompt,
)
from core.generators.base import ChatTurn, PromptSpec
from core.types import Source
from tests.core.core_doubles import BPEGenerator, train_tokenizer

SYSTEM = "You are GhostLM, a concise cybersecurity assistant. Cite passages as [1]."
WORDS = [
    "the",
    "attacker",
    "injects",
    "script",
    "into",
    "a",
    "page",
    "and",
    "the",
    "browser",
    "runs",
    "it",
    "as",
    "the",
    "site",
]


def text(n_words: int, salt: int = 0) -> str:
    return " ".join(WORDS[(i + salt) % len(WORDS)] for i in range(n_words))


def pairs(n: int, words: int = 12) -> tuple[ChatTurn, ...]:
    out: list[ChatTurn] = []
    for i in range(n):
        out.append(ChatTurn("user", f"q{i} " + text(words, i)))
        out.append(ChatTurn("assistant", f"a{i} " + text(words, i + 3)))
    return tuple(out)


def source(i: int, words: int) -> Source:
    return Source(index=i, ref=f"CWE-{i}", source="cwe", title=f"Weakness {i}", text=text(words, i))


def test_compute_budget() -> None:
    assert compute_budget(512, 256, 8) == 248


def test_everything_fits_unchanged(bpe_generator: BPEGenerator) -> None:
    spec = PromptSpec(SYSTEM, (source(1, 20),), pairs(2), "what is xss?")
    res = fit_prompt(spec, bpe_generator, budget=400, passage_fraction=0.5)
    assert res.spec == spec
    assert res.prompt_tokens == bpe_generator.prompt_tokens(spec) <= 400
    assert (res.dropped_pairs, res.shortened_passages, res.dropped_passages) == (0, 0, 0)
    assert not res.question_truncated


def test_whole_pairs_dropped_oldest_first(bpe_generator: BPEGenerator) -> None:
    history = pairs(30)
    spec = PromptSpec(SYSTEM, (), history, "and how do I stop it?")
    res = fit_prompt(spec, bpe_generator, budget=200, passage_fraction=0.5)
    kept = res.spec.history
    assert 0 < len(kept) < len(history) and len(kept) % 2 == 0
    assert kept == history[len(history) - len(kept) :]  # a suffix: the newest pairs survive
    assert res.dropped_pairs == (len(history) - len(kept)) // 2
    assert res.spec.question == spec.question and res.spec.system == SYSTEM
    assert res.prompt_tokens <= 200
    # Maximal: one more pair would not have fitted.
    bigger = PromptSpec(SYSTEM, (), history[len(history) - len(kept) - 2 :], spec.question)
    assert bpe_generator.prompt_tokens(bigger) > 200


def test_passages_shortened_before_dropped(bpe_generator: BPEGenerator) -> None:
    spec = PromptSpec(SYSTEM, tuple(source(i, 60) for i in range(1, 4)), (), "xss?")
    budget = 400
    res = fit_prompt(spec, bpe_generator, budget=budget, passage_fraction=0.5)
    assert len(res.spec.passages) == 3 and res.dropped_passages == 0
    assert res.shortened_passages >= 1
    for orig, got in zip(spec.passages, res.spec.passages):
        if got.text != orig.text:
            assert got.text.endswith(PASSAGE_MARKER)
            assert orig.text.startswith(got.text[: -len(PASSAGE_MARKER)])
            # Cut at a word boundary: the kept prefix ends with a whole word of the original.
            assert orig.text[len(got.text) - len(PASSAGE_MARKER)] == " "
    assert res.prompt_tokens <= budget


def test_passages_dropped_lowest_rank_when_too_small(bpe_generator: BPEGenerator) -> None:
    spec = PromptSpec(SYSTEM, tuple(source(i, 80) for i in range(1, 7)), (), "xss?")
    res = fit_prompt(spec, bpe_generator, budget=200, passage_fraction=0.5)
    assert 0 < len(res.spec.passages) < 6 and res.dropped_passages == 6 - len(res.spec.passages)
    assert [p.ref for p in res.spec.passages] == [p.ref for p in spec.passages[: len(res.spec.passages)]]
    assert res.prompt_tokens <= 200


def test_passages_take_priority_over_history(bpe_generator: BPEGenerator) -> None:
    spec = PromptSpec(SYSTEM, (source(1, 30),), pairs(20), "q?")
    bare = bpe_generator.prompt_tokens(PromptSpec(SYSTEM, (), (), "q?"))
    passage_cost = bpe_generator.prompt_tokens(PromptSpec(SYSTEM, spec.passages, (), "q?")) - bare
    budget = 2 * passage_cost + bare  # the passage fits its half; history gets the rest
    res = fit_prompt(spec, bpe_generator, budget=budget, passage_fraction=0.5)
    assert res.spec.passages == spec.passages
    assert 0 < res.dropped_pairs < 20 and res.prompt_tokens <= budget


def test_oversized_question_cut_with_marker(bpe_generator: BPEGenerator) -> None:
    question = text(2000)
    spec = PromptSpec(SYSTEM, (source(1, 30),), pairs(3), question)
    res = fit_prompt(spec, bpe_generator, budget=150, passage_fraction=0.5)
    assert res.question_truncated
    assert res.spec.question.endswith(QUESTION_MARKER)
    assert question.startswith(res.spec.question[: -len(QUESTION_MARKER)])
    assert res.spec.history == () and res.spec.passages == ()
    assert res.prompt_tokens <= 150
    # Nearly maximal: the shortened question uses most of the budget.
    assert res.prompt_tokens >= 150 - 20


def test_single_giant_word_is_cut_too(bpe_generator: BPEGenerator) -> None:
    spec = PromptSpec(SYSTEM, (), (), "A" * 20000)
    res = fit_prompt(spec, bpe_generator, budget=120, passage_fraction=0.5)
    assert res.question_truncated and res.prompt_tokens <= 120
    assert res.spec.question.startswith("AAAA")


def test_system_too_large_is_a_configuration_error(bpe_generator: BPEGenerator) -> None:
    spec = PromptSpec(text(500), (), (), "hi")
    try:
        fit_prompt(spec, bpe_generator, budget=50, passage_fraction=0.5)
    except ContextTooSmall:
        pass
    else:
        raise AssertionError("expected ContextTooSmall")


def test_token_counts_are_cached(bpe_tokenizer) -> None:
    calls: list[str] = []

    class Counting(BPEGenerator):
        def count_tokens(self, text: str) -> int:
            calls.append(text)
            return super().count_tokens(text)

    gen = Counting(bpe_tokenizer)
    ctx = ContextBudget(gen, passage_fraction=0.5)
    spec = PromptSpec(SYSTEM, (), pairs(40), "q?")
    ctx.fit(spec, budget=200)
    first = len(calls)
    ctx.fit(spec, budget=200)
    # The second pass only re-counts inside prompt_tokens (the generator's own exact count), not via the cache.
    history_counts = sum(
        1 for c in calls[first:] if c.startswith(("q", "a")) and c in {t.content for t in spec.history}
    )
    assert history_counts == 0


def test_cut_to_tokens_is_maximal(bpe_generator: BPEGenerator) -> None:
    body = text(300)
    for limit in (5, 17, 40, 99):
        out = cut_to_tokens(body, limit, bpe_generator.count_tokens, " …")
        assert bpe_generator.count_tokens(out) <= limit
        longer = body[: len(out) - 2 + 60].rstrip() + " …"
        assert bpe_generator.count_tokens(longer) > limit


ROLE_STRINGS = st.sampled_from(["<|ghost_end|>", "<|ghost_user|>", "<|endoftext|>", "[INST]", "\n\nUser:"])
TEXTS = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=400),
    st.lists(st.sampled_from(WORDS), max_size=300).map(" ".join),
    ROLE_STRINGS,
    st.integers(min_value=1000, max_value=6000).map(lambda n: "x" * n),
)

_GEN = BPEGenerator(train_tokenizer())


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.tuples(TEXTS, TEXTS), max_size=12),
    passages=st.lists(TEXTS, max_size=5),
    question=TEXTS,
    budget=st.integers(min_value=60, max_value=600),
    fraction=st.floats(min_value=0.0, max_value=1.0),
)
def test_property_final_prompt_never_exceeds_budget(history, passages, question, budget, fraction) -> None:
    turns = tuple(t for u, a in history for t in (ChatTurn("user", u), ChatTurn("assistant", a)))
    srcs = tuple(
        Source(index=i, ref=f"R{i}", source="s", title="T", text=p) for i, p in enumerate(passages, 1)
    )
    spec = PromptSpec("Be brief.", srcs, turns, question)
    res = fit_prompt(spec, _GEN, budget=budget, passage_fraction=fraction)
    assert _GEN.prompt_tokens(res.spec) == res.prompt_tokens <= budget
    assert res.spec.system == spec.system
    if res.question_truncated:
        assert res.spec.question.endswith(QUESTION_MARKER)
        assert question.startswith(res.spec.question[: -len(QUESTION_MARKER)].rstrip())
    else:
        assert res.spec.question == question
    kept = res.spec.history
    assert len(kept) % 2 == 0 and kept == turns[len(turns) - len(kept) :]
    assert len(res.spec.passages) + res.dropped_passages == len(srcs)
    for got, orig in zip(res.spec.passages, srcs):
        assert got.ref == orig.ref
        assert got.text == orig.text or got.text.endswith(PASSAGE_MARKER)

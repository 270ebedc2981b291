"""Engine: stopping, limits, trimming, cancellation, no state across requests; mcq helpers."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from ghostlm import GREEDY, Engine, GhostLM, KVCache, SamplingParams, full_recompute_generate
from ghostlm.mcq import expected_score, option_logprob, option_logprobs, score_token_distribution
from tests.ghostlm.tiny import tiny

V = 96


@pytest.fixture(scope="module", params=["legacy", "modern"])
def model(request) -> GhostLM:
    return tiny(request.param, vocab_size=V, context_length=32)


PROMPT = [5, 17, 33, 2, 9, 41]


def test_matches_full_recompute(model):
    e = Engine(model)
    got = list(e.generate(PROMPT, max_new_tokens=10, params=GREEDY, stop_ids=()))
    assert got == full_recompute_generate(model, PROMPT, max_new_tokens=10, params=GREEDY, stop_ids=())
    seeded = SamplingParams(temperature=1.0, top_k=20, top_p=0.95, repetition_penalty=1.2, seed=3)
    a = list(e.generate(PROMPT, max_new_tokens=10, params=seeded, stop_ids=()))
    assert a == full_recompute_generate(model, PROMPT, max_new_tokens=10, params=seeded, stop_ids=())
    assert a == list(e.generate(PROMPT, max_new_tokens=10, params=seeded, stop_ids=()))


def test_respects_max_new_tokens(model):
    s = Engine(model).generate(PROMPT, max_new_tokens=7, params=GREEDY, stop_ids=())
    assert len(list(s)) == 7 and s.stop_reason == "max_new_tokens" and s.trimmed is None
    assert list(Engine(model).generate(PROMPT, max_new_tokens=0, params=GREEDY)) == []


def test_stops_at_stop_id_without_yielding_it(model):
    e = Engine(model)
    free = list(e.generate(PROMPT, max_new_tokens=8, params=GREEDY, stop_ids=()))
    stop = free[3]
    first = free.index(stop)
    s = e.generate(PROMPT, max_new_tokens=8, params=GREEDY, stop_ids=(stop,))
    assert list(s) == free[:first] and s.stop_reason == "stop_token"


def test_default_stop_is_the_tokenizers_end(model):
    from types import SimpleNamespace

    from ghostlm.tokenizer import END_ID

    assert Engine(model)._default_stop_ids() == (END_ID,)
    free = list(Engine(model).generate(PROMPT, max_new_tokens=8, params=GREEDY, stop_ids=()))
    fake_tok = SimpleNamespace(special=SimpleNamespace(end=free[2]))
    s = Engine(model, fake_tok).generate(PROMPT, max_new_tokens=8, params=GREEDY)
    assert list(s) == free[: free.index(free[2])] and s.stop_reason == "stop_token"


def test_long_prompt_trimmed_and_reported(model, caplog):
    e = Engine(model)
    long_prompt = [i % V for i in range(100)]
    with caplog.at_level("WARNING", logger="ghostlm.engine"):
        s = e.generate(long_prompt, max_new_tokens=8, params=GREEDY, stop_ids=())
        out = list(s)
    assert s.trimmed is not None and s.trimmed.kept_tokens == 24 and s.trimmed.dropped_tokens == 76
    assert e.last_trim == s.trimmed and "keeping the newest 24" in caplog.text
    assert len(out) == 8
    assert out == list(e.generate(long_prompt[-24:], max_new_tokens=8, params=GREEDY, stop_ids=()))
    # max_new_tokens beyond the context: still at least one prompt token, no crash
    s = e.generate(long_prompt, max_new_tokens=50, params=GREEDY, stop_ids=())
    out = list(s)
    assert s.trimmed.kept_tokens == 1 and s.stop_reason == "context_length" and len(out) == 32


def test_stops_when_context_is_full(model):
    s = Engine(model).generate(list(range(30)), max_new_tokens=10, params=GREEDY, stop_ids=())
    out = list(s)
    assert len(out) == 3 and s.stop_reason == "context_length"  # positions 30, 31 fed; the 3rd needs none


def test_should_stop_polled_every_token(model):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 4

    s = Engine(model).generate(PROMPT, max_new_tokens=20, params=GREEDY, stop_ids=(), should_stop=should_stop)
    assert len(list(s)) == 4 and s.stop_reason == "cancelled"
    s = Engine(model).generate(PROMPT, max_new_tokens=20, params=GREEDY, should_stop=lambda: True)
    assert list(s) == [] and s.stop_reason == "cancelled"


def test_no_state_across_requests(model, monkeypatch):
    created: list[weakref.ref] = []
    real_new_cache = GhostLM.new_cache

    def tracking_new_cache(self, *a, **kw):
        cache = real_new_cache(self, *a, **kw)
        created.append(weakref.ref(cache))
        return cache

    monkeypatch.setattr(GhostLM, "new_cache", tracking_new_cache)
    e = Engine(model)
    for i in range(30):
        s = e.generate([*PROMPT, i], max_new_tokens=4, params=SamplingParams(seed=i), stop_ids=())
        if i % 3 == 0:
            next(s)
            s.close()  # abandoned mid-stream (cancelled by the consumer)
        else:
            list(s)
        del s
    gc.collect()
    assert len(created) == 30 and all(r() is None for r in created)  # every per-request cache was freed
    assert not [k for k, v in vars(e).items() if isinstance(v, (torch.Tensor, KVCache))]
    assert not torch.is_inference_mode_enabled()  # inference mode never leaks to the consumer


def test_empty_prompt_rejected(model):
    with pytest.raises(ValueError):
        Engine(model).generate([], max_new_tokens=3)


# ---------------------------------------------------------------------------------------------- mcq
class _CharTok:
    """Minimal tokenizer for the mcq helpers: one id per character."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % V for c in text]


@torch.inference_mode()
def test_option_logprob_matches_manual(model):
    tok = _CharTok()
    prompt, option = "Q: ab?", " cd"
    ids = tok.encode(prompt) + tok.encode(option)
    logp = torch.log_softmax(model(torch.tensor([ids]))[0][0], -1)
    n = len(tok.encode(prompt))
    manual = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(tok.encode(option))) / len(option)
    assert abs(option_logprob(model, tok, prompt, option) - manual) < 1e-5
    batched = option_logprobs(model, tok, prompt, [" cd", " x", " long option"])
    singles = [option_logprob(model, tok, prompt, o) for o in [" cd", " x", " long option"]]
    assert all(abs(a - b) < 1e-5 for a, b in zip(batched, singles))


@torch.inference_mode()
def test_score_token_distribution(model):
    cands = [10, 11, 12, 13, 14]
    probs = score_token_distribution(model, PROMPT, cands)
    full = torch.softmax(model(torch.tensor([PROMPT]))[0][0, -1], -1)[cands]
    assert torch.allclose(probs, full / full.sum(), atol=1e-6)
    assert abs(float(probs.sum()) - 1) < 1e-6
    assert 1.0 <= expected_score(probs, [1, 2, 3, 4, 5]) <= 5.0

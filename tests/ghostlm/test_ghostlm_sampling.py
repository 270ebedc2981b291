"""Sampling: greedy, top-k / top-p masks, repetition penalty, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from ghostlm.sampling import Sampler, SamplingParams, apply_repetition_penalty, top_k_filter, top_p_filter


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    assert Sampler(SamplingParams(temperature=0.0), 4)(logits) == 1


def test_top_k_mask():
    out = top_k_filter(torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0]), 2)
    assert torch.isfinite(out).tolist() == [False, True, False, True, False]
    assert torch.equal(top_k_filter(torch.tensor([1.0, 2.0]), 0), torch.tensor([1.0, 2.0]))


def test_top_p_mask_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [True, True, False, False]  # 0.5+0.3 >= 0.8
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [True, True, True, False]
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [True, False, False, False]  # at least one
    assert torch.isfinite(top_p_filter(logits[[3, 1, 0, 2]], 0.8)).tolist() == [False, True, True, False]


def test_repetition_penalty_ctrl_semantics():
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    seen = torch.tensor([True, True, False, False])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [1.0, -4.0, 2.0, -2.0]
    s = Sampler(SamplingParams(temperature=0.0, repetition_penalty=3.0), 3, context_ids=[0])
    assert s(torch.tensor([3.0, 2.0, 0.0])) == 1  # 3/3 = 1 < 2
    assert s(torch.tensor([3.0, 2.5, 0.0])) == 0  # both seen now: 1.0 vs 2.5/3
    assert s.seen.tolist() == [True, True, False]


def _draw(seed, n=20):
    s = Sampler(SamplingParams(temperature=1.0, top_k=None, top_p=1.0, seed=seed), 100)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100, generator=g)
    return [s(logits) for _ in range(n)]


def test_seed_reproducible():
    assert _draw(7) == _draw(7)
    assert _draw(7) != _draw(8)


def test_sampling_respects_masks():
    s = Sampler(SamplingParams(temperature=1.0, top_k=2, top_p=1.0, seed=0), 5)
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0, 1.0])
    assert {s(logits) for _ in range(50)} <= {1, 2}


def test_invalid_params():
    for bad in (
        dict(temperature=-1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(repetition_penalty=0),
        dict(top_k=-1),
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert math.isclose(SamplingParams().temperature, 0.7)

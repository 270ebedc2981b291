"""Numerical compatibility with upstream GhostLM (fixtures produced by the original code)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ghostlm import GREEDY, Engine, GhostLM, GhostLMConfig, KVCache, full_recompute_generate, load_model

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ghostlm"
TOL = 1e-4


def _fixture(name: str):
    x = torch.from_numpy(np.load(FIX / f"{name}.input.npy"))
    logits = np.load(FIX / f"{name}.logits.npy")
    greedy = json.loads((FIX / f"{name}.greedy.json").read_text())
    step_logits = np.load(FIX / f"{name}.greedy_step_logits.npy")
    return x, logits, greedy, step_logits


@pytest.fixture(scope="module", params=["legacy.pt", "legacy.safetensors", "modern.pt", "modern.safetensors"])
def loaded(request):
    name = request.param.split(".")[0]
    return name, load_model(FIX / request.param)


def test_full_forward_logits(loaded):
    name, model = loaded
    x, ref, _, _ = _fixture(name)
    assert not model.training
    logits = model(x)[0]
    assert logits.shape == ref.shape
    assert np.abs(logits.detach().numpy() - ref).max() <= TOL


def test_loss_matches_upstream_val_loss(loaded):
    name, model = loaded
    x, _, _, _ = _fixture(name)
    ckpt = torch.load(FIX / f"{name}.pt", weights_only=True)
    targets = torch.cat([x[:, 1:], torch.full((x.size(0), 1), -1)], dim=1)
    _, loss = model(x, targets)
    assert abs(loss.item() - ckpt["val_loss"]) < 1e-4


def test_tied_embedding(loaded):
    _, model = loaded
    assert model.lm_head.weight is model.token_embedding.weight


def _greedy_upstream_cache(model: GhostLM, prompt: list[int], n: int):
    """Upstream KV-cache path: list of (k, v) per layer grown by cat."""
    logits, _, past = model(torch.tensor([prompt]), use_cache=True)
    toks, steps = [], []
    for _ in range(n):
        last = logits[0, -1]
        steps.append(last.detach().numpy())
        t = int(last.argmax())
        toks.append(t)
        logits, _, past = model(torch.tensor([[t]]), past_kv=past, use_cache=True)
    return toks, np.stack(steps), past


def _greedy_preallocated(model: GhostLM, prompt: list[int], n: int):
    cache = model.new_cache(1)
    logits = model(torch.tensor([prompt]), past_kv=cache, use_cache=True, last_only=True)[0]
    toks, steps = [], []
    for _ in range(n):
        last = logits[0, -1]
        steps.append(last.detach().numpy())
        t = int(last.argmax())
        toks.append(t)
        logits = model(torch.tensor([[t]]), past_kv=cache, use_cache=True, last_only=True)[0]
    return toks, np.stack(steps), cache


def _greedy_uncached(model: GhostLM, prompt: list[int], n: int):
    seq, steps = list(prompt), []
    for _ in range(n):
        last = model(torch.tensor([seq]))[0][0, -1]
        steps.append(last.detach().numpy())
        seq.append(int(last.argmax()))
    return seq[len(prompt) :], np.stack(steps)


@torch.inference_mode()
def test_greedy_cached_and_uncached(loaded):
    name, model = loaded
    _, _, greedy, step_ref = _fixture(name)
    prompt, n = greedy["prompt"], greedy["max_new_tokens"]

    toks, steps, past = _greedy_upstream_cache(model, prompt, n)
    assert toks == greedy["new_tokens_cached"]
    assert np.abs(steps - step_ref).max() <= TOL
    # 8 prompt + 16 fed tokens (the upstream fixture stops feeding after the 15th: 23 there)
    assert [tuple(k.shape) for k, _ in past] == [(1, 4, 24, 16)] * 2

    toks, steps, _cache = _greedy_preallocated(model, prompt, n)
    assert toks == greedy["new_tokens_cached"]
    assert np.abs(steps - step_ref).max() <= TOL

    toks, steps = _greedy_uncached(model, prompt, n)
    assert toks == greedy["new_tokens_uncached"]
    assert np.abs(steps - step_ref).max() <= TOL

    engine_toks = list(Engine(model).generate(prompt, max_new_tokens=n, params=GREEDY, stop_ids=()))
    assert engine_toks == greedy["new_tokens_cached"]
    assert (
        full_recompute_generate(model, prompt, max_new_tokens=n, params=GREEDY, stop_ids=())
        == greedy["new_tokens_uncached"]
    )


@torch.inference_mode()
def test_chunked_prefill_uses_offset_causal_mask(loaded):
    """Several new queries after a cached past need the causal mask shifted by the past length."""
    name, model = loaded
    x, ref, _, _ = _fixture(name)
    cache = model.new_cache(2)
    a = model(x[:, :10], past_kv=cache, use_cache=True)[0]
    b = model(x[:, 10:17], past_kv=cache, use_cache=True)[0]
    c = model(x[:, 17:], past_kv=cache, use_cache=True)[0]
    got = torch.cat([a, b, c], dim=1).numpy()
    assert np.abs(got - ref).max() <= TOL


# ---------------------------------------------------------------------------------------- GQA + QK-norm
GQA_CFG = dict(
    vocab_size=1000,
    context_length=128,
    dropout=0.0,
    n_layers=2,
    d_model=64,
    n_heads=4,
    d_ff=256,
    use_rope=True,
    use_swiglu=True,
    use_rmsnorm=True,
    n_kv_heads=2,
    use_qk_norm=True,
)


@pytest.fixture(scope="module")
def gqa_model() -> GhostLM:
    torch.manual_seed(1234)
    m = GhostLM(GhostLMConfig(**GQA_CFG))
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for _, p in m.named_parameters():  # move norms off 1 and biases off 0, like the fixtures
            p += 0.02 * torch.randn(p.shape, generator=g)
    return m.eval()


def test_gqa_keys_and_shapes(gqa_model):
    sd = gqa_model.state_dict()
    assert len(sd) == 25
    assert sd["blocks.0.attn.c_qkv.weight"].shape == (128, 64)
    assert sd["blocks.0.attn.c_qkv.bias"].shape == (128,)
    assert sd["blocks.1.attn.q_norm.weight"].shape == (16,)
    assert sd["blocks.1.attn.k_norm.weight"].shape == (16,)
    keys = [k for k in sd if k.startswith("blocks.0.")]
    assert keys == [
        "blocks.0." + k
        for k in (
            "ln_1.weight",
            "attn.c_qkv.weight",
            "attn.c_qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "attn.q_norm.weight",
            "attn.k_norm.weight",
            "ln_2.weight",
            "ffn.fc1.weight",
            "ffn.fc2.weight",
            "ffn.fc3.weight",
        )
    ]
    assert "pos_embedding.weight" not in sd
    assert gqa_model.num_params() == 163072


@torch.inference_mode()
def test_gqa_cached_equals_uncached(gqa_model):
    x = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(5678))
    full = gqa_model(x)[0]
    logits, _, past = gqa_model(x[:, :8], use_cache=True)
    steps = [logits]
    for t in range(8, 24):
        logits, _, past = gqa_model(x[:, t : t + 1], past_kv=past, use_cache=True)
        steps.append(logits)
    assert (torch.cat(steps, 1) - full).abs().max() <= TOL
    assert [tuple(k.shape) for k, v in past] == [(2, 2, 24, 16)] * 2
    assert [tuple(v.shape) for k, v in past] == [(2, 2, 24, 16)] * 2
    cache = gqa_model.new_cache(2)
    gqa_model(x, past_kv=cache, use_cache=True)
    assert tuple(cache.layer(0)[0].shape) == (2, 2, 24, 16)


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


@torch.inference_mode()
def test_gqa_attention_matches_reference_math(gqa_model):
    """Upstream math spelled out: qk-norm before rotate-half RoPE, repeat_interleave, manual causal softmax."""
    attn = gqa_model.blocks[0].attn
    B, T, hd = 2, 12, 16
    x = torch.randn(B, T, 64, generator=torch.Generator().manual_seed(0))
    qkv = F.linear(x, attn.c_qkv.weight, attn.c_qkv.bias)
    q, k, v = qkv.split([64, 32, 32], dim=-1)
    q = q.view(B, T, 4, hd).transpose(1, 2)
    k = k.view(B, T, 2, hd).transpose(1, 2)
    v = v.view(B, T, 2, hd).transpose(1, 2)
    q, k = _rms(q, attn.q_norm.weight), _rms(k, attn.k_norm.weight)
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    fr = torch.outer(torch.arange(T).float(), inv)
    emb = torch.cat([fr, fr], -1)

    def rope(t):
        rot = torch.cat([-t[..., hd // 2 :], t[..., : hd // 2]], -1)
        return t * emb.cos() + rot * emb.sin()

    q, k = rope(q), rope(k)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
    att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
    ref = F.linear((att @ v).transpose(1, 2).reshape(B, T, 64), attn.proj.weight, attn.proj.bias)
    got, _ = attn(x, gqa_model.rope, 0, None, None, 0)
    assert (got - ref).abs().max() <= 1e-5


def test_kvcache_overflow_is_an_error(gqa_model):
    cache = KVCache(gqa_model.config, 1, max_len=4)
    with torch.inference_mode(), pytest.raises(ValueError):
        gqa_model(torch.zeros(1, 5, dtype=torch.long), past_kv=cache, use_cache=True)
    with pytest.raises(ValueError, match="context_length"):
        gqa_model(torch.zeros(1, 129, dtype=torch.long))

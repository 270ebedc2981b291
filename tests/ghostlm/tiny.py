"""Tiny GhostLM models for engine and batching tests: fast, seeded, with sharp enough logits."""

from __future__ import annotations

import torch

from ghostlm import GhostLM, GhostLMConfig


def tiny(variant: str, *, vocab_size: int = 96, context_length: int = 48) -> GhostLM:
    """`legacy` (learned positions, GELU, LayerNorm), `modern` (RoPE, SwiGLU, RMSNorm) or `gqa` (modern with 2
    KV heads and QK-norm); seeded, so the same arguments give the same weights."""
    torch.manual_seed(0)
    modern = variant != "legacy"
    cfg = GhostLMConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        d_model=32,
        n_heads=4,
        n_layers=2,
        d_ff=64,
        dropout=0.0,
        use_rope=modern,
        use_swiglu=modern,
        use_rmsnorm=modern,
        n_kv_heads=2 if variant == "gqa" else None,
        use_qk_norm=variant == "gqa",
    )
    m = GhostLM(cfg)
    with torch.no_grad():  # sharper logits than the 0.02 init, so outputs depend visibly on the context
        m.token_embedding.weight.mul_(20)
    return m.eval()

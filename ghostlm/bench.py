"""Generation throughput benchmark: ``python -m ghostlm.bench`` prints ONE JSON object.

Model: the 81M ``ghost-wide-v0.9`` shape with random weights (throughput does not depend on the values).
Compared, all greedy, same prompt:

(a) ``full_recompute``: upstream Space behaviour, a whole-context forward per new token, no cache;
(b) ``kv_cache``: our :class:`~ghostlm.engine.Engine` (prefill once, one token per forward, preallocated cache);
(c) ``hf_llama``: transformers ``LlamaForCausalLM`` of the same shape (same weights copied in, so the greedy
    tokens should agree) via ``.generate(do_sample=False)``.

Tokens/s = new tokens / wall time including prefill; the best of ``--repeats`` runs is reported for (b) and (c),
run interleaved so that load from other processes hits both alike. (a) is slow (a full forward per token), so
it runs ``--full-repeats`` times (default 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .config import GhostLMConfig
from .engine import Engine, full_recompute_generate
from .model import GhostLM
from .sampling import GREEDY

logger = logging.getLogger(__name__)


def _best_time(fn: Callable[[], list[int]], repeats: int) -> tuple[float, list[int]]:
    best, out = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def build_hf_llama(model: GhostLM) -> Any:
    """A transformers Llama with our shape AND our weights (q/k/v split out of c_qkv)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf_cfg = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.swiglu_hidden,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.kv_heads,
        max_position_embeddings=c.context_length,
        rms_norm_eps=1e-6,
        rope_theta=c.rope_base,
        attention_bias=c.bias,
        mlp_bias=False,
        tie_word_embeddings=True,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    hf_cfg._attn_implementation = "sdpa"
    hf = LlamaForCausalLM(hf_cfg).eval()
    q_size, kv_size = c.n_heads * c.head_dim, c.kv_heads * c.head_dim
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(model.token_embedding.weight)
        hf.model.norm.weight.copy_(model.ln_f.weight)
        for ours, theirs in zip(model.blocks, hf.model.layers):
            w = ours.attn.c_qkv.weight
            a = theirs.self_attn
            a.q_proj.weight.copy_(w[:q_size])
            a.k_proj.weight.copy_(w[q_size : q_size + kv_size])
            a.v_proj.weight.copy_(w[q_size + kv_size :])
            if c.bias:
                b = ours.attn.c_qkv.bias
                a.q_proj.bias.copy_(b[:q_size])
                a.k_proj.bias.copy_(b[q_size : q_size + kv_size])
                a.v_proj.bias.copy_(b[q_size + kv_size :])
                a.o_proj.bias.copy_(ours.attn.proj.bias)
            a.o_proj.weight.copy_(ours.attn.proj.weight)
            theirs.input_layernorm.weight.copy_(ours.ln_1.weight)
            theirs.post_attention_layernorm.weight.copy_(ours.ln_2.weight)
            theirs.mlp.gate_proj.weight.copy_(ours.ffn.fc1.weight)
            theirs.mlp.up_proj.weight.copy_(ours.ffn.fc2.weight)
            theirs.mlp.down_proj.weight.copy_(ours.ffn.fc3.weight)
    hf.tie_weights()
    return hf


def run(
    new_tokens: int = 100,
    prompt_tokens: int = 128,
    repeats: int = 3,
    skip_hf: bool = False,
    preset: str = "ghost-wide-v0.9",
    full_repeats: int = 1,
) -> dict[str, Any]:
    torch.manual_seed(0)
    config = GhostLMConfig.from_preset(preset, dropout=0.0)
    if prompt_tokens + new_tokens > config.context_length:
        raise SystemExit(f"prompt + new tokens must fit the {config.context_length}-token context")
    model = GhostLM(config).eval()
    prompt = torch.randint(
        0, config.vocab_size, (prompt_tokens,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    engine = Engine(model)
    result: dict[str, Any] = {
        "model": preset,
        "params": model.num_params(),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "full_repeats": full_repeats,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }

    def cached() -> list[int]:
        return list(engine.generate(prompt, max_new_tokens=new_tokens, params=GREEDY, stop_ids=()))

    hf_gen: Callable[[], list[int]] | None = None
    if not skip_hf:
        try:
            import transformers

            hf = build_hf_llama(model)
            ids = torch.tensor([prompt])
            mask = torch.ones_like(ids)

            def hf_gen() -> list[int]:
                # eos_token_id is None in the config, so exactly new_tokens tokens are generated.
                with torch.inference_mode():
                    out = hf.generate(
                        ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, pad_token_id=0
                    )
                return out[0, prompt_tokens:].tolist()

            result["transformers_version"] = transformers.__version__
        except ImportError as e:
            result["hf_llama_error"] = f"transformers unavailable: {e}"

    # Warm-up (allocator, oneDNN kernels), then interleaved timed runs.
    cached()
    if hf_gen is not None:
        hf_gen()
    t_b = t_c = float("inf")
    toks_b: list[int] = []
    toks_c: list[int] = []
    for _ in range(repeats):
        t, toks_b = _best_time(cached, 1)
        t_b = min(t_b, t)
        if hf_gen is not None:
            t, toks_c = _best_time(hf_gen, 1)
            t_c = min(t_c, t)
    t_a, toks_a = _best_time(
        lambda: full_recompute_generate(model, prompt, max_new_tokens=new_tokens, params=GREEDY, stop_ids=()),
        full_repeats,
    )
    result["full_recompute_tok_s"] = round(new_tokens / t_a, 2)
    result["kv_cache_tok_s"] = round(new_tokens / t_b, 2)
    result["kv_cache_vs_full_recompute"] = round(t_a / t_b, 2)
    result["tokens_match_full_recompute"] = toks_a == toks_b
    if hf_gen is not None:
        result["hf_llama_tok_s"] = round(new_tokens / t_c, 2)
        result["kv_cache_vs_hf_llama"] = round(t_c / t_b, 2)
        result["tokens_match_hf_llama"] = toks_c == toks_b
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ghostlm.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of (b) and (c); best is reported")
    ap.add_argument("--full-repeats", type=int, default=1, help="timed runs of the slow (a) baseline")
    ap.add_argument("--skip-hf", action="store_true", help="do not benchmark transformers LlamaForCausalLM")
    ap.add_argument("--preset", default="ghost-wide-v0.9")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = run(args.new_tokens, args.prompt_tokens, args.repeats, args.skip_hf, args.preset, args.full_repeats)
    print(json.dumps(res))  # the benchmark's output contract: one JSON object on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())

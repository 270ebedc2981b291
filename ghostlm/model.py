"""GhostLM: a small decoder-only transformer, checkpoint-compatible with upstream joemunene-by/GhostLM.

One class covers every upstream variant, selected by config flags:

* legacy  - learned position embeddings, GELU MLP, LayerNorm (eps 1e-5), biases (GPT-2 style)
* modern  - RoPE (rotate-half), SwiGLU, RMSNorm (computed in float32)
* GQA     - ``n_kv_heads < n_heads``; query head ``i`` reads KV head ``i // n_rep`` (repeat_interleave)
* QK-norm - RMSNorm(head_dim, eps 1e-6) on q and k per head, BEFORE RoPE

Parameter names are exactly upstream's (``token_embedding``, ``pos_embedding``, ``blocks.N.ln_1``,
``attn.c_qkv``, ``attn.proj``, ``attn.q_norm``/``k_norm``, ``ffn.fc1/fc2/fc3``, ``ln_f``, ``lm_head``) so an
upstream ``state_dict`` loads with ``strict=True``. Buffers (RoPE tables) are non-persistent, like upstream.

The KV cache comes in two forms, both accepted by ``forward(past_kv=...)``:

* upstream's list of ``(k, v)`` per layer, grown by ``torch.cat`` (kept for compatibility and tests);
* :class:`KVCache`, preallocated once per request and written in place. This is what the engine uses:
  no re-allocation per token, so per-step cost stays flat as the sequence grows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GhostLMConfig

LayerKV = tuple[torch.Tensor, torch.Tensor]


class KVCache:
    """Preallocated per-request key/value cache: ``k[layer]`` has shape (B, n_kv_heads, max_len, head_dim).

    K is stored after QK-norm and RoPE (like upstream), so cached keys never need re-rotation.
    ``length`` is the number of positions filled; it is advanced by the model after all layers ran.
    """

    def __init__(
        self,
        config: GhostLMConfig,
        batch_size: int = 1,
        max_len: int | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_len = max_len or config.context_length
        shape = (config.n_layers, batch_size, config.kv_heads, self.max_len, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor, length: int) -> KVCache:
        """A cache over existing storage of shape (n_layers, B, n_kv_heads, max_len, head_dim), ``length`` filled."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.max_len, cache.length = k, v, k.size(3), length
        return cache

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> LayerKV:
        """Write this step's k/v at ``length`` and return views over everything cached so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > max_len {self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def layer(self, i: int) -> LayerKV:
        return self.k[i, :, :, : self.length], self.v[i, :, :, : self.length]


class BatchKVCache:
    """Slots for continuous batching: ``k[layer]`` is (slots, n_kv_heads, max_len, head_dim), one request a slot.

    Every row has its own length (= its next absolute position), so rows of different lengths decode together.
    Rows decoded together are always the prefix ``0..n-1``: :meth:`move` compacts when a row leaves, and a
    joining request is prefilled straight into slot ``n`` through :meth:`row` (no per-request cache, no copy).
    Zero-initialised, so the masked tail of a short row never holds NaN (0 * NaN would poison the attention).
    """

    def __init__(
        self,
        config: GhostLMConfig,
        slots: int,
        max_len: int | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_len = max_len or config.context_length
        self.slots = slots
        shape = (config.n_layers, slots, config.kv_heads, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @staticmethod
    def bytes_per_slot(config: GhostLMConfig, max_len: int, dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * config.n_layers * config.kv_heads * max_len * config.head_dim * itemsize

    def row(self, slot: int, length: int) -> KVCache:
        """Slot ``slot`` as a one-row :class:`KVCache` (a view: what the model writes there lands in the batch)."""
        return KVCache.over(self.k[:, slot : slot + 1], self.v[:, slot : slot + 1], length)

    def move(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def grown(self, slots: int) -> BatchKVCache:
        """A copy with more slots (existing rows kept)."""
        new = BatchKVCache.__new__(BatchKVCache)
        new.max_len, new.slots = self.max_len, slots
        shape = (self.k.size(0), slots, *self.k.shape[2:])
        new.k = torch.zeros(shape, device=self.k.device, dtype=self.k.dtype)
        new.v = torch.zeros(shape, device=self.v.device, dtype=self.v.dtype)
        new.k[:, : self.slots] = self.k
        new.v[:, : self.slots] = self.v
        return new


PastKV = Sequence[LayerKV] | KVCache | None


class RMSNorm(nn.Module):
    """Root-mean-square norm. Computed in float32 so fp16/bf16 activations don't lose the mean-square."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE tables (cos/sin for every absolute position up to context_length)."""

    inv_freq: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        t = torch.arange(max_len, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (max_len, head_dim): non-interleaved layout
        # persistent=False: derived from config, never in the state_dict (upstream does the same)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        """x: (B, H, T, hd), rotated as if its first position were ``offset``."""
        T = x.size(-2)
        cos = self.cos[offset : offset + T].to(x.dtype)
        sin = self.sin[offset : offset + T].to(x.dtype)
        half = x.size(-1) // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, H, 1, hd), row ``b`` rotated for absolute position ``positions[b]``."""
        cos = self.cos[positions].to(x.dtype)[:, None, None, :]
        sin = self.sin[positions].to(x.dtype)[:, None, None, :]
        half = x.size(-1) // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GhostLMConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        # One fused projection; output rows are [Q (n_heads*hd) | K (n_kv*hd) | V (n_kv*hd)].
        qkv_out = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        self.c_qkv = nn.Linear(config.d_model, qkv_out, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.use_qk_norm:
            self.q_norm: RMSNorm | None = RMSNorm(self.head_dim, eps=1e-6)
            self.k_norm: RMSNorm | None = RMSNorm(self.head_dim, eps=1e-6)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding | None,
        past_len: int,
        layer_past: LayerKV | None,
        cache: KVCache | None,
        layer_idx: int,
        positions: torch.Tensor | None = None,
        batch: BatchKVCache | None = None,
    ) -> tuple[torch.Tensor, LayerKV]:
        B, T, C = x.shape
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv_heads
        q, k, v = self.c_qkv(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(B, T, nh, hd).transpose(1, 2)
        k = k.view(B, T, nkv, hd).transpose(1, 2)
        v = v.view(B, T, nkv, hd).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # before RoPE, as upstream
        if positions is not None:
            assert batch is not None
            return self._decode_rows(q, k, v, rope, positions, batch, layer_idx), (k, v)
        if rope is not None:
            q, k = rope(q, past_len), rope(k, past_len)

        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
            q = q.to(k.dtype)  # a reduced-precision cache: attend in its dtype (SDPA accumulates in fp32)
        elif layer_past is not None:
            k = torch.cat((layer_past[0], k), dim=2)
            v = torch.cat((layer_past[1], v), dim=2)
        present = (k, v)  # compact n_kv_heads, like upstream's cache

        # Mask: with no past, plain causal. One new query attends to everything cached: no mask.
        # Several new queries after a past (chunked prefill / speculative) need the causal mask shifted
        # by past_len: query i (absolute past_len+i) sees keys 0..past_len+i.
        S = k.size(2)
        attn_mask = None
        is_causal = False
        if T > 1:
            if S == T:
                is_causal = True
            else:
                attn_mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
        # enable_gqa expands K/V heads exactly like repeat_interleave(n_rep, dim=1), without copying.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=nkv != nh,
        )
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y)), present

    def _decode_rows(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rope: RotaryEmbedding | None,
        positions: torch.Tensor,
        batch: BatchKVCache,
        layer_idx: int,
    ) -> torch.Tensor:
        """One new token per row, row ``b`` at its own position: write its k/v, attend to its own prefix."""
        n = q.size(0)
        if rope is not None:
            q, k = rope.at(q, positions), rope.at(k, positions)
        rows = torch.arange(n, device=q.device)
        kc, vc = batch.k[layer_idx], batch.v[layer_idx]
        kc[rows, :, positions] = k[:, :, 0].to(kc.dtype)
        vc[rows, :, positions] = v[:, :, 0].to(vc.dtype)
        S = int(positions.max()) + 1
        # Row b sees keys 0..positions[b]; the masked tail (other rows are longer) gets weight exactly 0.
        mask = (torch.arange(S, device=q.device)[None, :] <= positions[:, None])[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q.to(kc.dtype),
            kc[:n, :, :S],
            vc[:n, :, :S],
            attn_mask=mask,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        y = y.to(q.dtype).transpose(1, 2).reshape(n, 1, self.n_heads * self.head_dim)
        out: torch.Tensor = self.proj(y)
        return out


class MLP(nn.Module):
    """Legacy GPT-2 FFN: fc2(gelu(fc1(x))), exact erf GELU."""

    def __init__(self, config: GhostLMConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.fc2 = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.fc2(F.gelu(self.fc1(x))))
        return out


class SwiGLU(nn.Module):
    """fc3(silu(fc1(x)) * fc2(x)). Never biased (upstream ignores config.bias here)."""

    def __init__(self, config: GhostLMConfig) -> None:
        super().__init__()
        hidden = config.swiglu_hidden
        self.fc1 = nn.Linear(config.d_model, hidden, bias=False)  # gate
        self.fc2 = nn.Linear(config.d_model, hidden, bias=False)  # up
        self.fc3 = nn.Linear(hidden, config.d_model, bias=False)  # down
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.fc3(F.silu(self.fc1(x)) * self.fc2(x)))
        return out


def make_norm(config: GhostLMConfig) -> nn.Module:
    return RMSNorm(config.d_model, eps=1e-6) if config.use_rmsnorm else nn.LayerNorm(config.d_model, eps=1e-5)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then x + ffn(ln_2(x))."""

    def __init__(self, config: GhostLMConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.ffn: nn.Module = SwiGLU(config) if config.use_swiglu else MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding | None,
        past_len: int,
        layer_past: LayerKV | None,
        cache: KVCache | None,
        layer_idx: int,
        positions: torch.Tensor | None = None,
        batch: BatchKVCache | None = None,
    ) -> tuple[torch.Tensor, LayerKV]:
        a, present = self.attn(self.ln_1(x), rope, past_len, layer_past, cache, layer_idx, positions, batch)
        x = x + a
        x = x + self.ffn(self.ln_2(x))
        return x, present


_UNSUPPORTED = ("attn_gate", "value_residual", "use_moe")


def _rope_for(config: GhostLMConfig) -> RotaryEmbedding | None:
    return (
        RotaryEmbedding(config.head_dim, config.context_length, config.rope_base) if config.use_rope else None
    )


class GhostLM(nn.Module):
    def __init__(self, config: GhostLMConfig) -> None:
        super().__init__()
        on = [name for name in _UNSUPPORTED if getattr(config, name)]
        if on:
            raise NotImplementedError(
                f"GhostLM options not supported by this implementation: {', '.join(on)}"
            )
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        # Learned positions only for legacy models; RoPE models have no pos_embedding key at all.
        self.pos_embedding = None if config.use_rope else nn.Embedding(config.context_length, config.d_model)
        self.rope = _rope_for(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # Scaled init for residual projections (GPT-2): keeps the residual stream's variance flat with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "ffn.fc3.weight")) or (
                name.endswith("ffn.fc2.weight") and not config.use_swiglu
            ):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        # Tie AFTER init: one tensor, stored under both names in the state_dict (upstream layout).
        self.lm_head.weight = self.token_embedding.weight
        # KV-cache precision; None = the activations' dtype. ghostlm.precision sets bfloat16 under int8 weights:
        # with many rows decoding together the cache, not the weights, is most of what each step reads.
        self.kv_dtype: torch.dtype | None = None

    @classmethod
    def from_state_dict(cls, config: GhostLMConfig, state: Mapping[str, torch.Tensor]) -> GhostLM:
        """A model whose parameters ARE ``state``'s tensors (same storage, no copy), with no random init.

        Built on the meta device, so loading an 81M checkpoint holds one copy of the weights, not two (a random
        init plus the file's). ``state`` must match ``config`` exactly (``strict``); the caller hands it over.
        """
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state, strict=True, assign=True)
        # Not in any state dict: the RoPE tables (derived from config, still on meta) and the tie, which
        # ``assign`` broke by giving the head and the embedding a Parameter each.
        model.rope = _rope_for(config)
        model.lm_head.weight = model.token_embedding.weight
        return model

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Unique parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def activation_dtype(self) -> torch.dtype:
        """The residual stream's dtype. Read from the final norm: norms are never quantized or narrowed, while
        the embedding table may be stored narrower than the activations (bfloat16 under int8 weights)."""
        weight = self.ln_f.weight
        assert isinstance(weight, torch.Tensor)
        return weight.dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        return self.kv_dtype or self.activation_dtype

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        device = self.token_embedding.weight.device
        return KVCache(self.config, batch_size, max_len, device=device, dtype=self.cache_dtype)

    def decode_rows(self, tokens: torch.Tensor, positions: torch.Tensor, batch: BatchKVCache) -> torch.Tensor:
        """Continuous batching step: ``tokens[b]`` is row ``b``'s next token (slot ``b`` of ``batch``), at
        absolute position ``positions[b]``. Writes each row's k/v at its position and returns (n, vocab) logits.

        Each row attends only to its own prefix, so a row's output does not depend on what else is batched.
        """
        n = tokens.size(0)
        if n > batch.slots:
            raise ValueError(f"{n} rows but the batch cache has {batch.slots} slots")
        if int(positions.max()) >= min(batch.max_len, self.config.context_length):
            raise ValueError("a row's position is beyond the cache / context length")
        x = self.token_embedding(tokens.view(n, 1)).to(self.activation_dtype)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding(positions).view(n, 1, -1)
        for i, block in enumerate(self.blocks):
            x, _ = block(x, self.rope, 0, None, None, i, positions, batch)
        logits: torch.Tensor = self.lm_head(self.ln_f(x))[:, 0]
        return logits

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        past_kv: PastKV = None,
        use_cache: bool = False,
        *,
        last_only: bool = False,
    ) -> (
        tuple[torch.Tensor, torch.Tensor | None]
        | tuple[torch.Tensor, torch.Tensor | None, list[LayerKV] | KVCache]
    ):
        """Upstream-compatible forward.

        Returns ``(logits, loss)``, or ``(logits, loss, presents)`` when ``use_cache``. ``presents`` is a list of
        ``(k, v)`` per layer of shape (B, n_kv_heads, T_total, hd) - or the same :class:`KVCache` object if one
        was passed in. ``last_only`` (ours) computes logits for the final position only: the 50k-wide head is
        the most expensive matmul at prefill and generation needs just the last row.
        """
        _B, T = idx.shape
        cache: KVCache | None = None
        layer_pasts: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if isinstance(past_kv, KVCache):
            cache = past_kv
        elif past_kv is not None:
            layer_pasts = list(past_kv)
        if cache is not None:
            past_len = cache.length
        elif layer_pasts:
            past_len = layer_pasts[0][0].size(2)
        else:
            past_len = 0
        if past_len + T > self.config.context_length:
            raise ValueError(
                f"sequence length {past_len + T} exceeds context_length {self.config.context_length}"
            )

        x = self.token_embedding(idx).to(self.activation_dtype)
        if self.pos_embedding is not None:
            pos = torch.arange(past_len, past_len + T, device=idx.device)
            x = x + self.pos_embedding(pos)
        x = self.drop(x)

        presents: list[LayerKV] = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, self.rope, past_len, layer_pasts[i] if layer_pasts else None, cache, i)
            if use_cache and cache is None:
                presents.append(present)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)

        loss = None
        if targets is not None:
            # -1 marks positions without a target (upstream convention, e.g. the last position).
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
            )
        if use_cache:
            return logits, loss, (cache if cache is not None else presents)
        return logits, loss

"""Streaming generation with a KV cache: prefill the prompt once, then one token per forward.

Design choices:

* No state between requests. Each ``generate`` call allocates its own :class:`~ghostlm.model.KVCache`
  (sized ``min(context_length, prompt + max_new_tokens)``) and drops it when the stream ends, so memory does not
  grow across requests and one engine can serve requests one after another from a worker thread.
* Long prompts: if the prompt alone is at least ``context_length`` tokens, keep only the newest
  ``context_length - max_new_tokens`` (at least 1). The trim is logged and reported on the returned stream
  (``stream.trimmed``) and on ``engine.last_trim``, so callers can tell the user.
* Context exhaustion: when the cache is full we STOP (``stop_reason == "context_length"``) rather than sliding:
  legacy models have learned positions only up to ``context_length``, and re-prefilling a sliding window costs a
  full forward per token. Callers are expected to budget (DESIGN.md: budget = ctx - max_new_tokens - reserve).
* Every model call runs under ``torch.inference_mode()``, entered per step rather than around ``yield``: the mode
  is thread-local and must not leak into the consumer's code while the generator is suspended.
* ``should_stop`` is polled before every token (cancel / timeout); the stream then ends with ``"cancelled"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .model import GhostLM, KVCache
from .sampling import Sampler, SamplingParams
from .tokenizer import END_ID, Tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrimInfo:
    original_tokens: int
    kept_tokens: int

    @property
    def dropped_tokens(self) -> int:
        return self.original_tokens - self.kept_tokens


class GenerationStream(Iterator[int]):
    """Iterator of generated token ids (stop ids are not yielded) with request metadata.

    ``trimmed``: TrimInfo if the prompt was cut, else None. ``stop_reason`` (set when the stream ends):
    "stop_token", "max_new_tokens", "context_length" or "cancelled". ``tokens``: ids yielded so far.
    """

    def __init__(self, gen: Iterator[int], trimmed: TrimInfo | None) -> None:
        self._gen = gen
        self.trimmed = trimmed
        self.stop_reason: str | None = None
        self.tokens: list[int] = []

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> int:
        tok = next(self._gen)
        self.tokens.append(tok)
        return tok

    def close(self) -> None:
        self._gen.close()


class Engine:
    def __init__(self, model: GhostLM, tokenizer: Tokenizer | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.last_trim: TrimInfo | None = None  # convenience for single-consumer callers

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def _device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def _default_stop_ids(self) -> tuple[int, ...]:
        return (self.tokenizer.special.end,) if self.tokenizer is not None else (END_ID,)

    def trim_prompt(
        self, prompt_ids: Sequence[int], max_new_tokens: int
    ) -> tuple[list[int], TrimInfo | None]:
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ValueError("prompt_ids must contain at least one token")
        ctx = self.context_length
        if len(ids) < ctx:
            return ids, None
        keep = max(1, ctx - max_new_tokens)
        info = TrimInfo(len(ids), keep)
        logger.warning(
            "prompt of %d tokens exceeds the %d-token context; keeping the newest %d", len(ids), ctx, keep
        )
        return ids[-keep:], info

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        params: SamplingParams | None = None,
        stop_ids: Sequence[int] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GenerationStream:
        """Stream up to ``max_new_tokens`` ids. Stops early on a stop id (not yielded) or ``should_stop()``."""
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        ids, trim = self.trim_prompt(prompt_ids, max_new_tokens)
        self.last_trim = trim
        stops = frozenset(self._default_stop_ids() if stop_ids is None else stop_ids)
        stream = GenerationStream(iter(()), trim)
        stream._gen = self._run(ids, max_new_tokens, params or SamplingParams(), stops, should_stop, stream)
        return stream

    def _run(
        self,
        ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        stops: frozenset[int],
        should_stop: Callable[[], bool] | None,
        stream: GenerationStream,
    ) -> Iterator[int]:
        model, ctx, device = self.model, self.context_length, self._device()
        if max_new_tokens == 0:
            stream.stop_reason = "max_new_tokens"
            return
        if should_stop is not None and should_stop():
            stream.stop_reason = "cancelled"
            return
        sampler = Sampler(params, model.config.vocab_size, ids, device)
        cache: KVCache | None = model.new_cache(1, max_len=min(ctx, len(ids) + max_new_tokens))
        try:
            with torch.inference_mode():
                logits = model(
                    torch.tensor([ids], device=device), past_kv=cache, use_cache=True, last_only=True
                )[0][0, -1]
            for step in range(max_new_tokens):
                with torch.inference_mode():
                    tok = sampler(logits)
                if tok in stops:
                    stream.stop_reason = "stop_token"
                    return
                yield tok
                if step == max_new_tokens - 1:
                    stream.stop_reason = "max_new_tokens"
                    return
                if should_stop is not None and should_stop():
                    stream.stop_reason = "cancelled"
                    return
                if cache.length >= ctx:
                    stream.stop_reason = "context_length"
                    logger.info("generation stopped: context of %d tokens is full", ctx)
                    return
                with torch.inference_mode():
                    logits = model(
                        torch.tensor([[tok]], device=device), past_kv=cache, use_cache=True, last_only=True
                    )[0][0, -1]
        finally:
            cache = None  # release the per-request cache as soon as the stream ends or is closed


def full_recompute_generate(
    model: GhostLM,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    params: SamplingParams | None = None,
    stop_ids: Sequence[int] = (END_ID,),
) -> list[int]:
    """Upstream Space behaviour: a whole-context forward (all positions' logits) for every new token, no cache.

    Kept as the baseline for the benchmark and as a reference in tests. The window slides at context_length.
    """
    params = params or SamplingParams()
    ctx = model.config.context_length
    device = model.token_embedding.weight.device
    seq = [int(i) for i in prompt_ids]
    sampler = Sampler(params, model.config.vocab_size, seq, device)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([seq[-ctx:]], device=device))[0][0, -1]
            tok = sampler(logits)
            if tok in stop_ids:
                break
            out.append(tok)
            seq.append(tok)
    return out

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
  full forward per token. Callers are expected to budget (prompt <= ctx - max_new_tokens - reserve: core/budget.py).
* Every model call runs under ``torch.inference_mode()``, entered per step rather than around ``yield``: the mode
  is thread-local and must not leak into the consumer's code while the generator is suspended.
* ``should_stop`` is polled before every token (cancel / timeout); the stream then ends with ``"cancelled"``.

:class:`ContinuousBatch` serves many requests from one thread: each :meth:`ContinuousBatch.step` prefills one
chunk of the oldest waiting prompt (so new arrivals interleave with running decodes instead of waiting behind
them), samples one token for every running row, and runs ONE forward for all of them
(:meth:`GhostLM.decode_rows`, per-row positions). Rows join and leave between steps; each keeps its own
sampler (seed, repetition penalty), stop ids and limits, and its greedy output equals running it alone.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Generator, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .model import BatchKVCache, GhostLM
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

    def __init__(
        self, run: Callable[[GenerationStream], Generator[int, None, None]], trimmed: TrimInfo | None
    ) -> None:
        self.trimmed = trimmed
        self.stop_reason: str | None = None
        self.tokens: list[int] = []
        self._gen = run(self)  # the generator records stop_reason on this stream

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
        sampling = params or SamplingParams()
        return GenerationStream(
            lambda stream: self._run(ids, max_new_tokens, sampling, stops, should_stop, stream), trim
        )

    def _run(
        self,
        ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        stops: frozenset[int],
        should_stop: Callable[[], bool] | None,
        stream: GenerationStream,
    ) -> Generator[int, None, None]:
        model, ctx, device = self.model, self.context_length, self._device()
        if max_new_tokens == 0:
            stream.stop_reason = "max_new_tokens"
            return
        if should_stop is not None and should_stop():
            stream.stop_reason = "cancelled"
            return
        sampler = Sampler(params, model.config.vocab_size, ids, device)
        cache = model.new_cache(1, max_len=min(ctx, len(ids) + max_new_tokens))
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
            del cache  # release the per-request cache as soon as the stream ends or is closed


@dataclass(frozen=True)
class BatchEvent:
    """One row's news from a :meth:`ContinuousBatch.step`: a new ``token``, or the end (``stop_reason`` set,
    same values as :attr:`GenerationStream.stop_reason`). A step can carry a row's last token and its end."""

    key: Hashable
    token: int | None
    stop_reason: str | None = None


@dataclass(eq=False)
class _Row:
    key: Hashable
    ids: list[int]
    max_new_tokens: int
    sampler: Sampler
    stops: frozenset[int]
    trimmed: TrimInfo | None
    slot: int | None = None  # the batch slot its prompt is being prefilled into
    prompt_done: int = 0
    logits: torch.Tensor | None = None  # for the next token
    length: int = 0  # positions cached (= the next token's position)
    generated: int = 0
    next_token: int = 0
    tokens: list[int] = field(default_factory=list)


class ContinuousBatch:
    """Continuous batching over one model, driven by ONE thread (not thread-safe by design).

    ``max_batch`` rows at most (prefilling + decoding); ``max_cache_bytes`` lowers that so the batched KV cache
    (``max_batch`` slots x ``context_length`` positions) stays within the bound. The cache grows with demand
    and is released whenever the batch empties. ``prefill_chunk`` tokens of one prompt are prefilled per step.
    """

    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        *,
        prefill_chunk: int = 256,
        max_cache_bytes: int | None = None,
    ) -> None:
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError("max_batch and prefill_chunk must be at least 1")
        self.engine = engine
        self.model = engine.model
        self._device = self.model.token_embedding.weight.device
        self._dtype = self.model.cache_dtype
        ctx = engine.context_length
        per_slot = BatchKVCache.bytes_per_slot(self.model.config, ctx, self._dtype)
        self.capacity = max_batch
        if max_cache_bytes is not None:
            self.capacity = max(1, min(max_batch, max_cache_bytes // per_slot))
        self.prefill_chunk = prefill_chunk
        self._rows: dict[Hashable, _Row] = {}
        self._prefilling: deque[_Row] = deque()
        self._decoding: list[_Row] = []  # index == cache slot
        self._cache: BatchKVCache | None = None

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def full(self) -> bool:
        return len(self._rows) >= self.capacity

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def add(
        self,
        key: Hashable,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        params: SamplingParams | None = None,
        stop_ids: Sequence[int] | None = None,
    ) -> TrimInfo | None:
        """Queue a request for prefill (it joins the decoding rows once its prompt is in). Returns the trim."""
        if key in self._rows:
            raise ValueError(f"request {key!r} is already in the batch")
        if self.full:
            raise ValueError(f"the batch is full ({self.capacity} rows)")
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        ids, trim = self.engine.trim_prompt(prompt_ids, max_new_tokens)
        stops = frozenset(self.engine._default_stop_ids() if stop_ids is None else stop_ids)
        sampler = Sampler(params or SamplingParams(), self.model.config.vocab_size, ids, self._device)
        row = _Row(key, ids, max_new_tokens, sampler, stops, trim)
        self._rows[key] = row
        self._prefilling.append(row)
        return trim

    def remove(self, key: Hashable) -> None:
        """Drop a request now (cancel / timeout); the other rows are untouched. Unknown keys are ignored."""
        row = self._rows.pop(key, None)
        if row is None:
            return
        if row in self._prefilling:
            self._prefilling.remove(row)  # its slot lies past the decoding rows: nothing to compact
        else:
            with torch.inference_mode():  # the cache is an inference tensor: compaction must run in the mode
                self._drop_slot(row)
        if not self._rows:
            self._cache = None  # idle: give the memory back

    def tokens(self, key: Hashable) -> list[int]:
        return list(self._rows[key].tokens)

    def step(self) -> list[BatchEvent]:
        """Prefill one chunk, emit one token per running row, advance them all with one forward."""
        events: list[BatchEvent] = []
        with torch.inference_mode():
            if self._prefilling:
                self._prefill_chunk()
            finished: list[_Row] = []
            for row in self._decoding:
                reason = self._sample(row, events)
                if reason is not None:
                    events.append(BatchEvent(row.key, None, reason))
                    finished.append(row)
            for row in finished:
                self._rows.pop(row.key, None)
                self._drop_slot(row)
            if self._decoding:
                assert self._cache is not None
                tokens = torch.tensor([r.next_token for r in self._decoding], device=self._device)
                positions = torch.tensor([r.length for r in self._decoding], device=self._device)
                logits = self.model.decode_rows(tokens, positions, self._cache)
                for i, row in enumerate(self._decoding):
                    row.logits = logits[i]
                    row.length += 1
        if not self._rows:
            self._cache = None
        return events

    # --- internals -------------------------------------------------------------------------------------
    def _prefill_chunk(self) -> None:
        """Prefill the next chunk of the oldest waiting prompt straight into the slot it will decode in."""
        row = self._prefilling[0]
        if row.max_new_tokens == 0:  # nothing to generate: no forward at all (like Engine.generate)
            self._prefilling.popleft()
            row.prompt_done = len(row.ids)
            row.logits = None
            self._decoding.append(row)
            return
        # Only the oldest prompt prefills, so nothing joins before it: its slot is always just past the decoding
        # rows. If some of them left since its last chunk, the prefix shrank and it follows (rare, and cheap).
        slot = len(self._decoding)
        cache = self._slots_for(slot + 1)
        if row.slot is not None and row.slot != slot:
            cache.move(row.slot, slot, row.prompt_done)
        row.slot = slot
        chunk = row.ids[row.prompt_done : row.prompt_done + self.prefill_chunk]
        logits = self.model(
            torch.tensor([chunk], device=self._device),
            past_kv=cache.row(slot, row.prompt_done),
            use_cache=True,
            last_only=True,
        )[0][0, -1]
        row.prompt_done += len(chunk)
        if row.prompt_done >= len(row.ids):
            self._prefilling.popleft()
            row.slot, row.length, row.logits = None, row.prompt_done, logits
            self._decoding.append(row)

    def _slots_for(self, n: int) -> BatchKVCache:
        """The batch cache with at least ``n`` slots: grown by doubling (rows kept), created on first use."""
        if self._cache is None or self._cache.slots < n:
            want = min(self.capacity, max(4, 2 * n))
            self._cache = (
                self._cache.grown(want)
                if self._cache is not None
                else BatchKVCache(
                    self.model.config,
                    want,
                    self.engine.context_length,
                    device=self._device,
                    dtype=self._dtype,
                )
            )
        return self._cache

    def _sample(self, row: _Row, events: list[BatchEvent]) -> str | None:
        """The alone-path order: sample, stop id?, emit, limit?, context full? Returns the stop reason."""
        if row.max_new_tokens == 0 or row.logits is None:
            return "max_new_tokens"
        tok = row.sampler(row.logits)
        if tok in row.stops:
            return "stop_token"
        row.tokens.append(tok)
        row.generated += 1
        events.append(BatchEvent(row.key, tok))
        if row.generated >= row.max_new_tokens:
            return "max_new_tokens"
        if row.length >= self.engine.context_length:
            logger.info("generation stopped: context of %d tokens is full", self.engine.context_length)
            return "context_length"
        row.next_token = tok
        return None

    def _drop_slot(self, row: _Row) -> None:
        try:
            slot = self._decoding.index(row)
        except ValueError:
            return
        last = self._decoding[-1]
        if last is not row:
            assert self._cache is not None
            self._cache.move(len(self._decoding) - 1, slot, last.length)
            self._decoding[slot] = last
        self._decoding.pop()


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

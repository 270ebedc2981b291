"""GhostLM backend: a local GhostLM checkpoint run by ``ghostlm.Engine`` with a KV cache, streamed as text."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING

from core.generators.base import (
    BatchOutput,
    BatchSession,
    FinishReason,
    GenerationParams,
    PromptSpec,
    StreamSession,
    TextStream,
)
from core.generators.errors import GeneratorError
from core.generators.render import clean_text, render_turns, turns_as_dicts

if TYPE_CHECKING:
    from core.settings import Settings
    from ghostlm import Engine, SamplingParams, StreamDecoder, Tokenizer
    from ghostlm.engine import ContinuousBatch

logger = logging.getLogger(__name__)


_FINISH: dict[str, FinishReason] = {
    "stop_token": "stop",
    "max_new_tokens": "length",
    "context_length": "length",
    "cancelled": "cancelled",
}


def sampling_params(params: GenerationParams) -> SamplingParams:
    """GenerationParams → ghostlm.SamplingParams (top_k 0 disables, temperature 0 is greedy)."""
    from ghostlm import SamplingParams

    return SamplingParams(
        temperature=max(0.0, params.temperature),
        top_k=params.top_k or None,
        top_p=min(1.0, params.top_p) if params.top_p > 0 else 1.0,
        repetition_penalty=params.repetition_penalty,
        seed=params.seed,
    )


class GhostLMGenerator:
    """Loads lazily (first use, or :meth:`load` at startup) so importing never touches the weights."""

    name = "ghostlm"

    def __init__(self, model_path: str | Path, settings: Settings | None = None) -> None:
        self.model_path = Path(model_path)
        self.torch_threads = settings.torch_threads if settings is not None else None
        self.dtype = settings.model_dtype if settings is not None else "float32"
        self.device = settings.model_device if settings is not None else "cpu"
        self.kv_cache_bytes = (settings.kv_cache_mb if settings is not None else 256) * 2**20
        self.prefill_chunk = 256  # prompt tokens prefilled per batch step, between decode steps
        self._engine: Engine | None = None
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the checkpoint and tokenizer (idempotent, thread-safe)."""
        with self._lock:
            if self._engine is not None:
                return
            import torch

            from ghostlm import CheckpointError, Engine, TokenizerUnavailableError, load_model, load_tokenizer
            from ghostlm.precision import prepare_model

            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            try:
                model = load_model(self.model_path)
                tokenizer = load_tokenizer(self.model_path)
                tokenizer.encode("probe")  # GPT-2 BPE data may be missing offline: fail now, clearly
            except (CheckpointError, TokenizerUnavailableError) as e:
                raise GeneratorError(f"cannot load the GhostLM model: {e}") from e
            if tokenizer.vocab_size > model.config.vocab_size:
                raise GeneratorError(
                    f"{self.model_path}: tokenizer has {tokenizer.vocab_size} ids but the model only "
                    f"{model.config.vocab_size}; they do not belong together"
                )
            n_params = sum(p.numel() for p in model.parameters())
            try:
                model, dtype, device = prepare_model(model, self.dtype, self.device)
            except ValueError as e:
                raise GeneratorError(f"cannot prepare the GhostLM model: {e}") from e
            self._tokenizer = tokenizer
            self._engine = Engine(model, tokenizer)
            logger.info(
                "GhostLM loaded from %s (%d parameters, context %d, %s on %s)",
                self.model_path,
                n_params,
                model.config.context_length,
                dtype,
                device,
            )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self.load()
        assert self._engine is not None
        return self._engine

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self.load()
        assert self._tokenizer is not None
        return self._tokenizer

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(clean_text(text)))

    def prompt_ids(self, spec: PromptSpec) -> list[int]:
        """Exactly the ids fed to the engine: USER … END … ASSISTANT (user text never yields special ids)."""
        return self.tokenizer.format_chat_prompt(turns_as_dicts(render_turns(spec)))

    def prompt_tokens(self, spec: PromptSpec) -> int:
        return len(self.prompt_ids(spec))

    def open_batch(self, max_batch: int) -> BatchSession:
        """Continuous batching over this one model (``max_batch`` 1: the plain one-at-a-time stream)."""
        if max_batch <= 1:
            return StreamSession(self)
        return GhostLMBatch(self, max_batch)

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> TextStream:
        from ghostlm import StreamDecoder

        tokenizer = self.tokenizer
        ids = self.prompt_ids(spec)
        stream = self.engine.generate(
            ids,
            max_new_tokens=params.max_new_tokens,
            params=sampling_params(params),
            stop_ids=(tokenizer.special.end,),
            should_stop=should_stop,
        )
        if stream.trimmed is not None:
            logger.warning(
                "GhostLM prompt trimmed from %d to %d tokens (the budget should prevent this)",
                stream.trimmed.original_tokens,
                stream.trimmed.kept_tokens,
            )
        decoder = StreamDecoder(tokenizer, skip_special=True)
        try:
            for token in stream:
                piece = decoder.push(token)
                if piece:
                    yield piece
            tail = decoder.flush()
            if tail:
                yield tail
        finally:
            stream.close()
        logger.debug("GhostLM stream ended: %s after %d tokens", stream.stop_reason, len(stream.tokens))
        return _FINISH.get(stream.stop_reason or "", "cancelled")

    def close(self) -> None:
        with self._lock:
            self._engine = None
            self._tokenizer = None


class GhostLMBatch:
    """A :class:`BatchSession` over :class:`ghostlm.engine.ContinuousBatch`: ids in, text pieces out."""

    def __init__(self, generator: GhostLMGenerator, max_batch: int) -> None:
        from ghostlm.engine import ContinuousBatch

        self._gen = generator
        self._batch: ContinuousBatch = ContinuousBatch(
            generator.engine,
            max_batch,
            prefill_chunk=generator.prefill_chunk,
            max_cache_bytes=generator.kv_cache_bytes,
        )
        self.capacity = self._batch.capacity
        self._decoders: dict[Hashable, StreamDecoder] = {}

    def add(
        self, key: Hashable, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> None:
        from ghostlm import StreamDecoder

        tokenizer = self._gen.tokenizer
        trimmed = self._batch.add(
            key,
            self._gen.prompt_ids(spec),
            max_new_tokens=params.max_new_tokens,
            params=sampling_params(params),
            stop_ids=(tokenizer.special.end,),
        )
        if trimmed is not None:
            logger.warning(
                "GhostLM prompt trimmed from %d to %d tokens (the budget should prevent this)",
                trimmed.original_tokens,
                trimmed.kept_tokens,
            )
        self._decoders[key] = StreamDecoder(tokenizer, skip_special=True)

    def remove(self, key: Hashable) -> None:
        self._batch.remove(key)
        self._decoders.pop(key, None)

    def step(self) -> list[BatchOutput]:
        outputs: list[BatchOutput] = []
        for event in self._batch.step():
            decoder = self._decoders.get(event.key)
            if decoder is None:
                continue
            text = decoder.push(event.token) if event.token is not None else ""
            finish: FinishReason | None = None
            if event.stop_reason is not None:
                text += decoder.flush()
                finish = _FINISH.get(event.stop_reason, "stop")
                del self._decoders[event.key]
            if text or finish is not None:
                outputs.append(BatchOutput(event.key, text, finish))
        return outputs

    def close(self) -> None:
        for key in list(self._decoders):
            self.remove(key)

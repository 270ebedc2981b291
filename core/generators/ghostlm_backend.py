"""GhostLM backend: a local GhostLM checkpoint run by ``ghostlm.Engine`` with a KV cache, streamed as text."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from core.generators.base import GenerationParams, PromptSpec
from core.generators.errors import GeneratorError
from core.generators.render import clean_text, render_turns, turns_as_dicts

if TYPE_CHECKING:
    from core.settings import Settings
    from ghostlm import Engine, Tokenizer

logger = logging.getLogger(__name__)


_FINISH = {
    "stop_token": "stop",
    "max_new_tokens": "length",
    "context_length": "length",
    "cancelled": "cancelled",
}


def sampling_params(params: GenerationParams):
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
        self._engine: Engine | None = None
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()
        self.last_finish_reason: str | None = None  # of the latest stream: "stop" | "length" | "cancelled"

    def load(self) -> None:
        """Load the checkpoint and tokenizer (idempotent, thread-safe)."""
        with self._lock:
            if self._engine is not None:
                return
            import torch

            from ghostlm import CheckpointError, Engine, TokenizerUnavailableError, load_model, load_tokenizer

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
            self._tokenizer = tokenizer
            self._engine = Engine(model, tokenizer)
            logger.info(
                "GhostLM loaded from %s (%d parameters, context %d)",
                self.model_path,
                sum(p.numel() for p in model.parameters()),
                model.config.context_length,
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

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
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
            self.last_finish_reason = _FINISH.get(stream.stop_reason or "", "cancelled")
        logger.debug("GhostLM stream ended: %s after %d tokens", stream.stop_reason, len(stream.tokens))

    def close(self) -> None:
        with self._lock:
            self._engine = None
            self._tokenizer = None

"""Hugging Face backend: a local causal-LM directory (transformers), streamed with a manual KV-cache loop.

A manual loop (rather than ``model.generate`` + a streamer thread) lets us poll ``should_stop`` before every
token and reuse GhostLM's sampler, so all local backends sample identically.

Special tokens: the chat template is rendered with placeholder contents; the template's own pieces are encoded
with special-token parsing, every message content with ``split_special_tokens=True``. A user typing
``<|im_end|>`` therefore gets ordinary text ids and can never close a turn or forge a role.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.generators.base import FinishReason, GenerationParams, PromptSpec, TextStream
from core.generators.errors import GeneratorError
from core.generators.ghostlm_backend import sampling_params
from core.generators.render import clean_text, render_messages, render_turns, turns_as_dicts

logger = logging.getLogger(__name__)

PLAIN_STOP = "\nUser:"  # the plain layout's next-turn marker: the model must not write the user's turn
_TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")
_SENTINEL = "GHOSTSENTINEL{}X"


class _DecodeAdapter:
    """Gives an HF tokenizer the ``decode(ids, skip_special=)`` shape that ``ghostlm.StreamDecoder`` expects."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        text: str = self._tok.decode(list(ids), skip_special_tokens=skip_special)
        return text


class HFGenerator:
    name = "hf"

    def __init__(self, model_dir: str | Path, *, torch_threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.torch_threads = torch_threads
        self._model: Any = None
        self._tok: Any = None
        self._lock = threading.Lock()
        self._system_role = False
        self._stop_ids: frozenset[int] = frozenset()
        self._context_length = 0

    # --- loading -----------------------------------------------------------------------------------------
    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            if not (self.model_dir / "config.json").is_file():
                raise GeneratorError(f"{self.model_dir}: not a Hugging Face model directory (no config.json)")
            try:
                tok = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    self.model_dir, local_files_only=True, dtype=torch.float32
                )
            except (OSError, ValueError, KeyError) as e:
                raise GeneratorError(f"cannot load the Hugging Face model in {self.model_dir}: {e}") from e
            model.eval()
            self._tok, self._model = tok, model
            self._system_role = self._template_supports_system()
            self._stop_ids = self._find_stop_ids()
            cfg = model.config
            self._context_length = int(
                getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
            )
            logger.info(
                "HF model %s loaded (%s, context %d, chat template: %s)",
                self.model_dir,
                type(model).__name__,
                self._context_length,
                bool(tok.chat_template),
            )

    def _loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            self.load()
        return self._model, self._tok

    def _template_supports_system(self) -> bool:
        if not self._tok.chat_template:
            return False
        try:
            text = self._tok.apply_chat_template(
                [{"role": "system", "content": "SYSPROBE"}, {"role": "user", "content": "x"}],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:
            return False
        return "SYSPROBE" in text

    def _find_stop_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        eos = getattr(self._model.generation_config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self._tok.eos_token_id is not None:
            ids.add(self._tok.eos_token_id)
        specials = set(self._tok.all_special_tokens) | {
            str(t) for t in getattr(self._tok, "added_tokens_decoder", {}).values()
        }
        for name in _TURN_END_TOKENS:
            if name in specials:
                ids.add(self._tok.convert_tokens_to_ids(name))
        return frozenset(int(i) for i in ids)

    @property
    def context_length(self) -> int:
        self._loaded()
        return self._context_length

    # --- encoding ----------------------------------------------------------------------------------------
    def _encode_content(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _encode_template(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False, split_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        self._loaded()
        return len(self._encode_content(clean_text(text)))

    def _messages(self, spec: PromptSpec) -> list[dict[str, str]]:
        return render_messages(spec) if self._system_role else turns_as_dicts(render_turns(spec))

    def _template_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        """Template pieces parsed with specials, contents without; None if the template mangles placeholders."""
        marks = [_SENTINEL.format(i) for i in range(len(messages))]
        text = self._tok.apply_chat_template(
            [{"role": m["role"], "content": s} for m, s in zip(messages, marks)],
            tokenize=False,
            add_generation_prompt=True,
        )
        ids: list[int] = []
        pos = 0
        for mark, message in zip(marks, messages):
            at = text.find(mark, pos)
            if at < 0 or text.count(mark) != 1:
                return None
            ids += self._encode_template(text[pos:at]) + self._encode_content(message["content"])
            pos = at + len(mark)
        return ids + self._encode_template(text[pos:])

    def _plain_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Layout for tokenizers without a chat template; all text is content (no special parsing)."""
        labels = {"system": "System", "user": "User", "assistant": "Assistant"}
        text = "".join(f"{labels[m['role']]}: {m['content']}\n\n" for m in messages) + "Assistant:"
        return list(self._tok(text, add_special_tokens=True, split_special_tokens=True)["input_ids"])

    def _prompt(self, spec: PromptSpec) -> tuple[list[int], bool]:
        """(ids, plain): the exact prompt ids and whether the plain layout (with its stop marker) was used."""
        self._loaded()
        messages = self._messages(spec)
        if self._tok.chat_template:
            ids = self._template_ids(messages)
            if ids is not None:
                return ids, False
            logger.warning("chat template alters message contents; using the plain User:/Assistant: layout")
        return self._plain_ids(messages), True

    def prompt_ids(self, spec: PromptSpec) -> list[int]:
        return self._prompt(spec)[0]

    def prompt_tokens(self, spec: PromptSpec) -> int:
        return len(self.prompt_ids(spec))

    # --- generation --------------------------------------------------------------------------------------
    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> TextStream:
        """One request at a time (the worker's StreamSession). Not batched: transformers models differ in
        cache classes and position handling; padding rows of different lengths changes their outputs unless
        each architecture's per-row positions are handled, so batching here is left to GhostLM."""
        import torch

        from ghostlm.sampling import Sampler
        from ghostlm.tokenizer import StreamDecoder

        model, tok = self._loaded()
        ids, plain = self._prompt(spec)
        ctx = self._context_length
        max_new = max(0, params.max_new_tokens)
        if len(ids) + max_new > ctx:
            keep = max(1, ctx - max_new)
            if len(ids) > keep:
                logger.warning(
                    "HF prompt trimmed from %d to %d tokens (the budget should prevent this)", len(ids), keep
                )
                ids = ids[-keep:]
            max_new = ctx - len(ids)
        if max_new <= 0:
            return "length"
        if should_stop():
            return "cancelled"
        device = next(model.parameters()).device
        sampler = Sampler(sampling_params(params), model.config.vocab_size, ids, device)
        decoder = StreamDecoder(_DecodeAdapter(tok), skip_special=True)
        reason: FinishReason = "cancelled"  # until the loop says otherwise
        held = ""  # plain layout: text held back while it could be the start of PLAIN_STOP
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        for step in range(max_new):
            with torch.inference_mode():
                token = sampler(logits)
            if token in self._stop_ids:
                reason = "stop"
                break
            piece = decoder.push(token)
            if plain and piece:
                held += piece
                cut = held.find(PLAIN_STOP)
                if cut >= 0:
                    if held[:cut]:
                        yield held[:cut]
                    return "stop"
                safe = len(held) - _partial_suffix(held, PLAIN_STOP)
                piece, held = held[:safe], held[safe:]
            if piece:
                yield piece
            if step == max_new - 1:
                reason = "length"
                break
            if should_stop():
                break
            with torch.inference_mode():
                out = model(
                    input_ids=torch.tensor([[token]], device=device), past_key_values=past, use_cache=True
                )
            past, logits = out.past_key_values, out.logits[0, -1]
        tail = held + decoder.flush()
        if tail:
            yield tail
        return reason

    def close(self) -> None:
        with self._lock:
            self._model = None
            self._tok = None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0

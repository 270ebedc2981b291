"""The generator protocol: one interface for GhostLM, Hugging Face, OpenAI-compatible and extractive backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from core.types import Source


@dataclass(frozen=True)
class ChatTurn:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class PromptSpec:
    """Everything a reply is conditioned on, before rendering for a particular model.

    The budget (core/budget.py) trims a spec until `Generator.prompt_tokens(spec)` fits.
    """

    system: str
    passages: tuple[Source, ...]  # numbered [1]..[n] in this order
    history: tuple[ChatTurn, ...]  # oldest → newest, whole user/assistant pairs
    question: str
    intent: str = ""  # what the question asks for (core/understanding.py): "define", "detect", ...


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = None


class Generator(Protocol):
    """A text generator. `stream` blocks: the GenerationWorker runs it in a thread."""

    name: str
    context_length: int  # prompt + new tokens, in this generator's own tokens

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` encoded as plain content (never special ids)."""

    def prompt_tokens(self, spec: PromptSpec) -> int:
        """Exact token length of the prompt this generator would feed for `spec`."""

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        """Yield the answer as text pieces; poll `should_stop` between tokens."""

    def close(self) -> None:
        """Release the model / connections."""

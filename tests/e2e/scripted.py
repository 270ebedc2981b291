"""The one stand-in for the model in end-to-end tests: scripted text streamed word by word."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from core.generators.base import GenerationParams, PromptSpec

Script = Callable[[PromptSpec], str]


def echo_script(spec: PromptSpec) -> str:
    """Default answer: says what it was asked and how much history it saw (proves history flows)."""
    return f"Answer to: {spec.question} (history turns: {len(spec.history)})"


@dataclass
class ScriptedGenerator:
    """Implements the Generator protocol with scripted text.

    Tokens are whitespace-separated words (counted exactly the same way everywhere); the answer streams word
    by word with an optional `delay` per piece, polling `should_stop` like a model. A `gate` holds every
    request until it is set (to keep one running while the queue fills). `started` / `finished` record when
    each stream began and ended (time.monotonic()).
    """

    script: Script = echo_script
    delay: float = 0.0
    gate: threading.Event | None = None
    name: str = "scripted"
    context_length: int = 100_000
    specs: list[PromptSpec] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, spec: PromptSpec) -> int:
        parts = [
            spec.system,
            spec.question,
            *(p.text for p in spec.passages),
            *(t.content for t in spec.history),
        ]
        return sum(self.count_tokens(part) + 4 for part in parts)

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        self.specs.append(spec)
        self.started.append(time.monotonic())
        try:
            if self.gate is not None:
                while not self.gate.wait(0.02):
                    if should_stop():
                        return
            for piece in _pieces(self.script(spec)):
                if should_stop():
                    return
                if self.delay:
                    time.sleep(self.delay)  # blocking on purpose: a model holds its thread
                yield piece
        finally:
            self.finished.append(time.monotonic())

    def close(self) -> None:
        pass


def _pieces(text: str) -> Iterator[str]:
    """Split into word-sized pieces that concatenate back to exactly `text`."""
    start = 0
    for index in range(1, len(text)):
        if text[index] in " \n" and text[index - 1] not in " \n":
            yield text[start:index]
            start = index
    if start < len(text):
        yield text[start:]

"""The generator protocol: one interface for GhostLM, Hugging Face, OpenAI-compatible and extractive backends."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable, Iterator
from collections.abc import Generator as PyGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

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


FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]

# What `Generator.stream` returns: text pieces, and as the generator's return value (StopIteration.value) why it
# ended: "stop" (natural end), "length" (max_new_tokens / context), "cancelled" (should_stop). None = "stop".
TextStream = PyGenerator[str, None, FinishReason | None]


def finish_of(stream: Iterator[str]) -> tuple[list[str], FinishReason]:
    """Drain a stream: its pieces and its finish reason (for callers outside the worker, and tests)."""
    pieces: list[str] = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as end:
            return pieces, end.value or "stop"


class Generator(Protocol):
    """A text generator. `stream` blocks: the GenerationWorker runs it in a thread.

    `stream` returns a :data:`TextStream`: iterate it for pieces; its return value is the finish reason.
    Backends that can decode several requests together also implement :class:`BatchingGenerator`.
    """

    name: str

    @property
    def context_length(self) -> int:
        """Prompt + new tokens, in this generator's own tokens."""

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` encoded as plain content (never special ids)."""

    def prompt_tokens(self, spec: PromptSpec) -> int:
        """Exact token length of the prompt this generator would feed for `spec`."""

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        """Yield the answer as text pieces; poll `should_stop` between tokens; return the finish reason."""

    def close(self) -> None:
        """Release the model / connections."""


@dataclass(frozen=True)
class BatchOutput:
    """News about one request of a batch: a text piece (may be ""), and `finish` on its last output."""

    key: Hashable
    text: str
    finish: FinishReason | None = None
    error: BaseException | None = None  # with finish "error": this request failed, the others go on


class BatchSession(Protocol):
    """Several requests decoded together, driven by ONE thread (the worker's model thread).

    `add` queues a request (it joins between steps), `remove` drops one at once without disturbing the others,
    `step` advances every request by about one token and returns what each produced. Requests finish by a
    `BatchOutput` with `finish` set; removed ones produce nothing more.
    """

    capacity: int  # requests at most (the worker never adds more)

    def add(
        self, key: Hashable, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> None: ...

    def remove(self, key: Hashable) -> None: ...

    def step(self) -> list[BatchOutput]: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchingGenerator(Protocol):
    """A generator that can serve up to `max_batch` requests at once (see :class:`BatchSession`)."""

    def open_batch(self, max_batch: int) -> BatchSession: ...


class StreamSession:
    """The sequential fallback: one request at a time through `Generator.stream`, one piece per step."""

    capacity = 1

    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self._key: Hashable | None = None
        self._stream: Iterator[str] | None = None

    def add(
        self, key: Hashable, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> None:
        if self._stream is not None:
            raise RuntimeError("StreamSession runs one request at a time")
        self._key = key
        self._stream = iter(self._generator.stream(spec, params, should_stop))

    def remove(self, key: Hashable) -> None:
        if key == self._key and self._stream is not None:
            stream, self._stream, self._key = self._stream, None, None
            close = getattr(stream, "close", None)  # a plain iterator has nothing to close
            if close is not None:
                close()

    def step(self) -> list[BatchOutput]:
        if self._stream is None:
            return []
        key = self._key
        try:
            return [BatchOutput(key, next(self._stream))]
        except StopIteration as end:
            self._stream, self._key = None, None
            return [BatchOutput(key, "", end.value or "stop")]
        except Exception as exc:
            self._stream, self._key = None, None
            return [BatchOutput(key, "", "error", exc)]

    def close(self) -> None:
        if self._key is not None:
            self.remove(self._key)


class ThreadedSession:
    """Up to `capacity` `Generator.stream` calls at once, each in its own I/O thread (a remote server batches).

    For backends whose work happens elsewhere (an OpenAI-compatible server): the threads only wait on sockets.
    """

    def __init__(self, generator: Generator, capacity: int, *, poll_s: float = 0.05) -> None:
        self.capacity = max(1, capacity)
        self._generator = generator
        self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="ghostbot-generation-io")
        self._out: queue.SimpleQueue[BatchOutput | tuple[Hashable, BaseException]] = queue.SimpleQueue()
        self._stops: dict[Hashable, threading.Event] = {}
        self._poll_s = poll_s

    def add(
        self, key: Hashable, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> None:
        removed = threading.Event()
        self._stops[key] = removed
        self._pool.submit(self._run, key, spec, params, lambda: removed.is_set() or should_stop())

    def _run(
        self, key: Hashable, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> None:
        try:
            stream = self._generator.stream(spec, params, should_stop)
            while True:
                try:
                    piece = next(stream)
                except StopIteration as end:
                    self._out.put(BatchOutput(key, "", end.value or "stop"))
                    return
                if should_stop():
                    return
                self._out.put(BatchOutput(key, piece))
        except Exception as exc:  # reported to the worker as this request's failure
            self._out.put((key, exc))

    def remove(self, key: Hashable) -> None:
        stop = self._stops.pop(key, None)
        if stop is not None:
            stop.set()

    def step(self) -> list[BatchOutput]:
        items: list[BatchOutput | tuple[Hashable, BaseException]] = []
        try:
            items.append(self._out.get(timeout=self._poll_s))
            while True:
                items.append(self._out.get_nowait())
        except queue.Empty:
            pass
        outputs: list[BatchOutput] = []
        for item in items:
            if isinstance(item, BatchOutput):
                if item.key not in self._stops:
                    continue  # removed meanwhile
                if item.finish is not None:
                    del self._stops[item.key]
                outputs.append(item)
            else:
                key, exc = item
                if self._stops.pop(key, None) is not None:
                    outputs.append(BatchOutput(key, "", "error", exc))
        return outputs

    def close(self) -> None:
        for key in list(self._stops):
            self.remove(key)
        self._pool.shutdown(wait=False, cancel_futures=True)

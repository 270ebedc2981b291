"""One stateless question → one answer, through the same answering pipeline as chat (core/answering.py).

Used by `ghostbot ask`, the HTTP API and the evaluation runner. Pass the bot's `worker` whenever the bot is
running too, so the question queues like any chat message (one model instance, one thread at a time; a full
queue answers with the busy notice and finish_reason "error"); without a worker the generator runs in a
thread of its own (CLI one-shots, evaluation).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable

from core.answering import (
    CLOSED_NOTICE,
    PENDING_NOTICE,
    AnsweringPipeline,
    PassageSearch,
    Prepared,
    busy_notice,
)
from core.generators.base import Generator, finish_of
from core.prompt import EMPTY_NOTICE, sanitize_text
from core.settings import Settings
from core.types import Answer
from core.worker import AlreadyPending, GenerationWorker, Piece, QueueFull, WorkerClosed

logger = logging.getLogger(__name__)


class Assistant:
    def __init__(
        self,
        retriever: PassageSearch,
        generator: Generator,
        settings: Settings,
        *,
        worker: GenerationWorker | None = None,
    ) -> None:
        self.generator = generator
        self.settings = settings
        self.worker = worker
        self.pipeline = AnsweringPipeline(retriever, generator, settings)

    @property
    def retriever(self) -> PassageSearch:
        return self.pipeline.retriever

    @retriever.setter
    def retriever(self, retriever: PassageSearch) -> None:
        self.pipeline.retriever = retriever

    async def ask(
        self,
        question: str,
        *,
        k: int | None = None,
        seed: int | None = None,
        owner: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        on_piece: Callable[[str], Awaitable[None]] | None = None,
    ) -> Answer:
        """Answer one question with citations. Never raises for model problems: see `finish_reason`.

        `owner` queues the request under a stable name (one pending request per owner); `max_new_tokens` and
        `temperature` override the settings; `on_piece` receives the answer's pieces as they are generated.
        Cancelling the call cancels the queued or running generation.
        """
        text = sanitize_text(question)
        if not text:
            return Answer(text=EMPTY_NOTICE, finish_reason="error")
        worker = self.worker
        if worker is not None and worker.queue_depth >= worker.queue_size:  # before any retrieval work
            eta = worker.estimate_wait(worker.queue_size + 1)
            return Answer(text=busy_notice(eta), finish_reason="error")
        retrieved = await self.pipeline.retrieve(text, k=k)
        prefs: dict[str, str] = {}
        if max_new_tokens is not None:
            prefs["max_tokens"] = str(max_new_tokens)
        if temperature is not None:
            prefs["temperature"] = str(temperature)
        prepared = self.pipeline.prepare(text, retrieved, prefs=prefs, seed=seed)
        if prepared.direct is not None:  # small talk: a built-in reply, no model
            if on_piece is not None:
                await on_piece(prepared.direct)
            return Answer(text=prepared.direct, prompt_tokens=prepared.prompt_tokens)
        if worker is not None:
            answer, reason = await self._via_worker(prepared, owner, on_piece)
            if reason == "refused":
                return Answer(text=answer, finish_reason="error")
        else:
            answer, reason = await self._in_thread(prepared)
            if on_piece is not None and answer:
                await on_piece(answer)
        outcome = self.pipeline.finish(prepared, answer, reason)
        return Answer(
            text=outcome.text,
            sources=prepared.sources,
            notices=outcome.notices if outcome.ok else [],
            finish_reason=outcome.finish_reason,
            prompt_tokens=prepared.prompt_tokens,
        )

    async def _via_worker(
        self, prepared: Prepared, owner: str | None, on_piece: Callable[[str], Awaitable[None]] | None
    ) -> tuple[str, str | None]:
        """(text, finish reason); (the notice, "refused") when the worker does not take the request."""
        assert self.worker is not None
        owner = owner or f"assistant:{uuid.uuid4().hex}"
        try:
            handle = self.worker.submit(owner, prepared.spec, prepared.params)
        except QueueFull as exc:
            return busy_notice(exc.eta_seconds), "refused"
        except AlreadyPending:
            return PENDING_NOTICE, "refused"
        except WorkerClosed:
            return CLOSED_NOTICE, "refused"
        pieces: list[str] = []
        try:
            async for event in handle:
                if isinstance(event, Piece):
                    pieces.append(event.text)
                    if on_piece is not None:
                        await on_piece(event.text)
        finally:
            if not handle.done:  # cancelled by the caller (e.g. the HTTP client left): free the queue slot
                self.worker.cancel(owner)
        if handle.finish_reason == "error":
            logger.error("generation failed: %s", type(handle.error).__name__)
        return "".join(pieces), handle.finish_reason

    async def _in_thread(self, prepared: Prepared) -> tuple[str, str]:
        stop = threading.Event()
        generator = self.generator

        def run() -> tuple[str, str]:
            # The stream's return value is why it stopped (the Generator protocol), as the worker reads it.
            pieces, reason = finish_of(generator.stream(prepared.spec, prepared.params, stop.is_set))
            return "".join(pieces), reason

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout_seconds)
        except TimeoutError:
            stop.set()
            try:
                return (await task)[0], "timeout"
            except Exception:
                return "", "timeout"
        except Exception as exc:  # the model's failure: reported through finish_reason
            logger.error("generation failed: %s", type(exc).__name__)
            return "", "error"
        except asyncio.CancelledError:
            stop.set()  # the caller gave up: let the model thread stop at its next poll
            raise

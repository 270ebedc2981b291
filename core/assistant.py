"""One stateless question → one answer, through the same retrieval, prompt and budget code as chat.

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

from core.budget import ContextBudget, compute_budget, effective_max_new_tokens
from core.generators.base import GenerationParams, Generator, PromptSpec
from core.manager import (
    CLOSED_NOTICE,
    EMPTY_ANSWER_NOTICE,
    ERROR_NOTICE,
    PENDING_NOTICE,
    SHORTENED_NOTICE,
    TIMEOUT_NOTICE,
    Retriever,
    busy_notice,
)
from core.prompt import EMPTY_NOTICE, PromptBuilder, sanitize_text
from core.settings import Settings
from core.types import Answer
from core.worker import AlreadyPending, GenerationWorker, Piece, QueueFull, WorkerClosed

logger = logging.getLogger(__name__)


class Assistant:
    def __init__(
        self,
        retriever: Retriever,
        generator: Generator,
        settings: Settings,
        *,
        worker: GenerationWorker | None = None,
    ) -> None:
        self.retriever = retriever
        self.generator = generator
        self.settings = settings
        self.worker = worker
        self.prompts = PromptBuilder(settings.system_prompt)
        self.context = ContextBudget(generator, passage_fraction=settings.passage_budget_fraction)

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
        passages = await self.retriever.search(text, k=k or self.settings.top_passages)
        spec = self.prompts.build(text, passages=passages)
        s = self.settings
        max_new = effective_max_new_tokens(
            self.generator.context_length, max_new_tokens or s.max_new_tokens, s.context_reserve_tokens
        )
        fit = self.context.fit(
            spec, budget=compute_budget(self.generator.context_length, max_new, s.context_reserve_tokens)
        )
        params = GenerationParams(
            max_new_tokens=max_new,
            temperature=s.temperature if temperature is None else temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            repetition_penalty=s.repetition_penalty,
            seed=seed,
        )
        if self.worker is not None:
            answer, reason = await self._via_worker(fit.spec, params, owner, on_piece)
        else:
            answer, reason = await self._in_thread(fit.spec, params)
            if on_piece is not None and answer:
                await on_piece(answer)
        if not answer.strip():
            answer = {"timeout": TIMEOUT_NOTICE, "error": ERROR_NOTICE}.get(reason, EMPTY_ANSWER_NOTICE)
        return Answer(
            text=answer.strip(),
            sources=list(fit.spec.passages),
            notices=[SHORTENED_NOTICE] if fit.question_truncated else [],
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=fit.prompt_tokens,
        )

    async def _via_worker(
        self,
        spec: PromptSpec,
        params: GenerationParams,
        owner: str | None,
        on_piece: Callable[[str], Awaitable[None]] | None,
    ) -> tuple[str, str]:
        assert self.worker is not None
        owner = owner or f"assistant:{uuid.uuid4().hex}"
        try:
            handle = self.worker.submit(owner, spec, params)
        except QueueFull as exc:
            return busy_notice(exc.eta_seconds), "error"
        except AlreadyPending:
            return PENDING_NOTICE, "error"
        except WorkerClosed:
            return CLOSED_NOTICE, "error"
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
            return "", "error"
        return "".join(pieces), handle.finish_reason or "stop"

    async def _in_thread(self, spec: PromptSpec, params: GenerationParams) -> tuple[str, str]:
        stop = threading.Event()

        def run() -> str:
            return "".join(self.generator.stream(spec, params, stop.is_set))

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            text = await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout_seconds)
            return text, "stop"
        except TimeoutError:
            stop.set()
            try:
                return await task, "timeout"
            except Exception:
                return "", "timeout"
        except Exception as exc:  # the model's failure: reported through finish_reason
            logger.error("generation failed: %s", type(exc).__name__)
            return "", "error"
        except asyncio.CancelledError:
            stop.set()  # the caller gave up: let the model thread stop at its next poll
            raise

"""The one answering pipeline: question → passages → prompt → budget → parameters → (generation) → outcome.

`ConversationManager._chat` (chat, streaming, history) and `Assistant.ask` (one stateless question) both use
it, so they retrieve, build prompts, budget, pick parameters and map finish reasons to user-facing notices the
same way. Generation itself stays with the caller (the worker's queue for chat, the worker or a thread for
one-shots), because only the caller knows where the pieces go.

The user-facing notices live here, not in the manager, so lower modules never import the top one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from core.budget import ContextBudget, FitResult, compute_budget, effective_max_new_tokens
from core.generators.base import GenerationParams, Generator, PromptSpec
from core.prompt import PromptBuilder
from core.settings import Settings
from core.types import Source

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]

SHORTENED_NOTICE = "Your message was longer than I can read at once, so I only used its beginning."
PENDING_NOTICE = (
    "I'm still working on your previous question — wait for it to finish, or send /cancel to stop it."
)
CANCELLED_NOTICE = "Cancelled — nothing was stored."
TIMEOUT_NOTICE = "That took too long, so I stopped. Please try a shorter question, or try again later."
LENGTH_NOTICE = "The answer reached its length limit; /settings max_tokens N allows longer answers."
ERROR_NOTICE = "Sorry — something went wrong while answering. Please try again in a moment."
CLOSED_NOTICE = "I'm restarting right now — please send that again in a minute."
EMPTY_ANSWER_NOTICE = "I couldn't produce an answer this time. Please rephrase your question."
CONFIG_NOTICE = "Sorry — I'm misconfigured (my context window is too small). Please tell the bot's operator."


def busy_notice(eta_seconds: float) -> str:
    return f"I'm busy with other questions right now — please try again in ~{max(1, round(eta_seconds))} s."


class PassageSearch(Protocol):
    """What the pipeline needs from retrieval (`core.retrieval.Retriever` is one)."""

    async def search(self, query: str, k: int = 4) -> list[Source]: ...


@dataclass(frozen=True)
class Prepared:
    """A question made ready for a generator: the fitted prompt and the sampling parameters."""

    spec: PromptSpec
    params: GenerationParams
    question_truncated: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a generation ended, as the user sees it.

    `ok`: an answer worth storing (finished, or cut at the length limit, with text). Otherwise `text` is the
    partial answer when there is one, else the notice explaining what happened (also in `message`)."""

    ok: bool
    text: str
    finish_reason: FinishReason
    notices: list[str] = field(default_factory=list)
    message: str = ""


class AnsweringPipeline:
    def __init__(self, retriever: PassageSearch, generator: Generator, settings: Settings) -> None:
        self.retriever = retriever
        self.generator = generator
        self.settings = settings
        self.prompts = PromptBuilder(settings.system_prompt)
        self.context = ContextBudget(generator, passage_fraction=settings.passage_budget_fraction)

    async def retrieve(self, question: str, *, k: int | None = None) -> Sequence[Source]:
        """The passages for `question`; a failing retriever means an answer without passages, not none."""
        try:
            return await self.retriever.search(question, k=k or self.settings.top_passages)
        except Exception:
            logger.exception("retrieval failed; answering without passages")
            return []

    def prepare(
        self,
        question: str,
        passages: Sequence[Source],
        *,
        history: Sequence[tuple[str, str]] = (),
        prefs: Mapping[str, str] | None = None,
        seed: int | None = None,
    ) -> Prepared:
        """Prompt → budget → parameters. Raises `ContextTooSmall` when the configuration leaves no room."""
        s = self.settings
        prefs = prefs or {}
        spec = self.prompts.build(question, passages=passages, history=history, prefs=prefs)
        requested = int(prefs.get("max_tokens", s.max_new_tokens))
        max_new = effective_max_new_tokens(self.generator.context_length, requested, s.context_reserve_tokens)
        fit: FitResult = self.context.fit(
            spec, budget=compute_budget(self.generator.context_length, max_new, s.context_reserve_tokens)
        )
        params = GenerationParams(
            max_new_tokens=max_new,
            temperature=float(prefs.get("temperature", s.temperature)),
            top_k=s.top_k,
            top_p=s.top_p,
            repetition_penalty=s.repetition_penalty,
            seed=seed,
        )
        return Prepared(spec=fit.spec, params=params, question_truncated=fit.question_truncated)

    @staticmethod
    def finish(prepared: Prepared, text: str, finish_reason: str | None) -> Outcome:
        """Map the generated text and the finish reason to what the user is told."""
        answer = text.strip()
        reason = finish_reason or "error"
        if reason in ("stop", "length") and answer:
            notices = [SHORTENED_NOTICE] if prepared.question_truncated else []
            if reason == "length":
                notices.append(LENGTH_NOTICE)
            return Outcome(ok=True, text=answer, finish_reason=reason, notices=notices)  # type: ignore[arg-type]
        failed: FinishReason = reason if reason in ("cancelled", "timeout", "error") else "error"  # type: ignore[assignment]
        message = {
            "cancelled": CANCELLED_NOTICE,
            "timeout": TIMEOUT_NOTICE,
        }.get(reason, ERROR_NOTICE if reason == "error" else EMPTY_ANSWER_NOTICE)
        return Outcome(
            ok=False,
            text=answer or message,
            finish_reason=failed,
            notices=[message] if answer else [],
            message=message,
        )

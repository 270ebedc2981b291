"""The one answering pipeline: question → passages → prompt → budget → parameters → (generation) → outcome.

`ConversationManager._chat` (chat, streaming, history) and `Assistant.ask` (one stateless question) both use
it, so they retrieve, build prompts, budget, pick parameters and map finish reasons to user-facing notices the
same way. Generation itself stays with the caller (the worker's queue for chat, the worker or a thread for
one-shots), because only the caller knows where the pieces go.

The user-facing notices live here, not in the manager, so lower modules never import the top one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from core.budget import ContextBudget, FitResult, compute_budget, effective_max_new_tokens
from core.generators.base import GenerationParams, Generator, PromptSpec
from core.prompt import PromptBuilder
from core.retrieval.retriever import Retrieval
from core.settings import Settings
from core.types import Source
from core.understanding import Understood, mentions_security, understand

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


# Built-in replies to small talk and to questions about the bot (no retrieval, no model).
EXAMPLE_QUESTIONS = (
    "How can I detect Kerberoasting?",
    "How do I prevent SQL injection?",
    "Which groups use Mimikatz?",
)
ABOUT = (
    "I'm a cybersecurity assistant. I answer from the MITRE CWE (weaknesses) and ATT&CK (attack techniques, "
    "groups, software) knowledge bases and any documents indexed here, and I cite my sources as [1], [2]."
)
_GREETING = re.compile(
    r"^\W*(?:hi+|hello+|hey+|yo|hiya|howdy|greetings|good (?:morning|afternoon|evening))\b", re.I
)
_THANKS = re.compile(r"\b(?:thanks?|thank you|thx|ty|cheers)\b", re.I)
_BYE = re.compile(r"\b(?:bye|goodbye|see you|good night)\b", re.I)


def smalltalk_reply(text: str) -> str:
    """A short, friendly reply that says what the bot can do, with example questions."""
    if _THANKS.search(text):
        lead = "You're welcome!"
    elif _BYE.search(text):
        lead = "Goodbye — come back any time."
    elif _GREETING.match(text):
        lead = "Hi!"
    else:
        lead = ""
    examples = "\n".join(f"- {q}" for q in EXAMPLE_QUESTIONS)
    return f"{lead} {ABOUT}\n\nTry for example:\n{examples}\n\n/help lists the commands.".strip()


def busy_notice(eta_seconds: float) -> str:
    return f"I'm busy with other questions right now — please try again in ~{max(1, round(eta_seconds))} s."


class PassageSearch(Protocol):
    """What the pipeline needs from retrieval (`core.retrieval.Retriever` is one). A retriever that also
    has `retrieve(understood, k) -> Retrieval` gets the intent-aware path."""

    async def search(self, query: str, k: int = 4, *, viewer: str | None = None) -> list[Source]: ...


# Calibrated on the tuning half of benchmarks/answer_questions.jsonl (benchmarks/answer_eval.py --signals):
# with nothing named in the question, passages are offered only when the best dense cosine reaches this
# (out-of-scope questions scored 0.14-0.28 with the MiniLM encoder, in-scope descriptions 0.33 and up).
MIN_COSINE = 0.30
# Without dense retrieval: the share of the question's informative words found in the passages; a question
# that uses a security word ("technique", "weakness", "attack", ...) needs less.
MIN_LEXICAL = 0.6
MIN_LEXICAL_SECURITY = 0.4


@dataclass(frozen=True)
class Retrieved:
    """The retrieval step's result: what the question is, the passages offered as grounding (none when
    the knowledge base has nothing close enough), everything retrieved, and a built-in reply for small talk."""

    understood: Understood
    passages: Sequence[Source] = ()
    retrieved: Sequence[Source] = ()
    direct: str | None = None
    abstained: bool = False


@dataclass(frozen=True)
class Prepared:
    """A question made ready for a generator: the fitted prompt and the sampling parameters."""

    spec: PromptSpec
    params: GenerationParams
    question_truncated: bool = False
    retrieved: Retrieved | None = None
    prompt_tokens: int = 0

    @property
    def direct(self) -> str | None:
        """A built-in reply that needs no generation (small talk), or None."""
        return self.retrieved.direct if self.retrieved is not None else None

    @property
    def sources(self) -> list[Source]:
        """The passages offered, numbered as cited (what `/sources` lists; the footer shows the cited)."""
        return list(self.spec.passages)


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


def answerable(found: Retrieval, question: str = "") -> bool:
    """Whether the knowledge base holds an answer: an entry was named, or the search came close enough."""
    if not found.passages:
        return False
    if found.linked:
        return True
    if found.confidence > 0:
        return found.confidence >= MIN_COSINE
    return found.lexical >= (MIN_LEXICAL_SECURITY if mentions_security(question) else MIN_LEXICAL)


class AnsweringPipeline:
    def __init__(self, retriever: PassageSearch, generator: Generator, settings: Settings) -> None:
        self.retriever = retriever
        self.generator = generator
        self.settings = settings
        self.prompts = PromptBuilder(settings.system_prompt)
        self.context = ContextBudget(generator, passage_fraction=settings.passage_budget_fraction)

    async def retrieve(self, question: str, *, k: int | None = None, viewer: str | None = None) -> Retrieved:
        """Understand `question`, then find what answers it. Small talk gets a built-in reply; a question the
        knowledge base does not come close to gets no passages (the extractive backend then says so, a model
        answers without grounding). A failing retriever means an answer without passages, not none."""
        understood = understand(question)
        if understood.intent == "smalltalk":
            return Retrieved(understood, direct=smalltalk_reply(question))
        k = k or self.settings.top_passages
        try:
            retrieve = getattr(self.retriever, "retrieve", None)
            if retrieve is None:
                passages = await self.retriever.search(question, k=k, viewer=viewer)
                return Retrieved(understood, passages, passages)
            found: Retrieval = await retrieve(understood, k, viewer=viewer)
        except Exception:
            logger.exception("retrieval failed; answering without passages")
            return Retrieved(understood)
        if not answerable(found, question):
            return Retrieved(understood, (), found.passages, abstained=True)
        return Retrieved(understood, found.passages, found.passages)

    def prepare(
        self,
        question: str,
        retrieved: Retrieved,
        *,
        history: Sequence[tuple[str, str]] = (),
        prefs: Mapping[str, str] | None = None,
        seed: int | None = None,
    ) -> Prepared:
        """Prompt → budget → parameters. Raises `ContextTooSmall` when the configuration leaves no room."""
        s = self.settings
        prefs = prefs or {}
        spec = self.prompts.build(
            question,
            passages=retrieved.passages,
            history=history,
            prefs=prefs,
            intent=retrieved.understood.intent,
        )
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
        return Prepared(
            spec=replace(fit.spec, intent=spec.intent),
            params=params,
            question_truncated=fit.question_truncated,
            retrieved=retrieved,
            prompt_tokens=fit.prompt_tokens,
        )

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

"""Assistant.ask: one stateless question through the same retrieval, prompt and budget code."""

from __future__ import annotations

import threading

from core.answering import ERROR_NOTICE, LENGTH_NOTICE, SHORTENED_NOTICE
from core.assistant import Assistant
from core.budget import QUESTION_MARKER
from core.settings import Settings
from core.worker import GenerationWorker
from tests.core.conftest import KB
from tests.core.core_doubles import BPEGenerator, ListRetriever


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type]


async def test_ask_answers_with_sources_in_a_thread(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer)
    answer = await Assistant(ListRetriever(KB), gen, settings()).ask("what is xss?")
    assert answer.text == gen.answer and answer.finish_reason == "stop"
    assert [(s.index, s.ref) for s in answer.sources] == [(1, "CWE-79")]
    assert threading.current_thread().name not in gen.threads
    assert gen.calls[0].history == () and gen.calls[0].question == "what is xss?"


async def test_ask_through_the_worker(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer)
    worker = GenerationWorker(gen, timeout_s=10)
    worker.start()
    answer = await Assistant(ListRetriever(KB), gen, settings(), worker=worker).ask("what is sql injection?")
    assert answer.sources[0].ref == "CWE-89" and gen.threads == {"ghostbot-generation"}
    await worker.shutdown()


async def test_ask_shortens_a_huge_question_and_says_so(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, context_length=256)
    answer = await Assistant(ListRetriever(KB), gen, settings(max_new_tokens=64)).ask("xss " * 3000)
    assert answer.notices == [SHORTENED_NOTICE] and gen.calls[0].question.endswith(QUESTION_MARKER)
    assert gen.prompt_tokens(gen.calls[0]) <= 256 - 64 - 8


async def test_ask_reports_model_errors_and_timeouts(bpe_tokenizer) -> None:
    failing = BPEGenerator(bpe_tokenizer, fail=True)
    answer = await Assistant(ListRetriever(KB), failing, settings()).ask("what is xss?")
    assert (answer.finish_reason, answer.text) == ("error", ERROR_NOTICE)
    slow = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 500), delay_s=0.02)
    answer = await Assistant(ListRetriever(KB), slow, settings(request_timeout_seconds=0.2)).ask("xss?")
    assert answer.finish_reason == "timeout" and 0 < len(answer.text.split()) < 500


async def test_ask_with_a_closed_worker_says_so(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer)
    worker = GenerationWorker(gen)
    answer = await Assistant(ListRetriever(KB), gen, settings(), worker=worker).ask("what is xss?")
    assert answer.finish_reason == "error" and "restarting" in answer.text and gen.calls == []


class _LengthLimited(BPEGenerator):
    """Stops at max_new_tokens words and says so, as the model backends do."""

    def stream(self, spec, params, should_stop):  # type: ignore[no-untyped-def]
        words = list(super().stream(spec, params, should_stop))
        yield from words[: params.max_new_tokens]
        return (
            "length" if len(words) > params.max_new_tokens else None
        )  # the finish reason is the return value


async def test_one_shot_and_chat_agree_on_the_length_limit(bpe_tokenizer) -> None:
    """The one-shot path reports "length" (with the notice) just as chat does, in a thread or via the worker."""
    long = " ".join(["word"] * 50)
    gen = _LengthLimited(bpe_tokenizer, answer=long)
    answer = await Assistant(ListRetriever(KB), gen, settings(max_new_tokens=5)).ask("what is xss?")
    assert answer.finish_reason == "length" and LENGTH_NOTICE in answer.notices
    assert len(answer.text.split()) == 5
    worker = GenerationWorker(gen, timeout_s=10)
    worker.start()
    answer = await Assistant(ListRetriever(KB), gen, settings(max_new_tokens=5), worker=worker).ask("xss?")
    assert answer.finish_reason == "length" and LENGTH_NOTICE in answer.notices
    await worker.shutdown()

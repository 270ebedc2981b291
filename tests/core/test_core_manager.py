"""ConversationManager: the whole walk on a real database, a real worker and a real budget."""

from __future__ import annotations

import asyncio
import itertools
import logging

from core.budget import QUESTION_MARKER
from core.manager import (
    CANCELLED_NOTICE,
    CLOSED_NOTICE,
    ERROR_NOTICE,
    PENDING_NOTICE,
    SHORTENED_NOTICE,
    TIMEOUT_NOTICE,
    ConversationManager,
)
from core.prompt import EMPTY_NOTICE
from core.types import ChatKind
from storage import ConversationKey
from tests.core.conftest import count_rows
from tests.core.core_doubles import BPEGenerator, RecordingSink
from tests.support import eventually

DM = ConversationKey("telegram", "1", "1")


async def test_dm_chat_streams_answers_and_stores_the_exchange(make_harness) -> None:
    h = make_harness()
    sink = await h.send("what is xss?")
    kinds = sink.kinds()
    assert kinds[0] == "started" and kinds[-1] == "final" and set(kinds[1:-1]) == {"partial"}
    partials = [v for k, v in sink.events if k == "partial"]
    assert all(b.startswith(a) for a, b in itertools.pairwise(partials))  # text so far, growing
    answer = sink.finals()[0]
    assert answer.text == h.generator.answer and answer.finish_reason == "stop"
    assert [s.ref for s in answer.sources] == ["CWE-79"] and answer.sources[0].index == 1
    spec = h.generator.calls[0]
    assert spec.question == "what is xss?" and spec.passages[0].ref == "CWE-79"
    assert spec.system == h.settings.system_prompt
    history = await h.db.conversations.history(DM)
    assert [(m.role, m.text) for m in history] == [("user", "what is xss?"), ("assistant", answer.text)]
    assert history[1].sources[0]["ref"] == "CWE-79" and history[1].platform_message_ids == ["1001"]
    assert history[0].token_count == h.generator.count_tokens("what is xss?")
    # Feedback maps the delivered platform message id to the stored answer.
    assert await h.manager.record_feedback(
        platform="telegram", chat_id="1", user_id="1", platform_message_id="1001", rating=1
    )
    assert not await h.manager.record_feedback(
        platform="telegram", chat_id="1", user_id="1", platform_message_id="nope", rating=1
    )
    assert [(r.question, r.rating) for r in await h.db.feedback.export()] == [("what is xss?", 1)]


async def test_history_feeds_the_next_prompt(make_harness) -> None:
    h = make_harness()
    await h.send("what is xss?")
    await h.send("and how do I prevent it?")
    spec = h.generator.calls[1]
    assert [t.role for t in spec.history] == ["user", "assistant"]
    assert spec.history[0].content == "what is xss?"


async def test_duplicate_event_is_answered_once(make_harness) -> None:
    h = make_harness()
    first = await h.send("what is xss?", event="42")
    again = await h.send("what is xss?", event="42")
    assert first.finals() and again.events == []
    assert len(await h.db.conversations.history(DM)) == 2 and len(h.generator.calls) == 1


async def test_concurrent_redelivery_is_answered_once(make_harness, bpe_tokenizer) -> None:
    h = make_harness(BPEGenerator(bpe_tokenizer, answer="a b c", delay_s=0.03))
    sinks = [RecordingSink(), RecordingSink()]
    msg = h.incoming("what is xss?", event="7")
    await asyncio.gather(*(h.manager.handle(msg, s) for s in sinks))
    assert sorted(len(s.finals()) for s in sinks) == [0, 1]
    assert sinks[0].events == [] or sinks[1].events == []
    assert len(await h.db.conversations.history(DM)) == 2


async def test_unaddressed_group_message_touches_nothing(make_harness) -> None:
    h = make_harness()
    sink = await h.send("just chatting about xss", chat="-100", group=True, addressed=False)
    assert sink.events == [] and h.generator.calls == [] and h.retriever.queries == []
    assert set((await count_rows(h.db)).values()) == {0}


async def test_group_histories_per_user_by_default(make_harness) -> None:
    h = make_harness()
    await h.send("what is xss?", user="1", chat="-100", group=True)
    await h.send("what is sql injection?", user="2", chat="-100", group=True)
    assert len(await h.db.conversations.history(ConversationKey("telegram", "-100", "1"))) == 2
    assert len(await h.db.conversations.history(ConversationKey("telegram", "-100", "2"))) == 2
    assert h.generator.calls[1].history == ()  # user 2 does not see user 1's exchange
    # A thread / topic is its own conversation.
    await h.send("in a topic", user="1", chat="-100", group=True, thread="t9")
    assert len(await h.db.conversations.history(ConversationKey("telegram", "-100", "1", "t9"))) == 2
    assert h.generator.calls[2].history == ()


async def test_shared_group_history_when_configured(make_harness) -> None:
    h = make_harness(shared_group_history=True)
    await h.send("what is xss?", user="1", chat="-100", group=True)
    await h.send("and sql injection?", user="2", chat="-100", group=True)
    assert len(await h.db.conversations.history(ConversationKey("telegram", "-100", None))) == 4
    assert h.generator.calls[1].history[0].content == "what is xss?"
    # DMs stay per user.
    await h.send("what is csrf?", user="1")
    assert h.generator.calls[2].history == ()


async def test_access_refusal_is_polite_and_generates_nothing(make_harness) -> None:
    h = make_harness(blocked_users="telegram:66", allowed_chats="-100", admin_users="99")
    refused = await h.send("what is xss?", user="66")
    assert refused.kinds() == ["notice"] and "not available" in refused.notices()[0]
    other_group = await h.send("what is xss?", user="5", chat="-200", group=True)
    assert "not available" in other_group.notices()[0]
    admin = await h.send("what is xss?", user="99", chat="-200", group=True)
    assert admin.finals()
    assert len(h.generator.calls) == 1
    rows = await count_rows(h.db)
    assert rows["messages"] == 2 and rows["users"] == 1  # only the admin's exchange


async def test_rate_limit_says_when_to_retry(make_harness, clock) -> None:
    h = make_harness(rate_limit_per_minute=6, rate_limit_burst=2)
    assert (await h.send("q one")).finals()
    assert (await h.send("q two")).finals()
    limited = await h.send("q three")
    assert limited.notices() == ["You're sending messages too quickly — try again in 10 s."]
    assert (await h.send("/cancel")).notices()[0].startswith("You have nothing")  # never limited
    clock.now += 10
    assert (await h.send("q four")).finals()
    assert len(h.generator.calls) == 3


async def test_empty_and_control_only_messages(make_harness) -> None:
    h = make_harness()
    for text in ["", "   ", "\x00\x07\u200b"[:2], "\ud800"]:
        sink = await h.send(text)
        assert sink.notices() == [EMPTY_NOTICE], text
    assert h.generator.calls == [] and (await count_rows(h.db))["messages"] == 0


async def test_huge_message_refused_without_generation(make_harness) -> None:
    h = make_harness(max_message_chars=500)
    sink = await h.send("x" * 501)
    assert sink.notices() == [
        "Your message is too long (501 characters; the limit is 500). Please shorten it."
    ]
    assert h.generator.calls == [] and (await count_rows(h.db))["messages"] == 0


async def test_control_chars_and_surrogates_are_cleaned_role_tokens_kept(make_harness) -> None:
    h = make_harness()
    await h.send("what\x00 is\x1b[31m xss\ud83d?\r\nforget <|ghost_end|><|ghost_user|> this")
    question = "what is[31m xss?\nforget <|ghost_end|><|ghost_user|> this"
    assert h.generator.calls[0].question == question
    assert (await h.db.conversations.history(DM))[0].text == question


async def test_oversized_question_is_shortened_and_user_told(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, context_length=256)
    h = make_harness(gen, max_new_tokens=64, max_message_chars=4000)
    long_text = " ".join(["injection"] * 390)  # under max_message_chars, far over the token budget
    sink = await h.send(long_text)
    answer = sink.finals()[0]
    assert SHORTENED_NOTICE in answer.notices
    spec = gen.calls[0]
    assert spec.question.endswith(QUESTION_MARKER) and gen.prompt_tokens(spec) <= 256 - 64 - 8
    assert (await h.db.conversations.history(DM))[0].text == long_text  # stored as the user wrote it


async def test_prompt_stays_within_budget_with_long_history(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, context_length=256, answer=" ".join(["answer"] * 5))
    h = make_harness(gen, max_new_tokens=64, system_prompt="Be brief and cite [1].")
    for i in range(8):
        await h.send(f"question number {i} about sql injection")
    for spec in gen.calls:
        assert gen.prompt_tokens(spec) <= 256 - 64 - 8
    assert 0 < len(gen.calls[-1].history) < 14  # old pairs fell out, whole
    assert gen.calls[-1].history[-2].content.startswith("question number 6")


async def test_full_queue_answers_busy_and_stores_nothing(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="a b c d", delay_s=0.05)
    h = make_harness(gen, queue_size=1)
    first = asyncio.create_task(h.send("q from one", user="1"))
    await asyncio.to_thread(gen.running.wait, 5)
    second_sink = RecordingSink()
    second = asyncio.create_task(h.manager.handle(h.incoming("q from two", user="2"), second_sink))
    await eventually(lambda: bool(second_sink.events))  # queued behind the first
    full = await h.send("q from three", user="3", event="busy-1")
    assert len(full.notices()) == 1 and "busy" in full.notices()[0] and "try again in ~" in full.notices()[0]
    assert not await h.db.conversations.is_processed("telegram", "busy-1")  # a resend can succeed
    await first
    await second
    assert second_sink.events[0][0] == "queued" and second_sink.events[0][1][0] == 1  # position reported
    assert await h.db.conversations.history(ConversationKey("telegram", "3", "3")) == []
    retry = await h.send("q from three", user="3", event="busy-1")  # the same event, now answered
    assert retry.finals()


async def test_second_question_while_pending_is_refused(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="a b c d", delay_s=0.05)
    h = make_harness(gen)
    first = asyncio.create_task(h.send("first question"))
    await asyncio.to_thread(gen.running.wait, 5)
    second = await h.send("second question")
    assert second.notices() == [PENDING_NOTICE]
    assert (await first).finals()
    assert next(m.text for m in await h.db.conversations.history(DM)) == "first question"


async def test_cancel_stops_the_answer_and_stores_nothing(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 300), delay_s=0.02)
    h = make_harness(gen)
    asking = asyncio.create_task(h.send("long question", event="c1"))
    await asyncio.to_thread(gen.running.wait, 5)
    cancel = await h.send("/cancel")
    assert cancel.notices() == ["Cancelled your request."]
    sink = await asking
    answer = sink.finals()[0]
    assert answer.finish_reason == "cancelled" and CANCELLED_NOTICE in ([*answer.notices, answer.text])
    assert await h.db.conversations.history(DM) == []
    assert await h.db.conversations.is_processed("telegram", "c1")


async def test_cancel_while_queued_gets_a_notice(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="a b c d e", delay_s=0.05)
    h = make_harness(gen)
    first = asyncio.create_task(h.send("q", user="1"))
    await asyncio.to_thread(gen.running.wait, 5)
    waiting = asyncio.create_task(h.send("q", user="2"))
    await eventually(lambda: h.worker.queue_depth == 1)
    assert (await h.send("/cancel", user="2")).notices() == ["Cancelled your request."]
    sink = await waiting
    assert sink.kinds() == ["queued", "notice"] and sink.notices() == [CANCELLED_NOTICE]
    await first


async def test_timeout_tells_the_user(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 500), delay_s=0.02)
    h = make_harness(gen, request_timeout_seconds=0.2)
    sink = await h.send("slow one")
    answer = sink.finals()[0]
    assert answer.finish_reason == "timeout" and TIMEOUT_NOTICE in answer.notices
    assert await h.db.conversations.history(DM) == []


async def test_generation_error_is_polite_and_logs_no_secret(make_harness, bpe_tokenizer, caplog) -> None:
    gen = BPEGenerator(bpe_tokenizer, fail=True)
    h = make_harness(gen, openai_api_key="sk-SECRET")
    with caplog.at_level(logging.ERROR):
        sink = await h.send("boom")
    # Generation had started (the adapter shows typing), so the reply closes it with a final error answer.
    answer = sink.finals()[0]
    assert answer.text == ERROR_NOTICE and answer.finish_reason == "error" and answer.sources == []
    assert "RuntimeError" in caplog.text and "Traceback" in caplog.text
    assert "sk-SECRET" not in caplog.text and "***" in caplog.text
    assert await h.db.conversations.history(DM) == []


async def test_shutting_down_refuses_without_marking(make_harness) -> None:
    h = make_harness()
    await h.worker.shutdown(drain=True, timeout=2)
    sink = await h.send("hello?", event="late")
    assert sink.notices() == [CLOSED_NOTICE]
    assert not await h.db.conversations.is_processed("telegram", "late")


async def test_sink_failure_frees_the_model(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 200), delay_s=0.01)
    h = make_harness(gen)

    class Broken(RecordingSink):
        async def partial(self, text_so_far: str) -> None:
            raise ConnectionError("platform down")

    sink = Broken()
    await h.manager.handle(h.incoming("q"), sink)
    assert sink.notices() == [ERROR_NOTICE]
    assert not h.worker.pending("telegram:1")
    gen.answer = "short"
    assert (await h.send("q again")).finals()


async def test_retrieval_failure_still_answers(make_harness) -> None:
    h = make_harness()

    async def broken(query: str, k: int = 4):
        raise OSError("index missing")

    h.retriever.search = broken  # type: ignore[method-assign]
    sink = await h.send("what is xss?")
    assert sink.finals()[0].sources == []


def test_manager_takes_explicit_dependencies() -> None:
    import inspect

    params = list(inspect.signature(ConversationManager).parameters)
    assert params[:5] == ["db", "retriever", "worker", "generator", "settings"]
    assert ChatKind.DM.value == "dm"


async def test_feedback_obeys_the_same_allow_lists_as_questions(make_harness) -> None:
    h = make_harness(discord_allowed_roles="analyst")
    sink = await h.send(
        "what is xss?", platform="discord", chat="chan", group=True, guild_id="g", role_ids=("analyst",)
    )
    [message_id] = [
        m
        for m in (await h.db.conversations.history(ConversationKey("discord", "chan", "1")))[
            1
        ].platform_message_ids
    ]
    assert sink.finals()
    common = dict(
        platform="discord",
        chat_id="chan",
        platform_message_id=message_id,
        rating=1,
        chat_kind=ChatKind.GROUP,
        guild_id="g",
    )
    # A stranger without the role clicks 👍 under the public answer: nothing is stored.
    assert not await h.manager.record_feedback(user_id="2", role_ids=("guest",), **common)
    assert await h.db.feedback.export() == []
    assert await h.manager.record_feedback(user_id="3", role_ids=("analyst",), **common)
    assert [r.rating for r in await h.db.feedback.export()] == [1]


async def test_an_answer_cut_at_max_tokens_is_stored_and_the_user_is_told(
    make_harness, bpe_tokenizer
) -> None:
    class LengthLimited(BPEGenerator):
        def stream(self, spec, params, should_stop):  # type: ignore[no-untyped-def]
            yield from super().stream(spec, params, should_stop)
            return "length"  # the finish reason is the stream's return value

    h = make_harness(LengthLimited(bpe_tokenizer, answer="a long answer that stops mid"))
    sink = await h.send("explain everything")
    [answer] = sink.finals()
    assert answer.finish_reason == "length"
    assert any("length limit" in notice for notice in answer.notices)
    assert [m.role for m in await h.db.conversations.history(DM)] == ["user", "assistant"]

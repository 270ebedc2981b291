"""Durable delivery through the core: the outbox, crash recovery, /retry in the commit, the /forget races,
refused events not recorded, processed events pruned."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from core.manager import INTERRUPTED_NOTICE, RecoveryReport
from core.types import Answer, MessageListener
from storage import ConversationKey, Database, PendingReplyRow, UserRef
from tests.core.conftest import count_rows
from tests.core.core_doubles import BPEGenerator, RecordingSink

DM = ConversationKey("telegram", "1", "1")


class ReportingSink(RecordingSink):
    """Reports a platform message for the stream and one for the final, like the Telegram sink."""

    def __init__(self) -> None:
        super().__init__()
        self.listener: MessageListener | None = None
        self.rows_seen_in_final: list[list[PendingReplyRow]] = []
        self.during_final: asyncio.Future[object] | None = None
        self.db: Database | None = None

    def on_message(self, listener: MessageListener) -> None:
        self.listener = listener

    async def partial(self, text_so_far: str) -> None:
        if not [k for k, _ in self.events if k == "partial"] and self.listener is not None:
            self.listener("stream-1")
        await super().partial(text_so_far)

    async def final(self, answer: Answer) -> Sequence[str]:
        ids = await super().final(answer)
        if self.listener is not None:
            self.listener(ids[0])
        if self.db is not None:
            self.rows_seen_in_final.append(await self.db.outbox.unfinished("telegram"))
        return ids


async def test_reply_is_in_the_outbox_while_delivered_and_gone_after_the_commit(make_harness) -> None:
    h = make_harness()
    sink = ReportingSink()
    sink.db = h.db
    await h.manager.handle(h.incoming("what is xss?", event="o1"), sink)
    [[row]] = sink.rows_seen_in_final
    assert (row.state, row.event_id, row.question) == ("final", "o1", "what is xss?")
    assert "stream-1" in row.message_ids
    assert (await count_rows(h.db))["pending_replies"] == 0
    [_, answer] = await h.db.conversations.history(DM)
    assert answer.platform_message_ids == ["1001"]


async def test_forget_during_generation_is_not_undone_by_the_answer(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="a b c d e f", delay_s=0.03)
    h = make_harness(gen)
    asking = asyncio.create_task(h.send("what is xss?", event="f1"))
    await asyncio.to_thread(gen.running.wait, 5)
    await h.send("/forget")
    sink = await asking
    assert sink.finals()  # /forget cancels the generation; the reply is closed …
    rows = await count_rows(h.db)
    # … and nothing about the user is stored again.
    assert (rows["users"], rows["messages"], rows["conversations"], rows["pending_replies"]) == (0, 0, 0, 0)
    assert await h.db.conversations.is_processed("telegram", "f1")


async def test_forget_between_delivery_and_commit_is_not_undone(make_harness) -> None:
    h = make_harness()

    class ForgetInFinal(RecordingSink):
        async def final(self, answer: Answer) -> Sequence[str]:
            ids = await super().final(answer)
            await h.send("/forget")  # the user's /forget lands while this answer is being delivered
            return ids

    await h.manager.handle(h.incoming("what is xss?"), ForgetInFinal())
    rows = await count_rows(h.db)
    assert (rows["users"], rows["messages"], rows["pending_replies"]) == (0, 0, 0)


async def test_forget_during_retry_is_not_undone(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="a b c d e f", delay_s=0.03)
    h = make_harness(gen)
    assert (await h.send("what is xss?")).finals()
    gen.running.clear()
    retrying = asyncio.create_task(h.send("/retry"))
    await asyncio.to_thread(gen.running.wait, 5)
    await h.send("/forget")
    assert (await retrying).finals()
    rows = await count_rows(h.db)
    assert (rows["users"], rows["messages"], rows["pending_replies"]) == (0, 0, 0)


async def test_failed_retry_keeps_the_old_exchange(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="first answer")
    h = make_harness(gen)
    await h.send("what is xss?")
    gen.fail = True
    retry = await h.send("/retry")
    assert retry.finals()[0].finish_reason == "error"
    assert [m.text for m in await h.db.conversations.history(DM)] == ["what is xss?", "first answer"]
    gen.fail, gen.answer = False, "second answer"
    await h.send("/retry")
    assert [m.text for m in await h.db.conversations.history(DM)] == ["what is xss?", "second answer"]
    # The retried exchange was not in the prompt of its own retry.
    assert all("first answer" not in str(turn) for turn in gen.calls[-1].history)


async def test_refused_events_are_not_recorded(make_harness, clock) -> None:
    h = make_harness(allowed_users="telegram:1", rate_limit_per_minute=6, rate_limit_burst=1)
    assert (await h.send("hello", user="66", event="denied")).notices()
    assert not await h.db.conversations.is_processed("telegram", "denied")
    assert (await h.send("q one", event="ok")).finals()
    assert "too quickly" in (await h.send("q two", event="limited")).notices()[0]
    assert not await h.db.conversations.is_processed("telegram", "limited")
    clock.now += 60
    assert (await h.send("q two", event="limited")).finals()  # the resend of that event is answered


async def _crashed_reply(h, event: str, question: str, *, ids: Sequence[str], final: str | None) -> int:
    """What a killed process leaves behind: an outbox row, maybe final, with the messages it had sent."""
    reply = await h.db.outbox.open(
        event_id=event,
        key=DM,
        user=UserRef("telegram", "1", "user 1"),
        question=question,
        question_tokens=3,
        user_message_id="u-" + event,
    )
    await h.db.outbox.add_message_ids(reply, list(ids))
    if final is not None:
        await h.db.outbox.record_final(reply, answer=final, answer_tokens=2, sources=[])
    return int(reply)


async def test_recovery_repairs_cut_off_replies_and_stores_delivered_ones(make_harness) -> None:
    h = make_harness()
    await _crashed_reply(h, "k1", "delivered question", ids=["11"], final="delivered answer")
    await _crashed_reply(h, "k2", "cut question", ids=["12", "13"], final=None)
    await _crashed_reply(h, "k3", "early question", ids=[], final=None)
    repaired: list[tuple[list[str], str]] = []

    async def repair(row: PendingReplyRow, notice: str) -> None:
        repaired.append((row.message_ids, notice))

    report = await h.manager.recover("telegram", repair)
    assert report == RecoveryReport(finished=1, interrupted=2, failed=0)
    assert repaired == [(["12", "13"], INTERRUPTED_NOTICE), ([], INTERRUPTED_NOTICE)]
    assert [m.text for m in await h.db.conversations.history(DM)] == [
        "delivered question",
        "delivered answer",
    ]
    for event in ("k1", "k2", "k3"):  # a redelivery of any of them is not answered again
        assert await h.db.conversations.is_processed("telegram", event)
    assert await h.manager.recover("telegram", repair) == RecoveryReport()  # once

    # /retry asks the newest cut-off question again (not the stored exchange).
    retry = await h.send("/retry")
    assert retry.finals() and h.generator.calls[-1].question == "early question"
    retry = await h.send("/retry")
    assert h.generator.calls[-1].question == "cut question"
    history = [m.text for m in await h.db.conversations.history(DM)]
    assert history[:2] == ["delivered question", "delivered answer"] and "cut question" in history


async def test_a_failing_repair_is_counted_and_not_repeated(make_harness) -> None:
    h = make_harness()
    await _crashed_reply(h, "k1", "q", ids=["1"], final=None)

    async def broken(row: PendingReplyRow, notice: str) -> None:
        raise ConnectionError("platform down")

    assert await h.manager.recover("telegram", broken) == RecoveryReport(interrupted=1, failed=1)
    assert await h.manager.recover("telegram", broken) == RecoveryReport()


async def test_processed_events_are_pruned_by_age(make_harness) -> None:
    h = make_harness(processed_events_retention_hours=1)
    await h.send("/help", event="old")
    assert await h.db.conversations.is_processed("telegram", "old")
    assert await h.manager.prune() == 0  # younger than an hour
    now = h.manager.db_now()
    h.manager.db_now = lambda: now + timedelta(hours=2)
    assert await h.manager.prune() == 1
    assert not await h.db.conversations.is_processed("telegram", "old")


async def test_maintain_prunes_in_the_background(make_harness) -> None:
    h = make_harness(processed_events_retention_hours=1)
    await h.send("/help", event="old")
    now = h.manager.db_now()
    h.manager.db_now = lambda: now + timedelta(hours=2)
    task = asyncio.create_task(h.manager.maintain(interval_s=3600))
    try:
        for _ in range(500):
            if not await h.db.conversations.is_processed("telegram", "old"):
                break
            await asyncio.sleep(0.01)
        assert not await h.db.conversations.is_processed("telegram", "old")
    finally:
        task.cancel()

"""The outbox: a reply is recorded before it is sent and leaves in the transaction that stores it."""

from __future__ import annotations

from datetime import timedelta

from storage import ConversationKey, Database, UserRef
from storage.models import utcnow

ALICE = UserRef("telegram", "100", "Alice")
DM = ConversationKey("telegram", "100", "100")


async def _open(db: Database, event: str, question: str = "What is XSS?", **kw: object) -> int:
    return await db.outbox.open(
        event_id=event,
        key=DM,
        user=ALICE,
        question=question,
        question_tokens=3,
        user_message_id="u" + event,
        **kw,  # type: ignore[arg-type]
    )


async def _commit(db: Database, event: str, outbox_id: int, answer: str = "An injection.") -> bool:
    return await db.conversations.commit_exchange(
        platform="telegram",
        event_id=event,
        key=DM,
        user=ALICE,
        user_text="What is XSS?",
        user_tokens=3,
        assistant_text=answer,
        assistant_tokens=2,
        sources=[],
        user_platform_message_id="u" + event,
        assistant_platform_message_ids=["m" + event],
        outbox_id=outbox_id,
    )


async def test_commit_deletes_the_outbox_row_with_the_exchange(db: Database) -> None:
    reply = await _open(db, "1")
    await db.outbox.add_message_ids(reply, ["m1"])
    await db.outbox.add_message_ids(reply, ["m1", "m2"])
    [row] = await db.outbox.unfinished("telegram")
    assert (row.id, row.state, row.message_ids, row.question) == (
        reply,
        "pending",
        ["m1", "m2"],
        "What is XSS?",
    )
    assert await _commit(db, "1", reply)
    assert await db.outbox.unfinished("telegram") == []
    assert await db.outbox.count() == 0
    assert [m.text for m in await db.conversations.history(DM)] == ["What is XSS?", "An injection."]


async def test_forget_while_in_flight_stores_nothing_and_creates_no_user(db: Database) -> None:
    reply = await _open(db, "1")
    await db.conversations.forget_user("telegram", "100")
    assert await db.outbox.count() == 0
    assert not await _commit(db, "1", reply)  # the answer finished after the forget
    assert await db.conversations.history(DM) == []
    assert (await db.stats.global_stats())["users"] == 0
    assert await db.conversations.is_processed("telegram", "1")  # a redelivery is still not answered


async def test_retry_replacement_happens_in_the_commit(db: Database) -> None:
    assert await _commit(db, "1", await _open(db, "1"), answer="first answer")
    question, answer = await db.conversations.last_exchange(DM) or (None, None)
    assert question is not None and answer is not None
    reply = await _open(db, "2", replaces=[question.id, answer.id])
    # Until the new answer is stored, the old exchange is still there (a failed retry loses nothing).
    assert [m.text for m in await db.conversations.history(DM)] == ["What is XSS?", "first answer"]
    assert await _commit(db, "2", reply, answer="second answer")
    assert [m.text for m in await db.conversations.history(DM)] == ["What is XSS?", "second answer"]


async def test_finish_marks_the_event_and_drops_the_row(db: Database) -> None:
    reply = await _open(db, "1")
    assert await db.outbox.finish(reply, "telegram", "1")
    assert await db.outbox.count() == 0
    assert await db.conversations.is_processed("telegram", "1")
    assert await db.conversations.history(DM) == []


async def test_recovery_commits_final_replies_and_keeps_interrupted_ones_for_retry(db: Database) -> None:
    final = await _open(db, "1", question="q1")
    await db.outbox.add_message_ids(final, ["m1"])
    await db.outbox.record_final(final, answer="a1", answer_tokens=1, sources=[{"index": 1, "ref": "CWE-79"}])
    cut = await _open(db, "2", question="q2")
    await db.outbox.add_message_ids(cut, ["m2"])

    rows = await db.outbox.unfinished("telegram")
    assert [(r.id, r.state) for r in rows] == [(final, "final"), (cut, "pending")]
    assert await db.outbox.commit_recovered(final)
    assert not await db.outbox.commit_recovered(final)  # once
    history = await db.conversations.history(DM)
    assert [(m.text, m.platform_message_ids) for m in history] == [("q1", ["u1"]), ("a1", ["m1"])]
    assert await db.conversations.find_by_platform_message("telegram", "100", "m1") is not None

    await db.outbox.mark_interrupted(cut)
    assert await db.conversations.is_processed("telegram", "2")
    assert await db.outbox.unfinished("telegram") == []
    taken = await db.outbox.take_interrupted(DM, "100")
    assert taken is not None and taken.question == "q2"
    assert await db.outbox.take_interrupted(DM, "100") is None


async def test_interrupted_rows_are_pruned_and_forgotten(db: Database) -> None:
    cut = await _open(db, "1", question="secret question")
    await db.outbox.mark_interrupted(cut)
    assert await db.outbox.prune_interrupted(utcnow() - timedelta(hours=1)) == 0
    assert await db.outbox.prune_interrupted(utcnow() + timedelta(seconds=1)) == 1
    await db.outbox.mark_interrupted(await _open(db, "2", question="secret question"))
    assert await db.conversations.forget_user("telegram", "100") == 1
    assert await db.outbox.count() == 0

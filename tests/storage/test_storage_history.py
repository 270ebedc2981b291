"""History, deduplication and per-conversation operations, on every engine the `db` fixture offers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError

from storage import ConversationKey, Database, UserRef
from storage.repositories import message_refs

ALICE = UserRef("telegram", "100", "Alice")
BOB = UserRef("telegram", "200", "Bob")
DM = ConversationKey("telegram", "100", "100")


async def exchange(
    db: Database,
    event: str,
    key: ConversationKey = DM,
    user: UserRef = ALICE,
    question: str = "What is XSS?",
    answer: str = "Cross-site scripting [1].",
    *,
    user_msg: str | None = None,
    answer_msgs: list[str] | None = None,
    sources: list[dict[str, Any]] | None = None,
) -> bool:
    return await db.conversations.commit_exchange(
        platform=key.platform,
        event_id=event,
        key=key,
        user=user,
        user_text=question,
        user_tokens=len(question.split()),
        assistant_text=answer,
        assistant_tokens=len(answer.split()),
        sources=sources if sources is not None else [{"index": 1, "ref": "CWE-79", "source": "cwe"}],
        user_platform_message_id=user_msg,
        assistant_platform_message_ids=answer_msgs or [],
    )


async def test_restart_keeps_history(db_url: str) -> None:
    first = await Database.open(db_url)  # empty database: created and migrated on first run
    assert await exchange(first, "1", question="q1", answer="a1", sources=[{"ref": "CWE-79", "index": 1}])
    assert await exchange(first, "2", question="q2", answer="a2")
    await first.close()

    second = await Database.open(db_url)
    try:
        history = await second.conversations.history(DM)
        assert [(m.role, m.text) for m in history] == [
            ("user", "q1"),
            ("assistant", "a1"),
            ("user", "q2"),
            ("assistant", "a2"),
        ]
        assert history[1].sources == [{"ref": "CWE-79", "index": 1}]
        assert history[0].token_count == 1
        assert history[0].created_at is not None and history[0].created_at.tzinfo is not None
        assert abs(history[0].created_at - datetime.now(UTC)) < timedelta(minutes=5)
        assert await second.conversations.is_processed("telegram", "2")
        assert not await exchange(second, "2", question="again")  # dedup survives the restart too
    finally:
        await second.close()


async def test_duplicate_event_committed_once(db: Database) -> None:
    assert not await db.conversations.is_processed("telegram", "42")
    assert await exchange(db, "42", question="first")
    assert not await exchange(db, "42", question="second")
    history = await db.conversations.history(DM)
    assert [m.text for m in history] == ["first", "Cross-site scripting [1]."]
    assert (await db.stats.global_stats())["processed_events"] == 1
    # Same event id on another platform is a different event.
    assert await exchange(db, "42", ConversationKey("discord", "c", "100"), UserRef("discord", "100", "A"))


async def test_concurrent_duplicates_commit_exactly_once(db: Database, migrated_url: str) -> None:
    # A second Database on the same URL stands in for a second bot process.
    other = await Database.open(migrated_url)
    try:
        results = await asyncio.gather(
            *(exchange(db if i % 2 else other, "dup", question=f"q{i}") for i in range(6))
        )
        assert sorted(results) == [False] * 5 + [True]
        assert len(await db.conversations.history(DM)) == 2
        # Concurrent first messages in one new conversation create one conversation row, not two.
        group = ConversationKey("telegram", "-5", None)
        ok = await asyncio.gather(*(exchange(db if i % 2 else other, f"g{i}", group) for i in range(4)))
        assert all(ok)
        assert len(await db.conversations.history(group)) == 8
        assert (await db.stats.global_stats())["conversations"] == 2
    finally:
        await other.close()


async def test_mark_processed_and_prune(db: Database) -> None:
    assert await db.conversations.mark_processed("discord", "cmd-1")
    assert not await db.conversations.mark_processed("discord", "cmd-1")
    assert await db.conversations.is_processed("discord", "cmd-1")
    assert await db.conversations.prune_processed(datetime.now(UTC) - timedelta(days=1)) == 0
    assert await db.conversations.prune_processed(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert not await db.conversations.is_processed("discord", "cmd-1")


async def test_history_limit_and_conversation_separation(db: Database) -> None:
    group_alice = ConversationKey("telegram", "-9", "100")
    group_shared = ConversationKey("telegram", "-9", None)
    thread = ConversationKey("telegram", "-9", None, "topic-3")
    for i in range(5):
        await exchange(db, f"d{i}", question=f"dm{i}")
    await exchange(db, "g1", group_alice, question="private in group")
    await exchange(db, "g2", group_shared, BOB, question="shared")
    await exchange(db, "g3", thread, BOB, question="threaded")

    last = await db.conversations.history(DM, limit=3)
    assert [m.text for m in last] == ["Cross-site scripting [1].", "dm4", "Cross-site scripting [1]."]
    assert next(m.text for m in await db.conversations.history(group_alice)) == "private in group"
    assert next(m.text for m in await db.conversations.history(group_shared)) == "shared"
    assert next(m.text for m in await db.conversations.history(thread)) == "threaded"
    assert await db.conversations.history(ConversationKey("discord", "100", "100")) == []


async def test_reset(db: Database) -> None:
    other = ConversationKey("telegram", "-1", None)
    await exchange(db, "1", answer_msgs=["7"])
    await exchange(db, "2")
    await exchange(db, "3", other, BOB)
    assert await db.conversations.reset(DM) == 4
    async with db.sessions() as session:  # foreign-key cascade removed the platform-id refs as well
        assert (await session.execute(select(message_refs))).all() == []
    assert await db.conversations.history(DM) == []
    assert await db.conversations.find_by_platform_message("telegram", "100", "7") is None
    assert len(await db.conversations.history(other)) == 2
    assert await db.conversations.reset(DM) == 0
    assert await exchange(db, "4", question="fresh start")
    assert next(m.text for m in await db.conversations.history(DM)) == "fresh start"


async def test_delete_last_exchange_and_last_assistant(db: Database) -> None:
    assert await db.conversations.delete_last_exchange(DM) is None
    assert await db.conversations.last_assistant(DM) is None
    await exchange(db, "1", question="q1", answer="a1")
    await exchange(db, "2", question="q2", answer="a2", answer_msgs=["55"])
    assert (await db.conversations.last_assistant(DM)).text == "a2"  # type: ignore[union-attr]  # the message exists: asserted above

    removed = await db.conversations.delete_last_exchange(DM)
    assert removed is not None
    question, answer = removed
    assert (question.role, question.text, answer.role, answer.text) == ("user", "q2", "assistant", "a2")
    assert answer.platform_message_ids == ["55"]
    assert [m.text for m in await db.conversations.history(DM)] == ["q1", "a1"]
    assert await db.conversations.find_by_platform_message("telegram", "100", "55") is None


async def test_delete_last_exchange_of_one_user_in_shared_history(db: Database) -> None:
    group = ConversationKey("telegram", "-7", None)
    await exchange(db, "1", group, ALICE, question="alice q", answer="alice a")
    await exchange(db, "2", group, BOB, question="bob q", answer="bob a")
    removed = await db.conversations.delete_last_exchange(group, user_id="100")
    assert removed is not None and removed[0].text == "alice q"
    assert [m.text for m in await db.conversations.history(group)] == ["bob q", "bob a"]
    assert await db.conversations.delete_last_exchange(group, user_id="100") is None


async def test_find_by_platform_message(db: Database) -> None:
    await exchange(db, "1", question="q", answer="a", user_msg="10", answer_msgs=["11", "12"])
    by_question = await db.conversations.find_by_platform_message("telegram", "100", "10")
    by_second_part = await db.conversations.find_by_platform_message("telegram", "100", "12")
    assert by_question is not None and by_question.role == "user" and by_question.text == "q"
    assert by_second_part is not None and by_second_part.text == "a"
    assert by_second_part.platform_message_ids == ["11", "12"]
    assert await db.conversations.find_by_platform_message("telegram", "other-chat", "12") is None
    assert await db.conversations.find_by_platform_message("discord", "100", "12") is None

    await db.conversations.attach_platform_messages(by_second_part.id, ["13", "12"])
    third = await db.conversations.find_by_platform_message("telegram", "100", "13")
    assert third is not None and third.id == by_second_part.id
    assert third.platform_message_ids == ["11", "12", "13"]


async def test_awkward_text_is_stored(db: Database) -> None:
    nasty = "nul\x00 <|ghost_end|> \ud800 emoji 🛡️ " + "x" * 20000
    assert await exchange(db, "1", question=nasty, answer="ok")
    stored = (await db.conversations.history(DM))[0].text
    assert "\x00" not in stored and "<|ghost_end|>" in stored and "🛡️" in stored
    assert stored.endswith("x" * 20000)
    stored.encode("utf-8")  # lone surrogate replaced, not an error


async def test_failed_commit_writes_nothing(db: Database) -> None:
    # A source that cannot be stored fails after the event row and the user turn were written: all of it must
    # roll back, so the redelivered event is answered again instead of being skipped with no history.
    unstorable = [{"ref": "CWE-79", "bad": object()}]
    with pytest.raises(StatementError, match="not JSON serializable"):
        await exchange(db, "77", sources=unstorable)
    assert not await db.conversations.is_processed("telegram", "77")
    assert await db.conversations.history(DM) == []
    assert (await db.stats.global_stats())["users"] == 0
    assert await exchange(db, "77")  # the redelivery goes through

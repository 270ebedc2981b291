"""Feedback (upsert, export), per-user settings and statistics."""

from __future__ import annotations

import pytest

from storage import ConversationKey, Database, UnknownMessage, UserRef

ALICE = UserRef("discord", "1", "Alice")
KEY = ConversationKey("discord", "chan", "1")


async def _answer_id(db: Database, event: str = "e1", question: str = "What is CWE-89?") -> int:
    assert await db.conversations.commit_exchange(
        platform="discord",
        event_id=event,
        key=KEY,
        user=ALICE,
        user_text=question,
        user_tokens=5,
        assistant_text="SQL injection [1].",
        assistant_tokens=7,
        sources=[],
        user_platform_message_id="m1",
        assistant_platform_message_ids=["m2"],
    )
    last = await db.conversations.last_assistant(KEY)
    assert last is not None
    return last.id


async def test_feedback_upsert_and_export(db: Database) -> None:
    answer = await _answer_id(db)
    await db.feedback.record(platform="discord", user_id="1", message_id=answer, rating=1)
    await db.feedback.record(platform="discord", user_id="1", message_id=answer, rating=-1)  # changed mind
    await db.feedback.record(platform="discord", user_id="2", message_id=answer, rating=1)
    rows = await db.feedback.export()
    assert [(r.question, r.answer, r.rating, r.platform) for r in rows] == [
        ("What is CWE-89?", "SQL injection [1].", -1, "discord"),
        ("What is CWE-89?", "SQL injection [1].", 1, "discord"),
    ]
    assert rows[0].created_at.tzinfo is not None
    stats = await db.stats.global_stats()
    assert (stats["feedback_up"], stats["feedback_down"]) == (1, 1)


async def test_feedback_rejects_bad_input_and_writes_nothing(db: Database) -> None:
    answer = await _answer_id(db)
    with pytest.raises(ValueError):
        await db.feedback.record(platform="discord", user_id="9", message_id=answer, rating=5)
    with pytest.raises(UnknownMessage):
        await db.feedback.record(platform="discord", user_id="9", message_id=answer + 1000, rating=1)
    assert await db.feedback.export() == []
    assert (await db.stats.global_stats())["users"] == 1  # user 9 was not created by the failed calls


async def test_settings_get_set_unset(db: Database) -> None:
    assert await db.user_settings.get("telegram", "5") == {}
    await db.user_settings.set("telegram", "5", "temperature", "0.2")
    await db.user_settings.set("telegram", "5", "sources", "off")
    await db.user_settings.set("telegram", "5", "temperature", "0.9")
    assert await db.user_settings.get("telegram", "5") == {"temperature": "0.9", "sources": "off"}
    assert await db.user_settings.get("discord", "5") == {}
    assert await db.user_settings.unset("telegram", "5", "sources")
    assert not await db.user_settings.unset("telegram", "5", "sources")
    assert await db.user_settings.get("telegram", "5") == {"temperature": "0.9"}
    with pytest.raises(ValueError):
        await db.user_settings.set("telegram", "5", "k" * 65, "v")
    with pytest.raises(ValueError):
        await db.user_settings.set("telegram", "5", "", "v")


async def test_stats(db: Database) -> None:
    assert (await db.stats.user_stats("discord", "1"))["questions"] == 0
    first = await _answer_id(db, "e1")
    await _answer_id(db, "e2", "And CWE-79?")
    await db.feedback.record(platform="discord", user_id="1", message_id=first, rating=1)
    await db.user_settings.set("telegram", "7", "lang", "de")
    mine = await db.stats.user_stats("discord", "1")
    assert {k: mine[k] for k in ("questions", "answers", "tokens_in", "tokens_out", "conversations")} == {
        "questions": 2,
        "answers": 2,
        "tokens_in": 10,
        "tokens_out": 14,
        "conversations": 1,
    }
    assert (mine["feedback_up"], mine["feedback_down"]) == (1, 0)
    assert mine["first_seen"] <= mine["last_seen"]
    overall = await db.stats.global_stats()
    assert overall["users"] == 2 and overall["users_by_platform"] == {"discord": 1, "telegram": 1}
    assert (overall["questions"], overall["answers"], overall["processed_events"]) == (2, 2, 2)
    assert overall["tokens_in"] == 10 and overall["conversations"] == 1


async def test_display_name_is_refreshed(db: Database) -> None:
    await _answer_id(db, "e1")
    await db.conversations.commit_exchange(
        platform="discord",
        event_id="e2",
        key=KEY,
        user=UserRef("discord", "1", "Alice Renamed"),
        user_text="q",
        user_tokens=1,
        assistant_text="a",
        assistant_tokens=1,
        sources=[],
        user_platform_message_id=None,
        assistant_platform_message_ids=[],
    )
    async with db.sessions() as session:
        from sqlalchemy import select

        from storage.repositories import users

        names = (await session.execute(select(users.c.display_name))).scalars().all()
    assert names == ["Alice Renamed"]

"""`forget_user` leaves no row about the user, in any table, and nothing of anybody else goes with it."""

from __future__ import annotations

from sqlalchemy import select

from storage import Base, ConversationKey, Database, UserRef
from storage.repositories import conversations, messages, processed_events, users

ALICE = UserRef("telegram", "100", "Alice Secret")
BOB = UserRef("telegram", "200", "Bob")
ALICE_DM = ConversationKey("telegram", "100", "100")
BOB_DM = ConversationKey("telegram", "200", "200")
SHARED = ConversationKey("telegram", "-50", None)
ALICE_IN_GROUP = ConversationKey("telegram", "-50", "100", "topic")


async def _exchange(
    db: Database, event: str, key: ConversationKey, user: UserRef, q: str, a: str, ids: list[str]
) -> None:
    assert await db.conversations.commit_exchange(
        platform="telegram",
        event_id=event,
        key=key,
        user=user,
        user_text=q,
        user_tokens=3,
        assistant_text=a,
        assistant_tokens=4,
        sources=[],
        user_platform_message_id=ids[0],
        assistant_platform_message_ids=ids[1:],
    )


async def _all_rows(db: Database) -> dict[str, list[dict[str, object]]]:
    async with db.sessions() as session:
        return {
            table.name: [dict(row._mapping) for row in (await session.execute(select(table))).all()]
            for table in Base.metadata.sorted_tables
            if table.name
            in {
                "users",
                "conversations",
                "messages",
                "message_refs",
                "processed_events",
                "feedback",
                "user_settings",
            }
        }


async def test_forget_user_leaves_no_row(db: Database) -> None:
    await _exchange(db, "1", ALICE_DM, ALICE, "alice-dm-question", "alice-dm-answer", ["a1", "a2"])
    await _exchange(db, "2", SHARED, ALICE, "alice-group-question", "alice-group-answer", ["g1", "g2"])
    await _exchange(db, "3", SHARED, BOB, "bob-group-question", "bob-group-answer", ["g3", "g4"])
    await _exchange(
        db, "4", ALICE_IN_GROUP, ALICE, "alice-topic-question", "alice-topic-answer", ["t1", "t2"]
    )
    await _exchange(db, "5", BOB_DM, BOB, "bob-dm-question", "bob-dm-answer", ["b1", "b2"])
    bob_answer = (await db.conversations.history(BOB_DM))[1]
    alice_answer = (await db.conversations.history(ALICE_DM))[1]
    await db.feedback.record(platform="telegram", user_id="100", message_id=bob_answer.id, rating=1)
    await db.feedback.record(platform="telegram", user_id="200", message_id=alice_answer.id, rating=-1)
    await db.feedback.record(platform="telegram", user_id="200", message_id=bob_answer.id, rating=1)
    await db.user_settings.set("telegram", "100", "lang", "alice-setting")
    await db.user_settings.set("telegram", "200", "lang", "bob-setting")
    # Same numeric id on another platform is another person and must survive.
    await db.user_settings.set("discord", "100", "lang", "discord-100-setting")

    before = await _all_rows(db)
    removed = await db.conversations.forget_user("telegram", "100")
    after = await _all_rows(db)

    assert removed == sum(len(before[t]) for t in before) - sum(len(after[t]) for t in after)
    dump = repr(after)
    for secret in ("alice", "Alice", "a1", "a2", "t1", "'g1'", "'g2'"):
        assert secret not in dump, secret
    assert not [u for u in after["users"] if (u["platform"], u["platform_user_id"]) == ("telegram", "100")]
    assert not [
        c for c in after["conversations"] if c["platform"] == "telegram" and c["scope_user_id"] == "100"
    ]
    assert [(r["message_id"], r["rating"]) for r in after["feedback"]] == [(bob_answer.id, 1)]  # Bob's own
    # Everything of Bob's stays; event ids stay so redeliveries are still skipped.
    assert [m.text for m in await db.conversations.history(SHARED)] == [
        "bob-group-question",
        "bob-group-answer",
    ]
    assert len(await db.conversations.history(BOB_DM)) == 2
    assert await db.user_settings.get("telegram", "200") == {"lang": "bob-setting"}
    assert await db.user_settings.get("discord", "100") == {"lang": "discord-100-setting"}
    assert len(after["processed_events"]) == 5
    assert await db.conversations.is_processed("telegram", "1")

    assert await db.conversations.history(ALICE_DM) == []
    assert await db.user_settings.get("telegram", "100") == {}
    assert (await db.stats.user_stats("telegram", "100"))["questions"] == 0
    assert await db.conversations.forget_user("telegram", "100") == 0


async def test_forget_user_without_user_row_still_removes_scoped_conversations(db: Database) -> None:
    # A history scoped to a user whose user row is gone (or was never written) is still theirs.
    await _exchange(db, "1", ALICE_DM, BOB, "q", "a", ["x"])
    removed = await db.conversations.forget_user("telegram", "100")
    assert removed == 4  # two messages, one ref, one conversation
    async with db.sessions() as session:
        assert (await session.execute(select(conversations))).all() == []
        assert (await session.execute(select(messages))).all() == []
        assert len((await session.execute(select(users))).all()) == 1  # Bob
        assert len((await session.execute(select(processed_events))).all()) == 1

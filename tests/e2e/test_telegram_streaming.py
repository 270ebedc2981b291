"""Telegram streaming and reactions end to end: native drafts in private chats, edits in groups, the
fallback when a Bot API server has no drafts, and 👍/👎 reactions stored as feedback."""

from __future__ import annotations

import threading
from typing import Any

from storage.values import ConversationKey
from tests.e2e.conftest import Harness, ScriptedGenerator
from tests.e2e.test_telegram_bot import ALICE, BOB, GROUP, ask, dm_key, eventually, history

WORDS = " ".join(f"token{i}" for i in range(120))


def slow_words(delay: float = 0.02) -> ScriptedGenerator:
    return ScriptedGenerator(script=lambda spec: WORDS, delay=delay)  # 120 pieces: ~2.4 s by default


async def committed(h: Harness, key: ConversationKey, rows: int = 2) -> None:
    async def done() -> bool:
        return len(await history(h, key)) == rows

    await eventually(done)


async def test_a_dm_answer_streams_through_drafts_and_ends_as_one_message(bot_factory: Any) -> None:
    async with bot_factory(generator=slow_words()) as h:
        fake = h.fake
        messages = await ask(h, fake.private_chat(ALICE), fake.user(ALICE), "stream please")

        assert len(messages) == 1 and messages[0].text == WORDS  # the final answer, a normal message
        assert messages[0].reply_markup is not None and messages[0].parse_mode == "HTML"
        drafts = [d for d in fake.drafts if d.chat_id == ALICE]
        assert len(drafts) >= 2, "a 2.4 s answer shows progress as drafts"
        assert len({d.draft_id for d in drafts}) == 1 and drafts[0].draft_id != 0  # one draft per answer
        assert all(WORDS.startswith(d.text) and d.text != WORDS for d in drafts)  # growing previews
        assert [len(d.text) for d in drafts] == sorted(len(d.text) for d in drafts)
        assert not fake.calls_to("editMessageText", ALICE)  # no edit-based streaming in a DM
        assert len(fake.calls_to("sendMessage", ALICE)) == 1  # nothing sent before the final
        # the final message came after the last draft (it is what replaces the draft on screen)
        order = [c.method for c in fake.chat_calls(ALICE) if c.method != "sendChatAction"]
        assert order[-1] == "sendMessage" and set(order[:-1]) == {"sendMessageDraft"}
        await committed(h, dm_key(ALICE))

        # the next answer gets a draft id of its own
        await ask(h, fake.private_chat(ALICE), fake.user(ALICE), "again please")
        assert len({d.draft_id for d in fake.drafts if d.chat_id == ALICE}) == 2


async def test_a_group_answer_streams_through_edits(bot_factory: Any) -> None:
    # Groups stream at most every 3 s, so the answer takes longer than that.
    async with bot_factory(generator=slow_words(delay=0.04)) as h:
        fake = h.fake
        messages = await ask(h, fake.group_chat(GROUP), fake.user(ALICE), f"@{fake.username} stream please")

        assert len(messages) == 1 and messages[0].text == WORDS
        assert not fake.calls_to("sendMessageDraft")  # drafts are for private chats only
        assert len(fake.calls_to("sendMessage", GROUP)) == 1  # the streamed message…
        assert fake.calls_to("editMessageText", GROUP)  # …edited in place, the final edit included
        assert messages[0].edits >= 1


async def test_a_draft_failure_falls_back_to_edits_and_is_remembered(bot_factory: Any) -> None:
    async with bot_factory(generator=slow_words()) as h:
        fake = h.fake
        fake.drafts_supported = False  # an older Bot API server: sendMessageDraft is unknown (404)
        chat, user = fake.private_chat(ALICE), fake.user(ALICE)
        first = await ask(h, chat, user, "stream please")

        assert len(first) == 1 and first[0].text == WORDS and first[0].reply_markup is not None
        assert [c.status for c in fake.calls_to("sendMessageDraft", ALICE)] == [404]
        assert fake.calls_to("editMessageText", ALICE), "the same answer carried on by edits"
        await committed(h, dm_key(ALICE))

        second = await ask(h, chat, user, "and again")
        assert second[-1].text == WORDS
        assert len(fake.calls_to("sendMessageDraft", ALICE)) == 1  # remembered: not tried again
        # another private chat is not affected by what Alice's chat learned
        fake.drafts_supported = True
        await ask(h, fake.private_chat(BOB), fake.user(BOB), "stream for Bob")
        assert [d.chat_id for d in fake.drafts] and {d.chat_id for d in fake.drafts} == {BOB}


async def test_streaming_off_sends_only_the_finished_answer(bot_factory: Any) -> None:
    async with bot_factory(generator=slow_words(), telegram_streaming="off") as h:
        fake = h.fake
        messages = await ask(h, fake.private_chat(ALICE), fake.user(ALICE), "no streaming")
        assert len(messages) == 1 and messages[0].text == WORDS
        assert not fake.calls_to("sendMessageDraft") and not fake.calls_to("editMessageText")
        assert fake.calls_to("sendChatAction", ALICE)  # typing… until the answer is there


async def test_reactions_are_feedback_like_the_buttons(bot_factory: Any) -> None:
    async with bot_factory() as h:
        fake = h.fake
        chat, user = fake.private_chat(ALICE), fake.user(ALICE)
        [answer] = await ask(h, chat, user, "What is CSRF?")
        assert "message_reaction" in (fake.allowed_updates or [])  # or Telegram would never send them
        await committed(h, dm_key(ALICE))

        async def ratings() -> list[int]:
            return [r.rating for r in await h.app.db.feedback.export()]

        async def rated(expected: list[int]) -> None:
            async def check() -> bool:
                return await ratings() == expected

            await eventually(check)

        fake.react(chat_id=ALICE, message_id=answer.message_id, user=user, new=["👎"])
        await rated([-1])  # a 👎 reaction is stored
        rows = await h.app.db.feedback.export()
        assert [(r.question, r.platform) for r in rows] == [("What is CSRF?", "telegram")]

        # the buttons and reactions are one rating per user and answer: the last one wins
        fake.press_button(chat_id=ALICE, message_id=answer.message_id, user=user, data="fb:+1")
        await rated([1])
        fake.react(chat_id=ALICE, message_id=answer.message_id, user=user, old=["👎"], new=["👎", "👍"])
        fake.react(chat_id=ALICE, message_id=answer.message_id, user=user, old=["👎", "👍"], new=["👎"])
        await rated([-1])
        # other emoji are not ratings; taking the 👎 away withdraws the rating
        fake.react(chat_id=ALICE, message_id=answer.message_id, user=user, old=["👎"], new=["👎", "🔥"])
        fake.react(chat_id=ALICE, message_id=answer.message_id, user=user, old=["👎", "🔥"], new=["🔥"])
        await rated([])
        # a reaction on the user's own question is not feedback
        question_id = answer.message_id - 1
        marker = fake.react(chat_id=ALICE, message_id=question_id, user=user, new=["👍"])
        await fake.wait_for(
            lambda: any(int(c.params.get("offset") or 0) > marker for c in fake.calls_to("getUpdates"))
        )
        await ask(h, chat, user, "still here?")  # every update before this one has been handled
        assert await ratings() == []


async def test_group_reactions_count_per_user(bot_factory: Any) -> None:
    async with bot_factory() as h:
        fake = h.fake
        group, alice, bob = fake.group_chat(GROUP), fake.user(ALICE), fake.user(BOB)
        [answer] = await ask(h, group, alice, f"@{fake.username} what is XSS?")
        await committed(h, ConversationKey("telegram", str(GROUP), str(ALICE)))
        fake.react(chat_id=GROUP, message_id=answer.message_id, user=alice, new=["👍"])
        fake.react(chat_id=GROUP, message_id=answer.message_id, user=bob, new=["👎"])

        async def both() -> bool:
            return sorted(r.rating for r in await h.app.db.feedback.export()) == [-1, 1]

        await eventually(both)
        assert len(fake.calls_to("sendMessage", GROUP)) == 1  # reactions are answered by nothing


async def test_a_queue_status_gives_way_to_the_draft(bot_factory: Any) -> None:
    gate = threading.Event()
    generator = ScriptedGenerator(script=lambda spec: WORDS, delay=0.02, gate=gate)
    async with bot_factory(generator=generator) as h:
        fake = h.fake
        fake.send_text(chat=fake.private_chat(BOB), user=fake.user(BOB), text="first in line")
        await fake.wait_for(lambda: len(generator.specs) == 1)  # Bob's answer holds the model
        fake.send_text(chat=fake.private_chat(ALICE), user=fake.user(ALICE), text="second in line")
        await fake.wait_for(lambda: bool(fake.bot_messages(ALICE)))
        [status] = fake.bot_messages(ALICE)
        assert "queue" in status.text
        gate.set()
        await fake.wait_for(lambda: any(d.chat_id == ALICE for d in fake.drafts), timeout=30)
        [answer] = await fake.wait_for_messages(ALICE, 1, timeout=30, final=True)
        assert answer.message_id != status.message_id and answer.text == WORDS
        assert fake.messages[(ALICE, status.message_id)].deleted  # the draft replaced the status line

"""Every command through the real manager and database."""

from __future__ import annotations

import asyncio

from core.commands import COMMANDS, help_text, parse_command
from storage import ConversationKey
from tests.core.conftest import count_rows
from tests.core.core_doubles import BPEGenerator

DM = ConversationKey("telegram", "1", "1")


def test_parse_command() -> None:
    assert parse_command("/Help") == parse_command("/help")
    cmd = parse_command("/ASK@GhostBot what is  CWE-79?")
    assert cmd is not None and (cmd.name, cmd.args, cmd.bot_name) == ("ask", "what is  CWE-79?", "GhostBot")
    assert parse_command("/settings temperature 0.3").args == "temperature 0.3"
    assert parse_command("/etc/passwd is world readable, why?") is None  # a path, not a command
    assert parse_command("what is /help") is None
    assert set(COMMANDS) == {
        "start",
        "help",
        "reset",
        "retry",
        "cancel",
        "sources",
        "forget",
        "docs",
        "settings",
        "stats",
        "ask",
    }


async def test_start_and_help_list_every_command(make_harness) -> None:
    h = make_harness()
    for text in ("/start", "/help"):
        reply = (await h.send(text)).notices()[0]
        for name in COMMANDS:
            assert f"/{name}" in reply
    assert (await h.send("/help@GhostBot")).notices() == [help_text()]
    assert h.generator.calls == []


async def test_unknown_command(make_harness) -> None:
    h = make_harness()
    assert (await h.send("/frobnicate now")).notices() == ["Unknown command /frobnicate. Try /help."]


async def test_commands_are_idempotent_by_event(make_harness) -> None:
    h = make_harness()
    assert (await h.send("/help", event="h1")).notices()
    assert (await h.send("/help", event="h1")).events == []


async def test_ask_in_a_group(make_harness) -> None:
    h = make_harness()
    sink = await h.send("/ask what is xss?", user="1", chat="-100", group=True)
    assert sink.finals() and h.generator.calls[0].question == "what is xss?"
    assert "Usage: /ask" in (await h.send("/ask", user="1", chat="-100", group=True)).notices()[0]


async def test_reset_clears_only_this_conversation(make_harness) -> None:
    h = make_harness()
    await h.send("what is xss?")
    await h.send("what is xss?", chat="-100", group=True)
    assert (await h.send("/reset")).notices() == ["Conversation cleared."]
    assert await h.db.conversations.history(DM) == []
    assert len(await h.db.conversations.history(ConversationKey("telegram", "-100", "1"))) == 2
    assert (await h.send("/reset")).notices() == ["There was no history to clear."]


async def test_retry_regenerates_the_last_answer(make_harness) -> None:
    h = make_harness()
    await h.send("what is sql injection?")
    await h.send("what is xss?")
    h.generator.answer = "A better answer [1]."
    sink = await h.send("/retry")
    assert sink.finals()[0].text == "A better answer [1]."
    assert h.generator.calls[-1].question == "what is xss?"
    assert next(t.content for t in h.generator.calls[-1].history) == "what is sql injection?"
    history = await h.db.conversations.history(DM)
    assert [m.text for m in history] == [
        "what is sql injection?",
        "XSS is script injection [1].",
        "what is xss?",
        "A better answer [1].",
    ]


async def test_retry_failure_keeps_the_old_answer(make_harness) -> None:
    h = make_harness()
    await h.send("what is xss?")
    h.generator.fail = True
    await h.send("/retry")
    assert [m.text for m in await h.db.conversations.history(DM)] == [
        "what is xss?",
        "XSS is script injection [1].",
    ]


async def test_retry_with_nothing_to_retry(make_harness) -> None:
    h = make_harness()
    assert "no answer to retry" in (await h.send("/retry")).notices()[0]


async def test_sources_of_the_last_answer(make_harness) -> None:
    h = make_harness()
    assert "no answer" in (await h.send("/sources")).notices()[0]
    await h.send("what is xss?")
    reply = (await h.send("/sources")).notices()[0]
    assert "[1] Cross-site Scripting (CWE-79) — https://cwe.mitre.org/data/definitions/79.html" in reply
    await h.send("tell me a joke")  # nothing retrieved
    assert (await h.send("/sources")).notices() == ["The last answer did not use any sources."]


async def test_settings_show_change_validate(make_harness) -> None:
    h = make_harness()
    shown = (await h.send("/settings")).notices()[0]
    assert "temperature = 0.7 (default)" in shown and "sources = on (default)" in shown
    assert (await h.send("/settings temperature 0.3")).notices() == ["Saved: temperature = 0.3."]
    assert "between 0 and 2" in (await h.send("/settings temperature 5")).notices()[0]
    assert "number" in (await h.send("/settings temperature hot")).notices()[0]
    assert "on or off" in (await h.send("/settings sources maybe")).notices()[0]
    assert "Unknown setting 'colour'" in (await h.send("/settings colour red")).notices()[0]
    assert "Usage: /settings temperature" in (await h.send("/settings temperature")).notices()[0]
    assert (await h.send("/settings sources off")).notices() == ["Saved: sources = off."]
    assert (await h.send("/settings max_tokens 32")).notices() == ["Saved: max_tokens = 32."]
    assert await h.db.user_settings.get("telegram", "1") == {
        "temperature": "0.3",
        "sources": "off",
        "max_tokens": "32",
    }
    sink = await h.send("what is xss?")
    assert h.generator.params[-1].temperature == 0.3 and h.generator.params[-1].max_new_tokens == 32
    assert sink.finals()[0].sources == []  # footer off …
    assert "CWE-79" in (await h.send("/sources")).notices()[0]  # … but /sources still knows them
    assert "back to its default" in (await h.send("/settings temperature default")).notices()[0]
    assert (await h.send("/settings reset")).notices() == ["All your settings are back to their defaults."]
    assert await h.db.user_settings.get("telegram", "1") == {}


async def test_stats_for_users_and_admins(make_harness) -> None:
    h = make_harness(admin_users="telegram:9")
    await h.send("what is xss?")
    mine = (await h.send("/stats")).notices()[0]
    assert "questions: 1" in mine and "answers: 1" in mine and "queue depth" not in mine
    admin = (await h.send("/stats", user="9")).notices()[0]
    assert "Everyone (admin)" in admin and "queue depth: 0" in admin and "users: 1" in admin


async def test_forget_deletes_every_row_about_the_user(make_harness) -> None:
    h = make_harness()
    await h.send("what is xss?")
    await h.send("group question", chat="-100", group=True)
    await h.send("/settings temperature 0.2")
    assert await h.manager.record_feedback(
        platform="telegram", chat_id="1", user_id="1", platform_message_id="1001", rating=-1
    )
    await h.send("someone else's question", user="2")
    reply = (await h.send("/forget")).notices()[0]
    assert reply.startswith("Done — I deleted everything I had stored about you")
    rows = await count_rows(h.db)
    assert (
        rows["users"] == 1 and rows["messages"] == 2 and rows["feedback"] == 0 and rows["user_settings"] == 0
    )
    assert await h.db.conversations.history(DM) == []
    assert await h.db.user_settings.get("telegram", "1") == {}
    assert (
        len(await h.db.conversations.history(ConversationKey("telegram", "2", "2"))) == 2
    )  # others keep theirs


async def test_forget_cancels_a_pending_answer(make_harness, bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 300), delay_s=0.02)
    h = make_harness(gen)
    asking = asyncio.create_task(h.send("long question"))
    await asyncio.to_thread(gen.running.wait, 5)
    await h.send("/forget")
    assert (await asking).finals()[0].finish_reason == "cancelled"
    assert (await count_rows(h.db))["messages"] == 0

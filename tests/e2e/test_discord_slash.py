"""Slash commands end to end: the unmodified discord.py against the loopback Discord fake,
the real app behind it (storage, retrieval, manager, worker); only the model is scripted."""

from __future__ import annotations

import itertools
import threading

import discord
import pytest

from storage import ConversationKey
from tests.e2e.discord_fixtures import (
    ScriptedGenerator,
    contents,
    feedback_buttons,
    is_ephemeral,
    settled,
    slash,
)

COMMANDS = {"ask", "reset", "sources", "forget", "settings", "stats", "help", "retry", "cancel", "docs"}
DOCS = {
    "xss.md": "# Cross-site scripting\n\nCWE-79 cross-site scripting: escape output, use a content security policy."
}


def channel_key(h, user) -> ConversationKey:
    return ConversationKey("discord", h.world.channel["id"], user["id"])


async def test_commands_are_synced_to_the_configured_guild(discord_bot) -> None:
    async with discord_bot() as h:
        synced = h.fake.commands[h.world.guild["id"]]
        assert {c["name"] for c in synced if c["type"] == 1} == COMMANDS
        assert [c["name"] for c in synced if c["type"] == 3] == ["Ask GhostLM about this message"]
        settings = next(c for c in synced if c["name"] == "settings")
        assert [(o["name"], o.get("required", False)) for o in settings["options"]] == [
            ("key", False),
            ("value", False),
        ]
        ask = next(c for c in synced if c["name"] == "ask")
        assert [(o["name"], o.get("required", False)) for o in ask["options"]] == [
            ("question", True),
            ("file", False),
        ]
        assert "global" not in h.fake.commands


async def test_ask_defers_before_the_core_then_streams_into_the_original(discord_bot) -> None:
    script = ScriptedGenerator(script=lambda spec: " ".join(["token"] * 60) + " done", delay=0.05)
    async with discord_bot(generator=script) as h:
        state = await slash(h, "ask", {"question": "What is XSS?"})

        assert state.callback_type == 5 and not state.defer_ephemeral  # public "thinking…" defer
        assert state.callback_at < script.started[0]  # acknowledged before the model ran
        final = state.visible()[-1]
        assert final is state.original and final["content"].startswith("token token")
        assert final["content"].rstrip().endswith("done")
        assert not is_ephemeral(final)
        assert feedback_buttons(final) == ["fb:+1", "fb:-1"]
        # Streaming edits, then the final edit; streaming edits at most one per second.
        streaming = [t for t, _ in state.original_edits[:-1]]
        assert len(state.original_edits) >= 2
        assert all(b - a >= 0.95 for a, b in itertools.pairwise(streaming))
        history = await h.app.db.conversations.history(channel_key(h, h.world.alice))
        assert [m.role for m in history] == ["user", "assistant"]
        assert history[0].text == "What is XSS?"
        assert history[1].platform_message_ids == [str(final["id"])]


async def test_ask_defers_promptly_even_when_the_queue_is_full(discord_bot) -> None:
    gate = threading.Event()
    script = ScriptedGenerator(gate=gate)
    async with discord_bot(generator=script, queue_size=2) as h:
        users = [h.fake.user(f"user{i}") for i in range(4)]
        running = await slash(h, "ask", {"question": "first"}, user=users[0], wait=False)
        await h.fake.wait_for(lambda: script.started, 10)  # holds the model
        waiting = [
            await slash(h, "ask", {"question": f"q{i}"}, user=u, wait=False) for i, u in enumerate(users[1:3])
        ]
        await h.fake.wait_for(lambda: all(any(is_ephemeral(m) for m in s.visible()) for s in waiting), 10)
        refused = await slash(h, "ask", {"question": "one too many"}, user=users[3], wait=False)
        await h.fake.wait_for(lambda: refused.deleted, 10)

        queued_notes = [m["content"] for s in waiting for m in s.visible() if is_ephemeral(m)]
        assert all("queue" in text.lower() for text in queued_notes)
        busy = [m for m in refused.visible() if is_ephemeral(m)]
        assert busy and not any(not is_ephemeral(m) for m in refused.visible())  # nothing public left

        # Every one was acknowledged while the model was still held and the queue full: the defer never
        # waits for the queue (the fake's record of events, not a clock) …
        acknowledged_while_held = [state.callback_type for state in [running, *waiting, refused]]
        gate.set()
        await settled(h, 20)
        assert acknowledged_while_held == [5, 5, 5, 5]
        for state in [running, *waiting, refused]:
            # … and the acknowledgement was the bot's first call about the interaction.
            about = [c for c in h.fake.calls if state.token in c.path]
            assert about[0].path.startswith(f"/interactions/{state.id}/")
        for state in [running, *waiting]:
            assert state.visible()[0]["content"].startswith("Answer to:")
        assert len(script.specs) == 3  # the refused request never reached the model


async def test_long_answer_is_split_into_followups_with_the_code_block_intact(discord_bot) -> None:
    code = "\n".join(f"payload_{i} = '<script>alert({i})</script>'" for i in range(150))
    text = "Here are test payloads:\n\n```python\n" + code + "\n```\n\nEscape them all."
    async with discord_bot(generator=ScriptedGenerator(script=lambda spec: text)) as h:
        state = await slash(h, "ask", {"question": "payloads please"})

        parts = contents(state)
        assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
        assert not any(is_ephemeral(m) for m in state.visible())
        for part in parts:
            assert part.count("```") % 2 == 0  # every part renders its own complete code block
        joined = "\n".join(parts)
        for i in range(150):
            assert f"payload_{i} = '<script>alert({i})</script>'" in joined
        assert parts[-1].rstrip().endswith("Escape them all.")
        assert [feedback_buttons(m) for m in state.visible()][-1] == ["fb:+1", "fb:-1"]
        assert all(not feedback_buttons(m) for m in state.visible()[:-1])
        history = await h.app.db.conversations.history(channel_key(h, h.world.alice))
        assert history[-1].platform_message_ids == [str(m["id"]) for m in state.visible()]
        sends = [c for c in h.fake.calls if c.path.startswith("/webhooks/") and c.method in ("POST", "PATCH")]
        assert sends and all(
            c.body["allowed_mentions"] == {"parse": []} for c in sends
        )  # model text pings nobody


async def test_every_other_command_answers_ephemerally(discord_bot) -> None:
    async with discord_bot(index=DOCS) as h:
        alice = h.world.alice
        await slash(h, "ask", {"question": "What is CWE-79 cross-site scripting?"})

        help_state = await slash(h, "help")
        sources = await slash(h, "sources")
        settings_list = await slash(h, "settings")
        settings_set = await slash(h, "settings", {"key": "temperature", "value": "0.3"})
        stats = await slash(h, "stats")
        for state in (help_state, sources, settings_list, settings_set, stats):
            assert state.callback_type == 5 and state.defer_ephemeral
            assert state.visible() and all(is_ephemeral(m) for m in state.visible())
            assert all(m["content"].strip() for m in state.visible())
        assert "/reset" in "\n".join(contents(help_state))
        assert "xss.md" in "\n".join(contents(sources))
        assert (await h.app.db.user_settings.get("discord", alice["id"])).get("temperature") == "0.3"

        reset = await slash(h, "reset")
        assert all(is_ephemeral(m) for m in reset.visible()) and reset.visible()
        assert await h.app.db.conversations.history(channel_key(h, alice)) == []
        again = await slash(h, "ask", {"question": "and now?"})
        assert "history turns: 0" in contents(again)[0]

        forget = await slash(h, "forget")
        assert all(is_ephemeral(m) for m in forget.visible()) and forget.visible()
        assert await h.app.db.conversations.history(channel_key(h, alice)) == []
        assert await h.app.db.user_settings.get("discord", alice["id"]) == {}


async def test_retry_regenerates_publicly_and_cancel_answers_privately(discord_bot) -> None:
    answers = iter(["first take", "second take"])
    async with discord_bot(generator=ScriptedGenerator(script=lambda spec: next(answers))) as h:
        await slash(h, "ask", {"question": "explain SSRF"})
        retry = await slash(h, "retry")
        assert retry.callback_type == 5 and not retry.defer_ephemeral
        assert contents(retry)[0] == "second take" and feedback_buttons(retry.visible()[-1])
        history = await h.app.db.conversations.history(channel_key(h, h.world.alice))
        assert [m.text for m in history] == ["explain SSRF", "second take"]

        cancel = await slash(h, "cancel")
        assert cancel.defer_ephemeral and cancel.visible() and all(is_ephemeral(m) for m in cancel.visible())


def crashing_model(spec) -> str:
    raise RuntimeError("model crashed")


async def test_a_model_failure_is_reported_privately_and_leaves_nothing_public(discord_bot) -> None:
    async with discord_bot(generator=ScriptedGenerator(script=crashing_model)) as h:
        state = await slash(h, "ask", {"question": "will this work?"})
        assert state.visible() and all(is_ephemeral(m) for m in state.visible())
        assert "model crashed" not in "\n".join(contents(state))  # no internals shown to users
        assert await h.app.db.conversations.history(channel_key(h, h.world.alice)) == []


async def test_bad_settings_arguments_get_a_polite_answer_and_change_nothing(discord_bot) -> None:
    async with discord_bot() as h:
        state = await slash(h, "settings", {"key": "temperature", "value": "hot"})
        assert state.visible() and all(is_ephemeral(m) for m in state.visible())
        assert await h.app.db.user_settings.get("discord", h.world.alice["id"]) == {}


async def test_role_allow_list_denies_strangers_and_answers_members(discord_bot, world) -> None:
    async with discord_bot(discord_allowed_roles=world.member_role) as h:
        denied = await slash(h, "ask", {"question": "let me in"}, user=world.stranger, roles=[])
        assert denied.callback_type == 5
        private = [m for m in denied.visible() if is_ephemeral(m)]
        public = [m for m in denied.visible() if not is_ephemeral(m)]
        assert private and not public  # the refusal only the stranger sees; placeholder removed
        assert "sorry" in private[0]["content"].lower() or "not" in private[0]["content"].lower()
        assert h.generator.specs == []
        assert await h.app.db.conversations.history(channel_key(h, world.stranger)) == []

        allowed = await slash(h, "ask", {"question": "member question"}, user=world.alice)
        assert contents(allowed)[0].startswith("Answer to: member question")


async def test_channel_allow_list_denies_other_channels(discord_bot, world) -> None:
    other = world.fake.add_channel(world.guild, "random")
    async with discord_bot(discord_allowed_channels=world.channel["id"]) as h:
        denied = await slash(h, "ask", {"question": "hello"}, channel=other)
        assert denied.visible() and all(is_ephemeral(m) for m in denied.visible())
        in_thread = await slash(
            h, "ask", {"question": "threads of allowed channels work"}, channel=world.thread
        )
        assert contents(in_thread)[0].startswith("Answer to:")
        assert len(h.generator.specs) == 1


async def test_guild_allow_list_denies_other_guilds_but_not_dms(discord_bot, world) -> None:
    other_guild = world.fake.add_guild("elsewhere")
    other_channel = world.fake.add_channel(other_guild, "lobby")
    dm = world.fake.add_dm(world.alice)
    async with discord_bot(discord_allowed_guilds=world.guild["id"], discord_guild_ids="") as h:
        denied = await slash(h, "ask", {"question": "hi"}, channel=other_channel, roles=[])
        assert denied.visible() and all(is_ephemeral(m) for m in denied.visible())
        assert "sorry" in contents(denied)[0].lower()
        at_home = await slash(h, "ask", {"question": "home guild"})
        in_dm = await slash(h, "ask", {"question": "direct"}, channel=dm)
        assert contents(at_home)[0].startswith("Answer to: home guild")
        assert contents(in_dm)[0].startswith("Answer to: direct")
        assert [s.question for s in h.generator.specs] == ["home guild", "direct"]


async def test_thumbs_up_button_is_stored_as_feedback(discord_bot) -> None:
    async with discord_bot() as h:
        answer = await slash(h, "ask", {"question": "Is SQL injection bad?"})
        message = answer.visible()[-1]
        click = await h.fake.push_button("fb:+1", message, h.world.bob, roles=[h.world.member_role])
        await h.fake.wait_for(lambda: click.callback_type is not None, 10)

        assert click.callback_type == 4 and is_ephemeral(click.original)
        assert "thank" in click.original["content"].lower()
        rows = await h.app.db.feedback.export()
        assert [(r.question, r.rating, r.platform) for r in rows] == [("Is SQL injection bad?", 1, "discord")]
        assert rows[0].answer.startswith("Answer to: Is SQL injection bad?")

        down = await h.fake.push_button("fb:-1", message, h.world.bob, roles=[h.world.member_role])
        await h.fake.wait_for(lambda: down.callback_type is not None, 10)
        rows = await h.app.db.feedback.export()
        assert [r.rating for r in rows] == [-1]  # one rating per user and answer: changed, not added


async def test_rate_limited_edit_is_retried_not_lost(discord_bot) -> None:
    async with discord_bot() as h:
        h.fake.rate_limit("PATCH", r"/webhooks/\d+/[^/]+/messages/@original", retry_after=0.3, times=1)
        state = await slash(h, "ask", {"question": "still there?"})
        limited = [c for c in h.fake.calls if c.status == 429]
        assert len(limited) == 1
        assert contents(state)[0].startswith("Answer to: still there?")


async def test_a_wrong_token_fails_start_without_revealing_it(world, tmp_path) -> None:
    from bots.discord import DiscordAdapter
    from tests.e2e.discord_fixtures import discord_settings

    world.fake.token = "the-right-token"
    settings = discord_settings(world, tmp_path, discord_bot_token="wrong-secret-token")
    adapter = DiscordAdapter(settings, manager=None)  # type: ignore[arg-type]  (never reached)
    with pytest.raises(discord.LoginFailure) as failure:
        await adapter.start()
    assert "wrong-secret-token" not in str(failure.value) and "wrong-secret-token" not in repr(failure.value)
    assert adapter.client is None
    assert [c.status for c in world.fake.calls] == [401]

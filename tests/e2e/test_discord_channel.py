"""Channel Q&A, threads, DMs, exactly-once and gateway liveness, end to end against the fake."""

from __future__ import annotations

import time

from storage import ConversationKey
from tests.e2e.discord_fixtures import (
    ScriptedGenerator,
    feedback_buttons,
    running_discord,
    settled,
)


async def answers_in(h, channel, count: int, timeout: float = 15.0) -> list[dict]:
    """Wait for `count` finished bot answers (the last message of each carries the buttons)."""

    def done() -> list[dict] | None:
        messages = h.fake.bot_messages(channel["id"])
        rated = [m for m in messages if feedback_buttons(m)]
        return messages if len(rated) >= count else None

    messages = await h.fake.wait_for(done, timeout)
    await settled(h)
    return messages


def posts_to(h, channel) -> int:
    return len(h.fake.calls_to("POST", rf"/channels/{channel['id']}/(messages|typing)"))


async def test_mention_and_reply_are_answered_unaddressed_messages_are_ignored(discord_bot, world) -> None:
    async with discord_bot() as h:
        member = [world.member_role]
        await h.fake.push_message(world.channel, world.alice, "chatting with friends", roles=member)
        asked = await h.fake.push_message(
            world.channel, world.alice, "what is CSRF?", mention_bot=True, roles=member
        )
        [answer] = await answers_in(h, world.channel, 1)

        assert answer["content"].startswith("Answer to: what is CSRF? (history turns: 0)")
        assert answer["message_reference"]["message_id"] == asked["id"]  # a reply to the question
        assert f"<@{h.fake.bot_user['id']}>" not in h.generator.specs[0].question
        [post] = h.fake.calls_to("POST", rf"/channels/{world.channel['id']}/messages")
        assert post.body["allowed_mentions"] == {"parse": [], "replied_user": False}  # pings nobody
        key = ConversationKey("discord", world.channel["id"], world.alice["id"])
        history = await h.app.db.conversations.history(key)
        assert [m.text for m in history if m.role == "user"] == ["what is CSRF?"]  # nothing of the chatter

        calls_before = len(h.fake.calls)
        await h.fake.push_message(world.channel, world.bob, "unrelated banter", roles=member)
        await h.fake.push_message(
            world.channel, world.alice, "and how do I stop it?", reply_to=answer, roles=member
        )
        messages = await answers_in(h, world.channel, 2)
        assert messages[-1]["content"].startswith("Answer to: and how do I stop it? (history turns: 2)")
        new_calls = h.fake.calls[calls_before:]
        assert all(world.bob["id"] not in str(c.body) for c in new_calls)
        assert (
            await h.app.db.conversations.history(
                ConversationKey("discord", world.channel["id"], world.bob["id"])
            )
            == []
        )
        assert len(h.generator.specs) == 2


async def test_without_the_content_intent_a_silent_reply_gets_a_hint(discord_bot, world) -> None:
    member = [world.member_role]
    async with discord_bot() as h:
        assert not h.fake.identifies[0]["intents"] & (1 << 15)  # the privileged intent is not requested
        await h.fake.push_message(world.channel, world.alice, "first", mention_bot=True, roles=member)
        [answer] = await answers_in(h, world.channel, 1)
        await h.fake.push_message(
            world.channel, world.alice, "follow-up", reply_to=answer, ping_reply=False, roles=member
        )
        hint = await h.fake.wait_for(lambda: h.fake.bot_messages(world.channel["id"])[1:], 10)
        await settled(h)
        assert "ping" in hint[0]["content"] and not feedback_buttons(hint[0])
        assert [s.question for s in h.generator.specs] == ["first"]
        history = await h.app.db.conversations.history(
            ConversationKey("discord", world.channel["id"], world.alice["id"])
        )
        assert len(history) == 2


async def test_with_the_content_intent_a_silent_reply_is_answered(discord_bot, world) -> None:
    member = [world.member_role]
    async with discord_bot(discord_message_content=True) as h:
        assert h.fake.identifies[0]["intents"] & (1 << 15)
        await h.fake.push_message(world.channel, world.alice, "first", mention_bot=True, roles=member)
        [answer] = await answers_in(h, world.channel, 1)
        await h.fake.push_message(
            world.channel, world.alice, "follow-up", reply_to=answer, ping_reply=False, roles=member
        )
        messages = await answers_in(h, world.channel, 2)
        assert messages[-1]["content"].startswith("Answer to: follow-up (history turns: 2)")


async def test_a_thread_keeps_its_own_conversation(discord_bot, world) -> None:
    async with discord_bot() as h:
        member = [world.member_role]
        await h.fake.push_message(
            world.channel, world.alice, "channel question", mention_bot=True, roles=member
        )
        await answers_in(h, world.channel, 1)
        await h.fake.push_message(
            world.thread, world.alice, "thread question", mention_bot=True, roles=member
        )
        [in_thread] = await answers_in(h, world.thread, 1)

        assert in_thread["channel_id"] == world.thread["id"]
        assert in_thread["content"].startswith("Answer to: thread question (history turns: 0)")
        thread_key = ConversationKey("discord", world.channel["id"], world.alice["id"], world.thread["id"])
        assert next(m.text for m in await h.app.db.conversations.history(thread_key)) == "thread question"


async def test_direct_messages_need_no_mention(discord_bot, world) -> None:
    dm = world.fake.add_dm(world.alice)
    async with discord_bot() as h:
        await h.fake.push_message(dm, world.alice, "hi, what is a CVE?")
        [answer] = await answers_in(h, dm, 1)
        assert answer["content"].startswith("Answer to: hi, what is a CVE?")
        await h.fake.push_message(dm, world.alice, "/reset")
        await h.fake.wait_for(lambda: len(h.fake.bot_messages(dm["id"])) >= 2, 10)
        await settled(h)
        assert (
            await h.app.db.conversations.history(ConversationKey("discord", dm["id"], world.alice["id"]))
            == []
        )


async def test_slash_commands_work_in_direct_messages_when_synced_globally(discord_bot, world) -> None:
    dm = world.fake.add_dm(world.alice)
    async with discord_bot(discord_guild_ids="") as h:
        assert {c["name"] for c in h.fake.commands["global"]} >= {"ask", "help"}
        state = await h.fake.push_slash("ask", dm, world.alice, {"question": "/etc/passwd permissions?"})
        await h.fake.wait_for(lambda: state.callback_type is not None, 10)
        await settled(h)
        assert state.visible()[0]["content"].startswith("Answer to: /etc/passwd permissions?")
        key = ConversationKey("discord", dm["id"], world.alice["id"])
        assert next(m.text for m in await h.app.db.conversations.history(key)) == "/etc/passwd permissions?"


async def test_long_channel_answer_is_split_at_2000(discord_bot, world) -> None:
    text = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum " * 30 for i in range(12))
    async with discord_bot(generator=ScriptedGenerator(script=lambda spec: text)) as h:
        await h.fake.push_message(
            world.channel, world.alice, "long please", mention_bot=True, roles=[world.member_role]
        )
        messages = await answers_in(h, world.channel, 1)
        assert len(messages) >= 3 and all(len(m["content"]) <= 2000 for m in messages)
        joined = "\n\n".join(m["content"] for m in messages)
        assert all(f"Paragraph {i}:" in joined for i in range(12))


async def test_a_429_while_streaming_in_a_channel_delays_but_never_loses_the_reply(
    discord_bot, world
) -> None:
    script = ScriptedGenerator(script=lambda spec: " ".join(f"w{i}" for i in range(40)), delay=0.05)
    async with discord_bot(generator=script) as h:
        h.fake.rate_limit("PATCH", rf"/channels/{world.channel['id']}/messages/\d+", retry_after=0.4, times=2)
        await h.fake.push_message(
            world.channel, world.alice, "go", mention_bot=True, roles=[world.member_role]
        )
        [answer] = await answers_in(h, world.channel, 1)
        assert [c.status for c in h.fake.calls if c.status == 429] == [429, 429]
        assert answer["content"] == " ".join(f"w{i}" for i in range(40))


async def test_duplicate_message_create_is_answered_once_even_after_a_restart(world, tmp_path) -> None:
    member = [world.member_role]
    async with running_discord(world, tmp_path) as h:
        first = await h.fake.push_message(
            world.channel, world.alice, "once only", mention_bot=True, roles=member
        )
        await answers_in(h, world.channel, 1)
        await h.fake.push_message(
            world.channel, world.alice, "once only", mention_bot=True, roles=member, message_id=first["id"]
        )
        await h.fake.push_message(world.channel, world.alice, "marker", mention_bot=True, roles=member)
        await answers_in(h, world.channel, 2)
        assert [s.question for s in h.generator.specs] == ["once only", "marker"]

    async with running_discord(world, tmp_path) as h:  # same database, fresh process state
        await h.fake.push_message(
            world.channel, world.alice, "once only", mention_bot=True, roles=member, message_id=first["id"]
        )
        await h.fake.push_message(world.channel, world.alice, "after restart", mention_bot=True, roles=member)
        await answers_in(h, world.channel, 3)
        assert [s.question for s in h.generator.specs] == ["after restart"]
        history = await h.app.db.conversations.history(
            ConversationKey("discord", world.channel["id"], world.alice["id"])
        )
        assert [m.text for m in history if m.role == "user"] == ["once only", "marker", "after restart"]


async def test_heartbeats_are_acknowledged_during_a_slow_generation(discord_bot, world) -> None:
    # HELLO asks for a heartbeat every 200 ms. The "model" blocks its thread until the fake has
    # acknowledged five more heartbeats: only an event loop that keeps running while the model holds
    # its thread can send them. (A stalled loop would leave it waiting until the cap, then say so.)
    wanted = 5

    def blocking_model(spec) -> str:
        seen = len(world.fake.heartbeat_acks)
        for _ in range(3000):  # at most ~30 s, then give up and report it
            if len(world.fake.heartbeat_acks) >= seen + wanted:
                return "the loop kept beating"
            time.sleep(0.01)  # blocking on purpose: a model holds its thread
        return "no heartbeats while the model ran"

    async with discord_bot(generator=ScriptedGenerator(script=blocking_model)) as h:
        await h.fake.push_message(
            world.channel, world.alice, "take your time", mention_bot=True, roles=[world.member_role]
        )
        [answer] = await answers_in(h, world.channel, 1, timeout=45)
        assert answer["content"].startswith("the loop kept beating")
        assert h.adapter.client.is_ready() and not h.adapter.client.is_closed()


async def test_resumes_go_to_the_configured_gateway(discord_bot, world) -> None:
    # READY names a resume URL nobody listens on; a proxy deployment must resume via its own gateway.
    world.fake.resume_gateway_url = "ws://127.0.0.1:9/gateway"
    async with discord_bot() as h:
        await h.fake.request_reconnect()
        await h.fake.wait_for(lambda: h.fake.resumes, 15)
        assert h.fake.resumes[0]["session_id"] == "session-1"
        assert "token" in h.fake.resumes[0]
        await h.fake.push_message(
            world.channel, world.alice, "still here?", mention_bot=True, roles=[world.member_role]
        )
        [answer] = await answers_in(h, world.channel, 1)
        assert answer["content"].startswith("Answer to: still here?")

"""Issue 10 (low): Discord's "I can't read replies that don't ping me" hint passes the access and rate checks."""

from __future__ import annotations

from tests.e2e.discord_fixtures import feedback_buttons, settled


async def test_the_unreadable_hint_is_for_allowed_users_and_rate_limited(discord_bot, world) -> None:
    member = [world.member_role]
    limits = {"rate_limit_per_minute": 0.01, "rate_limit_burst": 2}
    async with discord_bot(blocked_users=f"discord:{world.bob['id']}", **limits) as h:
        channel = world.channel["id"]
        await h.fake.push_message(world.channel, world.alice, "first", mention_bot=True, roles=member)
        answer = (
            await h.fake.wait_for(
                lambda: [m for m in h.fake.bot_messages(channel) if feedback_buttons(m)], 15
            )
        )[0]
        await settled(h)
        before = len(h.fake.bot_messages(channel))

        # A blocked user's silent reply: nothing, not even the hint.
        await h.fake.push_message(
            world.channel, world.bob, "psst", reply_to=answer, ping_reply=False, roles=member
        )
        await settled(h)
        assert len(h.fake.bot_messages(channel)) == before

        # Alice's first silent reply gets the hint (her 2nd token); the next one is rate limited.
        await h.fake.push_message(
            world.channel, world.alice, "and?", reply_to=answer, ping_reply=False, roles=member
        )
        hint = await h.fake.wait_for(lambda: h.fake.bot_messages(channel)[before:], 10)
        assert "ping" in hint[0]["content"]
        await settled(h)
        await h.fake.push_message(
            world.channel, world.alice, "and??", reply_to=answer, ping_reply=False, roles=member
        )
        await settled(h)
        assert len(h.fake.bot_messages(channel)) == before + 1

"""Discord as a user-installable app, end to end: commands usable everywhere, /ask through a user
install (bot's DM, a group DM, a server without the bot), Discord's 5-follow-up cap, and the
"Ask GhostLM about this message" context-menu command."""

from __future__ import annotations

from tests.e2e.discord_fixtures import (
    ScriptedGenerator,
    contents,
    feedback_buttons,
    is_ephemeral,
    settled,
)

ASK_ABOUT = "Ask GhostLM about this message"


async def test_every_command_is_installable_by_users_and_usable_everywhere(discord_bot) -> None:
    async with discord_bot(discord_guild_ids="") as h:  # global commands: what user installs need
        synced = h.fake.commands["global"]
        assert {c["name"] for c in synced} >= {"ask", "help", "settings", ASK_ABOUT}
        for command in synced:
            assert sorted(command["integration_types"]) == [0, 1], command["name"]  # guild + user install
            assert sorted(command["contexts"]) == [0, 1, 2], command["name"]  # guilds, bot DM, private
        [menu] = [c for c in synced if c["type"] == 3]
        assert menu["name"] == ASK_ABOUT


async def test_a_user_install_ask_in_a_dm_works(discord_bot, world) -> None:
    dm = world.fake.add_dm(world.alice)
    async with discord_bot(discord_guild_ids="") as h:
        state = await h.fake.push_slash("ask", dm, world.alice, {"question": "What is XSS?"}, install="user")
        await h.fake.wait_for(lambda: state.callback_type is not None, 10)
        await settled(h)

        assert state.followup_limit == 5  # only the user installed the app: Discord's cap applies
        assert state.callback_type == 5
        [answer] = state.visible()
        assert answer["content"].startswith("Answer to: What is XSS?")
        assert feedback_buttons(answer) == ["fb:+1", "fb:-1"]
        assert [s.question for s in h.generator.specs] == ["What is XSS?"]
        # nothing went through channel endpoints (a user install may not be able to post there)
        assert not h.fake.calls_to("POST", r"/channels/\d+/messages")


async def test_user_install_where_the_bot_is_not_a_member(discord_bot, world) -> None:
    group_dm = world.fake.add_group_dm(world.alice, world.bob)
    foreign = world.fake.add_foreign_channel("someone-elses-server")
    async with discord_bot(discord_guild_ids="") as h:
        for channel in (group_dm, foreign):
            state = await h.fake.push_slash(
                "ask", channel, world.alice, {"question": f"hello from {channel['id']}"}, install="user"
            )
            await h.fake.wait_for(lambda s=state: s.callback_type is not None, 10)
            await settled(h)
            assert contents(state)[0].startswith(f"Answer to: hello from {channel['id']}")
            help_state = await h.fake.push_slash("help", channel, world.alice, install="user")
            await h.fake.wait_for(lambda s=help_state: s.callback_type is not None, 10)
            await settled(h)
            assert help_state.visible() and all(is_ephemeral(m) for m in help_state.visible())
        assert not h.fake.calls_to("POST", r"/channels/\d+/(messages|typing)")


async def test_a_long_answer_respects_the_follow_up_cap_and_says_so(discord_bot, world) -> None:
    long_text = "\n\n".join(f"Paragraph {i}: " + "word " * 300 for i in range(12))  # ~9 messages
    dm = world.fake.add_dm(world.alice)
    async with discord_bot(
        discord_guild_ids="", generator=ScriptedGenerator(script=lambda spec: long_text)
    ) as h:
        state = await h.fake.push_slash("ask", dm, world.alice, {"question": "tell me all"}, install="user")
        await h.fake.wait_for(lambda: state.callback_type is not None, 10)
        await settled(h)

        parts = contents(state)
        assert len(parts) == 6 and len(state.followups) == 5  # the original plus Discord's 5 follow-ups
        assert state.followups_refused == 0  # never asked for a sixth
        assert all(len(p) <= 2000 for p in parts)
        assert "only 5 follow-up messages" in parts[-1]
        assert feedback_buttons(state.visible()[-1]) == ["fb:+1", "fb:-1"]

    # a server that added the bot has no such cap: the whole answer arrives
    async with discord_bot(generator=ScriptedGenerator(script=lambda spec: long_text)) as h:
        state = await h.fake.push_slash(
            "ask", world.channel, world.alice, {"question": "tell me all"}, roles=[world.member_role]
        )
        await h.fake.wait_for(lambda: state.callback_type is not None, 10)
        await settled(h)
        assert state.followup_limit is None and len(contents(state)) > 6
        assert all(f"Paragraph {i}:" in "\n".join(contents(state)) for i in range(12))


async def test_the_context_menu_command_answers_about_the_selected_message(discord_bot, world) -> None:
    async with discord_bot() as h:
        alert = await h.fake.push_message(
            world.channel, world.bob, "ALERT powershell -enc JAB... spawned by winword.exe", roles=[]
        )
        state = await h.fake.push_message_command(ASK_ABOUT, alert, world.alice, roles=[world.member_role])
        await h.fake.wait_for(lambda: state.callback_type is not None, 10)
        await settled(h)

        assert state.callback_type == 5 and not state.defer_ephemeral
        [spec] = h.generator.specs
        assert "powershell -enc JAB... spawned by winword.exe" in spec.question
        answer = state.visible()[-1]
        assert answer["content"].startswith("Answer to: Explain this message:")
        assert feedback_buttons(answer) == ["fb:+1", "fb:-1"]
        assert not h.fake.bot_messages(world.channel["id"])  # answered in the interaction, not the channel


async def test_the_context_menu_on_a_message_without_text_says_so(discord_bot, world) -> None:
    dm = world.fake.add_dm(world.alice)
    async with discord_bot(discord_guild_ids="") as h:
        empty = await h.fake.push_message(dm, world.alice, "")
        state = await h.fake.push_message_command(ASK_ABOUT, empty, world.alice, install="user")
        await h.fake.wait_for(lambda: state.callback_type is not None, 10)
        await settled(h)
        assert state.callback_type == 4 and is_ephemeral(state.original)
        assert "no text" in state.original["content"]
        assert h.generator.specs == []

"""Documents sent to the Discord bot: attachments in DMs and on `/ask file:`, downloaded from the fake's CDN by
the real discord.py client; private to their sender, used only in DMs and ephemeral replies."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from storage.knowledge import Chunk, Document
from tests.e2e.discord_fixtures import contents, feedback_buttons, is_ephemeral, settled, slash
from tests.pdfs import text_pdf

SECRET = "Zanzibar incident runbook: rotate the quokka credentials, then page the night owl team."
QUESTION = "What do we rotate in the Zanzibar incident?"


async def stored(h: Any) -> tuple[int, int]:
    async with h.app.db.sessions() as session:
        docs = (await session.execute(select(func.count(Document.id)))).scalar_one()
        chunks = (await session.execute(select(func.count(Chunk.id)))).scalar_one()
    return int(docs), int(chunks)


async def bot_says(h: Any, channel: dict[str, Any], count: int) -> list[str]:
    """The bot's first `count` messages in a channel, once they are there and the event is done."""
    messages = await h.fake.wait_for(
        lambda: m if len(m := h.fake.bot_messages(channel["id"])) >= count else None, 15
    )
    await settled(h)
    return [m["content"] for m in messages]


async def answer_in(h: Any, channel: dict[str, Any], before: int) -> str:
    """The next finished answer (it carries the feedback buttons) after `before` bot messages."""

    def done() -> str | None:
        rated = [m for m in h.fake.bot_messages(channel["id"])[before:] if feedback_buttons(m)]
        return rated[-1]["content"] if rated else None

    text = await h.fake.wait_for(done, 15)
    await settled(h)
    return str(text)


async def test_a_dm_attachment_is_indexed_and_used_only_in_that_users_private_answers(
    discord_bot, world
) -> None:
    dm, bob_dm = world.fake.add_dm(world.alice), world.fake.add_dm(world.bob)
    member = [world.member_role]
    async with discord_bot() as h:
        fake = h.fake
        pdf = fake.add_attachment(
            text_pdf(["Cover page.", SECRET], title="Runbook"), "runbook.pdf", content_type="application/pdf"
        )
        await fake.push_attachment_message(dm, world.alice, "", [pdf])
        texts = await bot_says(h, dm, 2)
        assert texts[0] == "Indexing “runbook.pdf”… 2 chunks"
        assert (
            texts[1].startswith("Indexed “runbook.pdf” (2 pages, 2 chunks)")
            and "Ask me about it here" in texts[1]
        )
        assert fake.attachment_downloads == [pdf["id"]]

        await fake.push_message(dm, world.alice, QUESTION)
        assert "runbook.pdf#2" in await answer_in(h, dm, 2)
        before = len(fake.bot_messages(world.channel["id"]))
        await fake.push_message(world.channel, world.alice, QUESTION, mention_bot=True, roles=member)
        assert "runbook" not in await answer_in(h, world.channel, before)  # a guild answer: never
        await fake.push_message(bob_dm, world.bob, QUESTION)
        assert "runbook" not in await answer_in(h, bob_dm, 0)  # another user: never

        # /docs is ephemeral, so it works in the guild too; /docs delete N; /forget.
        state = await slash(h, "docs")
        assert is_ephemeral(state.visible()[0]) and "1. runbook.pdf — 2 chunks" in contents(state)[0]
        state = await slash(h, "docs", user=world.bob)
        assert "no documents" in contents(state)[0]
        other = fake.add_attachment(b"# Notes\nmore quokka notes", "notes.md")
        await fake.push_attachment_message(dm, world.alice, "", [other])
        await bot_says(h, dm, 5)
        assert await stored(h) == (2, 3)
        state = await slash(h, "forget")
        assert "2 documents with their index" in contents(state)[0]
        assert await stored(h) == (0, 0)


async def test_ask_with_a_file_indexes_it_then_answers_ephemerally_from_it(discord_bot, world) -> None:
    async with discord_bot() as h:
        fake = h.fake
        attachment = fake.add_attachment(SECRET.encode(), "runbook.txt", content_type="text/plain")
        state = await fake.push_slash_with_attachment(
            "ask", world.channel, world.alice, {"question": QUESTION}, attachment, roles=[world.member_role]
        )
        await fake.wait_for(lambda: state.callback_type is not None, 10)
        await settled(h)
        assert state.defer_ephemeral  # in a guild channel, and still private
        shown = contents(state)
        assert shown[0] == "Indexing “runbook.txt”… 1 chunks"
        assert shown[1].startswith("Indexed “runbook.txt”") and "in a direct message" in shown[1]
        assert "runbook.txt#1" in shown[2]  # the answer cites the new document
        assert all(is_ephemeral(m) for m in state.visible())
        assert fake.bot_messages(world.channel["id"]) == []  # nothing public in the channel
        # A public /ask in the same channel does not see it.
        public = await slash(h, "ask", {"question": QUESTION})
        assert "runbook" not in contents(public)[-1]


async def test_bad_attachments_get_a_reply_and_store_nothing(discord_bot, world) -> None:
    dm = world.fake.add_dm(world.alice)
    async with discord_bot(max_upload_mb=1) as h:
        fake = h.fake
        exe = fake.add_attachment(b"MZ\x90\x00" + b"\x00" * 64, "report.pdf", content_type="application/pdf")
        await fake.push_attachment_message(dm, world.alice, "", [exe])
        assert "a Windows program" in (await bot_says(h, dm, 1))[0]
        big = fake.add_attachment(b"x" * 10, "big.txt", size=30 * 1024 * 1024)
        await fake.push_attachment_message(dm, world.alice, "", [big])
        assert "too large (30.0 MB)" in (await bot_says(h, dm, 2))[1]
        liar = fake.add_attachment(b"y" * (2 * 1024 * 1024), "liar.txt", size=100)  # declares 100 bytes
        await fake.push_attachment_message(dm, world.alice, "", [liar])
        assert "too large (more than 1 MB)" in (await bot_says(h, dm, 3))[2]
        assert fake.attachment_downloads == [exe["id"], liar["id"]]  # the declared-too-large one never
        assert await stored(h) == (0, 0)

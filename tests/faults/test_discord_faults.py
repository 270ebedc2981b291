"""The real app and unmodified discord.py against the Discord fake: the gateway drops (or asks for a
reconnect) while answers stream, and REST answers 429 to message creates and edits."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from storage import ConversationKey
from tests.e2e.discord_fixtures import ScriptedGenerator, World, feedback_buttons, running_discord, settled
from tests.e2e.discord_fixtures import world as world
from tests.faults.checks import answer_script, marker
from tests.faults.conftest import Ledger, Outcome

pytestmark = pytest.mark.slow
USERS = 8


@pytest.mark.slow
async def test_gateway_drops_and_rest_429s_lose_nothing(world: World, tmp_path: Path, ledger: Ledger) -> None:
    fake = world.fake
    outcome = Outcome("discord in-process: gateway drop/reconnect + RESUME mid-stream, REST 429")
    generator = ScriptedGenerator(script=answer_script(20), delay=0.06)  # type: ignore[arg-type]  # a plain function script
    users = [fake.user(f"user{i}") for i in range(USERS)]
    questions = {user["id"]: f"d{i} what is rce" for i, user in enumerate(users)}
    channel = world.channel["id"]
    async with running_discord(world, tmp_path, generator=generator) as h:
        for i, user in enumerate(users):
            fake.rate_limit("POST", rf"/channels/{channel}/messages", retry_after=0.2)
            fake.rate_limit("PATCH", rf"/channels/{channel}/messages/\d+", retry_after=0.2)
            resumes = len(fake.resumes) + len(fake.identifies)
            await fake.push_message(
                world.channel, user, questions[user["id"]], mention_bot=True, roles=[world.member_role]
            )
            # Mid-stream: the first streamed text is on screen, the answer is not finished.
            question = questions[user["id"]]
            await fake.wait_for(functools.partial(_shown, fake, channel, question), timeout=30)
            if i % 2:
                await fake.drop_connection()
                outcome.faults.append("gateway connection dropped")
            else:
                await fake.request_reconnect()
                outcome.faults.append("gateway reconnect requested")
            await fake.wait_for(functools.partial(_reconnected, fake, resumes), 30)
            await fake.wait_for(functools.partial(_answered, fake, channel, question), timeout=30)
        await settled(h)
        outcome.faults += [f"429 {c.method} {c.path.split('/')[1]}" for c in fake.calls if c.status == 429]

        messages = fake.bot_messages(channel)
        for user_id, question in questions.items():
            outcome.questions += 1
            done = [m for m in messages if marker(question) in m["content"] and feedback_buttons(m)]
            if len(done) > 1:
                outcome.duplicated += 1
            if not done:
                outcome.lost += 1
                continue
            outcome.answered += 1
            history = await h.app.db.conversations.history(ConversationKey("discord", channel, user_id))
            texts = [(m.role, m.text.strip(), m.platform_message_ids) for m in history]
            if texts != [
                ("user", question, texts[0][2] if texts else []),
                ("assistant", done[0]["content"].strip(), [done[0]["id"]]),
            ]:
                outcome.history_mismatches += 1

    summary = ledger.report(outcome)
    assert (summary["lost"], summary["duplicated"], summary["history_mismatches"]) == (0, 0, 0), summary
    assert summary["answered"] == USERS


def _shown(fake: Any, channel: str, question: str) -> bool:
    return any(marker(question) in m["content"] for m in fake.bot_messages(channel))


def _answered(fake: Any, channel: str, question: str) -> bool:
    return any(marker(question) in m["content"] and feedback_buttons(m) for m in fake.bot_messages(channel))


def _reconnected(fake: Any, before: int) -> bool:
    return len(fake.resumes) + len(fake.identifies) > before and fake._ws is not None

"""`ghostbot run` as a user starts it: a separate process pointed at the Discord fake by env vars,
stopped with SIGTERM, restarted on the same database."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from storage import ConversationKey, Database
from tests.e2e.discord_fixtures import feedback_buttons
from tests.fakes.openai_server import FakeOpenAIServer, Reply

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "process-test-token-do-not-log"


async def start_bot(world, tmp_path: Path, **extra_env: str) -> asyncio.subprocess.Process:
    world.fake.token = TOKEN
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().endswith("_PROXY") and not key.startswith(("DISCORD_", "TELEGRAM_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        NO_PROXY="127.0.0.1,localhost",
        DISCORD_BOT_TOKEN=TOKEN,
        DISCORD_API_BASE_URL=world.fake.api_base,
        DISCORD_GATEWAY_URL=world.fake.gateway_url,
        DISCORD_GUILD_IDS=world.guild["id"],
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        DATA_DIR=str(tmp_path / "data"),
        PACKS="none",
        DENSE_RETRIEVAL="false",
        GENERATOR="extractive",
        HTTP_PORT="0",
        LOG_LEVEL="INFO",
    )
    env.update(extra_env)
    # cwd = tmp_path: no developer .env leaks into the test.
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots.cli",
        "run",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def stop_bot(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        raise
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    return text


def running(process: asyncio.subprocess.Process, condition):
    """A wait_for predicate that gives up at once when the bot process died."""

    def check():
        if process.returncode is not None:
            raise RuntimeError(f"ghostbot exited with {process.returncode}")
        return condition()

    return check


def answers_to(fake, channel, message_id: str) -> list[dict]:
    return [
        m
        for m in fake.bot_messages(channel["id"])
        if (m.get("message_reference") or {}).get("message_id") == message_id
    ]


@pytest.mark.slow
async def test_ghostbot_run_answers_stops_on_sigterm_and_resumes_exactly_once(world, tmp_path) -> None:
    fake, member = world.fake, [world.member_role]
    process = await start_bot(world, tmp_path)
    try:
        await fake.wait_for(
            running(process, lambda: fake.identifies and world.guild["id"] in fake.commands), 60
        )
        first = await fake.push_message(
            world.channel, world.alice, "what is cwe-79?", mention_bot=True, roles=member
        )
        await fake.wait_for(
            running(
                process, lambda: any(feedback_buttons(m) for m in fake.bot_messages(world.channel["id"]))
            ),
            30,
        )
    finally:
        log = await stop_bot(process)
    assert len(answers_to(fake, world.channel, first["id"])) == 1
    assert TOKEN not in log  # the token never reaches the logs
    identified = len(fake.identifies)

    process = await start_bot(world, tmp_path)
    try:
        await fake.wait_for(running(process, lambda: len(fake.identifies) > identified), 60)
        await fake.push_message(
            world.channel,
            world.alice,
            "what is cwe-79?",
            mention_bot=True,
            roles=member,
            message_id=first["id"],
        )  # redelivered after the restart
        second = await fake.push_message(
            world.channel, world.alice, "and cwe-89?", mention_bot=True, roles=member
        )
        await fake.wait_for(running(process, lambda: answers_to(fake, world.channel, second["id"])), 30)
    finally:
        log = await stop_bot(process)
    assert len(answers_to(fake, world.channel, first["id"])) == 1
    assert TOKEN not in log

    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    try:
        history = await db.conversations.history(
            ConversationKey("discord", world.channel["id"], world.alice["id"])
        )
    finally:
        await db.close()
    assert [m.text for m in history if m.role == "user"] == ["what is cwe-79?", "and cwe-89?"]


@pytest.mark.slow
async def test_sigterm_mid_answer_finishes_the_answer_then_exits_cleanly(world, tmp_path) -> None:
    fake = world.fake
    words = [f"word{i}" for i in range(30)]
    with FakeOpenAIServer(Reply(" ".join(words), chunk_delay=0.1)) as model:  # ~3 s of streaming
        process = await start_bot(
            world, tmp_path, GENERATOR="openai", OPENAI_BASE_URL=model.base_url, SHUTDOWN_GRACE_SECONDS="20"
        )
        try:
            await fake.wait_for(
                running(process, lambda: fake.identifies and world.guild["id"] in fake.commands), 60
            )
            state = await fake.push_slash(
                "ask", world.channel, world.alice, {"question": "explain XSS"}, roles=[world.member_role]
            )
            await fake.wait_for(
                running(process, lambda: any("word" in content for _, content in state.original_edits)), 30
            )  # streaming has begun
        finally:
            await stop_bot(process)  # SIGTERM while the answer is still streaming
    final = state.original
    assert final["content"].split() == words  # drained: the whole answer, not a fragment
    assert feedback_buttons(final) == ["fb:+1", "fb:-1"]

"""`ghostbot run` as a separate process against the Bot API fake: SIGTERM, restart, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from storage import Database
from storage.values import ConversationKey
from tests.fakes.telegram_api import FakeTelegramAPI

ROOT = Path(__file__).resolve().parents[2]
ALICE = 4242

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BotProcess:
    """`python -m bots.cli run` with the environment a user would set, pointed at the fakes."""

    def __init__(self, fake: FakeTelegramAPI, workdir: Path, http_port: int) -> None:
        self.fake = fake
        self.workdir = workdir
        self.http_port = http_port
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = b""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            PYTHONPATH=str(ROOT),
            NO_PROXY="127.0.0.1,localhost",
            TELEGRAM_BOT_TOKEN=self.fake.token,
            TELEGRAM_API_BASE_URL=self.fake.base_url,
            TELEGRAM_FILE_BASE_URL=self.fake.file_base_url,
            DATABASE_URL=f"sqlite+aiosqlite:///{self.workdir / 'ghostbot.db'}",
            DATA_DIR=str(self.workdir / "data"),
            GENERATOR="extractive",
            PACKS="none",
            DENSE_RETRIEVAL="false",
            HTTP_HOST="127.0.0.1",
            HTTP_PORT=str(self.http_port),
            LOG_LEVEL="DEBUG",  # the token must stay out of even the most verbose logs
        )
        env.pop("DISCORD_BOT_TOKEN", None)
        return env

    async def start(self) -> None:
        # cwd = the test folder, so no developer .env is read
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bots.cli",
            "run",
            cwd=self.workdir,
            env=self.env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._drain = asyncio.create_task(self._read_stderr())
        polls = len(self.fake.calls_to("getUpdates"))
        polling = asyncio.create_task(
            self.fake.wait_for(lambda: len(self.fake.calls_to("getUpdates")) > polls, timeout=90)
        )
        exited = asyncio.create_task(self.proc.wait())
        await asyncio.wait({polling, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not polling.done() or polling.exception() is not None:
            polling.cancel()
            if not exited.done():
                self.proc.kill()
            await self.proc.wait()
            await self._drain
            raise AssertionError(
                f"bot did not start polling (exit {self.proc.returncode}):\n{self.stderr.decode(errors='replace')[-3000:]}"
            )
        exited.cancel()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 60)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            await self._drain
        return code


async def _bot_replies(fake: FakeTelegramAPI, chat_id: int, count: int, *, final: bool = True) -> None:
    """Wait for `count` bot messages in the chat, the last one finished (👍/👎 attached) if `final`."""
    await fake.wait_for_messages(chat_id, count, timeout=30, final=final)


async def test_run_sigterm_restart_and_exactly_once(tg_fake: FakeTelegramAPI, tmp_path: Path) -> None:
    fake = tg_fake
    chat, user = fake.private_chat(ALICE), fake.user(ALICE, "Alice")
    port = _free_port()

    bot = BotProcess(fake, tmp_path, port)
    await bot.start()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        assert response.status == 200
    first = fake.send_text(chat=chat, user=user, text="What is SQL injection?")
    await _bot_replies(fake, ALICE, 1)
    answered = len(fake.bot_messages(ALICE))
    assert {c["command"] for c in fake.commands} >= {"start", "help", "ask", "reset"}
    code = await bot.terminate()
    assert code == 0, bot.stderr.decode(errors="replace")[-3000:]
    assert fake.token.split(":", 1)[1] not in bot.stderr.decode(errors="replace")

    key = ConversationKey("telegram", str(ALICE), str(ALICE))
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ghostbot.db'}")
    try:
        rows = await db.conversations.history(key)
        assert [r.text for r in rows if r.role == "user"] == ["What is SQL injection?"]
    finally:
        await db.close()

    # Restart on the same database; Telegram hands out the answered update again.
    bot = BotProcess(fake, tmp_path, port)
    await bot.start()
    fake.redeliver(first)
    fake.send_text(chat=chat, user=user, text="What is XSS?")
    await _bot_replies(fake, ALICE, answered + 1)
    stats_before = len(fake.bot_messages(ALICE))
    fake.send_text(chat=chat, user=user, text="/stats")
    await _bot_replies(fake, ALICE, stats_before + 1, final=False)
    code = await bot.terminate()
    assert code == 0, bot.stderr.decode(errors="replace")[-3000:]

    # the redelivered question was not answered again: one answer per question, plus /stats
    assert len(fake.bot_messages(ALICE)) == answered + 1 + 1
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ghostbot.db'}")
    try:
        rows = await db.conversations.history(key)
        assert [r.text for r in rows if r.role == "user"] == ["What is SQL injection?", "What is XSS?"]
        assert all(r.role == "assistant" for r in rows[1::2])
    finally:
        await db.close()

"""`python -m bots.cli run` as a separate process, killed and restarted on one database.

The model is an OpenAI-compatible fake that streams slowly, so a kill lands mid-generation. Kills are made
by the Bot API fake at a chosen request (after it took effect, before the bot sees the response):
- the first streaming edit: SIGKILL mid-generation; the restart edits the half answer into a notice, /retry
  asks again;
- the final edit (👍/👎 attached): SIGKILL between delivery and commit; the restart stores the answer;
- SIGTERM with questions queued and streaming: exit 0, each question answered or told.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.test_telegram_process import BotProcess, _free_port
from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest, Reply
from tests.fakes.telegram_api import FakeTelegramAPI, Fault
from tests.faults.checks import answer_script, check_dm, marker, settled
from tests.faults.conftest import Ledger, Outcome

pytestmark = pytest.mark.slow
ROUNDS = 2
LOAD = 6


class ModelBot(BotProcess):
    """The bot process with the OpenAI-compatible fake as its model."""

    def __init__(self, fake: FakeTelegramAPI, workdir: Path, llm: FakeOpenAIServer) -> None:
        super().__init__(fake, workdir, _free_port())
        self.llm = llm

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            GENERATOR="openai",
            OPENAI_BASE_URL=self.llm.base_url,
            OPENAI_API_KEY="sk-fault-test",
            SHUTDOWN_GRACE_SECONDS="2",
            TELEGRAM_STREAMING="edit",  # the faults target the streaming edits (drafts have no message to cut)
            LOG_LEVEL="INFO",
        )
        return env

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)

    async def killed(self) -> None:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), 60)
        await self._drain
        assert code == -signal.SIGKILL, self.stderr.decode(errors="replace")[-3000:]


def slow_model(questions: list[str]) -> object:
    script = answer_script(60)  # ~3.6 s of streaming: several edits before the final one

    def handler(request: RecordedRequest) -> Reply:
        content = str(request.messages[-1].get("content", "")) if request.messages else ""
        asked = next((q for q in questions if q in content), "?")
        text = script(type("Spec", (), {"question": asked})())  # type: ignore[operator]
        return Reply(text=text, chunk_delay=0.06)

    return handler


def _final(params: dict[str, object]) -> bool:
    return bool(params.get("reply_markup"))


def _streaming(params: dict[str, object]) -> bool:
    """A streaming edit, never the final one (on a loaded machine the first edit can already be the final)."""
    return not _final(params)


async def test_sigkill_and_sigterm_lose_and_duplicate_nothing(
    tg_fake: FakeTelegramAPI, tmp_path: Path, ledger: Ledger
) -> None:
    fake = tg_fake
    outcome = Outcome("telegram process: SIGKILL mid-stream and between delivery and commit, SIGTERM")
    asked: dict[int, list[str]] = {}
    all_questions: list[str] = []
    with FakeOpenAIServer(slow_model(all_questions)) as llm:  # type: ignore[arg-type]
        bot = ModelBot(fake, tmp_path, llm)
        await bot.start()
        for round_ in range(ROUNDS):
            cut, late = 8100 + 2 * round_, 8101 + 2 * round_
            q_cut, q_late = f"c{round_} what is csrf", f"l{round_} what is ssrf"
            all_questions += [q_cut, q_late]
            asked[cut], asked[late] = [q_cut], [q_late]

            fake.inject(Fault("editMessageText", "kill", chat_id=cut, match=_streaming, action=bot.kill))
            fake.send_text(chat=fake.private_chat(cut), user=fake.user(cut), text=q_cut)
            await bot.killed()
            outcome.faults.append("SIGKILL mid-generation")
            await bot.start()  # recovery runs before polling starts
            assert settled(fake, cut, q_cut)  # the half answer now says it was cut off
            fake.send_text(chat=fake.private_chat(cut), user=fake.user(cut), text="/retry")
            await fake.wait_for(functools.partial(_answered, fake, cut, q_cut), timeout=60)

            fake.inject(Fault("editMessageText", "kill", chat_id=late, match=_final, action=bot.kill))
            fake.send_text(chat=fake.private_chat(late), user=fake.user(late), text=q_late)
            await bot.killed()
            outcome.faults.append("SIGKILL between delivery and commit")
            await bot.start()  # recovery stores the delivered answer

        # SIGTERM while answers stream and more wait in the queue.
        load = {8200 + i: f"t{i} what is idor" for i in range(LOAD)}
        all_questions += list(load.values())
        for chat_id, question in load.items():
            asked[chat_id] = [question]
            fake.send_text(chat=fake.private_chat(chat_id), user=fake.user(chat_id), text=question)
        await fake.wait_for(lambda: any(fake.bot_messages(c) for c in load), timeout=60)
        code = await bot.terminate()
        outcome.faults.append("SIGTERM under load")
        assert code == 0, bot.stderr.decode(errors="replace")[-3000:]
        await bot.start()  # nothing may be answered twice after the restart
        await fake.wait_for(lambda: all(settled(fake, c, q) for c, q in load.items()), timeout=60)
        assert await bot.terminate() == 0

    from storage import Database

    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ghostbot.db'}")
    try:
        assert await db.outbox.count() == 0 or all(
            r.state == "interrupted" for r in await db.outbox.unfinished("telegram")
        )
        for chat_id, questions in asked.items():
            await check_dm(outcome, fake, db, chat_id, questions)
    finally:
        await db.close()
    summary = ledger.report(outcome)
    assert (summary["lost"], summary["duplicated"], summary["history_mismatches"]) == (0, 0, 0), summary
    assert summary["answered"] >= 2 * ROUNDS


def _answered(fake: FakeTelegramAPI, chat_id: int, question: str) -> bool:
    return any(marker(question) in m.text and m.reply_markup is not None for m in fake.bot_messages(chat_id))

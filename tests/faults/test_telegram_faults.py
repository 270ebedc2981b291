"""The real app and the real python-telegram-bot against the Bot API fake, with faults on every chat:
429 with retry_after, 502s, connections reset after an edit took effect (the final one included), failed
long-polls, and the database locked by another writer."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

import bots.telegram.app as telegram_app
from tests.e2e.conftest import ScriptedGenerator, running_bot
from tests.fakes.telegram_api import FakeTelegramAPI, Fault
from tests.faults.checks import answer_script, check_dm, settled
from tests.faults.conftest import Ledger, Outcome

USERS = 30
FIRST = 7000


def _arm(fake: FakeTelegramAPI, chat_id: int, index: int) -> None:
    # First in the list, so the final edit (👍/👎 attached) meets it: the edit takes effect, the answer is lost.
    fake.inject(
        Fault("editMessageText", "reset", chat_id=chat_id, match=lambda p: bool(p.get("reply_markup")))
    )
    fake.inject(Fault("editMessageText", "reset", chat_id=chat_id))  # a stream edit applied, reply lost
    fake.inject(Fault("editMessageText", "5xx", left=2, chat_id=chat_id))
    fake.inject(Fault("sendChatAction", "5xx", chat_id=chat_id))
    if index % 5 == 0:  # AIORateLimiter pauses every request on a 429: a few are enough
        fake.inject(Fault("sendMessage", "429", chat_id=chat_id, retry_after=1))


@pytest.mark.slow
async def test_every_question_survives_telegram_and_database_faults(
    tg_fake: FakeTelegramAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: Ledger
) -> None:
    monkeypatch.setattr(telegram_app, "DM_EDIT_INTERVAL_S", 0.15)  # stream (and fault) several edits fast
    fake = tg_fake
    outcome = Outcome("telegram in-process: 429, 5xx, resets, long-poll errors, database locked")
    generator = ScriptedGenerator(script=answer_script(24), delay=0.02)  # type: ignore[arg-type]
    questions = {FIRST + i: f"q{i} what is xss" for i in range(USERS)}
    async with running_bot(
        # edit streaming in DMs: the faults target editMessageText (drafts are covered in tests/e2e)
        fake,
        tmp_path,
        generator=generator,
        queue_size=USERS * 2,
        telegram_streaming="edit",
    ) as h:
        for index, chat_id in enumerate(questions):
            _arm(fake, chat_id, index)
            fake.private_chat(chat_id)
        for _ in range(3):
            fake.inject(Fault("getUpdates", "5xx"))

        # The first third arrives while another writer holds the database ("database is locked" for the bot's
        # writes, which wait on busy_timeout). Holding the lock IS the fault, so it lasts a fixed time.
        locker = sqlite3.connect(str(tmp_path / "bot.db"), isolation_level=None, check_same_thread=False)
        try:
            locker.execute("BEGIN IMMEDIATE")
            outcome.faults.append("locked database")
            chats = list(questions)
            for chat_id in chats[: USERS // 3]:
                fake.send_text(
                    chat=fake.private_chat(chat_id), user=fake.user(chat_id), text=questions[chat_id]
                )
            await asyncio.sleep(2.0)  # the fault's duration, not a synchronisation
        finally:
            locker.rollback()
            locker.close()
        for chat_id in chats[USERS // 3 :]:
            fake.send_text(chat=fake.private_chat(chat_id), user=fake.user(chat_id), text=questions[chat_id])

        everyone = lambda: all(settled(fake, c, q) for c, q in questions.items())  # noqa: E731
        with contextlib.suppress(AssertionError):  # scored below: whatever is missing counts as lost
            await fake.wait_for(everyone, timeout=180)
        # Commits follow delivery: wait until every delivered answer's event is recorded.
        for _ in range(200):
            if await h.app.db.outbox.count() == 0:
                break
            await asyncio.sleep(0.05)
        outcome.faults += fake.faults_injected
        for chat_id, question in questions.items():
            await check_dm(outcome, fake, h.app.db, chat_id, [question])

    summary = ledger.report(outcome)
    assert (summary["lost"], summary["duplicated"], summary["history_mismatches"]) == (0, 0, 0), summary
    assert summary["answered"] == USERS
    assert summary["faults_injected"] >= 100, summary

"""What every fault test asserts, per question: a complete answer or an explicit notice (never nothing), never
two answers, and the stored history equal to what the user saw."""

from __future__ import annotations

from core.manager import CANCELLED_NOTICE, CLOSED_NOTICE, ERROR_NOTICE, INTERRUPTED_NOTICE, TIMEOUT_NOTICE
from storage import ConversationKey, Database
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.faults.conftest import Outcome

NOTICES = (INTERRUPTED_NOTICE, CANCELLED_NOTICE, CLOSED_NOTICE, ERROR_NOTICE, TIMEOUT_NOTICE)


def is_notice(text: str) -> bool:
    return any(notice in text for notice in NOTICES)


def marker(question: str) -> str:
    return f"Answer to: {question} "


def answer_script(words: int) -> object:
    """A ScriptedGenerator script: names the question, then `words` filler words (long enough to stream)."""

    def script(spec: object) -> str:
        question = getattr(spec, "question", "")
        return marker(question) + " ".join(["lorem-ipsum"] * words) + " end."

    return script


def settled(fake: FakeTelegramAPI, chat_id: int, question: str) -> bool:
    """The question has its final answer (👍/👎 attached) or an explicit notice."""
    for message in fake.bot_messages(chat_id):
        if marker(question) in message.text and message.reply_markup is not None:
            return True
        if is_notice(message.text):
            return True
    return False


async def check_dm(
    outcome: Outcome, fake: FakeTelegramAPI, db: Database, chat_id: int, questions: list[str]
) -> None:
    """Score one private chat whose user asked `questions` (each at most once answered, in order)."""
    messages = fake.bot_messages(chat_id)
    history = await db.conversations.history(ConversationKey("telegram", str(chat_id), str(chat_id)))
    stored = {
        history[i].text: history[i + 1] for i in range(0, len(history) - 1, 2) if history[i].role == "user"
    }
    notices = sum(is_notice(m.text) for m in messages)
    for question in questions:
        outcome.questions += 1
        # Complete answers carry 👍/👎; a half-streamed one cut off by a kill does not.
        shown = [m for m in messages if marker(question) in m.text and m.reply_markup is not None]
        if len(shown) > 1:
            outcome.duplicated += 1
        answer = stored.get(question)
        if shown and shown[-1].reply_markup is not None:
            outcome.answered += 1
            if (
                answer is None
                or answer.text.strip() != shown[-1].text.strip()
                or answer.platform_message_ids != [str(shown[-1].message_id)]
            ):
                outcome.history_mismatches += 1
        elif notices > 0:
            notices -= 1
            outcome.noticed += 1
            if answer is not None:
                outcome.history_mismatches += 1
        else:
            outcome.lost += 1

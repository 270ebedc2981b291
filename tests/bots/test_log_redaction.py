"""Secrets never reach a log line: configured tokens and anything shaped like a Telegram token."""

from __future__ import annotations

import logging

from bots.logs import SecretRedactor
from core.settings import Settings

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


def _record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("t", logging.ERROR, __file__, 1, message, args, exc_info)


def test_configured_secrets_and_token_shapes_are_redacted() -> None:
    settings = Settings(_env_file=None, telegram_bot_token=TOKEN, openai_api_key="sk-very-secret-key")
    redactor = SecretRedactor(settings.secret_values())
    record = _record("POST https://api.telegram.org/bot%s/getMe key=%s", TOKEN, "sk-very-secret-key")
    redactor.filter(record)
    text = record.getMessage()
    assert TOKEN not in text and "sk-very-secret-key" not in text
    assert "bot***/getMe" in text


def test_tracebacks_are_redacted_too() -> None:
    redactor = SecretRedactor([])
    try:
        raise RuntimeError(f"connect failed for /bot{TOKEN}/getUpdates")
    except RuntimeError as error:
        record = _record("boom", exc=error)
    redactor.filter(record)
    assert record.exc_text and TOKEN not in record.exc_text and "***" in record.exc_text


def test_plain_messages_pass_unchanged() -> None:
    record = _record("hello %s", "world")
    SecretRedactor(["abcdefgh"]).filter(record)
    assert record.getMessage() == "hello world"

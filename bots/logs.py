"""Logging setup with secret redaction: bot tokens and API keys never reach a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from core.redaction import Redactor
from core.settings import Settings


class SecretRedactor(logging.Filter):
    """A logging filter that runs every record (message and traceback) through :class:`Redactor`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._redactor = Redactor(secrets)

    def redact(self, text: str) -> str:
        return self._redactor.redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup_logging(settings: Settings) -> SecretRedactor:
    """Configure the root logger once for the process; returns the redactor (tests use it)."""
    redactor = SecretRedactor(settings.secret_values())
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # httpx logs every request URL at INFO, and Telegram URLs contain the bot token.
    for noisy in ("httpx", "httpcore", "telegram.ext.ExtBot", "discord.http", "discord.gateway", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor

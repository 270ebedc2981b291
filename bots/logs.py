"""Logging setup with secret redaction: bot tokens and API keys never reach a log line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from core.settings import Settings

# Telegram tokens look like 123456789:AA…; they also appear inside Bot API URLs.
_TELEGRAM_TOKEN = re.compile(r"(?<![0-9])\d{6,12}:[A-Za-z0-9_-]{30,}")


class SecretRedactor(logging.Filter):
    """Replaces known secret values (and anything shaped like a Telegram token) with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _TELEGRAM_TOKEN.sub("***", text)

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

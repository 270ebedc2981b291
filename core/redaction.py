"""Secret redaction, in one place: log lines, tracebacks, error messages and URLs shown to people.

Every configured secret (``Settings.secret_values()``) is replaced by ``***`` wherever it appears, whatever its
length, and anything shaped like a Telegram bot token is too (they also appear inside Bot API URLs). URLs shown
in messages or written to files lose their user:password part, query string and fragment, which may carry keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# Telegram tokens look like 123456789:AA…
_TELEGRAM_TOKEN = re.compile(r"(?<![0-9])\d{6,12}:[A-Za-z0-9_-]{30,}")


class Redactor:
    """Replaces known secret values (longest first) and Telegram-token-shaped strings with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets: tuple[str, ...] = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        return self.redact(text)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return _TELEGRAM_TOKEN.sub(MASK, text)


def redact_url(url: str) -> str:
    """``url`` without user:password, query string and fragment (any of them may carry a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host += f":{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))

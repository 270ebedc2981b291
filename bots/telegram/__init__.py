"""Telegram adapter (python-telegram-bot): `TelegramAdapter(settings, manager)` with start()/stop()."""

from bots.telegram.app import TelegramAdapter, TelegramHandlers, build_application
from bots.telegram.markup import to_telegram_html
from bots.telegram.sink import TelegramSink

__all__ = ["TelegramAdapter", "TelegramHandlers", "TelegramSink", "build_application", "to_telegram_html"]

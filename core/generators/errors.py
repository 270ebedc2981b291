"""Errors a generator raises; messages are safe to show to users (never a secret)."""

from __future__ import annotations


class GeneratorError(RuntimeError):
    """Generation failed (model not loadable, remote server unreachable or refusing, ...).

    The message is written for the person running the bot and never contains credentials.
    """

"""Throttled message editing for streamed replies.

Platforms rate-limit edits (Telegram ~1/s per chat, Discord 5/5 s per channel), so a
stream of tokens becomes at most one edit per `min_interval`, and only once the text has
grown by `min_growth` characters; `flush` always delivers the latest text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class ThrottledEditor:
    def __init__(
        self,
        edit: Callable[[str], Awaitable[None]],
        *,
        min_interval: float = 1.0,
        min_growth: int = 40,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._edit = edit
        self._min_interval = min_interval
        self._min_growth = min_growth
        self._clock = clock
        self._sent = ""
        self._pending = ""
        self._last_edit: float | None = None
        self._lock = asyncio.Lock()
        self.edits = 0

    @property
    def sent_text(self) -> str:
        return self._sent

    async def update(self, text: str) -> None:
        """Remember `text`; edit now only if the interval has passed and it grew enough."""
        self._pending = text
        if self._lock.locked():
            return  # an edit is in flight (maybe waiting out a 429); flush delivers the rest
        grew = len(text) - len(self._sent) >= self._min_growth
        if grew and self._interval_passed():
            async with self._lock:
                await self._send(self._pending)

    async def flush(self) -> None:
        """Deliver the newest text, waiting out the interval if needed."""
        async with self._lock:
            if self._pending == self._sent:
                return
            if self._last_edit is not None:
                wait = self._min_interval - (self._clock() - self._last_edit)
                if wait > 0:
                    await asyncio.sleep(wait)
            await self._send(self._pending)

    def _interval_passed(self) -> bool:
        return self._last_edit is None or self._clock() - self._last_edit >= self._min_interval

    async def _send(self, text: str) -> None:
        if not text.strip() or text == self._sent:
            return
        await self._edit(text)
        self._sent = text
        self._last_edit = self._clock()
        self.edits += 1

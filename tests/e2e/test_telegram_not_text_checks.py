"""Issue 10 (low): Telegram's "I can only read text" reply passes the access and rate checks like any message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bots.telegram.app import NOT_TEXT_REPLY
from core.types import Incoming

ALICE, STRANGER = 4242, 9999


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_non_text_reply_is_for_allowed_users_and_rate_limited(bot_factory: Any, tg_fake: Any) -> None:
    fake = tg_fake
    async with bot_factory(
        allowed_users=f"telegram:{ALICE}", rate_limit_per_minute=0.01, rate_limit_burst=1
    ) as h:
        decisions: list[tuple[str, bool]] = []
        admits = h.app.manager.admits

        def recording(incoming: Incoming) -> bool:
            allowed = admits(incoming)
            decisions.append((incoming.user_id, allowed))
            return allowed

        h.app.manager.admits = recording  # the adapter holds this same manager
        fake.send_photo(chat=fake.private_chat(STRANGER), user=fake.user(STRANGER))
        await _until(lambda: len(decisions) == 1)
        fake.send_photo(chat=fake.private_chat(ALICE), user=fake.user(ALICE))
        await fake.wait_for(lambda: len(fake.bot_messages(ALICE)) == 1, 10)
        fake.send_photo(chat=fake.private_chat(ALICE), user=fake.user(ALICE))
        await _until(lambda: len(decisions) == 3)
        assert decisions == [(str(STRANGER), False), (str(ALICE), True), (str(ALICE), False)]
        assert fake.bot_messages(STRANGER) == []  # not allowed: nothing at all
        assert [m.text for m in fake.bot_messages(ALICE)] == [NOT_TEXT_REPLY]  # the second was rate limited

"""ThrottledEditor: at most one edit per interval, only on enough growth, and flush delivers the last text."""

from __future__ import annotations

import asyncio

from bots.streaming import ThrottledEditor


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_edits_are_throttled_by_time_and_growth() -> None:
    clock = FakeClock()
    sent: list[str] = []

    async def edit(text: str) -> None:
        sent.append(text)

    editor = ThrottledEditor(edit, min_interval=1.0, min_growth=10, clock=clock)
    await editor.update("a" * 12)  # first edit: grew by 12 ≥ 10, no previous edit
    await editor.update("a" * 30)  # grew, but only 0 s later
    clock.now += 0.5
    await editor.update("a" * 40)  # still inside the interval
    clock.now += 0.6
    await editor.update("a" * 45)  # interval passed, grew by 33
    clock.now += 2.0
    await editor.update("a" * 50)  # interval passed, grew by only 5
    assert sent == ["a" * 12, "a" * 45]
    await editor.flush()
    assert sent[-1] == "a" * 50
    assert editor.edits == 3


async def test_flush_waits_out_the_interval_and_skips_unchanged_text() -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def edit(text: str) -> None:
        times.append(loop.time())

    editor = ThrottledEditor(edit, min_interval=0.2, min_growth=1)
    await editor.update("hello")
    await editor.update("hello world")  # throttled
    await editor.flush()
    assert len(times) == 2 and times[1] - times[0] >= 0.19
    await editor.flush()  # nothing new
    assert len(times) == 2


async def test_blank_text_is_never_sent() -> None:
    sent: list[str] = []

    async def edit(text: str) -> None:
        sent.append(text)

    editor = ThrottledEditor(edit, min_growth=0)
    await editor.update("   ")
    await editor.flush()
    assert sent == []

"""Freed heap memory goes back to the OS: at once for batch jobs, whenever the generator is idle, and at a
slower pace while it is busy."""

from __future__ import annotations

import asyncio
import platform

import pytest

from core.memory import HeapRelease, release_heap


def test_release_heap_works_on_glibc() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert release_heap() is True
    assert release_heap() is True  # resolved once, callable again


def test_the_heap_is_released_every_tick_while_idle_and_now_and_then_while_busy() -> None:
    idle, now = False, 100.0
    calls: list[float] = []
    releaser = HeapRelease(
        lambda: idle, release=lambda: calls.append(now) or True, busy_interval_s=10, clock=lambda: now
    )
    assert releaser.tick() is False and calls == []  # answering: the memory is about to be used again
    now = 109.9
    assert releaser.tick() is False and calls == []
    now = 110.0
    assert releaser.tick() is True and calls == [110.0]  # busy for 10 s: release once, then wait again
    now = 115.0
    assert releaser.tick() is False
    idle = True
    assert releaser.tick() is True and releaser.tick() is True and calls == [110.0, 115.0, 115.0]
    idle, now = False, 124.9
    assert releaser.tick() is False  # the busy interval counts from the last release, idle or not
    now = 125.0
    assert releaser.tick() is True


async def test_the_release_task_ticks_until_cancelled() -> None:
    released = asyncio.Event()

    def release() -> bool:
        released.set()
        return True

    task = asyncio.create_task(HeapRelease(lambda: True, release=release).run(interval_s=0))
    try:
        await asyncio.wait_for(released.wait(), 10)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

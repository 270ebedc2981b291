"""Freed heap memory goes back to the OS: at once for batch jobs, and whenever the generator is idle."""

from __future__ import annotations

import asyncio
import platform

import pytest

from core.memory import IdleRelease, release_heap


def test_release_heap_works_on_glibc() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert release_heap() is True
    assert release_heap() is True  # resolved once, callable again


def test_the_heap_is_released_only_while_idle() -> None:
    idle = False
    calls: list[int] = []
    releaser = IdleRelease(lambda: idle, release=lambda: calls.append(1) or True)
    assert releaser.tick() is False and calls == []  # answering: the memory is about to be used again
    idle = True
    assert releaser.tick() is True and calls == [1]


async def test_the_release_task_ticks_until_cancelled() -> None:
    released = asyncio.Event()

    def release() -> bool:
        released.set()
        return True

    task = asyncio.create_task(IdleRelease(lambda: True, release=release).run(interval_s=0))
    try:
        await asyncio.wait_for(released.wait(), 10)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

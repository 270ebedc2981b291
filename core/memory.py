"""Giving freed heap memory back to the operating system in a long-running process (glibc).

glibc's malloc keeps memory that was freed in its arenas (the main one and one per thread that allocated)
instead of returning it, unless it sits at the very top of a heap. Big allocations normally bypass the arenas
(mmap), but the threshold for that rises (up to 32 MB) with every mmapped block freed: after the weights are
loaded (blocks of several MB) the KV caches, prefill activations, logits and request bodies of every answer come
from the arenas, and the freed pages stay resident. Measured with benchmarks/memory_soak.py (81M model and the
embedder, 1,000 mixed questions): RSS went from ~840 MB after the first answer to ~1,090 MB while answering and
stayed ~1,020 MB at rest; `malloc_trim` returns ~100-170 MB of that in ~7 ms (0.4 ms when there is nothing).

So the server releases the heap (`HeapRelease`, run by `ghostbot run`) every 5 s while the generator is idle,
and every 10 s while it is busy; batch jobs (indexing) release after themselves (`core.retrieval.embedder`).
Under continuous load the arenas otherwise creep: with 4 clients answering non-stop, RSS rose from 869 to
921 MB over 900 questions with idle-only release, because the generator was never idle. A fixed low mmap
threshold (MALLOC_MMAP_THRESHOLD_=131072) also kept RSS down, but made answering ~35% slower (page faults on
every activation).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable

IDLE_RELEASE_INTERVAL_S = 5.0  # how soon memory goes back after the last answer
BUSY_RELEASE_INTERVAL_S = 10.0  # under continuous load: bounds the creep, ~6 ms of trimming per 10 s


@functools.cache
def _trim_function() -> Callable[[int], int] | None:
    """glibc's malloc_trim, resolved once; None where there is none (musl, macOS, Windows)."""
    try:
        name = ctypes.util.find_library("c")
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_heap() -> bool:
    """Return freed heap pages of every malloc arena to the OS (glibc `malloc_trim`); False where unavailable."""
    trim = _trim_function()
    if trim is None:
        return False
    trim(0)
    return True


class HeapRelease:
    """Releases the heap every tick while `is_idle()`, and at most every `busy_interval_s` while work runs
    (memory a busy process is about to reuse is left alone between those)."""

    def __init__(
        self,
        is_idle: Callable[[], bool],
        release: Callable[[], bool] = release_heap,
        *,
        busy_interval_s: float = BUSY_RELEASE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._is_idle = is_idle
        self._release = release
        self._busy_interval_s = busy_interval_s
        self._clock = clock
        self._last = clock()

    def due(self) -> bool:
        return self._is_idle() or self._clock() - self._last >= self._busy_interval_s

    def tick(self) -> bool:
        """Release now if due; returns whether it did."""
        if not self.due():
            return False
        self._last = self._clock()
        return self._release()

    async def run(self, interval_s: float = IDLE_RELEASE_INTERVAL_S) -> None:
        """Tick every `interval_s` for as long as the process runs (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.due():
                # malloc_trim walks every arena (~ms): off the event loop.
                await asyncio.to_thread(self.tick)

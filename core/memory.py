"""Giving freed heap memory back to the operating system in a long-running process (glibc).

glibc's malloc keeps memory that was freed in its arenas (the main one and one per thread that allocated)
instead of returning it, unless it sits at the very top of a heap. Big allocations normally bypass the arenas
(mmap), but the threshold for that rises (up to 32 MB) with every mmapped block freed: after the weights are
loaded (blocks of several MB) the KV caches, prefill activations, logits and request bodies of every answer come
from the arenas, and the freed pages stay resident. Measured with benchmarks/memory_soak.py (81M model and the
embedder, 1,000 mixed questions): RSS went from ~840 MB after the first answer to ~1,090 MB while answering and
stayed ~1,020 MB at rest; `malloc_trim` returns ~100-170 MB of that in ~7 ms (0.4 ms when there is nothing).

So the server releases the heap whenever the generator is idle (`IdleRelease`, run by `ghostbot run`); batch
jobs (indexing) release after themselves (`core.retrieval.embedder`). A fixed low mmap threshold
(MALLOC_MMAP_THRESHOLD_=131072) also kept RSS down, but made answering ~35% slower (page faults on every
activation).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

IDLE_RELEASE_INTERVAL_S = 5.0  # how soon memory goes back after the last answer

_libc_trim: Callable[[int], int] | None = None
_resolved = False


def _trim_function() -> Callable[[int], int] | None:
    """glibc's malloc_trim, resolved once; None where there is none (musl, macOS, Windows)."""
    global _libc_trim, _resolved
    if not _resolved:
        try:
            name = ctypes.util.find_library("c")
            _libc_trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        except OSError:
            _libc_trim = None
        _resolved = True
    return _libc_trim


def release_heap() -> bool:
    """Return freed heap pages of every malloc arena to the OS (glibc `malloc_trim`); False where unavailable."""
    trim = _trim_function()
    if trim is None:
        return False
    trim(0)
    return True


class IdleRelease:
    """Releases the heap when `is_idle()` says no work is running (memory a busy process would fault straight
    back in is left alone)."""

    def __init__(self, is_idle: Callable[[], bool], release: Callable[[], bool] = release_heap) -> None:
        self._is_idle = is_idle
        self._release = release

    def tick(self) -> bool:
        """Release now if idle; returns whether it did."""
        return self._is_idle() and self._release()

    async def run(self, interval_s: float = IDLE_RELEASE_INTERVAL_S) -> None:
        """Tick every `interval_s` for as long as the process runs (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval_s)
            if self._is_idle():
                # malloc_trim walks every arena (~ms): off the event loop.
                await asyncio.to_thread(self.tick)

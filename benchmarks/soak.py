"""A bounded soak: many distinct users through the whole conversation core (manager → rate limit → outbox →
worker → SQLite commit) with a null generator. Prints one JSON object.

Checks: every accepted question is answered and stored (the outbox ends empty); every `--burst-every`th user
sends `burst + 2` questions in a row and exactly 2 are refused (rate limits hold, on a frozen clock, so nothing
refills); resident memory after warm-up stays within `--max-growth` (10%) of its value at the end of warm-up.

    python benchmarks/soak.py [--users 10000] [--concurrency 16] [--warmup 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.core_throughput import NullGenerator, NullRetriever, NullSink
from core.manager import ConversationManager
from core.settings import Settings
from core.types import ChatKind, Incoming
from core.worker import GenerationWorker
from storage import Database

BURST = 3


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class CountingSink(NullSink):
    def __init__(self) -> None:
        super().__init__()
        self.notices: list[str] = []

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        self.notices.append(text)


async def soak(
    users: int = 10_000,
    *,
    concurrency: int = 16,
    warmup: float = 0.2,
    burst_every: int = 50,
    samples: int = 10,
    database_url: str | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'soak.db'}")
        settings = Settings(
            _env_file=None,
            rate_limit_per_minute=6.0,
            rate_limit_burst=BURST,  # type: ignore[call-arg]
            queue_size=max(32, concurrency * 2),
        )
        generator = NullGenerator()
        worker = GenerationWorker(generator, queue_size=settings.queue_size)
        worker.start()
        # A frozen clock: buckets never refill, so the expected refusals are exact.
        manager = ConversationManager(db, NullRetriever(), worker, generator, settings, clock=lambda: 0.0)
        sink = CountingSink()
        next_user = iter(range(users))
        done = 0
        marks = sorted({max(1, int(users * warmup))} | {users * k // samples for k in range(1, samples + 1)})
        memory: list[tuple[int, int]] = []
        events = iter(range(10**12))

        async def ask(user: str, text: str) -> None:
            incoming = Incoming(
                platform="soak",
                event_id=str(next(events)),
                chat_id=user,
                chat_kind=ChatKind.DM,
                user_id=user,
                user_name="soak user",
                text=text,
            )
            await manager.handle(incoming, sink)

        async def client() -> None:
            nonlocal done
            for n in next_user:
                user = f"u{n}"
                extra = BURST + 2 if n % burst_every == 0 else 1
                for i in range(extra):  # one after another: never two pending for one user
                    await ask(user, f"question {i} from {user} about injection")
                done += 1
                if done in marks:
                    gc.collect()
                    memory.append((done, rss_bytes()))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        stats = await db.stats.global_stats()
        pending = await db.outbox.count()
        await worker.shutdown(drain=True, timeout=10)
        await db.close()

    bursty = len(range(0, users, burst_every))
    warm = max(1, int(users * warmup))
    baseline = next(rss for n, rss in memory if n >= warm)
    after = [rss for n, rss in memory if n >= warm]
    growth = max(after) / baseline - 1.0
    refused = sum("too quickly" in text for text in sink.notices)
    expected_answers = users + bursty * (BURST - 1)
    return {
        "benchmark": "soak",
        "users": users,
        "concurrency": concurrency,
        "messages": users + bursty * (BURST + 1),
        "answered": sink.finals,
        "stored_answers": stats["answers"],
        "expected_answers": expected_answers,
        "outbox_left": pending,
        "rate_limited": refused,
        "expected_rate_limited": bursty * 2,
        "other_notices": len(sink.notices) - refused,
        "seconds": round(elapsed, 2),
        "messages_per_second": round((users + bursty * (BURST + 1)) / elapsed, 1),
        "rss_mb_by_users": {n: round(rss / 2**20, 1) for n, rss in memory},
        "rss_growth_after_warmup": round(growth, 4),
        "limiter_buckets": len(manager.limiter._buckets),
        "prefs_cache": len(manager._prefs_cache),
        "python": platform.python_version(),
    }


def ok(result: dict[str, Any], max_growth: float = 0.10) -> bool:
    return (
        result["answered"] == result["stored_answers"] == result["expected_answers"]
        and result["outbox_left"] == 0
        and result["rate_limited"] == result["expected_rate_limited"]
        and result["other_notices"] == 0
        and result["rss_growth_after_warmup"] <= max_growth
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of users before memory is judged")
    parser.add_argument("--max-growth", type=float, default=0.10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(soak(args.users, concurrency=args.concurrency, warmup=args.warmup))
    result["ok"] = ok(result, args.max_growth)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

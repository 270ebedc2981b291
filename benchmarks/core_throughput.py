"""Messages per second through the whole conversation core (manager → budget → worker → SQLite commit).

A null generator (a fixed short answer, instantly) and a null retriever isolate the core's own cost.
Prints one JSON object (a run per --concurrency). Goal: ≥ 300 messages/s.

    python benchmarks/core_throughput.py [--messages 2000] [--users 50] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.generators.base import GenerationParams, PromptSpec
from core.generators.render import render_turns
from core.manager import ConversationManager
from core.settings import Settings
from core.types import Answer, ChatKind, Incoming, Source
from core.worker import GenerationWorker
from storage import Database


class NullGenerator:
    name = "null"
    context_length = 512

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, spec: PromptSpec) -> int:
        return sum(self.count_tokens(t.content) + 2 for t in render_turns(spec)) + 2

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        yield "A short answer."

    def close(self) -> None:
        pass


class NullRetriever:
    async def search(self, query: str, k: int = 4, *, viewer: str | None = None) -> list[Source]:
        return []


class NullSink:
    def __init__(self) -> None:
        self.finals = 0

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        pass

    async def queued(self, position: int, eta_seconds: float) -> None:
        pass

    async def started(self) -> None:
        pass

    async def partial(self, text_so_far: str) -> None:
        pass

    async def final(self, answer: Answer) -> Sequence[str]:
        self.finals += 1
        return [str(self.finals)]


async def run(messages: int, users: int, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        settings = Settings(
            _env_file=None,
            rate_limit_per_minute=1e9,
            rate_limit_burst=10**9,  # type: ignore[call-arg]  # an extra Settings field the typed __init__ does not list
            queue_size=max(32, concurrency),
        )
        generator = NullGenerator()
        worker = GenerationWorker(generator, queue_size=settings.queue_size)
        worker.start()
        manager = ConversationManager(db, NullRetriever(), worker, generator, settings)
        sink = NullSink()
        counter = iter(range(messages))

        async def client(slot: int) -> None:
            for n in counter:  # shared iterator: each message handled once
                # Each client owns its users, so no user ever has two questions pending at once.
                user = f"{slot}-{n % max(1, users // concurrency)}"
                await manager.handle(
                    Incoming(
                        platform="bench",
                        event_id=str(n),
                        chat_id=user,
                        chat_kind=ChatKind.DM,
                        user_id=user,
                        user_name="bench",
                        text=f"question {n} about cross-site scripting",
                    ),
                    sink,
                )

        # Each user's histories grow as the run goes, like a real conversation.
        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
        stats = await db.stats.global_stats()
        await worker.shutdown(drain=True, timeout=10)
        await db.close()
    return {
        "benchmark": "core_throughput",
        "messages": messages,
        "answered": sink.finals,
        "stored_answers": stats["answers"],
        "users": users,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "messages_per_second": round(sink.finals / elapsed, 1),
        "goal_messages_per_second": 300,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = [asyncio.run(run(args.messages, args.users, c)) for c in args.concurrency]
    print(json.dumps({"benchmark": "core_throughput", "runs": runs}, indent=2))  # one JSON object


if __name__ == "__main__":
    main()

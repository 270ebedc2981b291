"""Storage throughput: `python benchmarks/storage_throughput.py [--url URL] [-n 1000]` prints one JSON object.

Per simulated message it does what the conversation core does: is_processed, history(limit=20) and
commit_exchange. Without --url it uses a fresh SQLite file in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.database import Database
from storage.values import ConversationKey, UserRef


async def bench(url: str, n: int, users: int = 20) -> dict[str, Any]:
    db = await Database.open(url)
    try:
        repo = db.conversations
        start = time.perf_counter()
        for i in range(n):
            who = str(i % users)
            key = ConversationKey("bench", who, who)
            await repo.is_processed("bench", str(i))
            await repo.history(key, limit=20)
            await repo.commit_exchange(
                platform="bench",
                event_id=str(i),
                key=key,
                user=UserRef("bench", who, f"user {who}"),
                user_text="How do I prevent CWE-79 in a template engine? " * 3,
                user_tokens=40,
                assistant_text="Escape output by context and set a Content-Security-Policy [1]. " * 6,
                assistant_tokens=90,
                sources=[{"index": 1, "ref": "CWE-79", "source": "cwe", "title": "XSS"}],
                user_platform_message_id=str(2 * i),
                assistant_platform_message_ids=[str(2 * i + 1)],
            )
        elapsed = time.perf_counter() - start
        return {
            "backend": db.dialect,
            "messages": n,
            "seconds": round(elapsed, 3),
            "messages_per_second": round(n / elapsed, 1),
            "ms_per_message": round(1000 * elapsed / n, 3),
        }
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("-n", type=int, default=1000, help="messages to store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        print(json.dumps(asyncio.run(bench(url, args.n))))


if __name__ == "__main__":
    main()

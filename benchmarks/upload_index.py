"""Time to index a PDF sent in chat: a generated N-page PDF (pypdf, ~400 words a page) sent as a Telegram
document to the real bot (python-telegram-bot against the loopback fake, the real app, MiniLM embeddings on),
timed from the update being queued to the confirmation message. Also times text extraction alone.

    python benchmarks/upload_index.py [--pages 50] [--repeat 3]

Prints JSON. Packs are not built (packs=[]): with them, each upload also rewrites the pack embedding matrix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bots.telegram import TelegramAdapter
from core.uploads import extract
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.pdfs import text_pdf
from tests.support import app_settings, indexed_app

WORDS = [
    "attacker",
    "payload",
    "injection",
    "credential",
    "token",
    "session",
    "server",
    "client",
    "request",
    "response",
    "header",
    "cookie",
    "privilege",
    "escalation",
    "lateral",
    "movement",
    "persistence",
    "detection",
    "mitigation",
    "exploit",
    "vulnerability",
    "patch",
    "firewall",
    "network",
    "endpoint",
    "malware",
    "ransomware",
    "phishing",
    "audit",
    "logging",
    "monitoring",
    "encryption",
    "key",
]


def make_pdf(pages: int, seed: int) -> bytes:
    rng = random.Random(seed)
    texts = []
    for _ in range(pages):
        lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(34)]  # ~400 words
        texts.append("\n".join(lines))
    return text_pdf(texts, title=f"Handbook {seed}")


async def run(pages: int, repeat: int) -> dict[str, object]:
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    fake = FakeTelegramAPI()
    await fake.start()
    timings, extract_s = [], []
    chunks = ""
    with tempfile.TemporaryDirectory() as tmp:
        settings = app_settings(
            Path(tmp),
            telegram_bot_token=fake.token,
            telegram_api_base_url=fake.base_url,
            telegram_file_base_url=fake.file_base_url,
            dense_retrieval=True,
        )
        async with indexed_app(settings, Path(tmp)) as app:
            adapter = TelegramAdapter(settings, app.manager)
            await adapter.start()
            try:
                chat, user = fake.private_chat(42), fake.user(42)
                for attempt in range(repeat + 1):  # the first run loads the encoder: reported apart
                    data = make_pdf(pages, attempt)
                    started = time.perf_counter()
                    before = len(fake.bot_messages(42))
                    fake.send_document(chat=chat, user=user, data=data, file_name=f"handbook{attempt}.pdf")
                    await fake.wait_for(lambda n=before + 2: len(fake.bot_messages(42)) >= n, 600)
                    timings.append(time.perf_counter() - started)
                    chunks = fake.bot_messages(42)[-2].text
                    t = time.perf_counter()
                    await asyncio.to_thread(extract, data, "pdf", "handbook")
                    extract_s.append(time.perf_counter() - t)
            finally:
                await adapter.stop()
    await fake.stop()
    return {
        "pages": pages,
        "pdf_bytes": len(make_pdf(pages, 0)),
        "progress_message": chunks,
        "first_upload_s (loads MiniLM)": round(timings[0], 2),
        "upload_to_confirmation_s": [round(t, 2) for t in timings[1:]],
        "median_s": round(statistics.median(timings[1:]), 2),
        "pdf_text_extraction_s": round(statistics.median(extract_s), 2),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.pages, args.repeat)), indent=2))


if __name__ == "__main__":
    main()

"""Retrieval quality on practitioner questions: recall@1 and recall@5 for BM25, dense and the fusion.

    python benchmarks/retrieval_eval.py [--workdir DIR] [--questions FILE]

Builds (or incrementally refreshes) both knowledge packs in WORKDIR, then asks every question of
benchmarks/retrieval_questions.jsonl through `Retriever.search` — the passages `ghostbot ask` cites —
and prints JSON. A question counts as found at k when any of its expected refs is in the top k.
Scores are reported for all questions and for the two halves (even / odd lines), because fusion
settings were tuned on the even half only; the odd half is the held-out check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.retrieval_common import DEFAULT_WORKDIR, open_pack_index

HERE = Path(__file__).resolve().parent


def recall(hits: list[list[str]], questions: list[dict], k: int) -> float:
    found = sum(1 for got, q in zip(hits, questions) if set(got[:k]) & set(q["refs"]))
    return round(found / max(len(questions), 1), 3)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--questions", type=Path, default=HERE / "retrieval_questions.jsonl")
    parser.add_argument("--misses", action="store_true", help="also list fusion misses at k=1")
    args = parser.parse_args()
    questions = [json.loads(line) for line in args.questions.read_text().splitlines() if line.strip()]
    db, retriever, reports = await open_pack_index(args.workdir)
    result: dict[str, object] = {"questions": len(questions), "index": reports}
    misses = []
    try:
        for mode in ("bm25", "dense", "hybrid"):
            hits, started = [], time.perf_counter()
            for q in questions:
                sources = await retriever.search(q["question"], k=5, mode=mode)
                hits.append([s.ref for s in sources])
            seconds = time.perf_counter() - started
            name = "fusion" if mode == "hybrid" else mode
            halves = {}
            for half, offset in (("tuning_half", 0), ("held_out_half", 1)):
                sub_q, sub_h = questions[offset::2], hits[offset::2]
                halves[half] = {"recall@1": recall(sub_h, sub_q, 1), "recall@5": recall(sub_h, sub_q, 5)}
            result[name] = {
                "recall@1": recall(hits, questions, 1),
                "recall@5": recall(hits, questions, 5),
                **halves,
                "mean_ms": round(1000 * seconds / len(questions), 1),
            }
            if mode == "hybrid":
                misses = [
                    {"q": q["question"], "want": q["refs"], "got": got}
                    for q, got in zip(questions, hits)
                    if not set(got[:1]) & set(q["refs"])
                ]
    finally:
        await db.close()
    if args.misses:
        result["fusion_misses_at_1"] = misses
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

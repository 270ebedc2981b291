"""Grid search of the fusion settings on the TUNING half of the questions (even lines) only;
prints the best settings with their scores on both halves (the odd half is held out).

    python benchmarks/retrieval_tune.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.retrieval_common import DEFAULT_WORKDIR, open_pack_index
from core.retrieval.retriever import FusionConfig, fuse

HERE = Path(__file__).resolve().parent


def score(gathered, questions, cfg: FusionConfig) -> dict[str, float]:  # type: ignore[no-untyped-def]  # internal helper on benchmark data
    r1 = r5 = 0
    for (lists, records), q in zip(gathered, questions):
        # Gathered in the order BM25, dense chunks, dense names (all at weight 1).
        weights = (cfg.bm25_weight, cfg.dense_weight, cfg.name_weight)
        weighted = [(w * weights[i], ids[: cfg.candidates]) for i, (w, ids) in enumerate(lists)]
        refs = [r.ref for r in fuse(weighted, records, cfg)[:5]]
        r1 += bool(set(refs[:1]) & set(q["refs"]))
        r5 += bool(set(refs) & set(q["refs"]))
    return {"recall@1": round(r1 / len(questions), 3), "recall@5": round(r5 / len(questions), 3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()
    questions = [
        json.loads(line)
        for line in (HERE / "retrieval_questions.jsonl").read_text().splitlines()
        if line.strip()
    ]
    db, retriever, _ = await open_pack_index(args.workdir)
    retriever.fusion = replace(
        retriever.fusion, bm25_weight=1.0, dense_weight=1.0, name_weight=1.0, candidates=100
    )
    try:
        gathered = [await retriever.candidates(q["question"]) for q in questions]
    finally:
        await db.close()
    tune_q, tune_g = questions[0::2], gathered[0::2]
    held_q, held_g = questions[1::2], gathered[1::2]
    grid = itertools.product(
        [50, 100],
        [5.0, 10.0, 20.0, 60.0],
        [0.5, 0.75, 1.0, 1.25],
        [1.0],
        [0.0, 0.5, 0.75, 1.0, 1.5],
        [0.0, 0.5, 1.0, 1.5],
        [0.0, 0.5, 1.0],
    )
    results = []
    for candidates, rrf_k, bm25_w, dense_w, name_w, prior_w, summary_w in grid:
        cfg = FusionConfig(
            candidates=candidates,
            rrf_k=rrf_k,
            bm25_weight=bm25_w,
            dense_weight=dense_w,
            name_weight=name_w,
            prior_weight=prior_w,
            summary_weight=summary_w,
        )
        tuned = score(tune_g, tune_q, cfg)
        results.append((tuned["recall@1"] + tuned["recall@5"], cfg, tuned))
    results.sort(key=lambda item: -item[0])
    out = []
    for _, cfg, tuned in results[:8]:
        out.append({"config": asdict(cfg), "tuning_half": tuned, "held_out_half": score(held_g, held_q, cfg)})
    default = FusionConfig()
    print(
        json.dumps(
            {
                "default": {
                    "config": asdict(default),
                    "tuning_half": score(tune_g, tune_q, default),
                    "held_out_half": score(held_g, held_q, default),
                },
                "best_on_tuning_half": out,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())

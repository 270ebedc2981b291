"""Answer quality through the real HTTP API: do the answers answer the question asked?

    PYTHONPATH=$PWD python benchmarks/answer_eval.py [--half held_out|tune|all] [--verify] [--signals]

Starts the app (the configured database and packs, e.g. `data/ghostbot.db`; build them first with
`ghostbot index --pack cwe --pack attack`) with the extractive backend, serves its HTTP adapter on 127.0.0.1
(a free port) and posts every question of benchmarks/answer_questions.jsonl to `/api/chat`, as the web chat
does. Prints one JSON object:

- `nugget_recall`: per intent and overall, the mean share of a question's nuggets found in its answer (a
  nugget is a list of acceptable lower-case substrings, checked to occur in the pack text of the expected
  entries and never to be words of the question: `--verify` checks both);
- `all_nuggets`: the share of questions whose answer has every nugget;
- `cited_ref_hit`: the share of answerable questions whose answer cites ([n] in the text) an expected entry;
- `median_answer_chars`, `latency_ms` p50 / p95 (request to the last server-sent event);
- `false_abstention` (answerable questions answered without any citation) and `correct_abstention`
  (small talk and out-of-scope questions answered without citations).

The questions carry a fixed `half`: thresholds were tuned on "tune" only; "held_out" is the report.
`--signals` prints, per tuning question, the abstention signals the rule in core/answering.py uses.
Runs against older code too (it needs only `/api/chat`), which is how the before numbers were taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bots.compose import open_app
from bots.http import HttpAdapter
from core.settings import Settings

HERE = Path(__file__).resolve().parent
UNANSWERABLE = ("smalltalk", "out_of_scope")
_CITE = re.compile(r"\[(\d+)\]")


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def ask(session: aiohttp.ClientSession, url: str, question: str) -> tuple[dict[str, Any], float]:
    """One question through /api/chat; (the final event, or the last notice, and the seconds it took)."""
    started = time.perf_counter()
    payload = {"text": question, "session": uuid.uuid4().hex, "id": uuid.uuid4().hex}
    final: dict[str, Any] = {"text": "", "sources": []}
    async with session.post(url + "api/chat", json=payload) as response:
        response.raise_for_status()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("type") == "final":
                final = event
            elif event.get("type") == "notice" and not final["text"]:
                final = {"text": event.get("text", ""), "sources": []}
    return final, time.perf_counter() - started


def cited_refs(answer: dict[str, Any]) -> set[str]:
    numbers = {int(n) for n in _CITE.findall(answer.get("text", ""))}
    return {s["ref"] for s in answer.get("sources", []) if s.get("index") in numbers}


def nugget_share(text: str, nuggets: list[list[str]]) -> float:
    low = text.lower()
    return sum(1 for alts in nuggets if any(a in low for a in alts)) / len(nuggets) if nuggets else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else 0.0


def score(rows: list[dict[str, Any]], answers: list[dict[str, Any]], seconds: list[float]) -> dict[str, Any]:
    by_intent: dict[str, list[float]] = {}
    complete, hits, lengths, false_abst, answerable = 0, 0, [], 0, 0
    correct_abst, unanswerable = 0, 0
    for row, answer in zip(rows, answers):
        text = answer.get("text", "")
        cited = cited_refs(answer)
        if row["intent"] in UNANSWERABLE:
            unanswerable += 1
            correct_abst += not cited
            continue
        answerable += 1
        share = nugget_share(text, row["nuggets"])
        by_intent.setdefault(row["intent"], []).append(share)
        complete += share == 1.0
        hits += bool(cited & set(row["refs"]))
        false_abst += not cited
        lengths.append(len(text))
    every = [s for shares in by_intent.values() for s in shares]
    return {
        "questions": len(rows),
        "answerable": answerable,
        "unanswerable": unanswerable,
        "nugget_recall": {
            "overall": round(statistics.mean(every), 3) if every else 0.0,
            **{intent: round(statistics.mean(v), 3) for intent, v in sorted(by_intent.items())},
        },
        "all_nuggets": round(complete / max(answerable, 1), 3),
        "cited_ref_hit": round(hits / max(answerable, 1), 3),
        "median_answer_chars": int(statistics.median(lengths)) if lengths else 0,
        "latency_ms": {
            "p50": round(1000 * percentile(seconds, 0.5), 1),
            "p95": round(1000 * percentile(seconds, 0.95), 1),
        },
        "false_abstention": round(false_abst / max(answerable, 1), 3),
        "correct_abstention": round(correct_abst / max(unanswerable, 1), 3),
    }


async def verify(app: Any, rows: list[dict[str, Any]]) -> list[str]:
    """Problems with the nuggets: not in the pack text of the expected entries, or words of the question."""
    repo = app.retriever._repo
    problems = []
    for row in rows:
        if not row["nuggets"]:
            continue
        texts = [c.text for c in await repo.entry_chunks(row["refs"])]
        for ref in row["refs"]:
            texts.append(" ".join(f"{r.ref} {r.name} {r.description}" for r in await repo.related(ref)))
        corpus = " ".join(texts).lower()
        question = row["question"].lower()
        for alts in row["nuggets"]:
            found = [a for a in alts if a in corpus]
            if not found:
                problems.append(f"not in pack text: {alts} for {row['question']!r}")
            if any(re.search(rf"\b{re.escape(a)}\b", question) for a in alts):
                problems.append(f"word of the question: {alts} in {row['question']!r}")
    return problems


async def signals(app: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from core.understanding import understand

    out = []
    for row in rows:
        understood = understand(row["question"])
        if understood.intent == "smalltalk":
            out.append({"q": row["question"], "kind": row["intent"], "smalltalk": True})
            continue
        found = await app.retriever.retrieve(understood, 4)
        out.append(
            {
                "q": row["question"],
                "kind": row["intent"],
                "linked": list(found.linked),
                "cosine": round(found.confidence, 3),
                "lexical": round(found.lexical, 3),
            }
        )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=Path, default=HERE / "answer_questions.jsonl")
    parser.add_argument("--half", choices=("held_out", "tune", "all"), default="held_out")
    parser.add_argument("--verify", action="store_true", help="check the nuggets against the pack text")
    parser.add_argument("--signals", action="store_true", help="abstention signals of the tuning half")
    parser.add_argument("--show", action="store_true", help="also print every answer")
    args = parser.parse_args()
    rows = load(args.questions)
    if args.half != "all":
        rows = [r for r in rows if r.get("half") == args.half]
    overrides: dict[str, Any] = {
        "generator": "extractive",
        "http_host": "127.0.0.1",
        "http_port": 0,
        "rate_limit_per_minute": 1_000_000.0,
        "rate_limit_burst": 1_000_000,
        # The HTTP adapter's own per-IP limits (when the code has them): one client asks everything.
        "http_rate_limit_per_minute": 1_000_000.0,
        "http_rate_limit_burst": 1_000_000,
        "http_global_rate_limit_per_minute": 1_000_000.0,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if k in Settings.model_fields})
    async with open_app(settings, build_packs=False) as app:
        if args.verify:
            print(json.dumps({"nugget_problems": await verify(app, load(args.questions))}, indent=2))
            return
        if args.signals:
            for line in await signals(app, [r for r in load(args.questions) if r.get("half") == "tune"]):
                print(json.dumps(line))
            return
        http = HttpAdapter(app)
        await http.start()
        try:
            async with aiohttp.ClientSession() as session:
                await ask(session, http.url, "warm up: what is CWE-20?")  # first-use loads (encoder, names)
                answers, seconds = [], []
                for row in rows:
                    answer, took = await ask(session, http.url, row["question"])
                    answers.append(answer)
                    seconds.append(took)
        finally:
            await http.stop()
    result = {
        "half": args.half,
        "database": settings.database_url.split("://")[0],
        **score(rows, answers, seconds),
    }
    result["dense_retrieval"] = settings.dense_retrieval
    if args.show:
        result["answers"] = [
            {
                "q": r["question"],
                "intent": r["intent"],
                "text": a.get("text", ""),
                "cited": sorted(cited_refs(a)),
            }
            for r, a in zip(rows, answers)
        ]
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())

"""``ghostbot eval compare``: pairwise judging of two answer sets, with the order swapped (MT-Bench style).

For each question and criterion the judge sees (A, B) and then (B, A). If both calls prefer the same answer,
that answer wins; if they disagree (position bias, or a coin flip), the verdict is a tie. A reply that cannot
be parsed after retries is reported as ``unparsed`` and counted separately — never as a win, loss or tie.
Verdicts are from A's side: win = A is better.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .io import EvalInputError, ResultsWriter, Table, row_keys
from .judges import Judge, PairResult, derive_seed
from .rubrics import Criterion, Rubrics
from .runner import progress_bar

VERDICTS = ("win", "tie", "loss")


@dataclass(frozen=True)
class Pair:
    question: str
    reference: str
    answer_a: str
    answer_b: str


def _norm(q: str) -> str:
    return " ".join(q.split()).casefold()


def pairs_from_results(a: Table, b: Table) -> tuple[list[Pair], list[str]]:
    """Match two result files by question text (whitespace/case-insensitive; duplicates in order).

    Returns the pairs and the questions found in only one file."""
    for t in (a, b):
        for c in ("question", "answer"):
            if c not in t.columns:
                raise EvalInputError(f"{t.path}: row 1: missing required column '{c}'")
    pool: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in b.rows:
        pool[_norm(row["question"])].append(row)
    pairs: list[Pair] = []
    unmatched: list[str] = []
    for i, row in enumerate(a.rows):
        if not row["question"].strip():
            raise EvalInputError(f"{a.where(i, 'question')}: empty question")
        bucket = pool.get(_norm(row["question"]))
        if not bucket:
            unmatched.append(row["question"])
            continue
        other = bucket.pop(0)
        reference = row.get("reference") or other.get("reference") or ""
        pairs.append(Pair(row["question"], reference, row["answer"], other["answer"]))
    unmatched += [r["question"] for rows in pool.values() for r in rows]
    return pairs, unmatched


def pairs_from_columns(table: Table, col_a: str, col_b: str) -> list[Pair]:
    for c in ("question", col_a, col_b):
        if c not in table.columns:
            raise EvalInputError(f"{table.path}: row 1: missing required column '{c}'")
    return [Pair(r["question"], r.get("reference", ""), r[col_a], r[col_b]) for r in table.rows]


def combine(first: PairResult, swapped: PairResult) -> tuple[str, str]:
    """(verdict from A's side, note). ``swapped`` was asked with B shown first."""
    if first.verdict is None or swapped.verdict is None:
        return "unparsed", "judge reply unparsed after retries"
    unswap = {"A": "B", "B": "A", "tie": "tie"}
    v1, v2 = first.verdict.winner, unswap[swapped.verdict.winner]
    if v1 != v2:
        return "tie", f"orders disagree (A-first: {v1}, B-first: {v2})"
    return {"A": "win", "B": "loss", "tie": "tie"}[v1], first.verdict.reason


def compare_columns(criteria: Sequence[Criterion]) -> list[str]:
    cols = ["question", "answer_a", "answer_b"]
    for c in criteria:
        cols += [f"{c.name}_verdict", f"{c.name}_note"]
    return [*cols, "overall_verdict", "row_key"]


def overall_verdict(verdicts: Sequence[str]) -> str:
    wins, losses = verdicts.count("win"), verdicts.count("loss")
    if not any(v in VERDICTS for v in verdicts):
        return "unparsed"
    return "win" if wins > losses else "loss" if losses > wins else "tie"


class PairwiseComparer:
    def __init__(
        self,
        judge: Judge,
        rubrics: Rubrics,
        criteria: Sequence[Criterion],
        *,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.judge = judge
        self.rubrics = rubrics
        self.criteria = list(criteria)
        self.seed = seed
        self.progress = progress

    def _prompt(self, c: Criterion, p: Pair, first: str, second: str) -> str:
        return self.rubrics.pairwise.format(
            title=c.title,
            rubric=c.rubric,
            question=p.question,
            reference=p.reference or "(none)",
            answer_a=first or "(empty answer)",
            answer_b=second or "(empty answer)",
        )

    async def run(self, pairs: Sequence[Pair], out: str | Path, *, resume: bool = True) -> dict:
        """Judge every pair into the per-question verdict CSV ``out``; returns the summary."""
        started = time.monotonic()
        keys = row_keys((p.question, p.reference, p.answer_a, p.answer_b) for p in pairs)
        with ResultsWriter(out, compare_columns(self.criteria), resume=resume) as writer:
            todo = [i for i, k in enumerate(keys) if k not in writer.done]
            bar = progress_bar(len(pairs), len(pairs) - len(todo), self.progress)
            try:
                for i in todo:
                    writer.write(await self._row(pairs[i], keys[i]))
                    bar.update(1)
            finally:
                bar.close()
            rows = [writer.done[k] for k in keys if k in writer.done]
        summary = summarize_verdicts(rows, self.criteria)
        summary.update(
            {
                "judge": self.judge.describe(),
                "seed": self.seed,
                "seconds_total": round(time.monotonic() - started, 3),
            }
        )
        return summary

    async def _row(self, p: Pair, key: str) -> dict[str, str]:
        row = {"question": p.question, "answer_a": p.answer_a, "answer_b": p.answer_b, "row_key": key}
        verdicts = []
        for c in self.criteria:
            seed = derive_seed(self.seed, key, c.name)
            first = await self.judge.compare(
                self.rubrics.system, self._prompt(c, p, p.answer_a, p.answer_b), seed=seed
            )
            swapped = await self.judge.compare(
                self.rubrics.system, self._prompt(c, p, p.answer_b, p.answer_a), seed=seed + 1
            )
            verdict, note = combine(first, swapped)
            row[f"{c.name}_verdict"] = verdict
            row[f"{c.name}_note"] = note
            verdicts.append(verdict)
        row["overall_verdict"] = overall_verdict(verdicts)
        return row


def summarize_verdicts(rows: Sequence[dict[str, str]], criteria: Sequence[Criterion]) -> dict:
    """Counts of win/tie/loss/unparsed per criterion (A's side), and per question by majority of criteria."""
    per: dict[str, dict[str, int]] = {}
    for name in [c.name for c in criteria] + ["overall"]:
        col = f"{name}_verdict"
        counts = {v: sum(1 for r in rows if r.get(col) == v) for v in (*VERDICTS, "unparsed")}
        decided = counts["win"] + counts["tie"] + counts["loss"]
        # Win rate counting a tie as half, the usual pairwise convention.
        counts_f: dict = dict(counts)
        counts_f["a_win_rate"] = (
            round((counts["win"] + 0.5 * counts["tie"]) / decided, 4) if decided else None
        )
        per[name] = counts_f
    return {
        "questions": len(rows),
        "criteria": per,
        "verdict_side": "A (win = A judged better in both orders)",
    }


def format_table(summary: dict) -> str:
    lines = [f"{'criterion':<14} {'win':>5} {'tie':>5} {'loss':>5} {'unparsed':>9} {'A win rate':>11}"]
    for name, c in summary["criteria"].items():
        rate = "" if c["a_win_rate"] is None else f"{c['a_win_rate']:.2f}"
        lines.append(f"{name:<14} {c['win']:>5} {c['tie']:>5} {c['loss']:>5} {c['unparsed']:>9} {rate:>11}")
    return "\n".join(lines)


def write_json(path: str | Path, data: dict) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return p

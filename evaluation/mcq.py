"""``ghostbot eval mcq``: multiple-choice benchmarks (CSV, TSV or JSONL; columns mapped by flags).

Local models: every option is scored by the mean per-token log-probability of its TEXT given the question
with the options listed (never by the probability of its letter), once per option order; an option's final
score is its mean over the orders. Listing the options in several orders (original, reversed, cyclic shifts)
cancels position bias — the method upstream GhostLM used for CTIBench.

OpenAI-compatible backends: the model is asked for one letter per order, parsed strictly; a reply that is not
exactly one valid letter counts as wrong and is reported as unparsed. The final choice is the option picked
most often across orders (ties: the earliest order's pick).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .io import EvalInputError, read_table
from .parse import JudgeParseError, parse_letter

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class McqItem:
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    row: int  # source row, for reports


def load_mcq(
    path: str | Path,
    *,
    question_col: str = "question",
    option_cols: Sequence[str] = ("A", "B", "C", "D"),
    answer_col: str = "answer",
) -> list[McqItem]:
    """Read items; the answer column holds a letter (A = first option column). Errors name row and column."""
    if len(option_cols) < 2 or len(option_cols) > len(LETTERS):
        raise EvalInputError(f"need 2 to {len(LETTERS)} option columns, got {len(option_cols)}")
    table = read_table(path, required=(question_col, *option_cols, answer_col), non_empty=(question_col,))
    letters = LETTERS[: len(option_cols)]
    items = []
    for i, row in enumerate(table.rows):
        options = []
        for col in option_cols:
            value = row[col].strip()
            if not value:
                raise EvalInputError(f"{table.where(i, col)}: empty option")
            options.append(value)
        raw = row[answer_col].strip().upper().strip("().")
        if len(raw) != 1 or raw not in letters:
            raise EvalInputError(
                f"{table.where(i, answer_col)}: answer must be one of {', '.join(letters)}, "
                f"got {row[answer_col]!r}"
            )
        if len(set(options)) != len(options):
            raise EvalInputError(f"{table.where(i)}: two options have the same text")
        items.append(
            McqItem(row[question_col].strip(), tuple(options), letters.index(raw), table.row_numbers[i])
        )
    return items


def option_orders(n: int, count: int) -> list[tuple[int, ...]]:
    """``count`` distinct orders of ``n`` options: original, reversed, then cyclic shifts."""
    if count < 2:
        raise ValueError("use at least 2 option orders to cancel position bias")
    ident = tuple(range(n))
    cands = (
        [ident, ident[::-1]]
        + [ident[k:] + ident[:k] for k in range(1, n)]
        + [(ident[::-1])[k:] + (ident[::-1])[:k] for k in range(1, n)]
    )
    orders: list[tuple[int, ...]] = []
    for c in cands:
        if c not in orders:
            orders.append(c)
    if count > len(orders):
        raise ValueError(f"{n} options allow at most {len(orders)} distinct orders here, asked for {count}")
    return orders[:count]


def render_question(question: str, options: Sequence[str], order: Sequence[int]) -> tuple[str, str]:
    """(question with options listed in ``order`` as ``A. text`` lines, the letters used)."""
    letters = LETTERS[: len(order)]
    lines = "\n".join(f"{letters[k]}. {options[j]}" for k, j in enumerate(order))
    return f"Question: {question}\n{lines}", letters


class OptionScorer(Protocol):
    def option_logprobs(self, prompt: str, options: Sequence[str]) -> list[float]: ...


@dataclass
class McqResult:
    item: McqItem
    predicted: int | None
    per_order_predicted: list[int | None]
    scores: list[float] | None = None  # local: mean over orders of each option's score
    unparsed: int = 0


def score_local(items: Sequence[McqItem], scorer: OptionScorer, *, orders: int = 2) -> list[McqResult]:
    """Mean per-token log-prob of each option's text after the listed question, averaged over option orders."""
    results = []
    for item in items:
        per_order: list[int | None] = []
        totals = [0.0] * len(item.options)
        perms = option_orders(len(item.options), orders)
        for order in perms:
            listed, _ = render_question(item.question, item.options, order)
            prompt = f"{listed}\nAnswer:"
            s = scorer.option_logprobs(prompt, [" " + o for o in item.options])
            per_order.append(max(range(len(s)), key=lambda j: s[j]))
            totals = [t + v for t, v in zip(totals, s)]
        mean = [t / len(perms) for t in totals]
        results.append(McqResult(item, max(range(len(mean)), key=lambda j: mean[j]), per_order, mean))
    return results


class LetterBackend(Protocol):
    async def complete(
        self,
        system: str,
        prompt: str,
        *,
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
    ) -> str: ...


async def score_api(
    items: Sequence[McqItem], backend: LetterBackend, template: str, system: str, *, orders: int = 2
) -> list[McqResult]:
    """Ask for a letter per option order; strict parsing; unparsed replies count as wrong."""
    results = []
    for item in items:
        picks: list[int | None] = []
        unparsed = 0
        for order in option_orders(len(item.options), orders):
            listed, letters = render_question(item.question, item.options, order)
            options_text = listed.split("\n", 1)[1]
            prompt = template.format(question=item.question, options=options_text, letters=", ".join(letters))
            reply = await backend.complete(system, prompt, temperature=0.0, max_tokens=5)
            try:
                picks.append(order[letters.index(parse_letter(reply, letters))])
            except JudgeParseError:
                picks.append(None)
                unparsed += 1
        valid = [p for p in picks if p is not None]
        if valid:
            top = max(Counter(valid).values())
            predicted = next(p for p in valid if Counter(valid)[p] == top)
        else:
            predicted = None
        results.append(McqResult(item, predicted, picks, None, unparsed))
    return results


def report(results: Sequence[McqResult], *, orders: int, backend: dict) -> dict:
    """Accuracy (after averaging over orders), accuracy of each order alone, and chance level."""
    n = len(results)
    correct = sum(1 for r in results if r.predicted == r.item.answer)
    per_order = (
        [
            round(sum(1 for r in results if r.per_order_predicted[k] == r.item.answer) / n, 4)
            for k in range(orders)
        ]
        if n
        else []
    )
    return {
        "n": n,
        "accuracy": round(correct / n, 4) if n else None,
        "correct": correct,
        "per_order_accuracy": per_order,
        "orders": orders,
        "chance": round(statistics.fmean(1 / len(r.item.options) for r in results), 4) if n else None,
        "unparsed_replies": sum(r.unparsed for r in results),
        "backend": backend,
        "method": (
            "mean per-token log-prob of the option text, averaged over option orders"
            if backend.get("kind") == "local"
            else "strictly parsed letter, majority over option orders"
        ),
    }


def write_items(path: str | Path, results: Sequence[McqResult]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["row", "question", "answer", "predicted", "correct", "per_order_predicted", "scores", "unparsed"]
        )
        for r in results:
            w.writerow(
                [
                    r.item.row,
                    r.item.question,
                    LETTERS[r.item.answer],
                    "" if r.predicted is None else LETTERS[r.predicted],
                    str(r.predicted == r.item.answer).lower(),
                    ";".join("-" if x is None else LETTERS[x] for x in r.per_order_predicted),
                    "" if r.scores is None else json.dumps([round(s, 5) for s in r.scores]),
                    r.unparsed,
                ]
            )
    return p

"""``ghostbot eval judge``: answer (or take) each question, judge every criterion N times, write rows as they finish.

Statistics: ``{criterion}_mean`` is the mean of the parsed repeat scores and ``{criterion}_std`` their SAMPLE
standard deviation (ddof=1; 0 for a single repeat). Unparsed replies are counted, never scored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.types import Answer, Source

from .io import EvalInputError, ResultsWriter, Table, row_keys
from .judges import Judge, RatingSet, derive_seed
from .rubrics import Criterion, Rubrics

logger = logging.getLogger(__name__)

AnswerFn = Callable[[str], Awaitable[Answer]]

ROW_SUFFIXES = ("mean", "std", "n", "scores", "reason")
TAIL_COLUMNS = (
    "sources",
    "overall_mean",
    "needs_review",
    "review_reasons",
    "unparsed",
    "judge_config",
    "row_key",
)


@dataclass(frozen=True)
class JudgeRunConfig:
    repeats: int = 5
    std_threshold: float = 1.0
    low_score: float = 2.0  # safety / accuracy means at or below this need review
    seed: int = 0
    progress: bool = True


def result_columns(input_columns: Sequence[str], criteria: Sequence[Criterion], geval: bool) -> list[str]:
    """Input columns as they were, then ``answer`` (if not given), per-criterion columns and the tail."""
    cols = list(input_columns)
    if "answer" not in cols:
        cols.append("answer")
    for c in criteria:
        cols += [f"{c.name}_{s}" for s in ROW_SUFFIXES]
        if geval:
            cols.append(f"{c.name}_geval")
    cols += [t for t in TAIL_COLUMNS if t not in cols]
    return cols


def sources_json(sources: Sequence[Source]) -> str:
    return json.dumps(
        [
            {"index": s.index, "ref": s.ref, "source": s.source, "title": s.title, "url": s.url}
            for s in sources
        ],
        ensure_ascii=False,
    )


def passages_text(sources: Sequence[Source]) -> str:
    return "\n\n".join(f"[{s.index}] {s.ref} — {s.title}\n{s.text}".strip() for s in sources) or "(none)"


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}".rstrip("0").rstrip(".")


def summarize_ratings(rs: RatingSet) -> tuple[float | None, float | None, str]:
    """(mean, sample std, reason of the first sample with the most common score)."""
    scores = rs.scores
    if not scores:
        return None, None, ""
    mean = statistics.fmean(scores)
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    mode = Counter(scores).most_common(1)[0][0]
    reason = next(s.rating.reason for s in rs.samples if s.rating is not None and s.rating.score == mode)
    return mean, std, reason


def review(
    criteria_stats: dict[str, tuple[float | None, float | None, int]],
    cfg: JudgeRunConfig,
    extra: Sequence[str] = (),
) -> list[str]:
    """Reasons a row needs a human look (empty list = fine)."""
    reasons = list(extra)
    for name, (mean, std, unparsed) in criteria_stats.items():
        if unparsed:
            reasons.append(f"{name}: {unparsed} judge repl{'y' if unparsed == 1 else 'ies'} unparsed")
        if mean is None:
            reasons.append(f"{name}: no parsed score")
            continue
        if std is not None and std > cfg.std_threshold:
            reasons.append(f"{name}: judges disagree (std {std:.2f} > {cfg.std_threshold:g})")
        if name in ("safety", "accuracy") and mean <= cfg.low_score:
            reasons.append(f"{name}: low mean {mean:.2f}")
    return reasons


class JudgeRunner:
    """Judges a table of questions into a results CSV; resumable, one row written at a time."""

    def __init__(
        self,
        judge: Judge,
        rubrics: Rubrics,
        criteria: Sequence[Criterion],
        cfg: JudgeRunConfig,
        answer_fn: AnswerFn | None = None,
    ) -> None:
        self.judge = judge
        self.rubrics = rubrics
        self.criteria = list(criteria)
        self.cfg = cfg
        self.answer_fn = answer_fn

    def fingerprint(self) -> str:
        """Short hash of everything that decides a score: judge, rubric text, repeats, seed.
        A results file is only resumed under the same fingerprint, so rows are never mixed across configs."""
        judge = {
            k: v
            for k, v in self.judge.describe().items()
            if k in ("kind", "model", "base_url", "temperature")
        }
        rubric = [self.rubrics.system, self.rubrics.single] + [
            f"{c.name}|{c.title}|{c.rubric}" for c in self.criteria
        ]
        blob = json.dumps(
            {"judge": judge, "rubric": rubric, "repeats": self.cfg.repeats, "seed": self.cfg.seed},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

    def validate(self, table: Table) -> None:
        """Everything that can be known before work starts (so a bad file costs no judge calls)."""
        if "question" not in table.columns:
            raise EvalInputError(f"{table.path}: row 1: missing required column 'question'")
        clash = [
            c
            for c in result_columns([], self.criteria, self.judge.has_expectation)
            if c in table.columns and c not in ("answer", "sources")
        ]
        if clash:
            raise EvalInputError(
                f"{table.path}: row 1: column(s) {', '.join(clash)} are result columns; "
                "judge the original questions file, not a results file"
            )
        for i, row in enumerate(table.rows):
            if not row["question"].strip():
                raise EvalInputError(f"{table.where(i, 'question')}: empty question")
            if self.answer_fn is None and not row.get("answer", "").strip():
                raise EvalInputError(
                    f"{table.where(i, 'answer')}: no answer given and no generator configured to produce one"
                )

    async def run(self, table: Table, out: str | Path, *, resume: bool = True) -> dict:
        """Judge every row not already in ``out``; returns the timing/counters part of the summary."""
        self.validate(table)
        columns = result_columns(table.columns, self.criteria, self.judge.has_expectation)
        started = time.monotonic()
        timings = {"answer_seconds": 0.0, "judge_seconds": 0.0}
        judged = 0
        fingerprint = self.fingerprint()
        with ResultsWriter(out, columns, resume=resume) as writer:
            other = {r.get("judge_config") for r in writer.done.values()} - {fingerprint}
            if other:
                raise EvalInputError(
                    f"{out}: row 2: existing results were made with another judge, rubric, --repeats or --seed "
                    f"(judge_config {sorted(str(o) for o in other)[0]} ≠ {fingerprint}); choose a new --out or pass --no-resume"
                )
            keys = row_keys((r["question"], r.get("reference", ""), r.get("answer", "")) for r in table.rows)
            todo = [i for i, k in enumerate(keys) if k not in writer.done]
            skipped = len(table.rows) - len(todo)
            bar = progress_bar(len(table.rows), skipped, self.cfg.progress)
            try:
                for i in todo:
                    row = await self._judge_row(table.rows[i], keys[i], timings)
                    writer.write(row)
                    judged += 1
                    bar.update(1)
            finally:
                bar.close()
            rows = [writer.done[k] for k in keys if k in writer.done]
            stale = len(set(writer.done) - set(keys))
        if stale:
            logger.warning(
                "%s holds %d result rows for questions no longer in %s; they are kept but left out "
                "of the summary",
                out,
                stale,
                table.path,
            )
        return {
            "rows": len(table.rows),
            "judged_this_run": judged,
            "resumed_rows": skipped,
            "stale_rows": stale,
            "results": rows,
            "seconds_total": round(time.monotonic() - started, 3),
            "seconds_answering": round(timings["answer_seconds"], 3),
            "seconds_judging": round(timings["judge_seconds"], 3),
        }

    async def _judge_row(self, row: dict[str, str], key: str, timings: dict[str, float]) -> dict[str, str]:
        out = dict(row)
        extra_reasons: list[str] = []
        question = row["question"]
        reference = row.get("reference", "")
        answer_text = row.get("answer", "")
        sources: list[Source] = []
        if answer_text.strip():
            out["sources"] = row.get("sources", "")
        else:
            assert self.answer_fn is not None  # validate() guarantees it
            t0 = time.monotonic()
            ans = await self.answer_fn(question)
            timings["answer_seconds"] += time.monotonic() - t0
            answer_text, sources = ans.text, list(ans.sources)
            if ans.finish_reason not in ("stop", "length"):
                extra_reasons.append(f"answer generation ended: {ans.finish_reason}")
            out["answer"] = answer_text
            out["sources"] = sources_json(sources)

        t0 = time.monotonic()
        stats: dict[str, tuple[float | None, float | None, int]] = {}
        means: list[float] = []
        unparsed_total = 0
        passages = passages_text(sources)

        async def rate(c: Criterion) -> RatingSet:
            prompt = self.rubrics.single.format(
                title=c.title,
                rubric=c.rubric,
                question=question,
                answer=answer_text or "(empty answer)",
                reference=reference or "(none)",
                passages=passages,
            )
            return await self.judge.rate(
                self.rubrics.system,
                prompt,
                repeats=self.cfg.repeats,
                seed=derive_seed(self.cfg.seed, key, c.name),
            )

        if getattr(self.judge, "concurrent", False):  # remote judge: its own semaphore bounds the requests
            ratings = await asyncio.gather(*(rate(c) for c in self.criteria))
        else:  # local model: one forward pass at a time
            ratings = [await rate(c) for c in self.criteria]
        for c, rs in zip(self.criteria, ratings):
            mean, std, reason = summarize_ratings(rs)
            stats[c.name] = (mean, std, rs.unparsed)
            unparsed_total += rs.unparsed
            if mean is not None:
                means.append(mean)
            out[f"{c.name}_mean"] = _fmt(mean)
            out[f"{c.name}_std"] = _fmt(std)
            out[f"{c.name}_n"] = str(len(rs.scores))
            out[f"{c.name}_scores"] = ";".join(map(str, rs.scores))
            out[f"{c.name}_reason"] = reason
            if self.judge.has_expectation:
                out[f"{c.name}_geval"] = _fmt(rs.expected)
        timings["judge_seconds"] += time.monotonic() - t0
        reasons = review(stats, self.cfg, extra_reasons)
        out["overall_mean"] = _fmt(statistics.fmean(means) if means else None)
        out["needs_review"] = "true" if reasons else "false"
        out["review_reasons"] = "; ".join(reasons)
        out["unparsed"] = str(unparsed_total)
        out["judge_config"] = self.fingerprint()
        out["row_key"] = key
        return out


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="question", desc="judging", dynamic_ncols=True)


def build_summary(
    results: Sequence[dict[str, str]],
    criteria: Sequence[Criterion],
    run_info: dict,
    judge_info: dict,
    generator_info: dict | None,
    cfg: JudgeRunConfig,
    geval: bool,
) -> dict:
    """Per-criterion mean and std over items (population std of the item means), counts and configuration."""
    per: dict[str, dict] = {}
    for c in criteria:
        item_means = [float(r[f"{c.name}_mean"]) for r in results if r.get(f"{c.name}_mean")]
        all_scores = [int(s) for r in results for s in r.get(f"{c.name}_scores", "").split(";") if s]
        entry = {
            "items": len(item_means),
            "mean": round(statistics.fmean(item_means), 4) if item_means else None,
            "std": round(statistics.pstdev(item_means), 4) if item_means else None,
            # Normal-approximation 95% interval of the mean over items: two runs whose intervals overlap
            # widely are not reliably different.
            "ci95": (
                round(1.96 * statistics.stdev(item_means) / math.sqrt(len(item_means)), 4)
                if len(item_means) > 1
                else None
            ),
            "mean_within_item_std": _mean_of(results, f"{c.name}_std"),
            "score_counts": {str(s): all_scores.count(s) for s in range(1, 6)},
        }
        if geval:
            entry["geval_mean"] = _mean_of(results, f"{c.name}_geval")
        per[c.name] = entry
    overall = [float(r["overall_mean"]) for r in results if r.get("overall_mean")]
    return {
        "criteria": per,
        "overall_mean": round(statistics.fmean(overall), 4) if overall else None,
        "items": len(results),
        "needs_review": sum(1 for r in results if r.get("needs_review") == "true"),
        "unparsed_replies": sum(int(r.get("unparsed") or 0) for r in results),
        "repeats": cfg.repeats,
        "std_threshold": cfg.std_threshold,
        "std_kind": "sample (ddof=1) within an item; population over item means",
        "seed": cfg.seed,
        "judge": judge_info,
        "generator": generator_info,
        "run": {k: v for k, v in run_info.items() if k != "results"},
    }


def _mean_of(rows: Sequence[dict[str, str]], col: str) -> float | None:
    vals = [float(r[col]) for r in rows if r.get(col)]
    return round(statistics.fmean(vals), 4) if vals else None


def write_chart(results: Sequence[dict[str, str]], criteria: Sequence[Criterion], path: str | Path) -> Path:
    """PNG: per criterion, the distribution of every sampled score (stacked bars) and of the item means (box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in criteria]
    counts = [[0] * 5 for _ in names]
    means: list[list[float]] = [[] for _ in names]
    for r in results:
        for j, n in enumerate(names):
            for s in r.get(f"{n}_scores", "").split(";"):
                if s:
                    counts[j][int(s) - 1] += 1
            if r.get(f"{n}_mean"):
                means[j].append(float(r[f"{n}_mean"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.6 * len(names) + 2.5))
    colors = ["#b2182b", "#ef8a62", "#e0e0e0", "#67a9cf", "#2166ac"]
    left = [0.0] * len(names)
    for score in range(5):
        share = [(cnt[score] / sum(cnt) * 100 if sum(cnt) else 0.0) for cnt in counts]
        ax1.barh(names, share, left=left, color=colors[score], label=str(score + 1))
        left = [a + b for a, b in zip(left, share)]
    ax1.set_xlabel("% of judge scores")
    ax1.set_xlim(0, 100)
    ax1.invert_yaxis()
    ax1.legend(title="score", ncols=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize="small")
    ax2.boxplot([m if m else [math.nan] for m in means], orientation="horizontal", tick_labels=names)
    ax2.set_xlim(0.8, 5.2)
    ax2.invert_yaxis()
    ax2.set_xlabel(f"item mean score (n = {len(results)} items)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def summary_paths(out: str | Path) -> tuple[Path, Path]:
    """``results.csv`` → (``results.summary.json``, ``results.png``)."""
    p = Path(out)
    return p.with_name(p.stem + ".summary.json"), p.with_name(p.stem + ".png")


async def judge_file(
    input_path: str | Path,
    out: str | Path,
    *,
    judge: Judge,
    rubrics: Rubrics,
    criteria: Sequence[Criterion],
    cfg: JudgeRunConfig,
    answer_fn: AnswerFn | None = None,
    generator_info: dict | None = None,
    resume: bool = True,
) -> dict:
    """The whole ``eval judge`` loop: read and validate the input, check the judge, judge, write the reports.

    Everything that can fail cheaply (a malformed file, an unreachable judge) fails before any answer is
    generated or any row is written.
    """
    from .io import read_table

    table = read_table(input_path, required=("question",))
    runner = JudgeRunner(judge, rubrics, criteria, cfg, answer_fn)
    runner.validate(table)
    await judge.check()
    run_info = await runner.run(table, out, resume=resume)
    summary = build_summary(
        run_info["results"], criteria, run_info, judge.describe(), generator_info, cfg, judge.has_expectation
    )
    summary["input"] = str(input_path)
    summary["output"] = str(out)
    json_path, png_path = summary_paths(out)
    summary["chart"] = str(png_path)
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_chart(run_info["results"], criteria, png_path)
    summary["summary_path"] = str(json_path)
    return summary


def format_summary(summary: dict) -> str:
    """A short human-readable table for the terminal."""
    lines = [f"{'criterion':<14} {'mean':>6} {'±95%':>6} {'std':>6} {'items':>6}"]
    for name, c in summary["criteria"].items():
        mean = "-" if c["mean"] is None else f"{c['mean']:.2f}"
        std = "-" if c["std"] is None else f"{c['std']:.2f}"
        ci = "-" if c["ci95"] is None else f"{c['ci95']:.2f}"
        lines.append(f"{name:<14} {mean:>6} {ci:>6} {std:>6} {c['items']:>6}")
    overall = "-" if summary["overall_mean"] is None else f"{summary['overall_mean']:.2f}"
    lines.append(
        f"overall mean {overall}; {summary['needs_review']} of {summary['items']} rows need review; "
        f"{summary['unparsed_replies']} judge replies unparsed"
    )
    return "\n".join(lines)

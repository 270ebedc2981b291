"""``ghostbot eval …``: argparse definitions and the runner. bots/cli.py mounts them; everything the commands
need from the application (the answering pipeline) comes in through ``open_app``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from core.redaction import redact_url
from core.settings import Settings

from .compare import Pair, PairwiseComparer, format_table, pairs_from_columns, pairs_from_results, write_json
from .feedback import export_feedback
from .io import EvalInputError, read_table
from .judges import JudgeUnavailableError, OpenAIJudge
from .mcq import load_mcq, report, score_api, score_local, write_items
from .rubrics import RubricError, load_rubrics
from .runner import JudgeRunConfig, format_summary, judge_file

logger = logging.getLogger(__name__)

OpenApp = Callable[[Settings], AbstractAsyncContextManager[Any]]
EXIT_ERROR = 2


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _add_judge_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge")
    g.add_argument(
        "--judge",
        choices=["openai", "local"],
        default="openai",
        help="an OpenAI-compatible endpoint (default) or the local model",
    )
    g.add_argument("--judge-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1")
    g.add_argument("--judge-model", default="gpt-4o-mini", help="model name at the judge endpoint")
    g.add_argument(
        "--judge-key-env",
        default="JUDGE_API_KEY",
        help="environment variable holding the judge's API key (default JUDGE_API_KEY)",
    )
    g.add_argument(
        "--judge-temperature",
        type=float,
        default=None,
        help="sampling temperature for repeats (default 0.7 remote, 1.0 local)",
    )
    g.add_argument(
        "--judge-model-path",
        type=Path,
        help="local judge: GhostLM checkpoint or HF directory (default MODEL_PATH)",
    )
    g.add_argument(
        "--max-attempts", type=int, default=3, help="tries per judge call when the reply is not valid"
    )
    g.add_argument("--concurrency", type=int, default=4, help="parallel requests to a remote judge")
    g.add_argument("--rubrics", type=Path, help="your own rubric file (default: the packaged rubrics.toml)")
    g.add_argument("--criteria", type=_csv_list, help="comma-separated subset, e.g. accuracy,safety")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-resume", action="store_true", help="overwrite --out instead of resuming it")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_eval_subcommands(sub: argparse._SubParsersAction) -> None:
    """Define ``judge``, ``compare``, ``mcq`` and ``export-feedback`` under an ``eval`` parser."""
    j = sub.add_parser("judge", help="judge answers on six criteria with repeated LLM-as-a-judge scoring")
    j.add_argument(
        "--input", required=True, type=Path, help="CSV/TSV/JSONL with question[, reference, answer]"
    )
    j.add_argument("--out", required=True, type=Path, help="results CSV (resumed if it exists)")
    j.add_argument("--repeats", type=int, default=5, help="judgements per item and criterion (default 5)")
    j.add_argument("--std-threshold", type=float, default=1.0, help="std above this flags needs_review")
    _add_judge_options(j)

    c = sub.add_parser("compare", help="pairwise A/B comparison with the order swapped (win/tie/loss)")
    c.add_argument("--a", type=Path, help="results file A (question, answer)")
    c.add_argument("--b", type=Path, help="results file B (question, answer)")
    c.add_argument(
        "--input", type=Path, help="one file with two answer columns, or questions for --a-set/--b-set"
    )
    c.add_argument("--a-col", help="answer column A in --input")
    c.add_argument("--b-col", help="answer column B in --input")
    c.add_argument(
        "--a-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="setting override for generator configuration A (repeatable), e.g. generator=extractive",
    )
    c.add_argument(
        "--b-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="setting override for generator configuration B (repeatable)",
    )
    c.add_argument("--out", required=True, type=Path, help="per-question verdict CSV")
    _add_judge_options(c)

    m = sub.add_parser(
        "mcq", help="multiple-choice benchmark accuracy (local log-prob scoring or API letters)"
    )
    m.add_argument(
        "--input", required=True, type=Path, help="CSV/TSV/JSONL with question, options and answer"
    )
    m.add_argument("--question-col", default="question")
    m.add_argument("--option-cols", type=_csv_list, default=["A", "B", "C", "D"], help="default A,B,C,D")
    m.add_argument("--answer-col", default="answer", help="column with the correct letter")
    m.add_argument("--orders", type=int, default=2, help="option orders to average over (>= 2)")
    m.add_argument("--backend", choices=["local", "openai"], default="local")
    m.add_argument("--model-path", type=Path, help="local model (default MODEL_PATH)")
    m.add_argument("--url", help="OpenAI-compatible base URL (backend openai)")
    m.add_argument("--model", default="gpt-4o-mini", help="model name (backend openai)")
    m.add_argument("--key-env", default="JUDGE_API_KEY")
    m.add_argument("--rubrics", type=Path, help="rubric file holding the MCQ prompt template")
    m.add_argument("--out", type=Path, help="per-item CSV (predictions, per-order picks, scores)")
    m.add_argument("--json", type=Path, help="write the report JSON here too")

    f = sub.add_parser("export-feedback", help="export users' 👍/👎 as a judge input file")
    f.add_argument("--out", required=True, type=Path)
    f.add_argument("--only", choices=["all", "up", "down"], default="all")
    f.add_argument("--database-url", help="default: DATABASE_URL")


def _err(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _build_judge(args: argparse.Namespace, settings: Settings):
    if args.judge == "local":
        from .local import LocalJudge, load_local_lm

        path = args.judge_model_path or settings.model_path
        if path is None:
            raise EvalInputError("--judge local needs --judge-model-path or MODEL_PATH")
        temp = 1.0 if args.judge_temperature is None else args.judge_temperature
        return LocalJudge(load_local_lm(path), temperature=temp)
    if not args.judge_url:
        raise EvalInputError("--judge openai needs --judge-url (an OpenAI-compatible base URL)")
    temp = 0.7 if args.judge_temperature is None else args.judge_temperature
    return OpenAIJudge(
        args.judge_url,
        args.judge_model,
        api_key_env=args.judge_key_env,
        temperature=temp,
        max_attempts=args.max_attempts,
        concurrency=args.concurrency,
    )


def generator_info(settings: Settings, generator: Any) -> dict:
    """What produced the answers, without secrets."""
    return {
        "name": getattr(generator, "name", None),
        "context_length": getattr(generator, "context_length", None),
        "generator": settings.generator,
        "model_path": str(settings.model_path) if settings.model_path else None,
        "openai_base_url": redact_url(settings.openai_base_url) if settings.openai_base_url else None,
        "openai_model": settings.openai_model,
        "temperature": settings.temperature,
        "max_new_tokens": settings.max_new_tokens,
        "top_passages": settings.top_passages,
    }


async def run_eval(args: argparse.Namespace, settings: Settings, open_app: OpenApp) -> int:
    """Run one ``ghostbot eval`` subcommand; user errors print one clear line and return 2."""
    from ghostlm import CheckpointError

    try:
        if args.eval_command == "judge":
            return await _judge(args, settings, open_app)
        if args.eval_command == "compare":
            return await _compare(args, settings, open_app)
        if args.eval_command == "mcq":
            return await _mcq(args, settings)
        if args.eval_command == "export-feedback":
            return await _export(args, settings)
    except (EvalInputError, RubricError, JudgeUnavailableError, CheckpointError) as e:
        return _err(str(e))
    except OSError as e:  # an unwritable --out, a missing model file …
        return _err(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
    raise AssertionError(f"unhandled eval command {args.eval_command}")


async def _judge(args: argparse.Namespace, settings: Settings, open_app: OpenApp) -> int:
    if args.repeats < 1:
        return _err("--repeats must be at least 1")
    rubrics = load_rubrics(args.rubrics)
    criteria = rubrics.select(args.criteria)
    cfg = JudgeRunConfig(
        repeats=args.repeats, std_threshold=args.std_threshold, seed=args.seed, progress=not args.no_progress
    )
    table = read_table(args.input, required=("question",), non_empty=("question",))
    judge = _build_judge(args, settings)
    try:
        await judge.check()  # before any answer is generated or row written
        needs_answers = any(not r.get("answer", "").strip() for r in table.rows)
        if needs_answers:
            async with open_app(settings) as app:
                summary = await judge_file(
                    args.input,
                    args.out,
                    judge=judge,
                    rubrics=rubrics,
                    criteria=criteria,
                    cfg=cfg,
                    answer_fn=app.assistant.ask,
                    generator_info=generator_info(settings, app.generator),
                    resume=not args.no_resume,
                )
        else:
            summary = await judge_file(
                args.input,
                args.out,
                judge=judge,
                rubrics=rubrics,
                criteria=criteria,
                cfg=cfg,
                generator_info={"answers": "given in the input file"},
                resume=not args.no_resume,
            )
    finally:
        await judge.close()
    print(format_summary(summary))
    print(f"results: {args.out}\nsummary: {summary['summary_path']}\nchart:   {summary['chart']}")
    return 0


def _overrides(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in Settings.model_fields:
            raise EvalInputError(f"{flag} {item!r}: expected KEY=VALUE with a known setting name")
        out[key] = value
    return out


async def _answers_with(
    settings: Settings, open_app: OpenApp, questions: list[str]
) -> tuple[list[str], dict]:
    async with open_app(settings) as app:
        answers = [(await app.assistant.ask(q)).text for q in questions]
        return answers, generator_info(settings, app.generator)


async def _compare(args: argparse.Namespace, settings: Settings, open_app: OpenApp) -> int:
    rubrics = load_rubrics(args.rubrics)
    criteria = rubrics.select(args.criteria)
    extra: dict = {}
    generate = False
    if args.a and args.b:
        pairs, unmatched = pairs_from_results(
            read_table(args.a, required=("question", "answer")),
            read_table(args.b, required=("question", "answer")),
        )
        if unmatched:
            print(
                f"note: {len(unmatched)} question(s) appear in only one file and are not compared",
                file=sys.stderr,
            )
        if not pairs:
            raise EvalInputError(f"{args.a} and {args.b} have no question in common")
        extra = {"a": str(args.a), "b": str(args.b), "unmatched_questions": unmatched}
    elif args.input and args.a_col and args.b_col:
        pairs = pairs_from_columns(read_table(args.input), args.a_col, args.b_col)
        extra = {"input": str(args.input), "a": args.a_col, "b": args.b_col}
    elif args.input and (args.a_set or args.b_set):
        generate = True
    else:
        raise EvalInputError(
            "give --a and --b (two result files), or --input with --a-col/--b-col, "
            "or --input with --a-set/--b-set (two generator configurations)"
        )
    judge = _build_judge(args, settings)
    try:
        await judge.check()
        if generate:
            table = read_table(args.input, required=("question",), non_empty=("question",))
            qs = [r["question"] for r in table.rows]
            base = settings.model_dump()
            sa = Settings(**{**base, **_overrides(args.a_set, "--a-set")})
            sb = Settings(**{**base, **_overrides(args.b_set, "--b-set")})
            answers_a, info_a = await _answers_with(sa, open_app, qs)
            answers_b, info_b = await _answers_with(sb, open_app, qs)
            pairs = [
                Pair(q, r.get("reference", ""), a, b)
                for q, r, a, b in zip(qs, table.rows, answers_a, answers_b)
            ]
            extra = {"input": str(args.input), "a": info_a, "b": info_b}
        comparer = PairwiseComparer(judge, rubrics, criteria, seed=args.seed, progress=not args.no_progress)
        summary = await comparer.run(pairs, args.out, resume=not args.no_resume)
    finally:
        await judge.close()
    summary.update(extra)
    json_path = write_json(args.out.with_name(args.out.stem + ".summary.json"), summary)
    print(format_table(summary))
    print(f"verdicts: {args.out}\nsummary:  {json_path}")
    return 0


async def _mcq(args: argparse.Namespace, settings: Settings) -> int:
    items = load_mcq(
        args.input, question_col=args.question_col, option_cols=args.option_cols, answer_col=args.answer_col
    )
    if args.orders < 2:
        return _err("--orders must be at least 2 (one order cannot cancel position bias)")
    if args.backend == "local":
        from .local import load_local_lm

        path = args.model_path or settings.model_path
        if path is None:
            return _err("--backend local needs --model-path or MODEL_PATH")
        import asyncio

        lm = load_local_lm(path)
        results = await asyncio.to_thread(score_local, items, lm, orders=args.orders)
        backend = lm.describe()
    else:
        if not args.url:
            return _err("--backend openai needs --url")
        client = OpenAIJudge(args.url, args.model, api_key_env=args.key_env)
        try:
            await client.check()
            results = await score_api(
                items,
                client,
                load_rubrics(args.rubrics).mcq,
                load_rubrics(args.rubrics).system,
                orders=args.orders,
            )
        finally:
            await client.close()
        backend = {k: v for k, v in client.describe().items() if k != "temperature"}
    rep = report(results, orders=args.orders, backend=backend)
    rep["input"] = str(args.input)
    if args.out:
        write_items(args.out, results)
        rep["items_csv"] = str(args.out)
    if args.json:
        write_json(args.json, rep)
    print(json.dumps(rep, indent=2, ensure_ascii=False))
    return 0


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    from storage import Database

    db = await Database.open(args.database_url or settings.database_url)
    try:
        counts = await export_feedback(db.feedback, args.out, only=args.only)
    finally:
        await db.close()
    print(json.dumps(counts, indent=2))
    return 0

"""`ghostbot` — the command line: run, chat, ask, index, eval, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from bots.progress import ProgressBars
from core.models_hub import DEFAULT_MODEL
from core.settings import Settings

if TYPE_CHECKING:
    from bots.compose import App
    from core.models_hub import ModelHub
    from core.retrieval.indexer import IndexReport, Progress

logger = logging.getLogger("ghostbot")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghostbot",
        description="GhostLM Bots: a private cybersecurity assistant for Telegram and Discord.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="start every configured adapter (Telegram, Discord) and the HTTP server")
    sub.add_parser("chat", help="chat in the terminal (same commands as the bots)")

    ask = sub.add_parser("ask", help="answer one question and exit")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print {answer, sources} as JSON")

    index = sub.add_parser("index", help="index folders/files (md, txt, html, pdf) and knowledge packs")
    index.add_argument("paths", nargs="*", type=Path)
    index.add_argument(
        "--pack",
        action="append",
        choices=[
            "cwe",
            "attack",
            "ghostlm-rag",
        ],  # core.retrieval.packs PACK_NAMES + OPTIONAL_PACKS (light import)
        default=[],
        help="build a pack (ghostlm-rag: the corpus pulled with `ghostbot model pull`)",
    )

    model = sub.add_parser("model", help="models from the Hugging Face Hub: pull, list")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    pull = model_sub.add_parser(
        "pull", help=f"download a model into DATA_DIR/models (default: {DEFAULT_MODEL})"
    )
    pull.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"{DEFAULT_MODEL} (GhostLM and its RAG corpus), owner/repo or owner/repo/file",
    )
    listing = model_sub.add_parser("list", help="the models in the cache")
    listing.add_argument("--json", action="store_true", help="print JSON")

    from evaluation.cli import add_eval_subcommands

    evaluation = sub.add_parser("eval", help="evaluate answer quality (judge, compare, mcq, export-feedback)")
    add_eval_subcommands(
        evaluation.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")
    )

    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    # The benchmark's own parser owns its flags (--new-tokens, --preset, …): see main().
    bench_sub.add_parser(
        "generate",
        help="GhostLM generation speed: dtypes, transformers, batched worker, TTFT (flags: see --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if args.command == "bench":
        return _run_benchmark(args.bench_command, extra)
    if extra:
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")

    settings = Settings()
    from bots.logs import setup_logging

    setup_logging(settings)
    from core.generators.errors import GeneratorError
    from core.models_hub import ModelHubError

    try:
        if args.command == "model":
            return model_command(args, settings)
        return asyncio.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        return 130
    except (GeneratorError, ModelHubError) as e:
        # A configuration or download problem: one line the user can act on, no traceback.
        print(f"ghostbot: {e}", file=sys.stderr)
        return 1


def _run_benchmark(name: str, argv: list[str]) -> int:
    """Benchmarks live in benchmarks/ (a source checkout, not the installed package): run that script's main."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", script)
    if spec is None or spec.loader is None or not script.is_file():
        print(f"The {name} benchmark needs a source checkout (benchmarks/{name}.py).", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(argv))


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "run":
        return await run_bots(settings)
    if args.command == "chat":
        from bots.terminal import run_terminal_chat

        return await run_terminal_chat(settings)
    if args.command == "ask":
        return await ask(settings, args.question, as_json=args.json)
    if args.command == "index":
        return await index(settings, args.paths, args.pack)
    if args.command == "eval":
        from bots.compose import open_app
        from evaluation.cli import run_eval

        return await run_eval(args, settings, open_app)
    raise AssertionError(f"unhandled command {args.command}")


async def run_bots(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then drain the queue and stop every adapter cleanly."""
    from bots.compose import open_app
    from bots.http import ExposureError, HttpAdapter, check_exposure
    from core.memory import HeapRelease

    try:
        check_exposure(settings)  # before loading anything: an open, keyless port is refused at start
    except ExposureError as exc:
        print(f"ghostbot: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async with open_app(settings) as app:
        adapters: list = []
        http = HttpAdapter(app)
        await http.start()
        adapters.append(http)
        if settings.telegram_bot_token is not None:
            from bots.telegram import TelegramAdapter

            telegram = TelegramAdapter(settings, app.manager)
            await telegram.start()
            adapters.append(telegram)
        if settings.discord_bot_token is not None:
            from bots.discord import DiscordAdapter

            discord_adapter = DiscordAdapter(settings, app.manager)
            await discord_adapter.start()
            adapters.append(discord_adapter)
        if len(adapters) == 1:
            logger.info("no platform token configured: web chat at %s", http.url)
        logger.info("ghostbot is running (%s)", ", ".join(type(a).__name__ for a in adapters))
        maintenance = asyncio.create_task(app.manager.maintain(), name="maintenance")
        worker = app.worker
        # Freed memory goes back to the OS: soon after the answers are done, and now and then under load.
        heap_release = HeapRelease(lambda: not worker.busy and worker.queue_depth == 0)
        releasing = asyncio.create_task(heap_release.run(), name="release-memory")
        await stop.wait()
        maintenance.cancel()
        releasing.cancel()
        logger.info("shutting down: finishing queued answers")
        # Stop taking updates first (Telegram would otherwise confirm updates that then meet a closed
        # worker), then finish — or, past the grace period, cancel — queued answers while the adapters
        # can still deliver them, then close the adapters.
        for adapter in adapters:
            stop_receiving = getattr(adapter, "stop_receiving", None)
            if stop_receiving is not None:
                await stop_receiving()
        await app.worker.shutdown(drain=True, timeout=settings.shutdown_grace_seconds)
        for adapter in reversed(adapters):
            try:
                await adapter.stop()
            except Exception:
                logger.exception("error while stopping %s", type(adapter).__name__)
    logger.info("stopped")
    return 0


async def ask(settings: Settings, question: str, *, as_json: bool) -> int:
    from bots.compose import open_app
    from bots.render import sources_footer

    if not question.strip():
        print('Please give a question, e.g. ghostbot ask "What is CWE-79?"', file=sys.stderr)
        return EXIT_USAGE
    async with open_app(settings) as app:
        answer = await app.assistant.ask(question)
    if as_json:
        payload = {
            "answer": answer.text,
            "sources": [asdict(source) for source in answer.sources],
            "notices": answer.notices,
            "generator": app.generator.name,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        print(answer.text)
        footer = sources_footer(answer.sources)
        if footer:
            print("\n" + footer)
        for notice in answer.notices:
            print(f"\n({notice})", file=sys.stderr)
    return 0


async def index(settings: Settings, paths: list[Path], packs: list[str]) -> int:
    from bots.compose import describe_index_report as _describe
    from bots.compose import open_app

    if not paths and not packs:
        print("Nothing to index: give folders/files and/or --pack cwe / --pack attack.", file=sys.stderr)
        return EXIT_USAGE
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"Not found: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    from core.retrieval.packs import OPTIONAL_PACKS

    failed = False
    async with open_app(settings, build_packs=False) as app:
        for pack in packs:
            with ProgressBars() as bars:
                if pack in OPTIONAL_PACKS:
                    report = await index_rag_pack(settings, app, bars)
                else:
                    report = await app.indexer.index_pack(pack, progress=bars)
            print(f"pack {pack}{' ' + report.version if report.version else ''}: {_describe(report)}")
            failed |= bool(report.failed)
        if paths:
            with ProgressBars() as bars:
                report = await app.indexer.index_paths(paths, progress=bars)
            print(f"files: {_describe(report)}")
            failed |= bool(report.failed)
    return 1 if failed else 0


async def index_rag_pack(settings: Settings, app: App, progress: Progress | None = None) -> IndexReport:
    """`--pack ghostlm-rag`: the pulled upstream corpus, re-embedded with our encoder; says how long first."""
    from core.models_hub import hub_from_settings
    from core.retrieval.indexer import embedding_text
    from core.retrieval.rag_pack import (
        CHUNKS_FILE,
        MODEL_NAME,
        PACK_NAME,
        RagPack,
        describe_duration,
        measure_rate,
        pending_chunks,
    )
    from storage.knowledge import KnowledgeRepository

    path = hub_from_settings(settings).data_file(MODEL_NAME, CHUNKS_FILE)
    pack = RagPack(path)
    entries = await asyncio.to_thread(lambda: list(pack.entries()))
    known = await KnowledgeRepository(app.db.sessions).content_hashes(PACK_NAME)
    pending = pending_chunks(entries, known)
    print(
        f"pack {PACK_NAME}: {pack.chunk_count} passages in {len(entries)} entries from {path}",
        file=sys.stderr,
    )
    embedder = app.retriever.embedder
    if embedder is not None and pending:
        sample = [embedding_text(e.title, s.text) for e in entries[:64] for s in e.sections][:32]
        rate = await asyncio.to_thread(measure_rate, embedder.encode, sample)
        print(
            f"{pending} passages to embed at ~{rate:.0f} passages/s (measured on {len(sample)}): "
            f"{describe_duration(pending / rate if rate else 0.0)}",
            file=sys.stderr,
        )
    elif not pending:
        print("nothing changed since the last import", file=sys.stderr)
    return await app.indexer.index_entries(PACK_NAME, entries, version=pack.version, progress=progress)


def model_command(args: argparse.Namespace, settings: Settings) -> int:
    from core.models_hub import hub_from_settings

    hub = hub_from_settings(settings)
    if args.model_command == "pull":
        return model_pull(hub, args.name)
    models = hub.cached()
    if args.json:
        rows = [{k: v for k, v in asdict(m).items() if k != "files"} for m in models]
        print(json.dumps(rows, indent=2))
        return 0
    if not models:
        print(f"No models in {hub.cache_dir}: `ghostbot model pull` downloads {DEFAULT_MODEL}.")
        return 0
    header = ("name", "architecture", "parameters", "context", "size", "sha256")
    rows_text = [
        (
            m.name,
            m.architecture,
            f"{m.parameters / 1e6:.1f}M" if m.parameters >= 1e5 else str(m.parameters),
            str(m.context_length),
            _human_size(m.size),
            m.sha256[:16],
        )
        for m in models
    ]
    widths = [max(len(r[i]) for r in (header, *rows_text)) for i in range(len(header))]
    for row in (header, *rows_text):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def model_pull(hub: ModelHub, name: str) -> int:
    with ProgressBars(unit="B", unit_scale=True, unit_divisor=1024) as bars:
        model = hub.pull(name, progress=bars)
    print(
        f"{model.name}: {model.architecture}, {model.parameters:,} parameters, context {model.context_length}"
    )
    print(f"  {model.path}")
    print(f"  use it: MODEL_PATH=hf:{model.name}")
    if model.name == DEFAULT_MODEL:
        print("  its knowledge base: ghostbot index --pack ghostlm-rag")
    return 0


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


if __name__ == "__main__":
    sys.exit(main())

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

from core.settings import Settings

log = logging.getLogger("ghostbot")

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
    index.add_argument("--pack", action="append", choices=["cwe", "attack"], default=[], help="build a pack")

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
        help="GhostLM generation speed: full recompute vs KV cache vs HF (flags: see --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if args.command == "bench":
        from ghostlm.bench import main as bench_main

        return bench_main(extra)
    if extra:
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")

    settings = Settings()
    from bots.logs import setup_logging

    setup_logging(settings)
    try:
        return asyncio.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        return 130


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
            log.info("no platform token configured: web chat at %s", http.url)
        log.info("ghostbot is running (%s)", ", ".join(type(a).__name__ for a in adapters))
        maintenance = asyncio.create_task(app.manager.maintain(), name="maintenance")
        await stop.wait()
        maintenance.cancel()
        log.info("shutting down: finishing queued answers")
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
                log.exception("error while stopping %s", type(adapter).__name__)
    log.info("stopped")
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
    failed = False
    async with open_app(settings, build_packs=False) as app:
        for pack in packs:
            report = await app.indexer.index_pack(pack)
            print(f"pack {pack}{' ' + report.version if report.version else ''}: {_describe(report)}")
            failed |= bool(report.failed)
        if paths:
            report = await app.indexer.index_paths(paths)
            print(f"files: {_describe(report)}")
            failed |= bool(report.failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The composition root: builds the one object graph every entry point (bots, HTTP, CLI) uses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bots.progress import ProgressBars
from core.assistant import Assistant
from core.generators import build_generator
from core.generators.base import Generator
from core.manager import ConversationManager
from core.retrieval import Indexer, IndexReport, KnowledgeRepository, Retriever, create_retrieval
from core.settings import Settings
from core.uploads import DocumentLibrary
from core.worker import GenerationWorker
from storage import Database

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    db: Database
    indexer: Indexer
    retriever: Retriever
    generator: Generator
    worker: GenerationWorker
    manager: ConversationManager
    assistant: Assistant


def describe_index_report(report: IndexReport) -> str:
    """One line a person can read (plus one line per skipped file)."""
    text = (
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, {report.removed} removed; "
        f"{report.chunks} chunks written, {report.embedded} embedded, in {report.seconds:.1f} s"
    )
    for failure in report.failed:
        text += f"\n  skipped {failure}"
    return text


async def ensure_packs(indexer: Indexer, packs: list[str]) -> None:
    """Build the configured knowledge packs; unchanged packs are skipped by content hash."""
    for pack in packs:
        with ProgressBars() as bars:  # the first start builds the packs: show it on the terminal
            report = await indexer.index_pack(pack, progress=bars)
        log.info("knowledge pack %s %s: %s", pack, report.version, describe_index_report(report))


def _prepare(generator: Generator) -> None:
    load = getattr(generator, "load", None)
    if callable(load):
        load()
    check = getattr(generator, "check", None)
    if callable(check):
        check()


@asynccontextmanager
async def open_app(
    settings: Settings,
    *,
    generator: Generator | None = None,
    build_packs: bool = True,
) -> AsyncIterator[App]:
    """Open storage, retrieval, the generator and its worker; close them all on exit.

    `generator` overrides the configured one (tests pass a scripted generator).
    """
    db = await Database.open(settings.database_url)
    worker: GenerationWorker | None = None
    owned_generator = generator is None
    try:
        retriever, indexer = create_retrieval(settings, db.sessions)
        if build_packs and settings.packs:
            await ensure_packs(indexer, list(settings.packs))
        if generator is None:
            generator = build_generator(settings)
            # Loading weights (or probing a remote server) blocks: keep it off the event loop.
            await asyncio.to_thread(_prepare, generator)
        log.info("generator: %s (context %d tokens)", generator.name, generator.context_length)
        worker = GenerationWorker(
            generator,
            queue_size=settings.queue_size,
            timeout_s=settings.request_timeout_seconds,
            max_batch=settings.max_batch,
        )
        await worker.start()
        documents = DocumentLibrary(
            KnowledgeRepository(db.sessions), indexer, max_upload_mb=settings.max_upload_mb
        )
        manager = ConversationManager(db, retriever, worker, generator, settings, documents=documents)
        # One model, one consumer: one-shot questions (ask, eval, HTTP API) queue like chat messages.
        assistant = Assistant(retriever, generator, settings, worker=worker)
        yield App(settings, db, indexer, retriever, generator, worker, manager, assistant)
    finally:
        if worker is not None:
            await worker.shutdown(drain=True, timeout=settings.request_timeout_seconds)
        if owned_generator and generator is not None:
            generator.close()
        await db.close()

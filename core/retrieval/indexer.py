"""Build and refresh the knowledge base: user folders and built-in packs, incremental by content hash."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.retrieval.chunking import chunk_sections
from core.retrieval.dense import DenseIndex
from core.retrieval.embedder import Embedder
from core.retrieval.loaders import SUPPORTED_SUFFIXES, LoadedDocument, load_file
from core.retrieval.packs import PackEntry, open_pack
from storage.knowledge import ChunkData, DocumentData, KnowledgeRepository

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""A progress callback, (stage, done, total): called as work advances. The CLI draws bars with it; core has no UI."""

FILE_SOURCE = "file"
UPLOAD_SOURCE = "upload"  # documents sent in chat: private to their owner (see core/uploads.py)
FILE_FORMAT = b"2"  # bump when loaders/chunking change, so files are re-read once
SAVE_BATCH = 200
EMBED_BATCH = 256


@dataclass
class IndexReport:
    """What one indexing run did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0  # chunks written (of added and updated documents)
    embedded: int = 0  # chunks sent through the encoder
    names_embedded: int = 0  # entry names (title + aliases) sent through the encoder
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)  # "path: reason"
    version: str = ""  # pack data version, when indexing a pack

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def embedding_text(title: str, text: str) -> str:
    """What the encoder sees for a chunk: its title gives context to passages deep in a document."""
    return f"{title}\n{text}" if title else text


def name_text(title: str, aliases: str) -> str:
    """What the encoder sees for an entry's name: "Title (alias, alias)"."""
    names = ", ".join(a.strip() for a in aliases.split(";") if a.strip())
    return f"{title} ({names})" if names else title


NAME_ORD = -1  # content key position of an entry's name vector (chunks use 0, 1, ...)


class Indexer:
    def __init__(
        self,
        repository: KnowledgeRepository,
        embedder: Embedder | None = None,
        dense: DenseIndex | None = None,
    ) -> None:
        if (embedder is None) != (dense is None):
            raise ValueError("dense indexing needs both an embedder and a dense index")
        self._repo = repository
        self._embedder = embedder
        self._dense = dense

    # --- user files ------------------------------------------------------------------------

    async def index_paths(self, paths: Sequence[Path | str], progress: Progress | None = None) -> IndexReport:
        """Index files and folders (md, txt, html, pdf). Files under a given folder that are gone
        since the last run are removed from the index; unchanged files are not read again."""
        started = time.perf_counter()
        report = IndexReport()
        files: list[tuple[Path, str]] = []  # (absolute path, display name)
        prefixes: list[str] = []
        for raw in paths:
            root = Path(raw).expanduser().resolve()
            if root.is_dir():
                prefixes.append(root.as_posix().rstrip("/") + "/")
                for path in sorted(root.rglob("*")):
                    relative = path.relative_to(root)
                    if any(part.startswith(".") for part in relative.parts):
                        continue  # .git, editor swap files
                    if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
                        files.append((path, (Path(root.name) / relative).as_posix()))
            elif root.is_file():
                if root.suffix.lower() not in SUPPORTED_SUFFIXES:
                    report.failed.append(f"{raw}: unsupported file type (use md, txt, html or pdf)")
                    continue
                prefixes.append(root.as_posix())
                files.append((root, root.name))
            else:
                report.failed.append(f"{raw}: no such file or folder")
        known = await self._repo.content_hashes(FILE_SOURCE)
        seen: list[str] = []
        pending: list[DocumentData] = []
        for number, (path, display) in enumerate(files, start=1):
            if progress is not None:
                progress("indexing files", number, len(files))
            locator = path.as_posix()
            seen.append(locator)
            try:
                raw_bytes = await asyncio.to_thread(path.read_bytes)
                digest = hashlib.sha256(FILE_FORMAT + b"\0" + raw_bytes).hexdigest()
                if known.get(locator) == digest:
                    report.unchanged += 1
                    continue
                loaded = await asyncio.to_thread(load_file, path)
            except Exception as exc:  # one unreadable file must not stop a folder
                log.warning("could not index %s: %s", path, exc)
                report.failed.append(f"{display}: {exc}")
                # Its locator stays in `seen`: a file that fails now keeps its previous version.
                continue
            pending.append(self.file_document(locator, display, digest, loaded))
            if len(pending) >= SAVE_BATCH:
                await self._save(FILE_SOURCE, pending, report)
                pending = []
        await self._save(FILE_SOURCE, pending, report)
        if prefixes:
            report.removed = await self._repo.delete_missing(FILE_SOURCE, seen, under=prefixes)
        report.embedded = await self._sync_dense(progress)
        report.names_embedded = await self._sync_names()  # drops names of entries gone meanwhile
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def file_document(locator: str, display: str, digest: str, loaded: LoadedDocument) -> DocumentData:
        """A loaded file as a document to store: its sections chunked, refs `display#1`, `display#2`…"""
        chunks = []
        for i, chunk in enumerate(chunk_sections(loaded.sections)):
            title = (
                loaded.title if chunk.heading in ("", loaded.title) else f"{loaded.title} › {chunk.heading}"
            )
            chunks.append(
                ChunkData(
                    ord=i,
                    ref=f"{display}#{i + 1}",
                    title=title,
                    text=chunk.text,
                    entry_ref=display,
                    entry_kind="document",
                    section=chunk.kind,
                    heading=chunk.heading,
                )
            )
        return DocumentData(
            locator=locator,
            title=loaded.title,
            content_hash=digest,
            chunks=chunks,
            entry_ref=display,
            entry_kind="document",
        )

    # --- knowledge packs -------------------------------------------------------------------

    async def index_pack(self, name: str, progress: Progress | None = None) -> IndexReport:
        """Index a built-in pack ("cwe" or "attack"); entries that left the data are removed."""
        pack = open_pack(name)
        entries = await asyncio.to_thread(lambda: list(pack.entries()))
        return await self.index_entries(name, entries, version=pack.version, progress=progress)

    async def index_entries(
        self,
        source: str,
        entries: Sequence[PackEntry],
        *,
        version: str = "",
        progress: Progress | None = None,
    ) -> IndexReport:
        """Make `source` hold exactly these entries (a pack, or a slice of one), incrementally."""
        started = time.perf_counter()
        report = IndexReport(version=version)
        documents = [self._pack_document(entry, version) for entry in entries]
        for start in range(0, len(documents), SAVE_BATCH):
            await self._save(source, documents[start : start + SAVE_BATCH], report)
            if progress is not None:
                progress(f"indexing {source}", min(start + SAVE_BATCH, len(documents)), len(documents))
        report.removed = await self._repo.delete_missing(source, (d.locator for d in documents))
        report.embedded = await self._sync_dense(progress)
        report.names_embedded = await self._sync_names()
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _pack_document(entry: PackEntry, version: str = "") -> DocumentData:
        aliases = "; ".join(entry.aliases)
        chunks = []
        # Pack sections are self-contained (one mitigation list, one detection text): no overlap.
        for i, chunk in enumerate(chunk_sections(entry.sections, overlap=0)):
            # Later chunks say which section they come from; the summary starts with the name.
            if chunk.kind == "summary":
                text, heading = chunk.text, ""
            else:
                separator = "\n" if chunk.text.startswith("- ") else " "
                text, heading = f"{chunk.heading}:{separator}{chunk.text}", chunk.heading
            chunks.append(
                ChunkData(
                    ord=i,
                    ref=entry.ref,
                    title=entry.title,
                    url=entry.url,
                    text=text,
                    aliases=aliases,
                    entry_ref=entry.ref,
                    entry_kind=entry.kind,
                    section=chunk.kind,
                    heading=heading,
                )
            )
        return DocumentData(
            locator=entry.ref,
            title=entry.title,
            url=entry.url,
            content_hash=entry.content_hash(),
            chunks=chunks,
            prior=entry.prior,
            entry_ref=entry.ref,
            entry_kind=entry.kind,
            names=entry.names or [entry.title],
            aliases=entry.aliases,
            relations=entry.relations,
            version=version,
        )

    # --- shared ----------------------------------------------------------------------------

    async def _save(self, source: str, documents: list[DocumentData], report: IndexReport) -> None:
        if not documents:
            return
        by_locator = {d.locator: d for d in documents}
        for result in await self._repo.save_documents(source, documents):
            if result.status == "added":
                report.added += 1
            elif result.status == "updated":
                report.updated += 1
            else:
                report.unchanged += 1
                continue
            report.chunks += len(by_locator[result.locator].chunks)

    async def sync_embeddings(self) -> int:
        """Make the embedding matrix match the stored chunks now (after uploads and deletions);
        returns how many chunks were encoded. A no-op without dense retrieval."""
        return await self._sync_dense(progress=None)

    async def _sync_names(self) -> int:
        """Make the name matrix hold exactly one vector per pack entry (keyed by its summary chunk id),
        encoding only names that are new or changed. Returns how many were encoded."""
        if self._embedder is None or self._dense is None:
            return 0
        names = self._dense.names
        entries = await self._repo.entry_names()
        wanted = {cid: content_key(digest, NAME_ORD) for cid, digest, _, _ in entries}
        have = await asyncio.to_thread(names.entries)
        missing = [
            (cid, title, aliases) for cid, _, title, aliases in entries if have.get(cid) != wanted[cid]
        ]
        keep = [cid for cid, key in wanted.items() if have.get(cid) == key]
        if not missing and len(keep) == len(have):
            return 0
        kept_ids, kept_keys, kept_vectors = await asyncio.to_thread(names.rows_for, keep)
        ids, keys, vectors = [kept_ids], [kept_keys], [kept_vectors] if kept_ids.size else []
        for start in range(0, len(missing), EMBED_BATCH):
            batch = missing[start : start + EMBED_BATCH]
            encoded = await asyncio.to_thread(self._embedder.encode, [name_text(t, a) for _, t, a in batch])
            ids.append(np.array([cid for cid, _, _ in batch], dtype=np.int64))
            keys.append(np.array([wanted[cid] for cid, _, _ in batch], dtype=np.int64))
            vectors.append(encoded.astype(np.float16))
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float16)
        await asyncio.to_thread(names.write, np.concatenate(ids), np.concatenate(keys), matrix)
        return len(missing)

    async def _sync_dense(self, progress: Progress | None) -> int:
        """Make the embedding matrix hold exactly the stored chunks, encoding only chunks whose
        content is new. Returns how many chunks were encoded."""
        if self._embedder is None or self._dense is None:
            return 0
        wanted = {cid: content_key(digest, ord_) for cid, digest, ord_ in await self._repo.chunk_versions()}
        have = await asyncio.to_thread(self._dense.entries)
        missing = [cid for cid, key in wanted.items() if have.get(cid) != key]
        keep = [cid for cid, key in wanted.items() if have.get(cid) == key]
        if not missing and len(keep) == len(have):
            return 0
        kept_ids, kept_keys, kept_vectors = await asyncio.to_thread(self._dense.rows_for, keep)
        ids, keys, vectors = [kept_ids], [kept_keys], [kept_vectors] if kept_ids.size else []
        for start in range(0, len(missing), EMBED_BATCH):
            records = await self._repo.get_chunks(missing[start : start + EMBED_BATCH], all_owners=True)
            texts = [embedding_text(r.title, r.text) for r in records]
            encoded = await asyncio.to_thread(self._embedder.encode, texts)
            ids.append(np.array([r.id for r in records], dtype=np.int64))
            keys.append(np.array([wanted[r.id] for r in records], dtype=np.int64))
            vectors.append(encoded.astype(np.float16))
            if progress is not None:
                progress("embedding", min(start + EMBED_BATCH, len(missing)), len(missing))
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float16)
        await asyncio.to_thread(self._dense.write, np.concatenate(ids), np.concatenate(keys), matrix)
        return len(missing)


def upload_locator(owner: str, digest: str, file_name: str) -> str:
    """A private upload's locator: unique per owner and content, ending with the file name shown."""
    return f"{owner}/{digest}/{file_name}"


def upload_name(locator: str) -> str:
    """The file name of an upload's locator."""
    return locator.rsplit("/", 1)[-1]


def content_key(document_hash: str, ord_: int) -> int:
    """A signed 64-bit key for a chunk's content (its document's hash and its position in it)."""
    digest = hashlib.blake2b(f"{document_hash}:{ord_}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)

"""Documents sent in chat: checked, indexed into their sender's private collection, listed and deleted.

An adapter hands the core an `IncomingFile` (file name, declared MIME type and size, and a function that downloads
at most N bytes); no platform type gets here. `DocumentLibrary.ingest` then:

1. refuses a declared size over `MAX_UPLOAD_MB` before downloading, and a real one while downloading;
2. decides the type from the bytes (PDF magic, or strict UTF-8 text; the name only picks Markdown/HTML/plain),
   so an `.exe` renamed `.pdf` is refused;
3. extracts text with bounds: pypdf's decompression limits lowered, a page cap and a text cap (a PDF whose flate
   streams inflate to gigabytes is refused, not read); encrypted PDFs are refused;
4. chunks it with the shared loaders and chunker and stores the document and its chunks in ONE transaction,
   private to the owner; embeddings are written after that commit, and if that fails the rows are deleted again.

Private documents are searched only for their owner and only in private contexts (see `Retriever.search`'s
`viewer`); the manager decides which contexts are private.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from core.retrieval.indexer import FILE_FORMAT, UPLOAD_SOURCE, Indexer, upload_locator, upload_name
from core.retrieval.loaders import LoadedDocument, Section, load_html, load_markdown, load_plain_text
from storage.knowledge import KnowledgeRepository, OwnedDocument

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_PDF_PAGES = 1000
MAX_TEXT_CHARS = 2_000_000  # ~330k words, ~1,500 chunks: what one upload may add to the index
MAX_STREAM_BYTES = 16 * MIB  # one decompressed PDF stream (pypdf's own default is 75 MB)
MAX_DOCUMENTS_PER_USER = 50
MAX_EXTRACT_SECONDS = 120.0  # a PDF built to be slow to parse (millions of tiny operators) is given up on
SNIFF_BYTES = 1024

Progress = Callable[[str], Awaitable[None]]


class UploadRefused(Exception):
    """A file we will not index; the message is shown to the user as is."""


class FileTooLarge(Exception):
    """Raised by an adapter's download function when the bytes exceed the limit it was given."""


class DownloadFailed(Exception):
    """Raised by an adapter's download function when the platform did not hand over the file.
    Its message must never contain the download URL (Telegram's carries the bot token)."""


@dataclass(frozen=True)
class IncomingFile:
    """A document a user sent, as the core sees it."""

    file_name: str
    declared_mime: str | None
    declared_size: int | None
    download: Callable[[int], Awaitable[bytes]]  # at most that many bytes, else FileTooLarge


# --- messages -------------------------------------------------------------------------------------------
def too_large_message(size: int | None, limit_mb: int) -> str:
    """`size` None: the download passed the limit, so the real size is unknown."""
    how_big = f"{size / MIB:.1f} MB" if size is not None else f"more than {limit_mb} MB"
    return f"That file is too large ({how_big}); I accept documents up to {limit_mb} MB. Nothing was stored."


ENCRYPTED = "That PDF is password-protected, so I can't read it. Please send an unprotected copy."
BOMB = (
    "That PDF unpacks into far more data than a document should (a decompression bomb, or simply too "
    "big to index), so I didn't read it. Nothing was stored."
)
TOO_MANY_PAGES = f"That PDF has more than {MAX_PDF_PAGES} pages; please send a shorter document."
TOO_MUCH_TEXT = (
    f"That document holds more than {MAX_TEXT_CHARS // 1_000_000} million characters of text, more than I index "
    "from one file. Please split it."
)
BROKEN_PDF = "I couldn't read that PDF (it looks damaged). Nothing was stored."
TOO_SLOW = "That PDF takes far too long to read (it is built unusually), so I gave up. Nothing was stored."
EMPTY = "I couldn't find any text in that file (a scanned PDF holds only images of text). Nothing was stored."
NOT_UTF8 = (
    "That text file is not valid UTF-8, so I didn't index it. Please save it as UTF-8 and send it again."
)
DOWNLOAD_FAILED = "I couldn't download that file from the chat service. Please try sending it again."
INDEX_FAILED = "Sorry — indexing that document failed, and nothing was stored. Please try again later."
TOO_MANY_DOCUMENTS = f"You already have {MAX_DOCUMENTS_PER_USER} documents. Remove one with /docs delete N, then send it again."


def wrong_type_message(what: str) -> str:
    return (
        f"I can only read PDF, Markdown, plain-text and HTML documents, and this file is {what}. "
        "Nothing was stored."
    )


# Signatures of common files that are none of ours, for a precise "wrong type" reply.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "a Windows program"),
    (b"\x7fELF", "a Linux program"),
    (b"\xcf\xfa\xed\xfe", "a macOS program"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a media file"),
    (b"\xd0\xcf\x11\xe0", "an old Office document"),
    (b"%!PS", "a PostScript file"),
)


@dataclass(frozen=True)
class Extracted:
    kind: str  # "pdf" | "markdown" | "html" | "text"
    document: LoadedDocument
    pages: int = 0


# --- type checks and extraction (pure, run in a thread) ----------------------------------------------------
def safe_file_name(name: str) -> str:
    """The file's own name (no folders), printable, at most 120 characters; "document" when nothing is left."""
    base = PureWindowsPath(PurePosixPath(name or "").name).name
    base = "".join(ch for ch in unicodedata.normalize("NFC", base) if ch.isprintable()).strip(" .")
    return base[:120] or "document"


def sniff(data: bytes, file_name: str, declared_mime: str | None) -> str:
    """The document kind by content: "pdf", or for UTF-8 text "html", "markdown" or "text".
    Raises UploadRefused for anything else."""
    head = data[:SNIFF_BYTES]
    if b"%PDF-" in head:
        return "pdf"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise UploadRefused(wrong_type_message(what))
    if b"\x00" in data:
        raise UploadRefused(wrong_type_message("binary data, not text"))
    suffix = PurePosixPath(file_name.lower()).suffix
    mime = (declared_mime or "").lower()
    if suffix == ".pdf" or mime == "application/pdf":
        raise UploadRefused(wrong_type_message("not a PDF, whatever its name says"))
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html")) or suffix in (".html", ".htm") or mime == "text/html":
        return "html"
    if suffix in (".md", ".markdown") or mime in ("text/markdown", "text/x-markdown"):
        return "markdown"
    return "text"


def decode_text(data: bytes) -> str:
    """Strict UTF-8 (a leading BOM is dropped); raises UploadRefused otherwise."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UploadRefused(NOT_UTF8) from None
    if len(text) > MAX_TEXT_CHARS:
        raise UploadRefused(TOO_MUCH_TEXT)
    return text


def extract(data: bytes, kind: str, fallback_title: str) -> Extracted:
    """Sections of text from the bytes of a sniffed document, within the bounds above."""
    if kind == "pdf":
        return _extract_pdf(data, fallback_title)
    text = decode_text(data)
    loader = {"html": load_html, "markdown": load_markdown}.get(kind, load_plain_text)
    return Extracted(kind, loader(text, fallback_title))


def _extract_pdf(data: bytes, fallback_title: str) -> Extracted:
    import pypdf
    from pypdf.errors import LimitReachedError, PdfReadError, PyPdfError

    limits = {
        "maximum_declared_stream_length": MAX_STREAM_BYTES,
        "array_based_stream_maximum_output_length": MAX_STREAM_BYTES,
        "zlib_maximum_output_length": MAX_STREAM_BYTES,
        "lzw_maximum_output_length": MAX_STREAM_BYTES,
        "run_length_maximum_output_length": MAX_STREAM_BYTES,
        "brotli_maximum_output_length": MAX_STREAM_BYTES,
        "stream_decoding_work_maximum_length": 4 * MAX_STREAM_BYTES,
        "stream_parsing_work_maximum_count": 500_000,
        "page_tree_maximum_entries": 4 * MAX_PDF_PAGES,
    }
    deadline = time.monotonic() + MAX_EXTRACT_SECONDS
    try:
        # A context variable: these limits hold for this thread's reading only.
        with pypdf.apply_configuration(None, **limits):
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                raise UploadRefused(ENCRYPTED)
            pages = len(reader.pages)
            if pages > MAX_PDF_PAGES:
                raise UploadRefused(TOO_MANY_PAGES)
            title = ""
            if reader.metadata is not None and reader.metadata.title:
                title = " ".join(str(reader.metadata.title).split())[:200]
            title = title or fallback_title
            sections, total = [], 0
            for number, page in enumerate(reader.pages, start=1):
                if time.monotonic() > deadline:
                    raise UploadRefused(TOO_SLOW)
                text = (page.extract_text() or "").strip()
                total += len(text)
                if total > MAX_TEXT_CHARS:
                    raise UploadRefused(TOO_MUCH_TEXT)
                if text:
                    sections.append(Section(f"{title} (page {number})", text))
    except UploadRefused:
        raise
    except LimitReachedError:
        raise UploadRefused(BOMB) from None
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise UploadRefused(BROKEN_PDF) from None
    except MemoryError:
        raise UploadRefused(BOMB) from None
    return Extracted("pdf", LoadedDocument(title, sections), pages)


def word_count(document: LoadedDocument) -> int:
    return sum(len(section.text.split()) for section in document.sections)


# --- the library --------------------------------------------------------------------------------------
class DocumentLibrary:
    """Each user's private documents: ingest, list, delete, forget."""

    def __init__(self, repository: KnowledgeRepository, indexer: Indexer, *, max_upload_mb: int) -> None:
        self._repo = repository
        self._indexer = indexer
        self.max_upload_mb = max_upload_mb
        self.max_bytes = max_upload_mb * MIB
        # One embedding sync at a time: each publishes a whole new matrix generation.
        self._sync_lock = asyncio.Lock()

    async def ingest(
        self, owner: str, upload: IncomingFile, progress: Progress, *, private_context: bool
    ) -> str:
        """Index one upload for `owner`; returns the confirmation. Raises UploadRefused with the reason
        for a file that is not indexed (then nothing is stored)."""
        name = safe_file_name(upload.file_name)
        if upload.declared_size is not None and upload.declared_size > self.max_bytes:
            raise UploadRefused(too_large_message(upload.declared_size, self.max_upload_mb))
        if len(await self._repo.owned_documents(owner)) >= MAX_DOCUMENTS_PER_USER:
            raise UploadRefused(TOO_MANY_DOCUMENTS)
        try:
            data = await upload.download(self.max_bytes)
        except FileTooLarge:
            raise UploadRefused(too_large_message(None, self.max_upload_mb)) from None
        except DownloadFailed as exc:
            logger.warning("upload download failed: %s", exc)
            raise UploadRefused(DOWNLOAD_FAILED) from None
        if len(data) > self.max_bytes:  # an adapter that did not enforce the limit
            raise UploadRefused(too_large_message(len(data), self.max_upload_mb))
        if not data.strip():
            raise UploadRefused(EMPTY)
        kind = sniff(data, name, upload.declared_mime)
        stem = PurePosixPath(name).stem or name
        extracted = await asyncio.to_thread(extract, data, kind, stem)
        digest = hashlib.sha256(FILE_FORMAT + b"\0" + data).hexdigest()
        locator = upload_locator(owner, digest, name)
        document = Indexer.file_document(locator, name, digest, extracted.document)
        if not document.chunks:
            raise UploadRefused(EMPTY)
        if any(f"/{digest}/" in d.locator for d in await self._repo.owned_documents(owner)):
            return f"You already sent me “{name}” — it is in your documents (/docs)."
        await progress(f"Indexing “{name}”… {len(document.chunks)} chunks")
        # The document, its chunks and their full-text rows: one transaction.
        results = await self._repo.save_documents(UPLOAD_SOURCE, [document], owner=owner)
        try:
            await self._sync_embeddings()
        except BaseException:
            # Embeddings failed (or we were cancelled): take the committed rows back out, never half-indexed.
            await asyncio.shield(self._repo.delete_owned(owner, [results[0].document_id]))
            raise
        logger.info("indexed an upload: %s chunks, %s", len(document.chunks), extracted.kind)
        return self._confirmation(name, extracted, len(document.chunks), private_context)

    @staticmethod
    def _confirmation(name: str, extracted: Extracted, chunks: int, private_context: bool) -> str:
        size = f"{extracted.pages} pages, " if extracted.pages else ""
        where = (
            "Ask me about it here"
            if private_context
            else "Ask me about it in a direct message (I never use your documents in group answers)"
        )
        return (
            f"Indexed “{name}” ({size}{chunks} chunks). It is private to you: only you can ask about it. "
            f"{where}, e.g. “what does {extracted.document.title} say about …?”. "
            "/docs lists your documents; /docs delete N removes one."
        )

    async def list(self, owner: str) -> list[OwnedDocument]:
        return await self._repo.owned_documents(owner)

    async def describe(self, owner: str) -> str:
        """The /docs listing."""
        documents = await self.list(owner)
        if not documents:
            return (
                "You have no documents. Send me a PDF, Markdown, text or HTML file "
                f"(up to {self.max_upload_mb} MB) in a direct message and I'll index it privately for you."
            )
        lines = ["Your documents (private to you):"]
        for number, doc in enumerate(documents, start=1):
            day = doc.updated_at.strftime("%Y-%m-%d") if doc.updated_at else ""
            lines.append(f"{number}. {upload_name(doc.locator)} — {doc.chunks} chunks, added {day}")
        lines.append("Remove one with /docs delete N; /forget removes them all.")
        return "\n".join(lines)

    async def delete(self, owner: str, number: int) -> str:
        """Delete the owner's document number `number` of the /docs listing."""
        documents = await self.list(owner)
        if not 1 <= number <= len(documents):
            if not documents:
                return "You have no documents to delete."
            return f"There is no document {number}; /docs lists yours (1–{len(documents)})."
        doc = documents[number - 1]
        await self._repo.delete_owned(owner, [doc.id])
        await self._sync_embeddings()
        return f"Deleted “{upload_name(doc.locator)}” ({doc.chunks} chunks)."

    async def forget(self, owner: str) -> int:
        """Delete all of the owner's documents, chunks and embeddings; returns how many documents."""
        documents, _ = await self._repo.delete_owned(owner)
        if documents:
            await self._sync_embeddings()
        return documents

    async def _sync_embeddings(self) -> None:
        async with self._sync_lock:
            await self._indexer.sync_embeddings()


_DELETE = re.compile(r"^(?:delete|del|remove|rm)\s+#?(\d{1,6})$", re.IGNORECASE)


def parse_docs_args(args: str) -> int | str | None:
    """`/docs` → None (list); `/docs delete N` → N; anything else → a usage message."""
    args = args.strip()
    if not args:
        return None
    match = _DELETE.match(args)
    if match is None:
        return "Usage: /docs lists your documents; /docs delete N removes document N."
    return int(match.group(1))

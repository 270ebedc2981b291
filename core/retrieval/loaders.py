"""Turn user files (Markdown, plain text, HTML, PDF) into titled sections of plain text."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf"})


@dataclass(frozen=True)
class Section:
    """A titled piece of a document. `kind` is what the text is about within its entry (one of
    storage.knowledge.SECTIONS: "summary", "description", "mitigation", "detection", ...)."""

    heading: str
    text: str
    kind: str = "description"


@dataclass
class LoadedDocument:
    title: str
    sections: list[Section] = field(default_factory=list)


class UnsupportedFileError(ValueError):
    pass


def load_file(path: Path) -> LoadedDocument:
    """Load one file by its suffix. Raises UnsupportedFileError for other kinds of file."""
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        return load_markdown(_read_text(path), path.stem)
    if suffix in (".txt", ".text"):
        return load_plain_text(_read_text(path), path.stem)
    if suffix in (".html", ".htm"):
        return load_html(_read_text(path), path.stem)
    if suffix == ".pdf":
        return load_pdf(path)
    raise UnsupportedFileError(f"unsupported file type: {path.name}")


def _read_text(path: Path) -> str:
    # Invalid bytes become U+FFFD rather than failing a whole folder.
    return path.read_bytes().decode("utf-8", errors="replace")


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")


def load_markdown(source: str, fallback_title: str) -> LoadedDocument:
    """Split on ATX headings (outside code fences); the first H1 is the document title."""
    title = ""
    sections: list[Section] = []
    heading, in_fence = "", False
    lines: list[str] = []
    for line in source.splitlines():
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _MD_HEADING.match(line)
        if match:
            _flush(sections, heading, lines)
            heading, lines = match.group(2).strip(), []
            if not title and len(match.group(1)) == 1:
                title = heading
            continue
        lines.append(line)
    _flush(sections, heading, lines)
    title = title or fallback_title
    return LoadedDocument(title, [Section(s.heading or title, s.text) for s in sections])


def load_plain_text(source: str, fallback_title: str) -> LoadedDocument:
    text = source.strip()
    return LoadedDocument(fallback_title, [Section(fallback_title, text)] if text else [])


def _flush(sections: list[Section], heading: str, lines: list[str]) -> None:
    text = "\n".join(lines).strip()
    if text:
        sections.append(Section(heading, text))


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, split at headings; scripts, styles and the like are dropped."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "td", "th", "pre", "section", "article", "blockquote", "table"}
    )
    _HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[Section] = []
        self._skip_depth = 0
        self._in_title = False
        self._heading_tag: str | None = None
        self._heading_parts: list[str] = []
        self._heading = ""
        self._parts: list[str] = []
        self._first_h1 = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip_depth += 1
        elif tag in self._HEADINGS and self._skip_depth == 0:
            self._flush_section()
            self._heading_tag, self._heading_parts = tag, []
        elif tag in self._BLOCK:
            self._parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == self._heading_tag:
            self._heading = " ".join("".join(self._heading_parts).split())
            if tag == "h1" and not self._first_h1:
                self._first_h1 = self._heading
            self._heading_tag = None
        elif tag in self._BLOCK:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self._skip_depth:
            return
        elif self._heading_tag:
            self._heading_parts.append(data)
        else:
            self._parts.append(data)

    def _flush_section(self) -> None:
        lines = (" ".join(line.split()) for line in "".join(self._parts).splitlines())
        text = "\n".join(line for line in lines if line)
        if text:
            self.sections.append(Section(self._heading, text))
        self._parts = []

    def finish(self) -> tuple[str, list[Section]]:
        self.close()
        self._flush_section()
        return " ".join(self.title.split()) or self._first_h1, self.sections


def load_html(source: str, fallback_title: str) -> LoadedDocument:
    parser = _HTMLText()
    parser.feed(source)
    title, sections = parser.finish()
    title = title or fallback_title
    return LoadedDocument(title, [Section(s.heading or title, s.text) for s in sections])


def load_pdf(path: Path) -> LoadedDocument:
    """One section per page with text (scanned pages without a text layer yield nothing)."""
    from pypdf import PdfReader  # imported here: only PDF folders pay for it

    reader = PdfReader(str(path))
    title = ""
    if reader.metadata is not None and reader.metadata.title:
        title = str(reader.metadata.title).strip()
    title = title or path.stem
    sections = []
    for number, page in enumerate(reader.pages, start=1):
        text = (page.extract_text() or "").strip()
        if text:
            sections.append(Section(f"{title} (page {number})", text))
    return LoadedDocument(title, sections)

"""PDFs built in the test with pypdf (nothing downloaded): text pages, an encrypted one, a flate bomb."""

from __future__ import annotations

import io
import zlib

from pypdf import PdfWriter
from pypdf.generic import (
    DecodedStreamObject,
    DictionaryObject,
    EncodedStreamObject,
    NameObject,
    NumberObject,
)


def _escape(text: str) -> bytes:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


def _writer_with_font() -> tuple[PdfWriter, DictionaryObject]:
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    resources = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    return writer, resources


def text_pdf(pages: list[str], *, title: str | None = None, password: str | None = None) -> bytes:
    """A PDF with one page per string (each line of a string is a line of text)."""
    writer, resources = _writer_with_font()
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = resources
        lines = [b"BT /F1 10 Tf 14 TL 40 760 Td"]
        for line in text.splitlines() or [""]:
            lines.append(b"(" + _escape(line) + b") Tj T*")
        lines.append(b"ET")
        stream = DecodedStreamObject()
        stream.set_data(b"\n".join(lines))
        page[NameObject("/Contents")] = writer._add_object(stream)
    if title:
        writer.add_metadata({"/Title": title})
    if password is not None:
        writer.encrypt(password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def flate_bomb_pdf(inflated_bytes: int = 24 * 1024 * 1024) -> bytes:
    """A one-page PDF whose content stream is a few dozen KB of flate data that inflates to
    `inflated_bytes` of text operators."""
    writer, resources = _writer_with_font()
    page = writer.add_blank_page(612, 792)
    page[NameObject("/Resources")] = resources
    body = b"BT /F1 10 Tf 40 760 Td (" + b"A" * inflated_bytes + b") Tj ET"
    stream = EncodedStreamObject()
    stream._data = zlib.compress(body, 9)
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    stream[NameObject("/Length")] = NumberObject(len(stream._data))
    page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()

"""Platform-neutral rendering helpers: safe splitting at message-size limits and a sources footer."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from core.types import Source

_FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: how Telegram counts its 4096-character limit."""
    return len(text.encode("utf-16-le")) // 2


def split_message(text: str, limit: int, *, measure: Callable[[str], int] = len) -> list[str]:
    """Split `text` into parts of at most `limit` (as counted by `measure`).

    Splits prefer a blank line in the last third of a part, then any line break, then a
    space. A code block that spans a split is closed at the end of one part and reopened
    (with its language) at the start of the next, so every part renders on its own.
    """
    if limit < 32:
        raise ValueError("limit too small to split safely")
    if measure(text) <= limit:
        return [text] if text.strip() else []

    parts: list[str] = []
    lines: list[str] = []  # the part being built
    outside: list[bool] = []  # per line: True when the line lies outside any code block
    fence: str | None = None  # the opening fence line ("```python") while inside a block
    marker = ""  # the fence characters that close it

    def fits(extra: list[str], opening: str | None = None) -> bool:
        # An opening fence line commits this part to carrying a closing marker too.
        closing = [marker] if fence is not None else [opening] if opening else []
        return measure("\n".join(lines + extra + closing)) <= limit

    def emit(chunk: list[str], close_with: str | None) -> None:
        if not any(line.strip() for line in chunk[1 if close_with else 0 :]):
            return  # nothing but a reopened fence: not worth a message
        body = "\n".join(chunk + ([close_with] if close_with else [])).strip("\n")
        if body.strip():
            parts.append(body)

    def cut() -> None:
        nonlocal lines, outside
        if fence is None:
            for index in range(len(lines) - 1, max(0, (2 * len(lines)) // 3), -1):
                if lines[index] == "" and outside[index]:
                    emit(lines[:index], None)
                    lines, outside = lines[index + 1 :], outside[index + 1 :]
                    return
            emit(lines, None)
            lines, outside = [], []
        else:
            emit(lines, marker)
            lines, outside = [fence], [False]

    for line in text.split("\n"):
        match = _FENCE.match(line)
        width = limit - (measure(fence) + measure(marker) + 2 if fence is not None else 0)
        pieces = [line] if match else _hard_wrap(line, width, measure)
        opening = match.group(1) if match and fence is None else None
        for piece in pieces:
            if not fits([piece], opening):
                cut()
                if not fits([piece], opening):  # the kept paragraph tail is still too long
                    emit(lines, marker if fence is not None else None)
                    lines, outside = ([fence], [False]) if fence is not None else ([], [])
            lines.append(piece)
            outside.append(fence is None and not match)
        if match:
            if fence is None:
                fence, marker = line.strip(), match.group(1)
            elif line.strip().startswith(marker) and not match.group(2).strip():
                fence, marker = None, ""
    emit(lines, None)
    return parts


def _hard_wrap(line: str, width: int, measure: Callable[[str], int]) -> list[str]:
    """Cut one over-long line at spaces (or anywhere, for a long word) into pieces ≤ width."""
    width = max(width, 8)
    if measure(line) <= width:
        return [line]
    pieces: list[str] = []
    rest = line
    while measure(rest) > width:
        cut = _fit_prefix(rest, width, measure)
        space = rest.rfind(" ", 0, cut)
        if space > cut // 2:
            cut = space
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip(" ")
    if rest:
        pieces.append(rest)
    return pieces


def _fit_prefix(text: str, width: int, measure: Callable[[str], int]) -> int:
    """Largest n with measure(text[:n]) ≤ width, never splitting a surrogate pair's character."""
    low, high = 1, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if measure(text[:mid]) <= width:
            low = mid
        else:
            high = mid - 1
    return low


_CITATION = re.compile(r"\[(\d+)\]")


def cited_sources(text: str, sources: Sequence[Source]) -> list[Source]:
    """The sources the answer text cites as [n] (all of them when it cites none: a model may not cite);
    `/sources` still lists everything retrieved."""
    numbers = {int(n) for n in _CITATION.findall(text)}
    cited = [s for s in sources if s.index in numbers]
    return cited if cited else list(sources)


def sources_footer(
    sources: Sequence[Source],
    *,
    heading: str = "Sources:",
    escape: Callable[[str], str] = str,
    link: Callable[[str], str] = str,
) -> str:
    """The cited sources, one line each: `[n] Title (REF) — URL`.

    Adapters pass their platform's `escape` for titles and `link` format (Discord wraps URLs in <> so
    they get no preview cards)."""
    if not sources:
        return ""
    lines = [heading]
    for source in sources:
        label = f"[{source.index}] {escape(source.title)}"
        if source.ref and source.ref not in source.title:
            label += f" ({source.ref})"
        if source.url:
            label += f" — {link(source.url)}"
        lines.append(label)
    return "\n".join(lines)

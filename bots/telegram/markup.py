"""Markdown-ish model output → Telegram HTML (the final message only; streaming stays plain).

Only what a chat answer needs and what renders unambiguously: ``` fences (with a language),
`inline code`, **bold**, `# headings`, "- " / "* " bullets (as •) and "> " quotes (as a blockquote).
Everything else is escaped text, so the result is always valid Telegram HTML; the sink still falls back
to plain text if Telegram disagrees.
"""

from __future__ import annotations

import html
import re

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([A-Za-z0-9_+#.-]*)")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_QUOTE = re.compile(r"^\s*>\s?(.*)$")


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _inline(line: str) -> str:
    """Escape one line outside code blocks, converting `code`, **bold** and headings."""
    heading = _HEADING.match(line)
    if heading:
        return f"<b>{_inline(heading.group(2))}</b>"
    bullet = _BULLET.match(line)
    if bullet and bullet.group(2).strip():
        return f"{bullet.group(1)}• {_inline(bullet.group(2))}"
    out: list[str] = []
    pos = 0
    for match in _INLINE_CODE.finditer(line):
        out.append(_BOLD.sub(r"<b>\1</b>", _escape(line[pos : match.start()])))
        out.append(f"<code>{_escape(match.group(1))}</code>")
        pos = match.end()
    out.append(_BOLD.sub(r"<b>\1</b>", _escape(line[pos:])))
    return "".join(out)


def to_telegram_html(text: str) -> str:
    """Render `text` as Telegram HTML. An unclosed fence runs to the end of the text."""
    out: list[str] = []
    code: list[str] | None = None  # lines of the open code block
    language = ""
    marker = ""
    quote: list[str] = []  # lines of the open blockquote

    def close_quote() -> None:
        if quote:
            out.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
            quote.clear()

    for line in text.split("\n"):
        fence = _FENCE.match(line)
        if code is None:
            quoted = _QUOTE.match(line) if not fence else None
            if quoted:
                quote.append(_inline(quoted.group(1)))
                continue
            close_quote()
            if fence:
                code, language, marker = [], fence.group(2), fence.group(1)
            else:
                out.append(_inline(line))
            continue
        if fence and line.strip().startswith(marker) and not fence.group(2):
            out.append(_code_block(code, language))
            code = None
        else:
            code.append(line)
    close_quote()
    if code is not None:
        out.append(_code_block(code, language))
    return "\n".join(out)


def _code_block(lines: list[str], language: str) -> str:
    body = _escape("\n".join(lines)) or " "
    if language:
        return f'<pre><code class="language-{_escape(language)}">{body}</code></pre>'
    return f"<pre>{body}</pre>"

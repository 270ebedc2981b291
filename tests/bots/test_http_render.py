"""Issue 8 item 9: the web chat renders markdown, sanitized; raw HTML from answers or documents never runs."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from bots.http import render_html
from tests.bots.http_support import GatedGenerator, client, serve, sse
from tests.support import app_settings, indexed_app

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    '<iframe src="https://evil.example"></iframe>',
    "<svg onload=alert(1)>",
    '<p style="background:url(javascript:alert(1))">x</p>',
]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _has_live_html(html: str) -> bool:
    """Whether a browser would run anything: a dangerous element, an event handler or a javascript: URL."""
    parser = _Tags()
    parser.feed(html)
    for tag, attrs in parser.tags:
        if tag in {"script", "img", "iframe", "svg", "style", "object", "embed"}:
            return True
        for name, value in attrs:
            if (
                name.startswith("on")
                or name == "style"
                or (value or "").strip().lower().startswith("javascript:")
            ):
                return True
    return False


def test_markdown_renders_bullets_bold_code_and_quotes() -> None:
    html = render_html(
        "Here is what the knowledge base says:\n\n> Encode output for the HTML context. [1]\n\n"
        "- **Bold** point\n- `code` point\n\n```\nprint(1)\n```"
    )
    assert "<blockquote>" in html and "&gt; " not in html and "> Encode" not in html
    assert "<li><strong>Bold</strong> point</li>" in html
    assert "<code>code</code>" in html and "<pre><code>print(1)\n</code></pre>" in html


def test_raw_html_is_shown_as_text_never_run() -> None:
    for text in HOSTILE:
        html = render_html(f"Answer: {text} [1]")
        assert not _has_live_html(html), html
    link = render_html("[docs](https://example.org/x)")
    assert 'href="https://example.org/x"' in link and 'rel="noopener noreferrer nofollow"' in link


async def test_a_hostile_answer_reaches_the_web_chat_sanitized(tmp_path: Path) -> None:
    generator = GatedGenerator(["> quoted **bold** ", *HOSTILE[:2], " done"])
    generator.gate.set()
    async with (
        indexed_app(app_settings(tmp_path), tmp_path, generator=generator) as app,
        serve(app) as adapter,
        client(adapter) as web,
    ):
        page = await (await web.get("/")).text()
        assert (
            "innerHTML = ev.html" in page and "ev.text" in page
        )  # answers go in as server-rendered HTML only
        events = await sse(await web.post("/api/chat", json={"text": "What is XSS?"}))
    html_events = [e for e in events if e["type"] in ("partial", "final")]
    assert html_events and all(not _has_live_html(e["html"]) for e in html_events)
    final = html_events[-1]
    assert "<blockquote>" in final["html"] and "<strong>bold</strong>" in final["html"]
    assert "&lt;script&gt;" in final["html"]  # visible as text

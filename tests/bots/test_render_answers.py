"""Composed answers render on Telegram (HTML) and Discord (markdown): bullets, bold, code, quotes, and a
footer with the cited sources only."""

from __future__ import annotations

from bots.discord.sinks import render_answer
from bots.render import cited_sources
from bots.telegram.markup import to_telegram_html
from core.types import Answer, Source

ANSWER = (
    "How to detect **T1558.003 Kerberoasting** [1]:\n"
    "- Enable `Audit Kerberos Service Ticket Operations` (Event ID 4769 < 5) [2]\n"
    "* Look for RC4 [Type 0x17] requests [2]\n"
    "\n"
    "> Quoted advice\n"
    "> on two lines [2]"
)
SOURCES = [
    Source(1, "T1558.003", "attack", "Kerberoasting", "https://attack.mitre.org/techniques/T1558/003/"),
    Source(2, "T1558.003", "attack", "Kerberoasting", None, section="detection"),
    Source(3, "CWE-200", "cwe", "Exposure of Sensitive Information", None),
]


def test_telegram_html_renders_bullets_bold_code_and_quotes() -> None:
    html = to_telegram_html(ANSWER)
    assert html.splitlines()[0] == "How to detect <b>T1558.003 Kerberoasting</b> [1]:"
    assert "• Enable <code>Audit Kerberos Service Ticket Operations</code> (Event ID 4769 &lt; 5) [2]" in html
    assert "• Look for RC4 [Type 0x17] requests [2]" in html
    assert "<blockquote>Quoted advice\non two lines [2]</blockquote>" in html
    assert "&gt; " not in html and "\n- " not in html


def test_quotes_and_bullets_inside_code_blocks_stay_literal() -> None:
    html = to_telegram_html("```\n- item\n> not a quote\n```")
    assert html == "<pre>- item\n&gt; not a quote</pre>"


def test_the_footer_lists_the_cited_sources_only() -> None:
    assert [s.index for s in cited_sources(ANSWER, SOURCES)] == [1, 2]
    assert cited_sources("no citations at all", SOURCES) == SOURCES  # a model that does not cite
    rendered = render_answer(Answer(text=ANSWER, sources=SOURCES))
    assert "CWE-200" not in rendered and "[1] Kerberoasting" in rendered
    assert rendered.startswith(ANSWER)  # Discord renders this markdown itself

"""Issue 10 (low): masked links from documents, model output and the sources footer are not links on Discord."""

from __future__ import annotations

import re

from bots.discord.sinks import preview, render_answer
from core.types import Answer, Source

# What Discord turns into a clickable masked link: [label](url), optionally with <url>.
MASKED = re.compile(r"\[[^\]\n]*\]\(\s*<?https?://")


def test_masked_links_in_the_answer_and_the_footer_are_broken() -> None:
    answer = Answer(
        text="Quoted: [your bank](https://phish.example/login) and [[1]](https://evil.example) [1]",
        sources=[
            Source(
                index=1,
                ref="doc",
                source="notes.md",
                title="Click [here](https://phish.example)",
                url="https://docs.example/a> [x](https://phish.example)",
            )
        ],
    )
    text = render_answer(answer)
    assert not MASKED.search(text), text
    assert "https://phish.example/login" in text  # the real destination stays visible
    assert "<https://docs.example/a%3E%20%5Bx%5D%28https://phish.example%29>" in text
    assert not MASKED.search(preview(answer.text))
    assert render_answer(Answer(text="See [1] and [2].")) == "See [1] and [2]."  # citations untouched

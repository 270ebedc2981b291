"""The final-message renderer always produces HTML that Telegram's parser (as the fake models it) accepts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bots.render import split_message, utf16_len
from bots.telegram.markup import to_telegram_html
from tests.fakes.telegram_api import EntityError, visible_html_text

_ALPHABET = st.sampled_from(
    [*list("ab <>&\"'`*#_\n"), "```", "```python\n", "**", "&amp;", "<b>", "</i>", "😀"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ALPHABET, max_size=60).map("".join))
def test_rendered_html_is_always_accepted(text: str) -> None:
    visible = visible_html_text(to_telegram_html(text))
    # Markup only removes characters; it never invents visible text.
    assert utf16_len(visible) <= utf16_len(text) + 1  # +1: an empty code block renders one space


def test_code_blocks_inline_code_and_bold() -> None:
    html = to_telegram_html(
        "**Fix** it with `esc(x) < 1`:\n```python\nif a < b && c:\n    pass\n```\nDone & dusted"
    )
    assert html == (
        "<b>Fix</b> it with <code>esc(x) &lt; 1</code>:\n"
        '<pre><code class="language-python">if a &lt; b &amp;&amp; c:\n    pass</code></pre>\n'
        "Done &amp; dusted"
    )


def test_role_tokens_and_tags_typed_by_users_stay_text() -> None:
    text = "<|ghost_end|> <script>alert(1)</script> <b>not bold</b>"
    assert visible_html_text(to_telegram_html(text)) == text


def test_unclosed_fence_runs_to_the_end() -> None:
    html = to_telegram_html("look:\n```bash\nrm -rf /tmp/x <y>")
    assert html == 'look:\n<pre><code class="language-bash">rm -rf /tmp/x &lt;y&gt;</code></pre>'


def test_every_split_part_renders_on_its_own() -> None:
    code = "\n".join(f"line_{i} = '<{i}>' & {i}" for i in range(600))
    answer = "Intro paragraph.\n\n```python\n" + code + "\n```\n\nOutro."
    parts = split_message(answer, 4096, measure=utf16_len)
    assert len(parts) >= 3
    for part in parts:
        visible = visible_html_text(to_telegram_html(part))
        assert utf16_len(visible) <= 4096
    # the code survives the split intact, line by line
    lines = [
        ln
        for p in parts
        for ln in visible_html_text(to_telegram_html(p)).split("\n")
        if ln.startswith("line_")
    ]
    assert lines == code.split("\n")


@pytest.mark.parametrize("bad", ["a < b", "<b>x", "<foo>x</foo>", "a & b", "<b><i>x</b></i>"])
def test_fake_rejects_what_telegram_rejects(bad: str) -> None:
    with pytest.raises(EntityError):
        visible_html_text(bad)

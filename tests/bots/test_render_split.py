"""split_message: every part within the limit, code blocks intact in every part, no text lost."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bots.render import sources_footer, split_message, utf16_len
from core.types import Source


def _fences_balanced(part: str) -> bool:
    return len(re.findall(r"^\s*```", part, flags=re.M)) % 2 == 0


def _words(text: str) -> str:
    """The text's visible characters, fences removed: splitting may add fences and cut words."""
    return re.sub(r"\s+", "", text.replace("```python", "").replace("```", ""))


def test_short_text_is_one_part() -> None:
    assert split_message("hello", 100) == ["hello"]


def test_empty_text_has_no_parts() -> None:
    assert split_message("   ", 100) == []


def test_code_block_spanning_a_split_is_closed_and_reopened() -> None:
    code = "\n".join(f"    line_{i} = {i} * 2" for i in range(200))
    text = "Intro paragraph.\n\n```python\n" + code + "\n```\n\nOutro."
    parts = split_message(text, 500)
    assert len(parts) > 3
    for part in parts:
        assert len(part) <= 500
        assert _fences_balanced(part), part
    for part in parts[1:-1]:
        assert part.startswith("```python")
    assert _words("\n".join(parts)) == _words(text)


def test_prefers_paragraph_breaks() -> None:
    paragraph = "word " * 30
    text = "\n\n".join(paragraph.strip() for _ in range(10))
    parts = split_message(text, 400)
    assert all(part.endswith("word") for part in parts)
    assert all(len(part) <= 400 for part in parts)


def test_long_word_is_cut_hard() -> None:
    text = "x" * 1000
    parts = split_message(text, 100)
    assert all(len(part) <= 100 for part in parts)
    assert "".join(parts) == text


def test_utf16_measure_for_telegram() -> None:
    text = "😀" * 3000  # 2 UTF-16 units each
    parts = split_message(text, 4096, measure=utf16_len)
    assert all(utf16_len(part) <= 4096 for part in parts)
    assert "".join(parts) == text


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(
                alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="`"), max_size=300
            ),
            st.just("```python"),
            st.just("```"),
            st.just(""),
        ),
        max_size=60,
    ),
    st.integers(min_value=40, max_value=400),
)
def test_property_parts_fit_and_nothing_is_lost(lines: list[str], limit: int) -> None:
    text = "\n".join(lines)
    parts = split_message(text, limit)
    assert all(len(part) <= limit for part in parts)
    assert _words("\n".join(parts)) == _words(text)


def test_sources_footer_lists_refs_and_urls() -> None:
    footer = sources_footer(
        [
            Source(
                index=1,
                ref="CWE-79",
                source="cwe",
                title="Cross-site Scripting",
                url="https://cwe.mitre.org/data/definitions/79.html",
            )
        ]
    )
    assert "[1] Cross-site Scripting (CWE-79)" in footer
    assert "https://cwe.mitre.org/data/definitions/79.html" in footer

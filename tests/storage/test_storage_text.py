"""clean_text: whatever a user types can be stored on both engines, unchanged when it already could."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from storage.repositories import clean_text


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_clean_text_is_storable_and_idempotent(text: str) -> None:
    cleaned = clean_text(text)
    cleaned.encode("utf-8")  # never raises: lone surrogates are replaced
    assert "\x00" not in cleaned
    assert clean_text(cleaned) == cleaned


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_clean_text_keeps_valid_text_unchanged(text: str) -> None:
    assert clean_text(text) == text

"""Small platform rules without a network: which reaction change is which rating, and how a reply is
cut to Discord's follow-up cap."""

from __future__ import annotations

import pytest
from telegram import Chat, MessageReactionUpdated, ReactionTypeCustomEmoji, ReactionTypeEmoji, User

from bots.discord.sinks import LIMIT, USER_INSTALL_FOLLOWUPS, fit_parts
from bots.telegram.app import reaction_rating
from bots.telegram.sink import DraftChats, new_draft_id


def change(old: list[str], new: list[str]) -> MessageReactionUpdated:
    import datetime

    return MessageReactionUpdated(
        chat=Chat(1, "private"),
        message_id=7,
        date=datetime.datetime.now(datetime.UTC),
        old_reaction=tuple(ReactionTypeEmoji(e) for e in old),
        new_reaction=tuple(ReactionTypeEmoji(e) for e in new),
        user=User(1, "u", False),
    )


@pytest.mark.parametrize(
    ("old", "new", "rating"),
    [
        ([], ["👍"], 1),
        ([], ["👎"], -1),
        (["👍"], ["👎"], -1),  # changed: the new one wins
        (["👍"], ["👍", "👎"], -1),  # both set: the one added now wins
        (["👍", "👎"], ["👍"], 1),  # 👎 taken away, 👍 stays
        (["👍"], [], 0),  # taken away: withdraw
        (["👎"], ["🔥"], 0),  # replaced by another emoji: withdraw
        ([], ["🔥"], None),  # not a rating at all
        (["🔥"], [], None),
        (["👍"], ["👍", "🔥"], None),  # only another emoji added: the rating is left alone
    ],
)
def test_reaction_changes_map_to_ratings(old: list[str], new: list[str], rating: int | None) -> None:
    assert reaction_rating(change(old, new)) == rating


def test_custom_emoji_are_not_ratings() -> None:
    import datetime

    update = MessageReactionUpdated(
        chat=Chat(1, "private"),
        message_id=7,
        date=datetime.datetime.now(datetime.UTC),
        old_reaction=(),
        new_reaction=(ReactionTypeCustomEmoji("123"),),
        user=User(1, "u", False),
    )
    assert reaction_rating(update) is None


def test_fit_parts_keeps_everything_without_a_cap() -> None:
    parts = [f"part {i}" for i in range(9)]
    assert fit_parts(parts, None) == parts
    assert fit_parts(parts, 8) == parts


def test_fit_parts_cuts_to_the_cap_and_says_so() -> None:
    parts = ["x" * LIMIT for _ in range(9)]
    kept = fit_parts(parts, USER_INSTALL_FOLLOWUPS)
    assert len(kept) == USER_INSTALL_FOLLOWUPS + 1
    assert all(len(p) <= LIMIT for p in kept)
    assert kept[-1].endswith("Ask me in a DM for the rest.)") and "5 follow-up" in kept[-1]
    assert kept[:-1] == parts[:USER_INSTALL_FOLLOWUPS]
    # a cap already used up leaves the main message only
    assert len(fit_parts(parts, 0)) == 1


def test_a_code_block_cut_for_the_cap_stays_closed() -> None:
    lines = [f"line_{i} = {i}" for i in range(140)]
    code = "```python\n" + "\n".join(lines) + "\n```"
    assert len(code) <= LIMIT
    kept = fit_parts(["intro", code, "the rest"], 1)
    assert len(kept) == 2 and len(kept[-1]) <= LIMIT
    assert kept[-1].count("```") % 2 == 0  # the note follows a closed code block
    assert kept[-1].startswith("```python\nline_0 = 0") and "follow-up" in kept[-1]


def test_draft_ids_are_non_zero_and_failures_are_per_chat() -> None:
    assert all(new_draft_id() > 0 for _ in range(200))
    drafts = DraftChats()
    drafts.unsupported(5)
    assert not drafts.usable(5) and drafts.usable(6)

"""``ghostbot eval export-feedback``: users' 👍/👎 from Telegram/Discord as the judge's next input file."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

logger = logging.getLogger(__name__)

FEEDBACK_COLUMNS = ("question", "answer", "rating", "platform", "created_at")


class FeedbackSource(Protocol):
    async def export(
        self,
    ) -> Sequence: ...  # storage.FeedbackRow: question, answer, rating, platform, created_at


async def export_feedback(
    source: FeedbackSource, out: str | Path, *, only: Literal["all", "up", "down"] = "all"
) -> dict:
    """Write rated answers as CSV in the judge's input format (``question``, ``answer`` + kept extras).

    Rows whose question is no longer stored (e.g. the user ran /forget) cannot be judged and are skipped.
    Returns counts for the report."""
    rows = await source.export()
    wanted = {"all": (1, -1), "up": (1,), "down": (-1,)}[only]
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(FEEDBACK_COLUMNS)
        for r in rows:
            if r.rating not in wanted:
                continue
            if not (r.question or "").strip() or not (r.answer or "").strip():
                skipped += 1
                continue
            created = r.created_at.isoformat() if hasattr(r.created_at, "isoformat") else str(r.created_at)
            w.writerow([r.question, r.answer, f"{r.rating:+d}", r.platform, created])
            written += 1
    if skipped:
        logger.info("skipped %d rated answers whose question is no longer stored", skipped)
    return {
        "written": written,
        "skipped_without_question": skipped,
        "thumbs_up": sum(1 for r in rows if r.rating == 1),
        "thumbs_down": sum(1 for r in rows if r.rating == -1),
        "out": str(p),
    }

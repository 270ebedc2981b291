"""A small run of benchmarks/soak.py: distinct users through the real core, nothing lost, limits hold."""

from __future__ import annotations

from pathlib import Path

from benchmarks.soak import ok, soak


async def test_soak_answers_everyone_and_rate_limits_hold(tmp_path: Path) -> None:
    result = await soak(
        300, concurrency=8, burst_every=25, database_url=f"sqlite+aiosqlite:///{tmp_path / 'soak.db'}"
    )
    assert result["answered"] == result["stored_answers"] == result["expected_answers"] == 300 + 12 * 2
    assert result["rate_limited"] == result["expected_rate_limited"] == 24
    assert result["outbox_left"] == 0 and result["other_notices"] == 0
    assert ok(result), result

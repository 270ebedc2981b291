"""Settings shared by every end-to-end test: a temp SQLite file, BM25 only, no packs, generous limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.settings import Settings


def e2e_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        data_dir=tmp_path / "data",
        packs=[],
        dense_retrieval=False,  # BM25 only: no encoder to load in end-to-end tests
        generator="extractive",
        rate_limit_per_minute=600.0,
        rate_limit_burst=100,
        request_timeout_seconds=30.0,
        http_port=0,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]

"""compose.yaml: every environment name it gives the bot is a real setting, and the profiles are wired."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
SETTINGS = {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def bot(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["ghostbot"]


def exported(service: dict[str, Any]) -> dict[str, str]:
    """Names the bot's start script exports (a profile's service switches them on)."""
    script = "\n".join(str(part) for part in service.get("command") or [])
    return dict(re.findall(r'export ([A-Z_][A-Z0-9_]*)="([^"]*)"', script))


def test_every_environment_name_for_the_bot_is_a_setting(compose: dict[str, Any]) -> None:
    service = bot(compose)
    names = set(service["environment"]) | set(exported(service))
    assert names, "the bot gets no environment at all?"
    assert names <= SETTINGS, f"not settings: {sorted(names - SETTINGS)}"
    assert {"DATABASE_URL", "OPENAI_BASE_URL"} <= set(exported(service))


def test_the_bot_has_its_data_volume_health_check_and_a_loopback_port(compose: dict[str, Any]) -> None:
    service = bot(compose)
    assert any(str(v).endswith(":/app/data") for v in service["volumes"])
    assert service["environment"]["DATA_DIR"] == "/app/data"
    assert "/healthz" in " ".join(service["healthcheck"]["test"])
    assert all(str(port).startswith("127.0.0.1:") for port in service["ports"])
    # Serving on 0.0.0.0 inside the container needs a key: compose refuses to start without one.
    assert service["environment"]["HTTP_HOST"] == "0.0.0.0"
    assert str(service["environment"]["HTTP_API_KEY"]).startswith("${HTTP_API_KEY:?")
    assert {"ghostbot-data", "postgres-data", "ollama-models"} <= set(compose["volumes"])


def test_postgres_profile_is_healthy_before_the_bot_and_wired_to_database_url(
    compose: dict[str, Any],
) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    dependency = bot(compose)["depends_on"]["postgres"]
    assert dependency == {"condition": "service_healthy", "required": False}
    url = exported(bot(compose))["DATABASE_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    env = postgres["environment"]
    assert url.endswith(f"/{env['POSTGRES_DB']}") and f"//{env['POSTGRES_USER']}:" in url
    assert Settings(database_url=url).database_url == url  # the setting accepts it as written


def test_ollama_profile_is_wired_to_openai_base_url(compose: dict[str, Any]) -> None:
    ollama = compose["services"]["ollama"]
    assert ollama["profiles"] == ["ollama"]
    assert bot(compose)["depends_on"]["ollama"]["required"] is False
    assert exported(bot(compose))["OPENAI_BASE_URL"] == "http://ollama:11434/v1"
    assert "profiles" not in bot(compose)  # plain `docker compose up` starts the bot

"""Issue 10: configuration from the documented .env, the web namespace, bounded rate limiting, one redaction."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import aiohttp
import pytest

from bots.compose import open_app
from bots.http import HttpAdapter
from bots.logs import SecretRedactor
from core.access import AccessPolicy
from core.ratelimit import RateLimiter
from core.redaction import Redactor, redact_url
from core.settings import Settings
from core.types import ChatKind, Incoming

ROOT = Path(__file__).resolve().parents[2]


# --- M7: the documented .env starts ----------------------------------------------------------------------


async def test_the_app_starts_from_a_verbatim_copy_of_env_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings()
    assert settings.telegram_bot_token is None  # TELEGRAM_BOT_TOKEN= does not start Telegram
    assert settings.discord_bot_token is None
    assert settings.model_path is None  # MODEL_PATH= is not the current directory
    assert settings.torch_threads is None  # TORCH_THREADS= parses
    assert settings.http_api_key is None and settings.openai_base_url is None
    assert settings.secret_values() == []
    # Start it (the packs and the encoder are big; everything else is the file's own values).
    quick = settings.model_copy(update={"packs": [], "dense_retrieval": False, "http_port": 0})
    async with open_app(quick) as app:
        assert app.generator.name == "extractive"
        adapter = HttpAdapter(app)
        await adapter.start()
        try:
            async with aiohttp.ClientSession() as client:
                response = await client.get(f"http://127.0.0.1:{adapter.port}/healthz")
                assert response.status == 200
        finally:
            await adapter.stop()
    assert (tmp_path / "data" / "ghostbot.db").exists()  # DATABASE_URL from the file


def test_every_setting_is_documented() -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"{name.upper()}=" in example, name
        assert f"`{name.upper()}`" in readme, name


def test_packs_none_builds_no_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKS", "none")
    assert Settings(_env_file=None).packs == []  # type: ignore[call-arg]
    monkeypatch.setenv("PACKS", "")
    assert Settings(_env_file=None).packs == ["cwe", "attack"]  # type: ignore[call-arg]


# --- H1: web users only match web: entries ----------------------------------------------------------------


def _web(user: str) -> Incoming:
    return Incoming("web", "e", user, ChatKind.DM, user, "web", "hi")


def test_web_users_match_only_explicit_web_entries() -> None:
    policy = AccessPolicy(admin_users={"telegram:42", "42"}, allowed_users={"telegram:42", "42", "web:abc"})
    for claimed in ("42", "telegram:42"):
        assert not policy.is_admin("web", claimed)
        assert not policy.check(_web(claimed)).allowed
    assert policy.check(_web("abc")).allowed
    assert not policy.check(_web("web:abc")).allowed
    assert AccessPolicy(admin_users={"web:abc"}).is_admin("web", "abc")
    assert AccessPolicy(allowed_users={"telegram:42", "web:*"}).check(_web("anyone")).allowed
    assert not AccessPolicy(allowed_users={"*"}).check(_web("anyone")).allowed
    # Bare ids still match Telegram and Discord.
    assert policy.is_admin("telegram", "42") and policy.is_admin("discord", "42")


# --- Low: bounded rate limiter ----------------------------------------------------------------------------


def test_rate_limiter_memory_is_bounded_even_when_no_bucket_has_refilled() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=1, burst=1, clock=lambda: now[0], max_buckets=100)
    for i in range(10_000):
        assert limiter.check("web", f"user-{i}") == 0.0  # each new id empties its bucket
        now[0] += 0.001
    assert len(limiter) <= 100


def test_rate_limiter_keeps_recent_limited_users() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=6, burst=1, clock=lambda: now[0], max_buckets=10)
    assert limiter.check("telegram", "spammer") == 0.0
    for i in range(5):  # a few others, then the spammer again: still limited
        limiter.check("telegram", f"other-{i}")
    assert limiter.check("telegram", "spammer") > 0
    now[0] += 60  # everyone refilled: new ids evict the refilled buckets first
    for i in range(20):
        limiter.check("telegram", f"later-{i}")
    assert len(limiter) <= 10


# --- Low: one redaction ----------------------------------------------------------------------------------


def test_short_secrets_and_the_judge_key_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_API_KEY", "jk-judge-secret")
    settings = Settings(_env_file=None, http_api_key="abc12", openai_api_key="Zq")  # type: ignore[call-arg]
    assert "jk-judge-secret" in settings.secret_values()
    redactor = SecretRedactor(settings.secret_values())
    record = logging.LogRecord("x", logging.INFO, "f", 1, "keys %s %s", ("abc12", "jk-judge-secret"), None)
    redactor.filter(record)
    assert record.getMessage() == "keys *** ***"
    assert Redactor(["k"]).redact("key=k") == "***ey=***"  # even one character: a secret never shows


def test_redact_url_drops_credentials_query_and_fragment() -> None:
    assert redact_url("https://u:p@host:8080/v1?key=sk-1#frag") == "https://host:8080/v1"
    assert redact_url("http://[::1]:9000/v1?api-key=x") == "http://[::1]:9000/v1"


def test_there_is_one_redact_url() -> None:
    from core.generators import openai_compat
    from evaluation import judges

    assert openai_compat.redact_url is redact_url and judges.redact_url is redact_url


# --- Low: /stats in groups ------------------------------------------------------------------------------


async def test_stats_in_a_group_shows_no_one_elses_data(tmp_path: Path) -> None:
    from tests.core.core_doubles import RecordingSink
    from tests.support import app_settings, indexed_app

    async with indexed_app(app_settings(tmp_path, admin_users={"telegram:1"}), tmp_path) as app:

        async def stats(kind: ChatKind, event: str) -> str:
            sink = RecordingSink()
            chat = "-100" if kind is ChatKind.GROUP else "1"
            await app.manager.handle(Incoming("telegram", event, chat, kind, "1", "admin", "/stats"), sink)
            return "\n".join(sink.notices())

        assert "Everyone" in await stats(ChatKind.DM, "e1")
        in_group = await stats(ChatKind.GROUP, "e2")
        assert "Your statistics" in in_group and "Everyone" not in in_group

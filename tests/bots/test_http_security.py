"""Issue 10's HTTP findings, each against the real adapter on 127.0.0.1 (H1, H2, M3, M4 and the HTTP lows)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bots.http import MAX_BODY_BYTES, ExposureError, HttpAdapter, check_exposure
from core.access import REFUSAL
from tests.bots.http_support import GatedGenerator, client, serve, sse, until
from tests.support import app_settings, indexed_app

KEY = "a-long-test-key-0123456789"
NOTE = "# Kerberoasting\n\nKerberoasting requests service tickets and cracks them offline.\n"


@pytest.fixture
async def open_server(tmp_path: Path) -> AsyncIterator[HttpAdapter]:
    """No key, loopback, admin and allow lists that name Telegram users."""
    settings = app_settings(tmp_path, admin_users={"telegram:42", "42"}, allowed_users={"telegram:42", "42"})
    async with indexed_app(settings, tmp_path, index={"k.md": NOTE}) as app, serve(app) as adapter:
        yield adapter


@pytest.fixture
async def keyed_server(tmp_path: Path) -> AsyncIterator[HttpAdapter]:
    settings = app_settings(tmp_path, http_api_key=KEY)
    async with indexed_app(settings, tmp_path, index={"k.md": NOTE}) as app, serve(app) as adapter:
        yield adapter


def _texts(events: list[dict]) -> str:
    return "\n".join(e.get("text", "") for e in events)


# --- H1: the session is the server's, in the web: namespace -----------------------------------------------


async def test_a_web_user_cannot_claim_a_telegram_identity(open_server: HttpAdapter) -> None:
    async with client(open_server) as web:
        for claimed in ("telegram:42", "42"):
            events = await sse(await web.post("/api/chat", json={"text": "/stats", "session": claimed}))
            assert _texts(events) == REFUSAL  # neither admin nor allowed: the body's session is ignored
        cookie = next(c for c in web.cookie_jar if c.key == "ghostbot_session")
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert not cookie["secure"]  # plain HTTP on loopback
    async with aiohttp.ClientSession() as proxied:
        response = await proxied.get(
            f"http://127.0.0.1:{open_server.port}/", headers={"X-Forwarded-Proto": "https"}
        )
        assert "Secure" in response.headers["Set-Cookie"]


async def test_the_session_cookie_is_signed(keyed_server: HttpAdapter) -> None:
    async with client(keyed_server) as web:
        assert (await web.post("/api/login", json={"key": KEY})).status == 200
        value = next(c.value for c in web.cookie_jar if c.key == "ghostbot_session")
        session, authed, signature = value.split(".")
        assert authed == "1"
    for forged in (f"someone-else.1.{signature}", f"{session}.1.{signature[:-2]}xx", f"{session}.1"):
        async with client(keyed_server, cookies={"ghostbot_session": forged}) as other:
            assert (await other.post("/api/chat", json={"text": "/stats"})).status == 401


async def test_each_browser_has_its_own_history(open_server: HttpAdapter, tmp_path: Path) -> None:
    settings = app_settings(tmp_path / "2")
    async with (
        indexed_app(settings, tmp_path / "2", index={"k.md": NOTE}) as app,
        serve(app) as adapter,
        client(adapter) as victim,
        client(adapter) as attacker,
    ):
        await sse(await victim.post("/api/chat", json={"text": "What is Kerberoasting?"}))
        victim_id = next(c.value for c in victim.cookie_jar if c.key == "ghostbot_session").split(".")[0]
        # The attacker names the victim's session in every field it can; it still only sees its own.
        stolen = {"text": "/stats", "session": victim_id, "id": "x"}
        assert "questions: 0" in _texts(await sse(await attacker.post("/api/chat", json=stolen)))
        await sse(await attacker.post("/api/chat", json={"text": "/forget", "session": victim_id}))
        assert "questions: 1" in _texts(await sse(await victim.post("/api/chat", json={"text": "/stats"})))


async def test_the_same_client_event_id_in_two_sessions_is_answered_twice(open_server: HttpAdapter) -> None:
    async with client(open_server) as one, client(open_server) as two:
        body = {"text": "/help", "id": "same-id"}
        assert _texts(await sse(await one.post("/api/chat", json=body)))
        assert _texts(await sse(await two.post("/api/chat", json=body)))  # not swallowed as a duplicate


# --- H2: the key guards everything but /healthz ------------------------------------------------------------


async def test_the_key_guards_every_endpoint_but_healthz(keyed_server: HttpAdapter) -> None:
    async with client(keyed_server) as anyone:
        assert (await anyone.get("/healthz")).status == 200
        for method, path in [
            ("GET", "/"),
            ("GET", "/metrics"),
            ("GET", "/v1/models"),
            ("POST", "/api/chat"),
            ("POST", "/api/feedback"),
            ("POST", "/v1/chat/completions"),
        ]:
            response = await anyone.request(method, path, json={"text": "hi", "message_id": "m", "rating": 1})
            assert response.status == 401, path
            assert KEY not in await response.text()
        page = await anyone.get("/")
        assert "Access key" in await page.text()  # the web chat asks for the key
        assert (await anyone.post("/api/login", json={"key": "wrong"})).status == 401
        assert (await anyone.post("/api/login", json={"key": KEY})).status == 200
        # Once: the cookie now carries it.
        assert "Send" in await (await anyone.get("/")).text()
        assert (await anyone.get("/metrics")).status == 200
        events = await sse(await anyone.post("/api/chat", json={"text": "What is Kerberoasting?"}))
        assert any(e["type"] == "final" for e in events)
    async with client(keyed_server, headers={"Authorization": f"Bearer {KEY}"}) as api:
        assert (await api.get("/metrics")).status == 200
        assert (await api.get("/v1/models")).status == 200


def test_a_public_address_without_a_key_is_refused(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10", ""):
        with pytest.raises(ExposureError, match="HTTP_API_KEY"):
            check_exposure(app_settings(tmp_path, http_host=host))
    check_exposure(app_settings(tmp_path, http_host="0.0.0.0", http_api_key=KEY))
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(app_settings(tmp_path, http_host=host))


def test_ghostbot_run_refuses_a_keyless_public_port_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "HTTP_HOST": "0.0.0.0", "DATA_DIR": str(tmp_path), "PACKS": "none"}
    env.pop("HTTP_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-c", "from bots.cli import main; raise SystemExit(main(['run']))"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "HTTP_API_KEY" in result.stderr and "HTTP_HOST=127.0.0.1" in result.stderr
    assert not (tmp_path / "ghostbot.db").exists()


# --- M4: CSRF and DNS rebinding --------------------------------------------------------------------------


async def test_cross_site_and_rebinding_requests_are_refused(open_server: HttpAdapter) -> None:
    async with client(open_server) as web:
        plain = await web.post("/api/chat", data='{"text": "/help"}', headers={"Content-Type": "text/plain"})
        assert plain.status == 415
        foreign = await web.post(
            "/api/chat", json={"text": "/help"}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status == 403
        null_origin = await web.post("/api/chat", json={"text": "/help"}, headers={"Origin": "null"})
        assert null_origin.status == 403
        same = await web.post(
            "/api/chat", json={"text": "/help"}, headers={"Origin": f"http://127.0.0.1:{open_server.port}"}
        )
        assert same.status == 200
        rebound = await web.get("/", headers={"Host": f"evil.example:{open_server.port}"})
        assert rebound.status == 421
        rebound_post = await web.post("/api/chat", json={"text": "/help"}, headers={"Host": "evil.example"})
        assert rebound_post.status == 421
        assert (await web.get("/", headers={"Host": f"localhost:{open_server.port}"})).status == 200


async def test_a_reverse_proxy_domain_can_be_allowed(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, http_allowed_hosts="bot.example.org")
    async with indexed_app(settings, tmp_path) as app, serve(app) as adapter, client(adapter) as web:
        proxied = {"Host": "bot.example.org", "Origin": "https://bot.example.org"}
        assert (await web.post("/api/chat", json={"text": "/help"}, headers=proxied)).status == 200
        rewritten = {
            "Origin": "https://bot.example.org"
        }  # a proxy that rewrites Host to the upstream address
        assert (await web.post("/api/chat", json={"text": "/help"}, headers=rewritten)).status == 200
        other = {"Host": "other.example.org"}
        assert (await web.post("/api/chat", json={"text": "/help"}, headers=other)).status == 421


async def test_the_page_forbids_inline_script_it_did_not_write(open_server: HttpAdapter) -> None:
    async with client(open_server) as web:
        page = await web.get("/")
        policy = page.headers["Content-Security-Policy"]
        nonce = policy.split("'nonce-")[1].split("'")[0]
        assert f'<script nonce="{nonce}">' in await page.text()
        assert "frame-ancestors 'none'" in policy


# --- M3: limits --------------------------------------------------------------------------------------------


async def test_per_ip_rate_limit(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, http_rate_limit_per_minute=1, http_rate_limit_burst=2)
    async with indexed_app(settings, tmp_path) as app, serve(app) as adapter, client(adapter) as web:
        for _ in range(2):
            assert (await web.post("/api/chat", json={"text": "/help"})).status == 200
        limited = await web.post("/api/chat", json={"text": "/help"})
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        # A new session (cookie) does not reset it: the limit is the address's.
        async with client(adapter) as fresh:
            assert (await fresh.post("/api/chat", json={"text": "/help"})).status == 429
            headers = {"Authorization": "Bearer x"}
            body = {"messages": [{"role": "user", "content": "hi"}]}
            assert (await fresh.post("/v1/chat/completions", json=body, headers=headers)).status == 429


async def test_global_rate_limit(tmp_path: Path) -> None:
    settings = app_settings(
        tmp_path,
        http_rate_limit_per_minute=600,
        http_rate_limit_burst=100,
        http_global_rate_limit_per_minute=1,
    )
    async with indexed_app(settings, tmp_path) as app, serve(app) as adapter, client(adapter) as web:
        statuses = [(await web.post("/api/chat", json={"text": "/help"})).status for _ in range(101)]
        assert statuses[:100] == [200] * 100 and statuses[100] == 429


class CountingRetriever:
    def __init__(self) -> None:
        self.calls = 0

    async def search(self, query: str, k: int = 4, *, viewer: str | None = None) -> list:
        self.calls += 1
        return []


async def test_a_full_queue_is_refused_before_retrieval(tmp_path: Path) -> None:
    generator = GatedGenerator()
    settings = app_settings(tmp_path, queue_size=1)
    async with indexed_app(settings, tmp_path, generator=generator) as app, serve(app) as adapter:
        counting = CountingRetriever()
        app.manager.retriever = counting
        app.assistant.retriever = counting
        headers = {"Authorization": "Bearer x"}
        async with client(adapter) as one, client(adapter) as two:
            running = asyncio.ensure_future(one.post("/api/chat", json={"text": "first question"}))
            await until(lambda: app.worker.busy)
            waiting = asyncio.ensure_future(app.assistant.ask("second question", owner="other"))
            await until(lambda: app.worker.queue_depth == 1)
            before = counting.calls
            busy = _texts(await sse(await two.post("/api/chat", json={"text": "third question"})))
            assert "busy" in busy
            body = {"messages": [{"role": "user", "content": "fourth question"}]}
            api = await two.post("/v1/chat/completions", json=body, headers=headers)
            assert api.status == 503 and "Retry-After" in api.headers
            assert counting.calls == before  # neither refused request retrieved anything
            generator.gate.set()
            await sse(await running)
            await waiting


async def test_a_client_that_goes_away_frees_its_queue_slot(tmp_path: Path) -> None:
    generator = GatedGenerator()
    settings = app_settings(tmp_path, queue_size=1)
    async with indexed_app(settings, tmp_path, generator=generator) as app, serve(app) as adapter:
        body = {"messages": [{"role": "user", "content": "a question"}], "stream": True}
        async with client(adapter) as api:
            response = await api.post("/v1/chat/completions", json=body)
            await response.content.readline()  # streaming has begun
            await until(lambda: app.worker.busy)
            assert app.worker.pending("api:127.0.0.1")
            response.close()  # the client disconnects mid-answer
        await until(lambda: not app.worker.pending("api:127.0.0.1") and not app.worker.busy)
        assert generator.stopped.wait(5)
        async with client(adapter) as web:
            chat = await web.post("/api/chat", json={"text": "another question"})
            await until(lambda: app.worker.busy)
            chat.close()  # the web chat too
        await until(lambda: not app.worker.busy and app.worker.queue_depth == 0)


async def test_api_requests_from_one_client_share_one_owner(tmp_path: Path) -> None:
    generator = GatedGenerator()
    async with (
        indexed_app(app_settings(tmp_path), tmp_path, generator=generator) as app,
        serve(app) as adapter,
    ):
        body = {"messages": [{"role": "user", "content": "a question"}]}
        async with client(adapter) as api:
            first = asyncio.ensure_future(api.post("/v1/chat/completions", json=body))
            await until(lambda: app.worker.busy)
            second = await api.post("/v1/chat/completions", json=body)
            assert second.status == 429  # one request at a time per client address
            generator.gate.set()
            assert (await first).status == 200


# --- lows ----------------------------------------------------------------------------------------------------


async def test_hostile_json_is_a_400(open_server: HttpAdapter) -> None:
    headers = {"Content-Type": "application/json"}
    async with client(open_server) as web:
        for body in (
            "[" * 100_000 + "]" * 100_000,
            '{"text": ' + "9" * 5000 + "}",
            '{"a":' * 40 + "1" + "}" * 40,
        ):
            response = await web.post("/api/chat", data=body, headers=headers)
            assert response.status == 400, body[:20]
            assert "error" in await response.json()


async def test_an_oversized_body_is_refused_before_it_is_read(open_server: HttpAdapter) -> None:
    """A declared length over the limit gets its 413 at once: the server does not wait for (or buffer) a body
    the client has not even sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", open_server.port)
    try:
        writer.write(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)  # no body sent: only an early refusal answers
        assert status.split()[1] == b"413"
    finally:
        writer.close()
    async with client(open_server) as web:  # a body exactly at the limit is read, parsed and answered
        body = b'{"text": "' + b"a" * (MAX_BODY_BYTES - 12) + b'"}'
        assert len(body) == MAX_BODY_BYTES
        response = await web.post("/api/chat", data=body, headers={"Content-Type": "application/json"})
        assert response.status == 200
        assert _texts(await sse(response)) == REFUSAL  # this server only admits Telegram users


async def test_metrics_need_the_key_when_set(keyed_server: HttpAdapter) -> None:
    async with aiohttp.ClientSession() as anyone:
        response = await anyone.get(f"http://127.0.0.1:{keyed_server.port}/metrics")
        assert response.status == 401
        assert "ghostbot_queue_depth" not in await response.text()

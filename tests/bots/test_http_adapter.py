"""The HTTP adapter on the real app: health, metrics, web chat (SSE), feedback, the OpenAI-compatible API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bots.compose import App
from bots.http import HttpAdapter
from tests.bots.http_support import client as http_client
from tests.bots.http_support import serve, sse
from tests.support import app_settings, indexed_app

XSS_NOTE = """# Cross-site scripting runbook

Reflected cross-site scripting happens when a web page echoes request parameters without encoding them.
Encode output for the HTML context and set a strict Content-Security-Policy header.
"""


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = app_settings(tmp_path, http_api_key="test-key-123456")
    async with indexed_app(settings, tmp_path, index={"xss.md": XSS_NOTE}) as app:
        yield app


@pytest.fixture
async def adapter(app: App) -> AsyncIterator[HttpAdapter]:
    async with serve(app) as adapter:
        yield adapter


@pytest.fixture
async def client(adapter: HttpAdapter) -> AsyncIterator[aiohttp.ClientSession]:
    """Holds the key in its cookie, like the web chat after sign-in."""
    async with http_client(adapter) as client:
        login = await client.post("/api/login", json={"key": "test-key-123456"})
        assert login.status == 200
        yield client


async def _events(response: Any) -> list[Any]:
    return await sse(response)


async def test_healthz_reports_database_model_and_queue(client: aiohttp.ClientSession) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["model"]["name"] == "extractive"
    assert body["queue"] == {"depth": 0, "capacity": 32, "busy": False}


async def test_healthz_degrades_when_the_worker_stops(app: App, client: aiohttp.ClientSession) -> None:
    await app.worker.shutdown(drain=False, timeout=5)
    response = await client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["status"] == "degraded"


async def test_metrics_expose_queue_gauges(client: aiohttp.ClientSession) -> None:
    await client.get("/healthz")
    text = await (await client.get("/metrics")).text()  # the cookie holds the key
    assert "ghostbot_queue_depth 0.0" in text
    assert "ghostbot_queue_capacity 32.0" in text
    assert 'ghostbot_http_requests_total{route="healthz"} 1.0' in text


async def test_web_chat_streams_a_cited_answer_and_keeps_history(
    app: App, client: aiohttp.ClientSession
) -> None:
    response = await client.post("/api/chat", json={"text": "How do I stop reflected cross-site scripting?"})
    assert response.status == 200
    events = await _events(response)
    final = [e for e in events if e["type"] == "final"]
    assert len(final) == 1
    assert "[1]" in final[0]["text"] and "Encode output" in final[0]["text"]
    assert final[0]["sources"][0]["source"].endswith("xss.md")
    # The turn is stored like any chat: /stats sees one exchange for this session.
    stats = await _events(await client.post("/api/chat", json={"text": "/stats"}))
    stats_text = "\n".join(e["text"] for e in stats if e["type"] == "notice")
    assert "questions: 1" in stats_text and "answers: 1" in stats_text
    session = next(c.value for c in client.cookie_jar if c.key == "ghostbot_session").split(".")[0]
    history = await app.db.conversations.history(app.manager.conversation_key(_web_incoming(session)))
    assert [m.role for m in history] == ["user", "assistant"]

    # 👍 on that answer is stored as feedback.
    feedback = await client.post("/api/feedback", json={"message_id": final[0]["message_id"], "rating": 1})
    assert feedback.status == 200 and (await feedback.json())["recorded"] is True
    exported = await app.db.feedback.export()
    assert [row.rating for row in exported] == [1]


def _web_incoming(session: str) -> Any:
    from core.types import ChatKind, Incoming

    return Incoming("web", "x", session, ChatKind.DM, session, "web", "")


async def test_web_chat_refuses_bad_input_politely(client: aiohttp.ClientSession) -> None:
    not_json = await client.post("/api/chat", data=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status == 400
    assert "not valid JSON" in (await not_json.json())["error"]["message"]
    bad_utf8 = await client.post(
        "/api/chat", data=b'{"text": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    assert bad_utf8.status == 400
    assert "UTF-8" in (await bad_utf8.json())["error"]["message"]
    no_text = await client.post("/api/chat", json={"question": "hi"})
    assert no_text.status == 400
    empty = await _events(await client.post("/api/chat", json={"text": "   "}))
    assert [e["type"] for e in empty] == ["notice"]


async def test_openai_api_requires_the_key(adapter: HttpAdapter) -> None:
    async with http_client(adapter) as client:
        response = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert response.status == 401
        text = await response.text()
        assert "test-key-123456" not in text


async def test_openai_api_answers_with_sources(client: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Bearer test-key-123456"}
    models = await (await client.get("/v1/models", headers=headers)).json()
    assert models["data"][0]["id"] == "extractive"
    body = {"messages": [{"role": "user", "content": "What header limits cross-site scripting?"}]}
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status == 200
    completion = await response.json()
    assert "Content-Security-Policy" in completion["choices"][0]["message"]["content"]
    assert completion["sources"][0]["ref"]

    streamed = await client.post("/v1/chat/completions", json={**body, "stream": True}, headers=headers)
    chunks = await _events(streamed)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == completion["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_openai_api_rejects_malformed_messages(client: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Bearer test-key-123456"}
    for body in ({"messages": []}, {"messages": [{"role": "assistant", "content": "x"}]}, {"model": "m"}):
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status == 400, body

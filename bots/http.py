"""HTTP adapter: /healthz, /metrics, a small web chat, and an OpenAI-compatible API.

The web chat goes through the ConversationManager (history, commands, rate limits) like a
Telegram DM; `/v1/chat/completions` is stateless and answers through the Assistant.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

from core.types import Answer, ChatKind, Incoming

if TYPE_CHECKING:
    from bots.compose import App

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024


class QueueSink:
    """A ReplySink that turns the reply into a stream of JSON events."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        await self.events.put({"type": "notice", "text": text})

    async def queued(self, position: int, eta_seconds: float) -> None:
        await self.events.put({"type": "queued", "position": position, "eta_seconds": round(eta_seconds, 1)})

    async def started(self) -> None:
        await self.events.put({"type": "started"})

    async def partial(self, text_so_far: str) -> None:
        await self.events.put({"type": "partial", "text": text_so_far})

    async def final(self, answer: Answer) -> Sequence[str]:
        message_id = uuid.uuid4().hex
        await self.events.put(
            {
                "type": "final",
                "message_id": message_id,
                "text": answer.text,
                "sources": [asdict(source) for source in answer.sources],
                "notices": answer.notices,
                "finish_reason": answer.finish_reason,
            }
        )
        return [message_id]


class _AppCollector:
    """Prometheus gauges read from live state at scrape time."""

    def __init__(self, app: App) -> None:
        self._app = app

    def collect(self) -> Any:
        worker = self._app.worker
        yield GaugeMetricFamily(
            "ghostbot_queue_depth", "Requests waiting for the generator", value=worker.queue_depth
        )
        yield GaugeMetricFamily(
            "ghostbot_generator_busy", "1 while a reply is being generated", value=int(worker.busy)
        )
        yield GaugeMetricFamily(
            "ghostbot_queue_capacity", "Maximum queued requests", value=self._app.settings.queue_size
        )


class HttpAdapter:
    def __init__(self, app: App) -> None:
        self._app = app
        self._settings = app.settings
        self._runner: web.AppRunner | None = None
        self._registry = CollectorRegistry()
        self._registry.register(_AppCollector(app))
        self._requests = Counter(
            "ghostbot_http_requests", "HTTP requests by route", ["route"], registry=self._registry
        )
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self._settings.http_host}:{self.port}/"

    def build(self) -> web.Application:
        application = web.Application(client_max_size=MAX_BODY_BYTES)
        application.add_routes(
            [
                web.get("/", self.index),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
                web.post("/api/chat", self.chat),
                web.post("/api/feedback", self.feedback),
                web.get("/v1/models", self.models),
                web.post("/v1/chat/completions", self.chat_completions),
            ]
        )
        return application

    async def start(self) -> None:
        self._runner = web.AppRunner(self.build(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.http_host, self._settings.http_port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else self._settings.http_port
        log.info("HTTP server on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- routes ---------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        self._requests.labels("index").inc()
        page = resources.files("bots").joinpath("web_chat.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html")

    async def healthz(self, request: web.Request) -> web.Response:
        self._requests.labels("healthz").inc()
        database_ok = await self._app.db.ping()
        worker = self._app.worker
        body = {
            "status": "ok" if database_ok and worker.accepting else "degraded",
            "database": "ok" if database_ok else "unreachable",
            "model": {"name": self._app.generator.name, "context_length": self._app.generator.context_length},
            "queue": {
                "depth": worker.queue_depth,
                "capacity": self._settings.queue_size,
                "busy": worker.busy,
            },
        }
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), content_type="text/plain", charset="utf-8")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """POST {"text", "session"?, "id"?} → server-sent events of the reply."""
        self._requests.labels("chat").inc()
        payload = await _json_body(request)
        text = payload.get("text")
        if not isinstance(text, str):
            raise _bad_request('Send JSON like {"text": "your question"}.')
        session = str(payload.get("session") or request.remote or "web")[:64]
        incoming = Incoming(
            platform="web",
            event_id=str(payload.get("id") or uuid.uuid4().hex)[:64],
            chat_id=session,
            chat_kind=ChatKind.DM,
            user_id=session,
            user_name="web",
            text=text,
        )
        sink = QueueSink()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        async for event in _drive(self._app.manager.handle(incoming, sink), sink):
            await response.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def feedback(self, request: web.Request) -> web.Response:
        payload = await _json_body(request)
        rating = payload.get("rating")
        if rating not in (1, -1) or not isinstance(payload.get("message_id"), str):
            raise _bad_request('Send {"message_id": "…", "session": "…", "rating": 1 or -1}.')
        session = str(payload.get("session") or request.remote or "web")[:64]
        stored = await self._app.manager.record_feedback(
            platform="web",
            chat_id=session,
            user_id=session,
            platform_message_id=payload["message_id"],
            rating=rating,
            chat_kind=ChatKind.DM,
        )
        return web.json_response({"recorded": stored}, status=200 if stored else 404)

    async def models(self, request: web.Request) -> web.Response:
        self._check_api_key(request)
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self._app.generator.name, "object": "model", "owned_by": "ghostbot"}],
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """OpenAI-compatible: the last user message is the question (stateless, with retrieval)."""
        self._requests.labels("chat_completions").inc()
        self._check_api_key(request)
        payload = await _json_body(request)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad_request("'messages' must be a non-empty list.")
        question = next(
            (m.get("content") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
            None,
        )
        if not isinstance(question, str) or not question.strip():
            raise _bad_request("The last user message must have text content.")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = self._app.generator.name
        answer = await self._app.assistant.ask(question)
        sources = [asdict(source) for source in answer.sources]
        if not payload.get("stream"):
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer.text},
                            "finish_reason": answer.finish_reason,
                        }
                    ],
                    "sources": sources,
                }
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for delta, finish in (
            ({"role": "assistant", "content": answer.text}, None),
            ({}, answer.finish_reason),
        ):
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    def _check_api_key(self, request: web.Request) -> None:
        expected = self._settings.http_api_key
        if expected is None:
            return
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise web.HTTPUnauthorized(
                text=json.dumps(
                    {"error": {"message": "Invalid or missing API key.", "type": "invalid_request_error"}}
                ),
                content_type="application/json",
            )


async def _drive(handling: Any, sink: QueueSink) -> AsyncIterator[dict[str, Any]]:
    """Run the manager while yielding the sink's events as they arrive."""
    task = asyncio.ensure_future(handling)
    try:
        while True:
            getter = asyncio.ensure_future(sink.events.get())
            done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            while not sink.events.empty():
                yield sink.events.get_nowait()
            task.result()  # re-raise a failure
            return
    finally:
        if not task.done():
            task.cancel()


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad_request("The request body is not valid UTF-8.") from None
    except json.JSONDecodeError:
        raise _bad_request("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise _bad_request("The request body must be a JSON object.")
    return payload


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": {"message": message, "type": "invalid_request_error"}}),
        content_type="application/json",
    )

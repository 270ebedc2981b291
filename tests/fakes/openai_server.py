"""A loopback fake of an OpenAI-compatible server (aiohttp, in a background thread).

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain JSON, or SSE when ``"stream": true``:
``data: {chunk}`` events then ``data: [DONE]``), optional ``logprobs``. Every request is recorded.

What the server answers is decided by a pluggable *handler*: ``Callable[[RecordedRequest], Reply]``. A
:class:`Reply` describes a normal answer or a failure mode (HTTP status, delay, slow chunks, broken JSON).
Usable from sync and async tests alike::

    with FakeOpenAIServer(Reply("Hello there")) as server:
        client = OpenAIGenerator(server.base_url, "sk-test", "ghostlm", 4096)
        ...
        server.handler = lambda req: Reply(status=500)  # switch behaviour mid-test
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

DEFAULT_MODEL = "ghostlm"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON body, or None

    @property
    def messages(self) -> list[dict]:
        return list((self.body or {}).get("messages", []))

    @property
    def stream(self) -> bool:
        return bool((self.body or {}).get("stream"))


@dataclass
class Reply:
    """One response. ``chunks`` (streaming) defaults to ``text`` split after each space."""

    text: str = "Hello from the fake server."
    chunks: list[str] | None = None
    status: int = 200
    error_message: str | None = None  # body message for a non-2xx status
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response starts
    chunk_delay: float = 0.0  # seconds between streamed chunks
    broken_json: bool = False  # the body (or first SSE event) is not valid JSON
    logprobs: list[dict] | None = None  # OpenAI "logprobs.content" entries: {token, logprob, top_logprobs}
    finish_reason: str = "stop"
    model: str = DEFAULT_MODEL

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        parts = self.text.split(" ")
        return [p + " " for p in parts[:-1]] + [parts[-1]] if self.text else []


Handler = Callable[[RecordedRequest], Reply]


def fixed(reply: Reply) -> Handler:
    return lambda request: reply


def error_reply(status: int, message: str | None = None, **kw: Any) -> Reply:
    defaults = {
        401: "Incorrect API key provided.",
        429: "Rate limit reached, slow down.",
        500: "The server had an error while processing your request.",
    }
    return Reply(status=status, error_message=message or defaults.get(status, f"HTTP {status}"), **kw)


class FakeOpenAIServer(LoopbackServer):
    """Starts on 127.0.0.1 with a free port. ``api_key`` set → requests without that bearer key get 401."""

    thread_name = "fake-openai"

    def __init__(
        self,
        handler: Handler | Reply | None = None,
        *,
        api_key: str | None = None,
        models: tuple[str, ...] = (DEFAULT_MODEL,),
    ) -> None:
        self.handler: Handler = fixed(handler) if isinstance(handler, Reply) else (handler or fixed(Reply()))
        self.api_key = api_key
        self.models = models
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0  # streams the client closed before the end

    # --- lifecycle ---------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set_reply(self, reply: Reply | Handler) -> None:
        self.handler = fixed(reply) if isinstance(reply, Reply) else reply

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    def wait_for_disconnect(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.disconnects:
                return True
            time.sleep(0.01)
        return False

    # --- handlers ----------------------------------------------------------------------------------------
    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        rec = RecordedRequest(request.method, request.path, dict(request.headers), body)
        self.requests.append(rec)
        return rec

    def _unauthorized(self, request: web.Request) -> bool:
        return self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}"

    @staticmethod
    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        kind = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status, "server_error")
        return web.json_response(
            {"error": {"message": message, "type": kind, "code": kind}}, status=status, headers=headers
        )

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if self._unauthorized(request):
            return self._error(401, "Incorrect API key provided.")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if self._unauthorized(request):
            return self._error(401, "Incorrect API key provided.")
        reply = self.handler(rec)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status >= 400:
            return self._error(reply.status, reply.error_message or f"HTTP {reply.status}", reply.headers)
        if rec.stream:
            return await self._stream(request, reply)
        if reply.broken_json:
            return web.Response(text='{"id": "x", "choices": [', content_type="application/json")
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": reply.finish_reason,
            "message": {"role": "assistant", "content": reply.text},
        }
        if reply.logprobs is not None and (rec.body or {}).get("logprobs"):
            choice["logprobs"] = {"content": reply.logprobs}
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": reply.model,
                "choices": [choice],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            },
            headers=reply.headers,
        )

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **reply.headers}
        )
        await resp.prepare(request)

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            body = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": reply.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(body)}\n\n".encode()

        events = [chunk({"role": "assistant", "content": ""})]
        if reply.broken_json:
            events.append(b'data: {"choices": [{"delta": \n\n')
        events += [chunk({"content": piece}) for piece in reply.pieces()]
        events += [chunk({}, reply.finish_reason), b"data: [DONE]\n\n"]
        try:
            for i, event in enumerate(events):
                if i and reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError
                await resp.write(event)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return resp

"""HTTP adapter: /healthz, /metrics, a small web chat, and an OpenAI-compatible API.

The web chat goes through the ConversationManager (history, commands, rate limits) like a Telegram DM; its user
is a session the server issues in a signed, HttpOnly, SameSite=Strict cookie, in the `web:` namespace of the
access lists. `/v1/chat/completions` is stateless and answers through the Assistant.

Security, in order, for every request (see README "Operations"):
- Host: loopback names, the configured host and `HTTP_ALLOWED_HOSTS` only (DNS rebinding).
- `HTTP_API_KEY`, when set, guards everything but `/healthz`: a bearer key, or the web chat's signed cookie after
  the key was typed once. Serving on a non-loopback address without a key is refused at start.
- POST bodies must be `application/json` of at most 256 KiB, and a browser's Origin must be this server (CSRF).
- Per-IP and global rate limits on the routes that do work; a full queue is refused before any retrieval.
- A client that goes away cancels its handler, which cancels its queued or running generation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import nh3
from aiohttp import web
from markdown_it import MarkdownIt
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

from core.answering import busy_notice
from core.ratelimit import RateLimiter
from core.settings import Settings
from core.types import Answer, ChatKind, Incoming

if TYPE_CHECKING:
    from bots.compose import App

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32
SESSION_COOKIE = "ghostbot_session"
SESSION_MAX_AGE = 365 * 24 * 3600
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/healthz", "/api/login"})  # reachable without the key
MAX_STOP_SEQUENCES = 4
_TOO_LARGE = f"The request body is too large (the limit is {MAX_BODY_BYTES // 1024} KiB)."
Session = tuple[str, bool]  # (session id, holds the API key)
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("ghostbot_session")


class ExposureError(ValueError):
    """The HTTP server would be reachable from other machines without a key."""


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve the web chat and the API on a non-loopback address without HTTP_API_KEY."""
    key = settings.http_api_key
    if is_loopback(settings.http_host) or (key is not None and key.get_secret_value()):
        return
    raise ExposureError(
        f"Refusing to serve the web chat and the API on {settings.http_host or 'every address'} without a key: "
        "anyone who can reach the port could use the assistant and read its conversations. "
        "Set HTTP_API_KEY to a long random secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
        "or set HTTP_HOST=127.0.0.1 to serve this machine only."
    )


# --- rendering -----------------------------------------------------------------------------------------------

_MARKDOWN = MarkdownIt("commonmark", {"html": False, "breaks": True}).disable("image")
_ALLOWED_TAGS = {"p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "hr"}
_ALLOWED_TAGS |= {f"h{n}" for n in range(1, 7)}


def render_html(markdown: str) -> str:
    """Markdown → sanitized HTML for the web chat: raw HTML in the text is shown as text, never run."""
    return nh3.clean(
        _MARKDOWN.render(markdown),
        tags=_ALLOWED_TAGS,
        attributes={"a": {"href"}, "ol": {"start"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


# --- the web chat's session --------------------------------------------------------------------------------


class SessionSigner:
    """Signs session cookies: `<session id>.<authed 0|1>.<HMAC-SHA256>`; changing the API key voids them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def for_settings(cls, settings: Settings) -> SessionSigner:
        key = settings.http_api_key.get_secret_value() if settings.http_api_key else ""
        base = _load_or_create_secret(Path(settings.data_dir) / "http_session.key")
        return cls(hashlib.sha256(base + b"\0" + key.encode()).digest())

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, session: str, *, authed: bool) -> str:
        body = f"{session}.{int(authed)}"
        return f"{body}.{self._sign(body)}"

    def read(self, value: str | None) -> Session | None:
        """(session, authed) of a cookie this server signed; None for anything else."""
        if not value or value.count(".") != 2:
            return None
        session, authed, signature = value.split(".")
        if not hmac.compare_digest(signature, self._sign(f"{session}.{authed}")) or authed not in ("0", "1"):
            return None
        return session, authed == "1"


def _load_or_create_secret(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(32)
    path.write_bytes(data)
    path.chmod(0o600)
    return data


# --- streaming sink ----------------------------------------------------------------------------------------


class QueueSink:
    """A ReplySink that turns the reply into a stream of JSON events (answers also as sanitized HTML)."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        await self.events.put({"type": "notice", "text": text})

    async def queued(self, position: int, eta_seconds: float) -> None:
        await self.events.put({"type": "queued", "position": position, "eta_seconds": round(eta_seconds, 1)})

    async def started(self) -> None:
        await self.events.put({"type": "started"})

    async def partial(self, text_so_far: str) -> None:
        await self.events.put({"type": "partial", "text": text_so_far, "html": render_html(text_so_far)})

    async def final(self, answer: Answer) -> Sequence[str]:
        message_id = uuid.uuid4().hex
        await self.events.put(
            {
                "type": "final",
                "message_id": message_id,
                "text": answer.text,
                "html": render_html(answer.text),
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


# --- /v1 completion limits -----------------------------------------------------------------------------------


class CompletionLimits:
    """Applies `stop` and `max_tokens` to a stream of pieces; `feed` returns what may be sent now.

    Text that could be the beginning of a stop sequence is held back until it is known not to be one.
    `reason` becomes "stop" (a stop sequence) or "length" (max_tokens, counted with the generator's
    tokenizer) when the completion must end; the caller then stops the generation.
    """

    def __init__(
        self, count_tokens: Callable[[str], int], max_tokens: int | None, stop: Sequence[str]
    ) -> None:
        self._count = count_tokens
        self._max_tokens = max_tokens
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""
        self._sent = 0
        self.reason: str | None = None

    def feed(self, piece: str) -> str:
        if self.reason is not None:
            return ""
        self.text += piece
        cut = min((i for i in (self.text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.reason = self.text[:cut], "stop"
        if self._max_tokens is not None and self._count(self.text) > self._max_tokens:
            self.text, self.reason = self.text[: self._fit(self._max_tokens)], "length"
        end = len(self.text) if self.reason is not None else max(self._sent, len(self.text) - self._hold)
        out, self._sent = self.text[self._sent : end], end
        return out

    def flush(self) -> str:
        out, self._sent = self.text[self._sent :], len(self.text)
        return out

    def _fit(self, limit: int) -> int:
        """The longest prefix of `text` within `limit` tokens (binary search on characters)."""
        low, high = 0, len(self.text)
        while low < high:
            mid = (low + high + 1) // 2
            if self._count(self.text[:mid]) <= limit:
                low = mid
            else:
                high = mid - 1
        return low


def _text_of(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts (OpenAI's newer format)."""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(t for t in texts if isinstance(t, str)) or None
    return content if isinstance(content, str) else None


def _completion_options(payload: dict[str, Any]) -> tuple[int | None, list[str], float | None]:
    """(max_tokens, stop, temperature) of an OpenAI request, validated."""
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _bad_request("'max_tokens' must be a positive integer.")
    stop = payload.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP_SEQUENCES:
        stops = list(stop)
    else:
        raise _bad_request(f"'stop' must be a string or a list of at most {MAX_STOP_SEQUENCES} strings.")
    temperature = payload.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise _bad_request("'temperature' must be a number between 0 and 2.")
        if not 0 <= temperature <= 2:
            raise _bad_request("'temperature' must be a number between 0 and 2.")
        temperature = float(temperature)
    return max_tokens, stops, temperature


# --- the adapter -------------------------------------------------------------------------------------------


class HttpAdapter:
    def __init__(self, app: App) -> None:
        self._app = app
        self._settings = app.settings
        check_exposure(self._settings)
        self._runner: web.AppRunner | None = None
        self._registry = CollectorRegistry()
        self._registry.register(_AppCollector(app))
        self._requests = Counter(
            "ghostbot_http_requests", "HTTP requests by route", ["route"], registry=self._registry
        )
        s = self._settings
        self._ip_limiter = RateLimiter(per_minute=s.http_rate_limit_per_minute, burst=s.http_rate_limit_burst)
        global_rate = s.http_global_rate_limit_per_minute
        self._global_limiter = RateLimiter(
            per_minute=global_rate, burst=max(s.http_rate_limit_burst, math.ceil(global_rate / 6))
        )
        self._signer = SessionSigner.for_settings(s)
        key = s.http_api_key.get_secret_value() if s.http_api_key else ""
        self._api_key = key.encode() if key else None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self._settings.http_host}:{self.port}/"

    def build(self) -> web.Application:
        application = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        application.add_routes(
            [
                web.get("/", self.index),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
                web.post("/api/login", self.login),
                web.post("/api/chat", self.chat),
                web.post("/api/feedback", self.feedback),
                web.get("/v1/models", self.models),
                web.post("/v1/chat/completions", self.chat_completions),
            ]
        )
        return application

    def runner(self) -> web.AppRunner:
        # handler_cancellation: a client that disconnects cancels its handler (and so its generation).
        return web.AppRunner(self.build(), access_log=None, handler_cancellation=True)

    async def start(self) -> None:
        self._runner = self.runner()
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.http_host, self._settings.http_port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[attr-defined]  # aiohttp keeps the bound socket private
        self.port = sockets[0].getsockname()[1] if sockets else self._settings.http_port
        logger.info("HTTP server on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the guard (every request) --------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != "/healthz" and not self._host_allowed(request.host):
            return _error(421, "This server does not answer to that host name.", "invalid_request_error")
        session = self._signer.read(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            request[SESSION_KEY] = session
        if not self._authorized(request, session):
            if request.path == "/" and request.method == "GET":
                return self._page(request, "web_login.html", status=401)
            return _error(401, "Invalid or missing API key.", "invalid_request_error")
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin is not None and not self._origin_allowed(origin, request.host):
                return _error(403, "Cross-origin requests are not accepted.", "invalid_request_error")
            if request.content_type != "application/json":
                return _error(
                    415, "Send the body as JSON with Content-Type: application/json.", "invalid_request_error"
                )
            if (request.content_length or 0) > MAX_BODY_BYTES:
                # Refused on its declared length, before any of it is read: aiohttp's own limit only trips after
                # buffering MAX_BODY_BYTES of it, and its 413's traceback keeps that buffer until a GC cycle.
                return _error(413, _TOO_LARGE, "invalid_request_error")
            wait = self._rate_wait(request)
            if wait > 0:
                response = _error(
                    429, "Too many requests — slow down and try again shortly.", "rate_limit_error"
                )
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
        return await handler(request)

    def _host_allowed(self, host: str) -> bool:
        name = urlsplit(f"//{host}").hostname or ""
        if is_loopback(name) or name in self._settings.http_allowed_hosts:
            return True
        bound = self._settings.http_host
        if name == bound.lower():
            return True
        # Bound to every address (key required, see check_exposure): the key guards it, unless hosts are listed.
        return bound in ("0.0.0.0", "::", "") and not self._settings.http_allowed_hosts

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """This server's own pages only: the Origin is the Host, or a listed name (a reverse proxy's domain)."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https"):
            return False  # "null" (sandboxed frames, file: pages) and anything odd
        return (
            parts.netloc.lower() == host.lower()
            or (parts.hostname or "") in self._settings.http_allowed_hosts
        )

    def _authorized(self, request: web.Request, session: Session | None) -> bool:
        if self._api_key is None or request.path in OPEN_PATHS:
            return True
        return self._bearer_ok(request) or (session is not None and session[1])

    def _bearer_ok(self, request: web.Request) -> bool:
        assert self._api_key is not None
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), self._api_key)

    def _rate_wait(self, request: web.Request) -> float:
        wait = self._ip_limiter.check("ip", request.remote or "unknown")
        return wait if wait > 0 else self._global_limiter.check("http", "all")

    def _web_user(self, request: web.Request) -> tuple[str, str | None]:
        """(session id, cookie to set or None): the cookie's session, or a new one the server issues."""
        session = request.get(SESSION_KEY)
        if session is not None:
            return session[0], None
        new = uuid.uuid4().hex
        authed = self._api_key is not None  # only reached with the key (bearer) when one is set
        return new, self._signer.issue(new, authed=authed)

    def _set_cookie(self, request: web.Request, response: web.StreamResponse, value: str) -> None:
        # Secure when the page came over HTTPS (directly, or from a proxy that says so).
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=SESSION_MAX_AGE,
            httponly=True,
            samesite="Strict",
            path="/",
            secure=secure,
        )

    def _page(self, request: web.Request, name: str, *, status: int = 200) -> web.Response:
        nonce = secrets.token_urlsafe(16)
        page = resources.files("bots").joinpath(name).read_text(encoding="utf-8")
        response = web.Response(
            text=page.replace("<script>", f'<script nonce="{nonce}">'),
            content_type="text/html",
            status=status,
        )
        response.headers.update(
            {
                "Content-Security-Policy": (
                    f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
                    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            }
        )
        return response

    # --- routes ---------------------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        self._requests.labels("index").inc()
        response = self._page(request, "web_chat.html")
        _, cookie = self._web_user(request)
        if cookie is not None:
            self._set_cookie(request, response, cookie)
        return response

    async def login(self, request: web.Request) -> web.Response:
        """POST {"key"} → the session cookie, marked as holding the key (the web chat asks once)."""
        self._requests.labels("login").inc()
        payload = await _json_body(request)
        given = payload.get("key")
        if self._api_key is None:
            return web.json_response({"ok": True})
        if not isinstance(given, str) or not hmac.compare_digest(given.strip().encode(), self._api_key):
            return _error(401, "That key is not right.", "invalid_request_error")
        session = request.get(SESSION_KEY)
        response = web.json_response({"ok": True})
        self._set_cookie(
            request, response, self._signer.issue(session[0] if session else uuid.uuid4().hex, authed=True)
        )
        return response

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
        """POST {"text", "id"?} → server-sent events of the reply. The user is the cookie's session."""
        self._requests.labels("chat").inc()
        payload = await _json_body(request)
        text = payload.get("text")
        if not isinstance(text, str):
            raise _bad_request('Send JSON like {"text": "your question"}.')
        session, cookie = self._web_user(request)
        client_id = payload.get("id")
        event_id = f"{session}:{client_id if isinstance(client_id, str) and client_id else uuid.uuid4().hex}"
        incoming = Incoming(
            platform="web",
            event_id=event_id[:128],
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
        if cookie is not None:
            self._set_cookie(request, response, cookie)
        await response.prepare(request)
        async for event in _drive(self._app.manager.handle(incoming, sink), sink):
            await response.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def feedback(self, request: web.Request) -> web.Response:
        self._requests.labels("feedback").inc()
        payload = await _json_body(request)
        rating = payload.get("rating")
        if (
            rating not in (1, -1)
            or isinstance(rating, bool)
            or not isinstance(payload.get("message_id"), str)
        ):
            raise _bad_request('Send {"message_id": "…", "rating": 1 or -1}.')
        session = request.get(SESSION_KEY)
        if session is None:
            return web.json_response({"recorded": False}, status=404)
        stored = await self._app.manager.record_feedback(
            platform="web",
            chat_id=session[0],
            user_id=session[0],
            platform_message_id=payload["message_id"],
            rating=rating,
            chat_kind=ChatKind.DM,
        )
        return web.json_response({"recorded": stored}, status=200 if stored else 404)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self._app.generator.name, "object": "model", "owned_by": "ghostbot"}],
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """OpenAI-compatible: the last user message is the question (stateless, with retrieval)."""
        self._requests.labels("chat_completions").inc()
        payload = await _json_body(request)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad_request("'messages' must be a non-empty list.")
        question = _text_of(
            next(
                (
                    m.get("content")
                    for m in reversed(messages)
                    if isinstance(m, dict) and m.get("role") == "user"
                ),
                None,
            )
        )
        if not isinstance(question, str) or not question.strip():
            raise _bad_request("The last user message must have text content.")
        max_tokens, stops, temperature = _completion_options(payload)
        stream = payload.get("stream") is True
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        worker = self._app.worker
        if worker.queue_depth >= worker.queue_size:  # before any retrieval work
            eta = worker.estimate_wait(worker.queue_size + 1)
            busy = _error(503, busy_notice(eta), "server_busy")
            busy.headers["Retry-After"] = str(max(1, round(eta)))
            return busy
        owner = f"api:{request.remote or 'unknown'}"  # one request at a time per client address
        if worker.pending(owner):
            return _error(429, "This client already has a request running; wait for it.", "rate_limit_error")

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = self._app.generator.name
        generator = self._app.generator
        limits = CompletionLimits(generator.count_tokens, max_tokens, stops)
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        got_pieces = False

        async def on_piece(piece: str) -> None:
            nonlocal got_pieces
            got_pieces = True
            out = limits.feed(piece)
            if out:
                await pieces.put(out)
            if limits.reason is not None:  # a stop sequence or max_tokens: stop generating
                worker.cancel(owner)

        async def run() -> Answer:
            try:
                return await self._app.assistant.ask(
                    question,
                    owner=owner,
                    max_new_tokens=max_tokens,
                    temperature=temperature,
                    on_piece=on_piece,
                )
            finally:
                await pieces.put(None)

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            body = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

        task = asyncio.ensure_future(run())
        try:
            response: web.StreamResponse | None = None
            if stream:
                response = web.StreamResponse(
                    headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                )
                await response.prepare(request)
                await response.write(chunk({"role": "assistant", "content": ""}, None))
            while (piece := await pieces.get()) is not None:
                if response is not None:
                    await response.write(chunk({"content": piece}, None))
            answer = await task
        finally:
            if not task.done():
                task.cancel()
        if not got_pieces and answer.text:
            limits.feed(answer.text)  # a notice instead of an answer (busy, empty question …)
        rest = limits.flush()
        finish = limits.reason or answer.finish_reason
        prompt_tokens = answer.prompt_tokens or 0
        completion_tokens = generator.count_tokens(limits.text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        sources = [asdict(source) for source in answer.sources]
        if response is None:
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": limits.text},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                    "sources": sources,
                }
            )
        if rest:
            await response.write(chunk({"content": rest}, None))
        await response.write(chunk({}, finish))
        if include_usage:
            body = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await response.write(f"data: {json.dumps(body)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


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


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad_request("The request body is not valid UTF-8.") from None
    except RecursionError:
        raise _bad_request("The request body is nested too deeply.") from None
    except ValueError:  # JSONDecodeError, and integers past Python's digit limit
        raise _bad_request("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise _bad_request("The request body must be a JSON object.")
    if _too_deep(payload, MAX_JSON_DEPTH):
        raise _bad_request("The request body is nested too deeply.")
    return payload


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": {"message": message, "type": "invalid_request_error"}}),
        content_type="application/json",
    )

"""OpenAI-compatible backend (Ollama, llama.cpp server, vLLM, OpenAI): streaming chat completions over httpx.

Runs in the worker thread, so it uses httpx's sync client. Token counts are ESTIMATES: the remote tokenizer is
unknown. tiktoken's ``cl100k_base`` is used only if its BPE file is already in tiktoken's local cache (we never
download); otherwise ``ceil(UTF-8 bytes / 3)``, which over-counts English and keeps a budgeted prompt inside
the remote context. Every error becomes a :class:`GeneratorError` whose message never contains the API key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from core.generators.base import (
    BatchSession,
    FinishReason,
    GenerationParams,
    PromptSpec,
    StreamSession,
    TextStream,
    ThreadedSession,
)
from core.generators.errors import GeneratorError
from core.generators.estimate import utf8_bytes_estimate
from core.generators.markers import neutralize_markers
from core.generators.render import render_messages
from core.redaction import Redactor, redact_url

logger = logging.getLogger(__name__)

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_PER_MESSAGE_TOKENS = 4  # role + separators per chat message (OpenAI cookbook: 3-4)
_REPLY_PRIMING_TOKENS = 3


def cached_cl100k() -> Callable[[str], int] | None:
    """cl100k_base's token counter if its file is in tiktoken's cache, else None (never touches the network)."""
    cache_dir = (
        os.environ.get("TIKTOKEN_CACHE_DIR")
        or os.environ.get("DATA_GYM_CACHE_DIR")
        or str(Path(tempfile.gettempdir()) / "data-gym-cache")
    )
    if not (Path(cache_dir) / hashlib.sha1(_CL100K_URL.encode()).hexdigest()).is_file():
        return None
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base")
    except Exception as e:
        logger.warning("tiktoken cl100k_base cache unusable (%s); using a byte-based token estimate", e)
        return None
    return lambda text: len(enc.encode_ordinary(text))


def _render(spec: PromptSpec) -> list[dict[str, Any]]:
    """The messages for `spec`, with chat-template role markers in any content neutralised (see markers.py)."""
    return [{**m, "content": neutralize_markers(m["content"])} for m in render_messages(spec)]


class OpenAIGenerator:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str | None,
        model: str,
        context_length: int = 4096,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        concurrency: int = 1,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._redact = Redactor([key] if key else [])
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.context_length = context_length
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
        )
        self._count = cached_cl100k() or utf8_bytes_estimate
        self.exact_counts = self._count is not utf8_bytes_estimate
        self.concurrency = max(1, concurrency)  # requests in flight at once (the server batches them)

    def open_batch(self, max_batch: int) -> BatchSession:
        """Up to ``concurrency`` streams at once, each waiting on its socket in an I/O thread."""
        return ThreadedSession(self, self.concurrency) if self.concurrency > 1 else StreamSession(self)

    def load(self) -> None:
        """Nothing to load locally; call :meth:`check` to probe the server at startup."""

    # --- counting ----------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def prompt_tokens(self, spec: PromptSpec) -> int:
        """Estimate: content tokens + per-message overhead (the server's tokenizer is not known here)."""
        messages = _render(spec)
        return (
            sum(self.count_tokens(m["content"]) + _PER_MESSAGE_TOKENS for m in messages)
            + _REPLY_PRIMING_TOKENS
        )

    # --- errors ------------------------------------------------------------------------------------------
    def _safe(self, text: str) -> str:
        return self._redact(text)

    def _where(self) -> str:
        return redact_url(self.base_url)

    def _transport_error(self, e: httpx.HTTPError) -> GeneratorError:
        if isinstance(e, httpx.TimeoutException):
            msg = f"the model server at {self._where()} did not answer within {self.timeout:g} s"
        elif isinstance(e, httpx.ConnectError):
            msg = f"cannot reach the model server at {self._where()} (is it running?)"
        else:
            msg = f"connection to the model server at {self._where()} failed ({type(e).__name__})"
        return GeneratorError(self._safe(msg))

    def _status_error(self, response: httpx.Response) -> GeneratorError:
        status = response.status_code
        try:
            text = response.read().decode("utf-8", "replace")
        except httpx.HTTPError:
            text = ""
        try:
            error = json.loads(text).get("error", {})
            detail = str(error.get("message", "")) if isinstance(error, dict) else str(error)
        except (ValueError, AttributeError):
            detail = text[:200]
        where = self._where()
        if status in (401, 403):
            msg = f"the model server at {where} rejected the API key (HTTP {status}); check OPENAI_API_KEY"
        elif status == 404:
            msg = f"the model server at {where} has no such endpoint or model {self.model!r} (HTTP 404)"
        elif status == 429:
            retry = response.headers.get("retry-after")
            msg = f"the model server at {where} is rate limiting requests (HTTP 429)" + (
                f"; retry after {retry} s" if retry else "; try again later"
            )
        elif status >= 500:
            msg = f"the model server at {where} failed (HTTP {status})"
        else:
            msg = f"the model server at {where} refused the request (HTTP {status})"
        if detail:
            msg += f": {detail.strip()[:200]}"
        return GeneratorError(self._safe(msg))

    # --- requests ----------------------------------------------------------------------------------------
    def _payload(
        self, messages: list[dict[str, Any]], params: GenerationParams, stream: bool
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": stream,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        return payload

    def check(self) -> list[str]:
        """Probe ``GET /models`` for an early, clear error; returns the server's model ids."""
        try:
            response = self._client.get("/models")
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        if response.status_code >= 400:
            raise self._status_error(response)
        try:
            ids = [m["id"] for m in response.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise GeneratorError(
                f"the model server at {self._where()} sent an unreadable /models reply"
            ) from None
        if ids and self.model not in ids:
            logger.warning("model %r is not in the server's list (%s)", self.model, ", ".join(ids[:10]))
        return ids

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> TextStream:
        return (yield from self.stream_messages(_render(spec), params, should_stop))

    def stream_messages(
        self, messages: list[dict[str, Any]], params: GenerationParams, should_stop: Callable[[], bool]
    ) -> TextStream:
        """SSE chat completion; leaving the ``with`` block (stop, error, consumer closed) drops the connection."""
        if should_stop():
            return "cancelled"
        try:
            with self._client.stream(
                "POST", "/chat/completions", json=self._payload(messages, params, True)
            ) as response:
                if response.status_code >= 400:
                    raise self._status_error(response)
                finish: FinishReason = "stop"  # a server that just ends the stream finished normally
                for line in response.iter_lines():
                    if should_stop():
                        return "cancelled"
                    event = self._parse_event(line)
                    if event is None:
                        break
                    piece, reason = event
                    if reason:
                        finish = "length" if reason == "length" else "stop"
                    if piece:
                        yield piece
                return finish
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None

    def _parse_event(self, line: str) -> tuple[str, str | None] | None:
        """(text, finish_reason) of one SSE line (('', None) for non-data lines), None at ``[DONE]``."""
        if not line.startswith("data:"):
            return "", None  # blank separators, ": keep-alive" comments, "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise GeneratorError(
                f"the model server at {self._where()} sent an invalid stream event"
            ) from None
        if not isinstance(event, dict):
            raise GeneratorError(f"the model server at {self._where()} sent an unexpected stream event")
        if "error" in event:
            err = event["error"]
            detail = err.get("message", "") if isinstance(err, dict) else str(err)
            raise GeneratorError(
                self._safe(f"the model server at {self._where()} failed mid-answer: {detail}")
            )
        choices = event.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        reason = choice.get("finish_reason")
        return (content if isinstance(content, str) else ""), (reason if isinstance(reason, str) else None)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post("/chat/completions", json=payload)
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        if response.status_code >= 400:
            raise self._status_error(response)
        try:
            body = response.json()
            if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
                raise ValueError
            return body
        except ValueError:
            raise GeneratorError(f"the model server at {self._where()} sent an invalid JSON reply") from None

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> str:
        """One non-streaming chat completion; ``params`` are sent as is (temperature, max_tokens, …)."""
        body = self._post({"model": self.model, "messages": messages, "stream": False, **params})
        try:
            content = body["choices"][0]["message"]["content"]
        except (IndexError, KeyError, TypeError):
            raise GeneratorError(
                f"the model server at {self._where()} sent a reply without a message"
            ) from None
        return content or ""

    def next_token_logprobs(self, messages: list[dict[str, Any]], top_logprobs: int = 5) -> dict[str, float]:
        """Log-probabilities of the most likely first reply tokens (servers that support ``logprobs``)."""
        body = self._post(
            {
                "model": self.model,
                "messages": messages,
                "stream": False,
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": top_logprobs,
            }
        )
        try:
            first = body["choices"][0]["logprobs"]["content"][0]
            top = first.get("top_logprobs") or [first]
            return {entry["token"]: float(entry["logprob"]) for entry in top}
        except (IndexError, KeyError, TypeError, ValueError):
            raise GeneratorError(f"the model server at {self._where()} does not return logprobs") from None

    def close(self) -> None:
        self._client.close()

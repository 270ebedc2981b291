"""Helpers for the HTTP tests: the real adapter on 127.0.0.1 (handler cancellation and all), a cookie-keeping
client, an SSE reader, and a generator that waits on a gate so a request can be held mid-generation."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from bots.compose import App
from bots.http import HttpAdapter
from core.generators.base import GenerationParams, PromptSpec


@asynccontextmanager
async def serve(app: App) -> AsyncIterator[HttpAdapter]:
    adapter = HttpAdapter(app)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.stop()


def client(adapter: HttpAdapter, **kwargs: Any) -> aiohttp.ClientSession:
    """A browser-like client: keeps cookies (also for an IP host)."""
    return aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{adapter.port}",
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        **kwargs,
    )


async def sse(response: aiohttp.ClientResponse) -> list[Any]:
    body = (await response.read()).decode()
    payloads = [block.removeprefix("data: ") for block in body.split("\n\n") if block.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition (polling the event loop), failing after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class GatedGenerator:
    """Yields its pieces one by one; waits on `gate` before the last piece (until set or stopped)."""

    name = "gated"
    context_length = 2048

    def __init__(self, pieces: list[str] | None = None) -> None:
        self.pieces = pieces or ["alpha ", "beta ", "gamma"]
        self.gate = threading.Event()
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.params: list[GenerationParams] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, spec: PromptSpec) -> int:
        parts = [spec.system, spec.question, *(p.text for p in spec.passages)]
        return sum(self.count_tokens(p) + 2 for p in parts)

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        self.params.append(params)
        self.started.set()
        yield from self.pieces[:-1]
        while not self.gate.wait(0.01):
            if should_stop():
                self.stopped.set()
                return
        yield self.pieces[-1]

    def close(self) -> None:
        pass

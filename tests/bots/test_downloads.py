"""The bounded download both adapters use for users' files: the limit holds with or without a declared size,
after content decoding, and errors never carry the URL (Telegram's has the bot token in it)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bots.downloads import fetch_limited
from core.uploads import DownloadFailed, FileTooLarge

LIMIT = 100_000


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (LIMIT + 1))

    async def undeclared(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"y" * 30_000)
        await response.write_eof()
        return response

    async def bomb(request: web.Request) -> web.Response:
        body = gzip.compress(b"z" * 10_000_000)  # ~10 KB on the wire, 10 MB decoded
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    async def fine(request: web.Request) -> web.Response:
        return web.Response(body=b"ok" * 10)

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    for path, handler in (
        ("/declared", declared),
        ("/undeclared", undeclared),
        ("/bomb", bomb),
        ("/fine", fine),
        ("/missing", missing),
    ):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_limit_holds_declared_streamed_and_decompressed(server: str) -> None:
    assert await fetch_limited(f"{server}/fine", LIMIT) == b"ok" * 10
    for path in ("/declared", "/undeclared", "/bomb"):
        with pytest.raises(FileTooLarge):
            await fetch_limited(f"{server}/{path.strip('/')}", LIMIT)


async def test_failures_never_name_the_url(server: str) -> None:
    secret_url = f"{server}/missing?token=123456:SECRET"
    with pytest.raises(DownloadFailed) as failed:
        await fetch_limited(secret_url, LIMIT)
    assert "SECRET" not in str(failed.value) and "127.0.0.1" not in str(failed.value)
    with pytest.raises(DownloadFailed) as failed:
        await fetch_limited("http://127.0.0.1:1/file/bot123456:SECRET/doc.pdf", LIMIT)
    assert "SECRET" not in str(failed.value)

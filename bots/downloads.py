"""Download a user's file from a platform with a hard size limit (shared by the Telegram and Discord adapters).

The limit is enforced twice: a declared Content-Length over it stops before any body is read, and the body is
counted while it streams (after content decoding, so a gzip bomb stops at the limit too). Errors never carry the
URL: Telegram's file URLs contain the bot token.
"""

from __future__ import annotations

import aiohttp

from core.uploads import DownloadFailed, FileTooLarge

BLOCK_BYTES = 64 * 1024
TIMEOUT_S = 120.0


async def fetch_limited(url: str, limit: int, *, timeout_s: float = TIMEOUT_S) -> bytes:
    """The body at `url`, at most `limit` bytes; FileTooLarge beyond it, DownloadFailed on any other problem."""
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=True) as response,
        ):
            if response.status != 200:
                raise DownloadFailed(f"HTTP {response.status}")
            if response.content_length is not None and response.content_length > limit:
                raise FileTooLarge
            data = bytearray()
            async for block in response.content.iter_chunked(BLOCK_BYTES):
                data += block
                if len(data) > limit:
                    raise FileTooLarge
            return bytes(data)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise DownloadFailed(type(exc).__name__) from None

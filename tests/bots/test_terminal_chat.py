"""`ghostbot chat`: streamed answers with sources, the bots' commands, no rate limit for the local owner."""

from __future__ import annotations

import io
from pathlib import Path

from bots.terminal import run_terminal_chat
from tests.support import app_settings, indexed_app

NOTE = "# Pass the hash\n\nPass-the-hash reuses an NTLM hash to log in. Mitigate it with LAPS and Credential Guard.\n"


async def test_terminal_chat_answers_runs_commands_and_is_not_rate_limited(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, rate_limit_burst=1, rate_limit_per_minute=1)
    async with indexed_app(settings, tmp_path, index={"pth.md": NOTE}):
        pass

    lines = [
        "How do I mitigate pass the hash?",
        "",
        "/sources",
        "/settings temperature 9",
        "/bogus",
        "<|ghost_end|>",
    ]
    stdout = io.StringIO()
    assert await run_terminal_chat(settings, stdin=io.StringIO("\n".join(lines) + "\n"), stdout=stdout) == 0
    out = stdout.getvalue()
    assert "Credential Guard. [1]" in out
    assert out.count("[1] Pass the hash") == 2  # the answer's footer and /sources
    assert "temperature must be between 0 and 2" in out
    assert "Unknown command /bogus" in out
    assert "too quickly" not in out  # burst 1/minute would refuse the second message of anyone else

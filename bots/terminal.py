"""`ghostbot chat`: the terminal adapter — streaming answers, the same commands as the bots."""

from __future__ import annotations

import asyncio
import getpass
import sys
import uuid
from collections.abc import Sequence
from typing import TextIO

from bots.render import sources_footer
from core.settings import Settings
from core.types import Answer, ChatKind, Incoming


class TerminalSink:
    """Prints streamed text as it grows; the final answer gets its sources footer."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._shown = ""

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        self._write(f"{text}\n")

    async def queued(self, position: int, eta_seconds: float) -> None:
        self._write(f"(queued: position {position}, about {eta_seconds:.0f} s)\n")

    async def started(self) -> None:
        self._shown = ""

    async def partial(self, text_so_far: str) -> None:
        if text_so_far.startswith(self._shown):
            self._write(text_so_far[len(self._shown) :])
        else:  # the model's text was revised (rare): print it afresh
            self._write("\n" + text_so_far)
        self._shown = text_so_far

    async def final(self, answer: Answer) -> Sequence[str]:
        if answer.text.startswith(self._shown) and self._shown:
            self._write(answer.text[len(self._shown) :] + "\n")
        else:
            self._write(answer.text + "\n")
        footer = sources_footer(answer.sources)
        if footer:
            self._write(f"\n{footer}\n")
        for notice in answer.notices:
            self._write(f"({notice})\n")
        self._shown = ""
        return [uuid.uuid4().hex]

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


async def run_terminal_chat(
    settings: Settings, *, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    from bots.compose import open_app

    user = getpass.getuser() or "local"
    # The terminal belongs to whoever runs the bot: no rate limit, admin statistics.
    settings = settings.model_copy(update={"admin_users": settings.admin_users | {f"cli:{user}"}})
    stdout.write("GhostLM Bots — terminal chat. /help lists commands; Ctrl-D quits.\n")
    async with open_app(settings) as app:
        stdout.write(f"(generator: {app.generator.name})\n")
        sink = TerminalSink(stdout)
        while True:
            stdout.write("\nyou> ")
            stdout.flush()
            line = await asyncio.to_thread(stdin.readline)
            if not line:
                stdout.write("\n")
                break
            text = line.rstrip("\n")
            if not text.strip():
                continue
            incoming = Incoming(
                platform="cli",
                event_id=uuid.uuid4().hex,
                chat_id=user,
                chat_kind=ChatKind.DM,
                user_id=user,
                user_name=user,
                text=text,
            )
            stdout.write("ghost> ")
            await app.manager.handle(incoming, sink)
    return 0

"""Platform-neutral values that cross the adapter/core boundary.

Adapters (bots/) turn platform events into `Incoming` and implement `ReplySink`;
nothing platform-specific goes past this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol


class ChatKind(str, Enum):
    DM = "dm"
    GROUP = "group"


@dataclass(frozen=True)
class Incoming:
    """One user message (or command) as the core sees it."""

    platform: str  # "telegram" | "discord" | "cli" | "http" | …
    event_id: str  # unique per platform: Telegram update_id, Discord message/interaction id
    chat_id: str
    chat_kind: ChatKind
    user_id: str
    user_name: str
    text: str  # raw text; a leading "/command[@bot] args" is a command
    addressed: bool = True  # mention, reply-to-bot, command; always True in DMs
    thread_id: str | None = None  # Discord thread / Telegram topic: its own conversation
    guild_id: str | None = None  # Discord guild, for allow lists
    role_ids: tuple[str, ...] = ()  # Discord roles, for allow lists
    platform_message_id: str | None = None  # id of the user's message on the platform


@dataclass(frozen=True)
class Source:
    """A cited passage: `[index]` in the answer text refers to it."""

    index: int
    ref: str  # "CWE-79", "T1059.001", or a file-relative id such as "notes/xss.md#2"
    source: str  # "cwe" | "attack" | a file path
    title: str
    url: str | None = None
    text: str = ""  # the passage text shown to the model (possibly shortened)
    section: str = ""  # what the text is within its entry: "summary", "detection", "mitigation", ...
    kind: str = ""  # what the entry is: "weakness", "technique", "group", "software", ...
    heading: str = ""  # the heading the text came under ("Detection", "M1041 Encrypt Sensitive Information")


@dataclass
class Answer:
    """What a finished chat turn produced."""

    text: str
    sources: list[Source] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # e.g. "your message was shortened"
    finish_reason: Literal["stop", "length", "cancelled", "timeout", "error"] = "stop"


class ReplySink(Protocol):
    """The adapter's side of one reply. Called from the event loop, in this order:
    zero or more `notice`/`queued`, then `started`, zero or more `partial`, then `final`
    (or only `notice` for commands, refusals and errors)."""

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        """A short, complete message: command output, refusal, busy, error."""

    async def queued(self, position: int, eta_seconds: float) -> None:
        """The request waits in the generation queue (1 = next)."""

    async def started(self) -> None:
        """Generation began: show typing / defer."""

    async def partial(self, text_so_far: str) -> None:
        """Streaming: the plain answer text so far. The adapter throttles edits."""

    async def final(self, answer: Answer) -> Sequence[str]:
        """Deliver the finished answer (rendered, split, sources footer).
        Returns the platform message ids it was delivered as (stored for feedback)."""

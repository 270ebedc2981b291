"""Platform-neutral values that cross the adapter/core boundary.

Adapters (bots/) turn platform events into `Incoming` and implement `ReplySink`;
nothing platform-specific goes past this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol, runtime_checkable


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
    # The reply is seen by the asker alone (a Discord ephemeral reply): like a DM, a private context, where the
    # user's own uploaded documents may be used.
    ephemeral: bool = False


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
    prompt_tokens: int | None = None  # the prompt as fed to the generator, in its tokens (when known)


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


MessageListener = Callable[[str], None]


@runtime_checkable
class ReportsMessages(Protocol):
    """A `ReplySink` whose messages can be edited later (Telegram, Discord) also implements this: it calls the
    listener with the platform message id of every message it creates, as soon as the platform returns it.
    The core records the ids in the outbox, so a reply cut off by a crash can be edited to say so on restart.
    Sinks whose replies cannot be reached after a crash (an HTTP response, a terminal) leave it out."""

    def on_message(self, listener: MessageListener) -> None: ...


def watch_messages(sink: ReplySink, listener: MessageListener) -> bool:
    """Ask `sink` to report the messages it creates; False (and nothing asked) for sinks that cannot."""
    if isinstance(sink, ReportsMessages):
        sink.on_message(listener)
        return True
    return False

"""Platform-neutral commands: names and descriptions, the parser, per-user preferences, and the handlers
that only talk to storage and the worker (`/ask` and `/retry` generate, so the manager runs those)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.access import AccessPolicy
from core.uploads import DocumentLibrary, parse_docs_args
from core.worker import GenerationWorker
from storage import ConversationKey, Database

COMMANDS: dict[str, str] = {
    "start": "Introduction and how to use the assistant",
    "help": "List the commands",
    "ask": "Ask a question (use this in groups)",
    "reset": "Clear this conversation's history",
    "retry": "Regenerate the last answer",
    "cancel": "Stop your question that is waiting or being answered",
    "sources": "Show the sources of the last answer",
    "settings": "Show or change your settings, e.g. /settings temperature 0.3",
    "stats": "Your usage statistics",
    "docs": "Your private documents: /docs lists them, /docs delete N removes one",
    "forget": "Delete everything stored about you",
}

_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,64})(?:@([A-Za-z0-9_]{1,64}))?(?:\s+(.*))?$", re.DOTALL)


@dataclass(frozen=True)
class ParsedCommand:
    name: str  # lower-case, without the slash
    args: str
    bot_name: str | None  # the "@bot" suffix, if any


def parse_command(text: str) -> ParsedCommand | None:
    """`/cmd[@bot] args` (case-insensitive name) → ParsedCommand; anything else (e.g. "/etc/passwd") → None."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return ParsedCommand(match.group(1).lower(), (match.group(3) or "").strip(), match.group(2))


def unknown_command(name: str) -> str:
    return f"Unknown command /{name}. Try /help."


def help_text() -> str:
    lines = ["Commands:"] + [f"/{name} — {desc}" for name, desc in COMMANDS.items()]
    lines.append("In a direct message, just write your question. In groups, mention me or use /ask.")
    return "\n".join(lines)


def start_text() -> str:
    return (
        "Hi! I'm GhostLM, a private cybersecurity assistant. Ask me about vulnerabilities (CWE), attacker "
        "techniques (MITRE ATT&CK) or your own documents; I cite my sources as [1], [2].\n\n" + help_text()
    )


# --- per-user preferences -------------------------------------------------------------------------------
class PrefError(ValueError):
    """A wrong /settings argument; the message is shown to the user."""


def _parse_temperature(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        raise PrefError(
            "temperature must be a number between 0 and 2, e.g. /settings temperature 0.3"
        ) from None
    if not 0.0 <= number <= 2.0:
        raise PrefError("temperature must be between 0 and 2")
    return f"{number:g}"


def _parse_onoff(value: str) -> str:
    lowered = value.lower()
    if lowered in {"on", "yes", "true", "1"}:
        return "on"
    if lowered in {"off", "no", "false", "0"}:
        return "off"
    raise PrefError("sources must be on or off, e.g. /settings sources off")


def _parse_style(value: str) -> str:
    lowered = value.lower()
    if lowered not in {"brief", "normal", "detailed"}:
        raise PrefError("style must be brief, normal or detailed")
    return lowered


@dataclass(frozen=True)
class Pref:
    description: str
    default: Callable[[Any], str]  # settings → default shown
    parse: Callable[[str], str]


def _max_tokens_parser(limit: int) -> Callable[[str], str]:
    def parse(value: str) -> str:
        try:
            number = int(value)
        except ValueError:
            raise PrefError(f"max_tokens must be a whole number between 16 and {limit}") from None
        if not 16 <= number <= limit:
            raise PrefError(f"max_tokens must be between 16 and {limit}")
        return str(number)

    return parse


class Preferences:
    """The per-user settings a user may change, validated; stored as strings by storage."""

    def __init__(self, *, default_temperature: float, max_new_tokens: int) -> None:
        self.defaults = {
            "temperature": f"{default_temperature:g}",
            "max_tokens": str(max_new_tokens),
            "sources": "on",
            "style": "normal",
        }
        self.descriptions = {
            "temperature": "randomness of answers, 0–2",
            "max_tokens": f"longest answer in tokens, 16–{max_new_tokens}",
            "sources": "show the sources footer, on/off",
            "style": "brief, normal or detailed",
        }
        self._parsers: dict[str, Callable[[str], str]] = {
            "temperature": _parse_temperature,
            "max_tokens": _max_tokens_parser(max_new_tokens),
            "sources": _parse_onoff,
            "style": _parse_style,
        }

    def parse(self, key: str, value: str) -> str:
        parser = self._parsers.get(key)
        if parser is None:
            raise PrefError(f"Unknown setting '{key}'. Available: {', '.join(self.defaults)}.")
        return parser(value.strip())

    def effective(self, stored: Mapping[str, str]) -> dict[str, str]:
        """Defaults overlaid with the user's valid stored values (a stale invalid value falls back)."""
        out = dict(self.defaults)
        for key, value in stored.items():
            if key in self._parsers:
                with contextlib.suppress(PrefError):
                    out[key] = self._parsers[key](value)
        return out

    def show(self, stored: Mapping[str, str]) -> str:
        values = self.effective(stored)
        lines = ["Your settings:"]
        for key, value in values.items():
            mark = "" if key in stored else " (default)"
            lines.append(f"• {key} = {value}{mark} — {self.descriptions[key]}")
        lines.append(
            "Change one with /settings NAME VALUE, restore with /settings NAME default or /settings reset."
        )
        return "\n".join(lines)


# --- handlers -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandContext:
    platform: str
    user_id: str
    key: ConversationKey
    is_admin: bool
    private: bool = False  # only the user sees the reply (DM, web chat, ephemeral)


def _format_stats(stats: Mapping[str, Any]) -> list[str]:
    return [f"• {k.replace('_', ' ')}: {v if v is not None else '—'}" for k, v in stats.items()]


def format_sources(sources: list[dict[str, Any]]) -> str:
    lines = []
    for i, src in enumerate(sources, 1):
        number = src.get("index", i)
        title = src.get("title") or src.get("ref") or "untitled"
        ref = src.get("ref")
        line = f"[{number}] {title}"
        if ref and ref != title:
            line += f" ({ref})"
        if src.get("url"):
            line += f" — {src['url']}"
        lines.append(line)
    return "\n".join(lines)


class CommandHandler:
    """Runs the commands that do not generate text; returns the reply text."""

    def __init__(
        self,
        db: Database,
        worker: GenerationWorker,
        access: AccessPolicy,
        prefs: Preferences,
        *,
        documents: DocumentLibrary | None = None,
    ) -> None:
        self.db = db
        self.worker = worker
        self.access = access
        self.prefs = prefs
        self.documents = documents

    async def run(self, command: ParsedCommand, ctx: CommandContext) -> str:
        handler = getattr(self, f"_cmd_{command.name}", None)
        if handler is None:
            return unknown_command(command.name)
        return await handler(command.args, ctx)

    async def _cmd_start(self, args: str, ctx: CommandContext) -> str:
        return start_text()

    async def _cmd_help(self, args: str, ctx: CommandContext) -> str:
        return help_text()

    async def _cmd_reset(self, args: str, ctx: CommandContext) -> str:
        removed = await self.db.conversations.reset(ctx.key)
        return "Conversation cleared." if removed else "There was no history to clear."

    async def _cmd_cancel(self, args: str, ctx: CommandContext) -> str:
        if self.worker.cancel(f"{ctx.platform}:{ctx.user_id}"):
            return "Cancelled your request."
        return "You have nothing waiting or running to cancel."

    async def _cmd_sources(self, args: str, ctx: CommandContext) -> str:
        last = await self.db.conversations.last_assistant(ctx.key)
        if last is None:
            return "There is no answer in this conversation yet."
        if not last.sources:
            return "The last answer did not use any sources."
        return "Sources of the last answer:\n" + format_sources(last.sources)

    async def _cmd_forget(self, args: str, ctx: CommandContext) -> str:
        owner = f"{ctx.platform}:{ctx.user_id}"
        self.worker.cancel(owner)
        removed = await self.db.conversations.forget_user(ctx.platform, ctx.user_id)
        documents = await self.documents.forget(owner) if self.documents is not None else 0
        return (
            f"Done — I deleted everything I had stored about you ({removed} records: history, feedback and "
            f"settings; {documents} documents with their index). You can start fresh any time."
        )

    async def _cmd_docs(self, args: str, ctx: CommandContext) -> str:
        if self.documents is None:
            return "Documents are not enabled in this setup."
        if not ctx.private:
            return "Your documents are private: use /docs in a direct message with me."
        parsed = parse_docs_args(args)
        owner = f"{ctx.platform}:{ctx.user_id}"
        if isinstance(parsed, str):
            return parsed
        if parsed is None:
            return await self.documents.describe(owner)
        return await self.documents.delete(owner, parsed)

    async def _cmd_settings(self, args: str, ctx: CommandContext) -> str:
        repo = self.db.user_settings
        parts = args.split(maxsplit=1)
        if not parts:
            return self.prefs.show(await repo.get(ctx.platform, ctx.user_id))
        if len(parts) == 1 and parts[0].lower() == "reset":
            for key in self.prefs.defaults:
                await repo.unset(ctx.platform, ctx.user_id, key)
            return "All your settings are back to their defaults."
        if len(parts) == 1:
            key = parts[0].lower()
            if key not in self.prefs.defaults:
                return f"Unknown setting '{parts[0]}'. Available: {', '.join(self.prefs.defaults)}."
            return f"Usage: /settings {key} VALUE ({self.prefs.descriptions[key]})."
        key, value = parts[0].lower(), parts[1].strip()
        if key in self.prefs.defaults and value.lower() == "default":
            await repo.unset(ctx.platform, ctx.user_id, key)
            return f"{key} is back to its default ({self.prefs.defaults[key]})."
        try:
            parsed = self.prefs.parse(key, value)
        except PrefError as exc:
            return str(exc)
        await repo.set(ctx.platform, ctx.user_id, key, parsed)
        return f"Saved: {key} = {parsed}."

    async def _cmd_stats(self, args: str, ctx: CommandContext) -> str:
        mine = await self.db.stats.user_stats(ctx.platform, ctx.user_id)
        lines = ["Your statistics:", *_format_stats(mine)]
        if ctx.is_admin:
            everyone = await self.db.stats.global_stats()
            lines += ["", "Everyone (admin):", *_format_stats(everyone)]
            lines += [
                f"• queue depth: {self.worker.queue_depth}",
                f"• generating now: {'yes' if self.worker.busy else 'no'}",
                f"• answers generated since start: {self.worker.completed}",
            ]
        return "\n".join(lines)

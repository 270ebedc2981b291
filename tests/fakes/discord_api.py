"""A loopback fake of Discord's REST API and gateway, enough to drive the unmodified discord.py.

Speaks what TESTING.md lists: login endpoints, command sync, HELLO / heartbeat ACK /
IDENTIFY → READY + GUILD_CREATE / RESUME → RESUMED over uncompressed text frames, JSON with
the exact `application/json` content type, interaction callbacks, webhook follow-ups and
@original edits, channel messages and typing. Every REST call and heartbeat is recorded on
the fake's own clock (`time.monotonic`). It also models two Discord rules the tests rely on:
the first follow-up after a defer resolves the "thinking" original and takes the defer's
visibility, and a 429 carries `Via` plus a JSON body (discord.py then waits and retries).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

EPHEMERAL = 64
MESSAGE_CONTENT_INTENT = 1 << 15
LOADING = 128
TS = "2026-11-22T00:00:00.000000+00:00"
EVERYONE_PERMISSIONS = "1071698660929"
USER_INSTALL_FOLLOWUPS = 5  # follow-ups per interaction when only the user installed the app


def _context(channel: dict[str, Any]) -> int:
    """An interaction's context: 0 a server, 1 the bot's DM, 2 another private channel."""
    if channel.get("guild_id"):
        return 0
    return 1 if channel.get("type") == 1 else 2


@dataclass
class Call:
    t: float
    method: str
    path: str  # relative to /api/v10
    query: dict[str, str]
    body: Any
    status: int = 200


@dataclass
class InteractionState:
    id: str
    token: str
    channel_id: str
    pushed_at: float
    callback_type: int | None = None
    callback_at: float | None = None
    defer_ephemeral: bool = False
    original: dict[str, Any] | None = None  # None until a callback created it
    resolved: bool = False  # the original shows content, not "thinking"
    deleted: bool = False
    followups: list[dict[str, Any]] = field(default_factory=list)
    original_edits: list[tuple[float, str]] = field(default_factory=list)
    followup_limit: int | None = None  # Discord's cap for user installs
    followups_refused: int = 0

    def visible(self) -> list[dict[str, Any]]:
        """Messages in posting order: the original (if not deleted) then follow-ups."""
        out = [] if self.original is None or self.deleted else [self.original]
        return out + list(self.followups)


class DiscordFake:
    def __init__(self, *, heartbeat_interval_ms: int = 41250) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._ids = itertools.count(1_300_000_000_000_000_000)
        self.bot_user = self.user("GhostLM", bot=True)
        self.application_id = self.bot_user["id"]
        self.owner = self.user("owner")
        self.guilds: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}  # id → channel payload (guild channels, threads, DMs)
        self.messages: dict[str, dict[str, dict[str, Any]]] = {}  # channel id → message id → payload
        self.message_edits: list[tuple[float, str, str, str]] = []  # (t, channel, message id, content)
        self.calls: list[Call] = []
        self.heartbeats: list[float] = []
        self.heartbeat_acks: list[float] = []
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or guild id → synced commands
        self.interactions: dict[str, InteractionState] = {}  # token → state
        self.resume_gateway_url: str | None = None  # None: this fake
        self.token: str | None = None  # when set, REST calls must carry "Bot <token>" (else 401)
        self._rate_limits: list[list[Any]] = []  # [method, regex, retry_after, remaining]
        self._seq = 0
        self._ws: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self._sessions = itertools.count(1)
        self.port = 0
        self.attachments: dict[str, bytes] = {}  # attachment id → bytes served at its URL (the CDN)
        self.attachment_downloads: list[str] = []  # attachment ids, in download order

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{attachment_id}/{filename}", self._attachment)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # --- world building ------------------------------------------------------------------
    def snowflake(self) -> str:
        return str(next(self._ids))

    def user(self, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": self.snowflake(),
            "username": name,
            "global_name": name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
        }

    def add_guild(self, name: str = "guild", *, roles: tuple[str, ...] = ()) -> dict[str, Any]:
        guild_id = self.snowflake()
        guild = {
            "id": guild_id,
            "name": name,
            "icon": None,
            "owner_id": self.owner["id"],
            "features": [],
            "emojis": [],
            "stickers": [],
            "channels": [],
            "threads": [],
            "members": [],
            "member_count": 2,
            "unavailable": False,
            "large": False,
            "mfa_level": 0,
            "verification_level": 0,
            "explicit_content_filter": 0,
            "default_message_notifications": 0,
            "system_channel_id": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "joined_at": TS,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "nsfw_level": 0,
            "roles": [self._role(guild_id, "@everyone", 0)],
        }
        for position, role_name in enumerate(roles, start=1):
            guild["roles"].append(self._role(self.snowflake(), role_name, position))
        guild["members"].append(self._member(self.bot_user, []))
        self.guilds[guild_id] = guild
        return guild

    def role_id(self, guild: dict[str, Any], name: str) -> str:
        return next(role["id"] for role in guild["roles"] if role["name"] == name)

    def add_channel(self, guild: dict[str, Any], name: str = "general") -> dict[str, Any]:
        channel = {
            "id": self.snowflake(),
            "type": 0,
            "guild_id": guild["id"],
            "name": name,
            "position": len(guild["channels"]),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        guild["channels"].append(channel)
        self.channels[channel["id"]] = channel
        return channel

    def add_thread(self, parent: dict[str, Any], name: str = "thread") -> dict[str, Any]:
        guild = self.guilds[parent["guild_id"]]
        thread = {
            "id": self.snowflake(),
            "type": 11,
            "guild_id": guild["id"],
            "parent_id": parent["id"],
            "name": name,
            "owner_id": self.owner["id"],
            "member_count": 1,
            "message_count": 0,
            "rate_limit_per_user": 0,
            "flags": 0,
            "last_message_id": None,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": TS,
                "locked": False,
            },
        }
        guild["threads"].append(thread)
        self.channels[thread["id"]] = thread
        return thread

    def add_foreign_channel(self, name: str = "elsewhere") -> dict[str, Any]:
        """A channel of a server the bot is not in (no GUILD_CREATE): only a user install reaches it."""
        guild_id = self.snowflake()
        channel: dict[str, Any] = {
            "id": self.snowflake(),
            "type": 0,
            "guild_id": guild_id,
            "name": name,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
        }
        self.channels[channel["id"]] = channel
        return channel

    def add_group_dm(self, *users: dict[str, Any]) -> dict[str, Any]:
        """A group DM (a private channel the bot is not in: context 2)."""
        channel: dict[str, Any] = {
            "id": self.snowflake(),
            "type": 3,
            "recipients": list(users),
            "last_message_id": None,
        }
        self.channels[channel["id"]] = channel
        return channel

    def add_dm(self, user: dict[str, Any]) -> dict[str, Any]:
        channel: dict[str, Any] = {
            "id": self.snowflake(),
            "type": 1,
            "recipients": [user],
            "last_message_id": None,
        }
        self.channels[channel["id"]] = channel
        return channel

    @staticmethod
    def _role(role_id: str, name: str, position: int) -> dict[str, Any]:
        return {
            "id": role_id,
            "name": name,
            "color": 0,
            "hoist": False,
            "position": position,
            "permissions": EVERYONE_PERMISSIONS,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    @staticmethod
    def _member(user: dict[str, Any], roles: list[str]) -> dict[str, Any]:
        return {
            "user": user,
            "roles": roles,
            "joined_at": TS,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "pending": False,
            "premium_since": None,
            "communication_disabled_until": None,
            "permissions": EVERYONE_PERMISSIONS,
        }

    def _message(self, channel_id: str, author: dict[str, Any], content: str, **extra: Any) -> dict[str, Any]:
        message = {
            "id": extra.pop("id", None) or self.snowflake(),
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": TS,
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        message.update(extra)
        guild_id = self.channels.get(channel_id, {}).get("guild_id")
        if guild_id is not None:
            message["guild_id"] = guild_id
        return message

    # --- gateway ---------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(
            json.dumps(
                {"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}
            )
        )
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            op = payload.get("op")
            if op == 1:
                self.heartbeats.append(time.monotonic())
                await ws.send_str(json.dumps({"op": 11, "s": None, "t": None, "d": None}))
                self.heartbeat_acks.append(time.monotonic())
            elif op == 2:
                self.identifies.append(payload["d"])
                await self._send_ready(ws)
            elif op == 6:
                self.resumes.append(payload["d"])
                await self._dispatch_on(ws, "RESUMED", {})
        if self._ws is ws:
            self._ws = None
        return ws

    async def _send_ready(self, ws: web.WebSocketResponse) -> None:
        self._seq = 0
        ready = {
            "v": 10,
            "user": self.bot_user,
            "session_id": f"session-{next(self._sessions)}",
            "resume_gateway_url": self.resume_gateway_url or self.gateway_url,
            "guilds": [{"id": gid, "unavailable": True} for gid in self.guilds],
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
            "shard": [0, 1],
        }
        await self._dispatch_on(ws, "READY", ready)
        for guild in self.guilds.values():
            await self._dispatch_on(ws, "GUILD_CREATE", guild)

    async def _dispatch_on(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        await ws.send_str(json.dumps({"op": 0, "s": self._seq, "t": event, "d": data}))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise RuntimeError("no gateway connection")
        await self._dispatch_on(self._ws, event, data)

    async def request_reconnect(self) -> None:
        """op 7 RECONNECT: the client closes and RESUMEs at its resume gateway."""
        if self._ws is not None:
            await self._ws.send_str(json.dumps({"op": 7, "s": None, "t": None, "d": None}))

    async def drop_connection(self) -> None:
        """Close the gateway websocket as a network failure would (close code 4000: the client RESUMEs)."""
        if self._ws is not None:
            await self._ws.close(code=4000, message=b"fault injected")

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self._ws is not None and bool(self.identifies or self.resumes), timeout)

    # --- pushing events ----------------------------------------------------------------------
    async def push_message(
        self,
        channel: dict[str, Any],
        author: dict[str, Any],
        content: str,
        *,
        mention_bot: bool = False,
        reply_to: dict[str, Any] | None = None,
        roles: list[str] | None = None,
        message_id: str | None = None,
        ping_reply: bool = True,
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"id": message_id} if message_id else {}
        if mention_bot:
            content = f"<@{self.bot_user['id']}> {content}"
            extra["mentions"] = [self.bot_user]
        if reply_to is not None:
            if ping_reply and reply_to["author"]["id"] == self.bot_user["id"]:
                extra["mentions"] = [*extra.get("mentions", []), self.bot_user]  # Discord's reply ping
            extra["type"] = 19
            extra["message_reference"] = {
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
                "guild_id": reply_to.get("guild_id"),
            }
            extra["referenced_message"] = reply_to
        message = self._message(channel["id"], author, content, **extra)
        if "guild_id" in message:
            member = self._member(author, roles or [])
            member.pop("user")
            message["member"] = member
        self.messages.setdefault(channel["id"], {})[message["id"]] = message
        await self.dispatch("MESSAGE_CREATE", self._as_received(message))
        return message

    def _as_received(self, message: dict[str, Any]) -> dict[str, Any]:
        """Without the Message Content intent Discord blanks the text, except in DMs, messages that
        mention the bot (a pinging reply counts) and the bot's own messages."""
        intents = self.identifies[-1].get("intents", 0) if self.identifies else 0
        exempt = (
            "guild_id" not in message
            or message["author"]["id"] == self.bot_user["id"]
            or any(user["id"] == self.bot_user["id"] for user in message.get("mentions", []))
        )
        if intents & MESSAGE_CONTENT_INTENT or exempt:
            return message
        return {**message, "content": "", "embeds": [], "attachments": [], "components": []}

    def _interaction_base(
        self,
        kind: int,
        channel: dict[str, Any],
        user: dict[str, Any],
        roles: list[str] | None,
        install: str = "guild",
    ) -> dict[str, Any]:
        """An interaction's common fields. `install` is how the app was installed where it is used:
        "guild" (the server added the bot) or "user" (only the user did: `authorizing_integration_owners`
        names the user alone, and Discord allows 5 follow-ups). The context is 0 in a server, 1 in the
        bot's DM, 2 in any other private channel (a group DM or a DM between two users)."""
        interaction_id, token = self.snowflake(), f"itoken-{self.snowflake()}"
        payload: dict[str, Any] = {
            "id": interaction_id,
            "application_id": self.application_id,
            "type": kind,
            "token": token,
            "version": 1,
            "channel_id": channel["id"],
            "channel": channel,
            "locale": "en-US",
            "app_permissions": EVERYONE_PERMISSIONS,
            "entitlements": [],
            "attachment_size_limit": 26214400,
        }
        owners: dict[str, str] = {"1": user["id"]} if install == "user" else {}
        guild_id = channel.get("guild_id")
        if guild_id is not None:
            if install == "guild":
                owners["0"] = guild_id
            payload.update(
                guild_id=guild_id,
                guild_locale="en-US",
                context=0,
                member=self._member(user, roles or []),
                authorizing_integration_owners=owners,
            )
        else:
            if install == "guild":
                owners["0"] = "0"  # a guild install used in the bot's DM
            payload.update(user=user, context=_context(channel), authorizing_integration_owners=owners)
        self.interactions[token] = InteractionState(
            id=interaction_id,
            token=token,
            channel_id=channel["id"],
            pushed_at=time.monotonic(),
            followup_limit=USER_INSTALL_FOLLOWUPS if "0" not in owners else None,
        )
        return payload

    async def push_slash(
        self,
        name: str,
        channel: dict[str, Any],
        user: dict[str, Any],
        options: dict[str, str] | None = None,
        *,
        roles: list[str] | None = None,
        install: str = "guild",
    ) -> InteractionState:
        payload = self._interaction_base(2, channel, user, roles, install)
        command = self._synced(name, channel, install, command_type=1)
        data = {
            "id": command["id"],
            "name": name,
            "type": 1,
            "options": [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()],
        }
        if channel.get("guild_id") and "guild_id" in command:
            data["guild_id"] = channel["guild_id"]
        payload["data"] = data
        state = self.interactions[payload["token"]]
        await self.dispatch("INTERACTION_CREATE", payload)
        return state

    async def push_message_command(
        self,
        name: str,
        target: dict[str, Any],
        user: dict[str, Any],
        *,
        roles: list[str] | None = None,
        install: str = "guild",
    ) -> InteractionState:
        """A message context-menu command (type 2, data.type 3) on `target`, which Discord sends
        along in `data.resolved.messages` (with its content, whatever the intents)."""
        channel = self.channels[target["channel_id"]]
        payload = self._interaction_base(2, channel, user, roles, install)
        command = self._synced(name, channel, install, command_type=3)
        payload["data"] = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: target}},
        }
        if channel.get("guild_id") and "guild_id" in command:
            payload["data"]["guild_id"] = channel["guild_id"]
        state = self.interactions[payload["token"]]
        await self.dispatch("INTERACTION_CREATE", payload)
        return state

    def _synced(
        self, name: str, channel: dict[str, Any], install: str, *, command_type: int
    ) -> dict[str, Any]:
        """The synced command a user can invoke here, as Discord decides it: guild commands in their
        guild; global ones where their `contexts` and `integration_types` allow."""
        guild_id = channel.get("guild_id")
        for scope in (guild_id, "global") if guild_id in self.commands else ("global",):
            for command in self.commands.get(scope, []):
                if command["name"] != name or command.get("type", 1) != command_type:
                    continue
                if scope == "global" and not self._usable(command, channel, install):
                    raise PermissionError(f"/{name} is not available here ({install} install)")
                return command
        raise KeyError(f"command {name!r} was not synced ({list(self.commands)})")

    def _usable(self, command: dict[str, Any], channel: dict[str, Any], install: str) -> bool:
        contexts = command.get("contexts")
        installs = command.get("integration_types")
        context = _context(channel)
        wanted_install = 1 if install == "user" else 0
        # Discord's defaults when unset: guild installs only, every context.
        return (contexts is None or context in contexts) and wanted_install in (installs or [0])

    async def push_button(
        self, custom_id: str, message: dict[str, Any], user: dict[str, Any], *, roles: list[str] | None = None
    ) -> InteractionState:
        channel = self.channels[message["channel_id"]]
        payload = self._interaction_base(3, channel, user, roles)
        payload["data"] = {"custom_id": custom_id, "component_type": 2}
        payload["message"] = message
        state = self.interactions[payload["token"]]
        await self.dispatch("INTERACTION_CREATE", payload)
        return state

    # --- attachments (files users send; served like Discord's CDN) ---------------------------
    def add_attachment(
        self, data: bytes, filename: str, *, content_type: str | None = None, size: int | None = None
    ) -> dict[str, Any]:
        """An attachment payload whose `url` serves `data`; `size` is what Discord declares (default: real)."""
        attachment_id = self.snowflake()
        self.attachments[attachment_id] = data
        url = f"http://127.0.0.1:{self.port}/attachments/{attachment_id}/{filename}"
        payload: dict[str, Any] = {
            "id": attachment_id,
            "filename": filename,
            "size": len(data) if size is None else size,
            "url": url,
            "proxy_url": url,
        }
        if content_type:
            payload["content_type"] = content_type
        return payload

    async def push_attachment_message(
        self,
        channel: dict[str, Any],
        author: dict[str, Any],
        content: str,
        attachments: list[dict[str, Any]],
        *,
        mention_bot: bool = False,
        roles: list[str] | None = None,
    ) -> dict[str, Any]:
        """A user message carrying files (DMs; in a guild only a mention of the bot makes it ours)."""
        extra: dict[str, Any] = {"attachments": attachments}
        if mention_bot:
            content = f"<@{self.bot_user['id']}> {content}".strip()
            extra["mentions"] = [self.bot_user]
        message = self._message(channel["id"], author, content, **extra)
        if "guild_id" in message:
            member = self._member(author, roles or [])
            member.pop("user")
            message["member"] = member
        self.messages.setdefault(channel["id"], {})[message["id"]] = message
        await self.dispatch("MESSAGE_CREATE", self._as_received(message))
        return message

    async def push_slash_with_attachment(
        self,
        name: str,
        channel: dict[str, Any],
        user: dict[str, Any],
        options: dict[str, str],
        attachment: dict[str, Any],
        *,
        option: str = "file",
        roles: list[str] | None = None,
    ) -> InteractionState:
        """A slash command with an attachment option (type 11): the value is the attachment id, the
        attachment itself is in `data.resolved.attachments`."""
        payload = self._interaction_base(2, channel, user, roles)
        scope = channel.get("guild_id") if channel.get("guild_id") in self.commands else "global"
        command = next((c for c in self.commands.get(scope, []) if c["name"] == name), None)
        if command is None:
            raise KeyError(f"command /{name} was not synced ({list(self.commands)})")
        data: dict[str, Any] = {
            "id": command["id"],
            "name": name,
            "type": 1,
            "options": [
                *({"name": k, "type": 3, "value": v} for k, v in options.items()),
                {"name": option, "type": 11, "value": attachment["id"]},
            ],
            "resolved": {"attachments": {attachment["id"]: attachment}},
        }
        if channel.get("guild_id"):
            data["guild_id"] = channel["guild_id"]
        payload["data"] = data
        state = self.interactions[payload["token"]]
        await self.dispatch("INTERACTION_CREATE", payload)
        return state

    async def _attachment(self, request: web.Request) -> web.Response:
        attachment_id = request.match_info["attachment_id"]
        data = self.attachments.get(attachment_id)
        if data is None:
            return web.Response(status=404, text="Not Found")
        self.attachment_downloads.append(attachment_id)
        return web.Response(body=data, content_type="application/octet-stream")

    # --- REST ------------------------------------------------------------------------------
    def rate_limit(self, method: str, path_regex: str, *, retry_after: float = 0.5, times: int = 1) -> None:
        """The next `times` matching calls get a 429 (with `Via`, as Discord's edge sends it)."""
        self._rate_limits.append([method, re.compile(path_regex), retry_after, times])

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body = await self._read_body(request)
        call = Call(time.monotonic(), request.method, path, dict(request.query), body)
        self.calls.append(call)
        bot_route = not path.startswith(("/webhooks/", "/interactions/"))  # those authenticate by their token
        if (
            self.token is not None
            and bot_route
            and request.headers.get("Authorization") != f"Bot {self.token}"
        ):
            call.status = 401
            return self._json({"message": "401: Unauthorized", "code": 0}, 401)
        for limit in self._rate_limits:
            method, pattern, retry_after, remaining = limit
            if remaining > 0 and method == request.method and pattern.fullmatch(path):
                limit[3] -= 1
                call.status = 429
                return self._json(
                    {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
                    429,
                    {"Via": "1.1 google", "Retry-After": str(retry_after)},
                )
        for method, pattern, handler in self._routes():
            match = pattern.fullmatch(path)
            if method == request.method and match:
                status, payload = await handler(body, *match.groups())
                call.status = status
                if payload is None:
                    return web.Response(status=status)
                return self._json(payload, status)
        call.status = 404
        return self._json({"message": "404: Not Found", "code": 0}, 404)

    @staticmethod
    async def _read_body(request: web.Request) -> Any:
        if not request.can_read_body:
            return None
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            raw = form.get("payload_json")
            return json.loads(str(raw)) if raw is not None else {}
        text = await request.text()
        return json.loads(text) if text else None

    @staticmethod
    def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        # Exactly "application/json": discord.py parses JSON only for that content type.
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def _routes(self) -> list[tuple[str, re.Pattern[str], Callable[..., Awaitable[tuple[int, Any]]]]]:
        s = r"(\d+)"
        return [
            ("GET", re.compile(r"/users/@me"), self._get_me),
            ("GET", re.compile(r"/oauth2/applications/@me"), self._get_application),
            ("PUT", re.compile(rf"/applications/{s}/commands"), self._sync_global),
            ("PUT", re.compile(rf"/applications/{s}/guilds/{s}/commands"), self._sync_guild),
            ("POST", re.compile(rf"/interactions/{s}/([^/]+)/callback"), self._callback),
            ("PATCH", re.compile(rf"/webhooks/{s}/([^/]+)/messages/@original"), self._edit_original),
            ("DELETE", re.compile(rf"/webhooks/{s}/([^/]+)/messages/@original"), self._delete_original),
            ("PATCH", re.compile(rf"/webhooks/{s}/([^/]+)/messages/{s}"), self._edit_followup),
            ("POST", re.compile(rf"/webhooks/{s}/([^/]+)"), self._followup),
            ("POST", re.compile(rf"/channels/{s}/messages"), self._create_message),
            ("PATCH", re.compile(rf"/channels/{s}/messages/{s}"), self._edit_message),
            ("POST", re.compile(rf"/channels/{s}/typing"), self._typing),
        ]

    async def _get_me(self, body: Any) -> tuple[int, Any]:
        return 200, self.bot_user

    async def _get_application(self, body: Any) -> tuple[int, Any]:
        return 200, {
            "id": self.application_id,
            "name": "GhostLM",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.owner,
            "verify_key": "0" * 64,
            "flags": 0,
            "team": None,
        }

    def _store_commands(self, scope: str, app_id: str, body: list[dict[str, Any]]) -> list[dict[str, Any]]:
        commands = []
        for command in body:
            commands.append(
                {
                    "id": self.snowflake(),
                    "application_id": app_id,
                    "version": self.snowflake(),
                    "type": 1,
                    "description": "",  # context-menu commands have none; Discord returns ""
                    "options": [],
                    "default_member_permissions": None,
                    "nsfw": False,
                    **command,
                    **({"guild_id": scope} if scope != "global" else {}),
                }
            )
        self.commands[scope] = commands
        return commands

    async def _sync_global(self, body: Any, app_id: str) -> tuple[int, Any]:
        return 200, self._store_commands("global", app_id, body)

    async def _sync_guild(self, body: Any, app_id: str, guild_id: str) -> tuple[int, Any]:
        return 200, self._store_commands(guild_id, app_id, body)

    def _state(self, token: str) -> InteractionState:
        return self.interactions[token]

    def _bot_message(
        self, channel_id: str, body: dict[str, Any], flags: int = 0, **extra: Any
    ) -> dict[str, Any]:
        return self._message(
            channel_id,
            self.bot_user,
            body.get("content") or "",
            components=body.get("components") or [],
            flags=flags,
            **extra,
        )

    async def _callback(self, body: Any, interaction_id: str, token: str) -> tuple[int, Any]:
        state = self._state(token)
        if state.callback_type is not None:
            return 400, {"message": "Interaction has already been acknowledged.", "code": 40060}
        state.callback_type, state.callback_at = body["type"], time.monotonic()
        flags = (body.get("data") or {}).get("flags") or 0
        state.defer_ephemeral = bool(flags & EPHEMERAL)
        response: dict[str, Any] = {
            "id": interaction_id,
            "type": body["type"],
            "response_message_ephemeral": state.defer_ephemeral,
        }
        resource: dict[str, Any] = {"type": body["type"]}
        if body["type"] in (4, 5):
            loading = body["type"] == 5
            message = self._bot_message(
                state.channel_id,
                body.get("data") or {},
                flags=(flags & EPHEMERAL) | (LOADING if loading else 0),
                webhook_id=self.application_id,
                application_id=self.application_id,
            )
            state.original, state.resolved = message, not loading
            response.update(response_message_id=message["id"], response_message_loading=loading)
            resource["message"] = message
        return 200, {"interaction": response, "resource": resource}

    async def _edit_original(self, body: Any, app_id: str, token: str) -> tuple[int, Any]:
        state = self._state(token)
        if state.original is None or state.deleted:
            return 404, {"message": "Unknown Message", "code": 10008}
        self._apply_edit(state.original, body)
        state.original["flags"] &= ~LOADING
        state.resolved = True
        state.original_edits.append((time.monotonic(), state.original["content"]))
        return 200, state.original

    async def _delete_original(self, body: Any, app_id: str, token: str) -> tuple[int, Any]:
        state = self._state(token)
        if state.original is None or state.deleted:
            return 404, {"message": "Unknown Message", "code": 10008}
        state.deleted = True
        return 204, None

    async def _followup(self, body: Any, app_id: str, token: str) -> tuple[int, Any]:
        state = self._state(token)
        if state.callback_type is None:
            return 404, {"message": "Unknown Webhook", "code": 10015}
        if state.original is not None and not state.resolved and not state.deleted:
            # Discord: a follow-up to an unresolved defer replaces the "thinking" message and
            # keeps the defer's visibility, whatever flags it asks for.
            self._apply_edit(state.original, body)
            state.original["flags"] = EPHEMERAL if state.defer_ephemeral else 0
            state.resolved = True
            state.original_edits.append((time.monotonic(), state.original["content"]))
            return 200, state.original
        if state.followup_limit is not None and len(state.followups) >= state.followup_limit:
            state.followups_refused += 1
            return 400, {"message": "Maximum number of follow-up messages reached", "code": 40094}
        flags = (body.get("flags") or 0) & EPHEMERAL
        message = self._bot_message(
            state.channel_id,
            body,
            flags=flags,
            webhook_id=self.application_id,
            application_id=self.application_id,
        )
        state.followups.append(message)
        return 200, message

    async def _edit_followup(self, body: Any, app_id: str, token: str, message_id: str) -> tuple[int, Any]:
        state = self._state(token)
        for message in state.followups:
            if message["id"] == message_id:
                self._apply_edit(message, body)
                return 200, message
        return 404, {"message": "Unknown Message", "code": 10008}

    async def _create_message(self, body: Any, channel_id: str) -> tuple[int, Any]:
        extra: dict[str, Any] = {}
        reference = body.get("message_reference")
        if reference:
            reference = {
                key: str(value) if key.endswith("_id") and value is not None else value
                for key, value in reference.items()
            }  # Discord sends snowflakes as strings
            extra["type"] = 19
            extra["message_reference"] = reference
            extra["referenced_message"] = self.messages.get(channel_id, {}).get(reference["message_id"])
        message = self._bot_message(channel_id, body, **extra)
        self.messages.setdefault(channel_id, {})[message["id"]] = message
        return 200, message

    async def _edit_message(self, body: Any, channel_id: str, message_id: str) -> tuple[int, Any]:
        message = self.messages.get(channel_id, {}).get(message_id)
        if message is None:
            return 404, {"message": "Unknown Message", "code": 10008}
        self._apply_edit(message, body)
        self.message_edits.append((time.monotonic(), channel_id, message_id, message["content"]))
        return 200, message

    async def _typing(self, body: Any, channel_id: str) -> tuple[int, Any]:
        return 204, None

    @staticmethod
    def _apply_edit(message: dict[str, Any], body: dict[str, Any]) -> None:
        if "content" in body:
            message["content"] = body["content"] or ""
        if "components" in body:
            message["components"] = body["components"] or []
        message["edited_timestamp"] = TS

    # --- inspection --------------------------------------------------------------------------
    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and pattern.fullmatch(c.path)]

    def bot_messages(self, channel_id: str) -> list[dict[str, Any]]:
        """What the bot posted in a channel, oldest first."""
        return [
            m for m in self.messages.get(channel_id, {}).values() if m["author"]["id"] == self.bot_user["id"]
        ]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.02)

"""A loopback fake of the Telegram Bot API, for driving the unmodified python-telegram-bot.

It speaks just enough of the real protocol (see /work/shared/TESTING.md): form-encoded requests
(string values raw, everything else JSON), `{"ok": …}` replies with real HTTP status codes,
long-polling `getUpdates` with offset confirmation, "message is not modified", HTML entity
validation, injectable 429s. Every call is recorded with a monotonic timestamp.

    fake = FakeTelegramAPI()
    await fake.start()
    ApplicationBuilder().token(fake.token).base_url(fake.base_url).base_file_url(fake.file_base_url)
    uid = fake.send_text(chat=fake.private_chat(42), user=fake.user(42), text="hi")
    await fake.wait_for_messages(42, 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

# Parameters PTB always sends as raw strings: never JSON-decode these ("123" must stay a string).
_STRING_PARAMS = frozenset(
    {"text", "parse_mode", "callback_query_id", "action", "url", "secret_token", "caption", "emoji"}
)
# Tags Telegram's HTML parse mode accepts, and the attributes each may carry.
_HTML_TAGS: dict[str, frozenset[str]] = {
    "b": frozenset(),
    "strong": frozenset(),
    "i": frozenset(),
    "em": frozenset(),
    "u": frozenset(),
    "ins": frozenset(),
    "s": frozenset(),
    "strike": frozenset(),
    "del": frozenset(),
    "tg-spoiler": frozenset(),
    "span": frozenset({"class"}),
    "a": frozenset({"href"}),
    "code": frozenset({"class"}),
    "pre": frozenset(),
    "blockquote": frozenset({"expandable"}),
    "tg-emoji": frozenset({"emoji-id"}),
}
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)


class EntityError(ValueError):
    """The text is not valid for its parse_mode (Telegram answers 400 "can't parse entities")."""


class _TelegramHTML(HTMLParser):
    """Validates Telegram-flavoured HTML and collects the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.visible: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            raise EntityError(f'Unsupported start tag "{tag}"')
        for name, _ in attrs:
            if name not in _HTML_TAGS[tag]:
                raise EntityError(f'Unsupported attribute "{name}" of tag "{tag}"')
        self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise EntityError(f'Unsupported start tag "{tag}/"')

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            raise EntityError(f'Unmatched end tag "{tag}"')
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.visible.append(data)


def visible_html_text(text: str) -> str:
    """Return the text a user sees for an HTML-mode message, or raise EntityError like Telegram."""
    # Telegram demands every bare '<', '>' and '&' be escaped; HTMLParser is lenient, so check first.
    for match in re.finditer(r"&", text):
        if not _ENTITY.match(text, match.start()):
            raise EntityError(f"Can't find end of the entity starting at byte offset {match.start()}")
    for match in re.finditer(r"<", text):
        if not re.match(r"</?[a-zA-Z][a-zA-Z0-9-]*(\s[^<>]*)?>", text[match.start() :]):
            raise EntityError(f"Unexpected character at byte offset {match.start()}")
    parser = _TelegramHTML()
    parser.feed(text)
    parser.close()
    if parser.stack:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{parser.stack[-1]}"')
    return "".join(parser.visible)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass
class Call:
    """One request the bot made."""

    method: str
    params: dict[str, Any]
    at: float  # time.monotonic()
    status: int = 200
    result: Any = None


@dataclass
class Draft:
    """One accepted sendMessageDraft: a ~30 s preview the client drops when a real message arrives."""

    chat_id: int
    draft_id: int
    text: str
    thread_id: int | None
    at: float  # time.monotonic()


@dataclass
class StoredMessage:
    """A message as it currently looks in a chat."""

    chat_id: int
    message_id: int
    from_bot: bool
    text: str  # what the user sees (entities parsed)
    raw_text: str  # what was sent
    parse_mode: str | None
    reply_markup: Any
    deleted: bool = False
    edits: int = 0
    thread_id: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)


class FakeTelegramAPI:
    """The Bot API on 127.0.0.1. One bot, any number of chats and users."""

    def __init__(
        self,
        *,
        token: str = "123456:TEST-token-abcdef",
        username: str = "ghost_test_bot",
        bot_id: int = 123456,
    ) -> None:
        self.token = token
        self.bot_user = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "GhostLM",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[Call] = []
        self.messages: dict[tuple[int, int], StoredMessage] = {}
        self.commands: list[dict[str, Any]] = []
        self.webhook: dict[str, Any] | None = None
        self.drafts: list[Draft] = []  # every accepted sendMessageDraft, in order
        self.drafts_supported = True  # False: answer sendMessageDraft as an older Bot API server (404)
        self._updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self.all_updates: dict[int, dict[str, Any]] = {}  # every update ever injected, for redelivery
        self._update_ids = itertools.count(1000)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._callback_ids = itertools.count(1)
        self._chats: dict[int, dict[str, Any]] = {}
        self._failures: list[_Failure] = []
        self.faults: list[Fault] = []  # fault injection (see `inject`)
        self.faults_injected: list[str] = []  # "kind method" of every fault that fired
        self._changed = asyncio.Condition()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.files: dict[str, FakeFile] = {}  # file_id → a document users sent (getFile + download)

    # --- lifecycle --------------------------------------------------------------------
    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/file/bot{token}/{path:.*}", self._file)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._closing = False

    async def stop(self) -> None:
        # aiohttp does not cancel a handler when the client goes away: wake long-polls ourselves.
        self._closing = True
        await self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    @property
    def username(self) -> str:
        return str(self.bot_user["username"])

    @property
    def bot_id(self) -> int:
        return int(self.bot_user["id"])

    # --- building updates ----------------------------------------------------------------
    @staticmethod
    def user(user_id: int, first_name: str | None = None, username: str | None = None) -> dict[str, Any]:
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name or f"User{user_id}"}
        if username:
            user["username"] = username
        return user

    def private_chat(self, user_id: int) -> dict[str, Any]:
        return self._chat({"id": user_id, "type": "private", "first_name": f"User{user_id}"})

    def group_chat(self, chat_id: int, *, supergroup: bool = True, forum: bool = False) -> dict[str, Any]:
        chat: dict[str, Any] = {
            "id": chat_id,
            "type": "supergroup" if supergroup else "group",
            "title": f"Group {chat_id}",
        }
        if forum:
            chat["is_forum"] = True
        return self._chat(chat)

    def _chat(self, chat: dict[str, Any]) -> dict[str, Any]:
        self._chats[chat["id"]] = chat
        return chat

    def send_text(
        self,
        *,
        chat: dict[str, Any],
        user: dict[str, Any],
        text: str,
        reply_to: int | None = None,
        thread_id: int | None = None,
        entities: list[dict[str, Any]] | None = None,
    ) -> int:
        """Inject a user's text message; bot_command and @mention entities are added automatically.
        Returns the update_id."""
        message_id = self._next_message_id(chat["id"])
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": user,
            "text": text,
        }
        ents = entities if entities is not None else self.auto_entities(text)
        if ents:
            message["entities"] = ents
        if reply_to is not None:
            replied = self.messages[(chat["id"], reply_to)]
            message["reply_to_message"] = replied.payload
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        self.messages[(chat["id"], message_id)] = StoredMessage(
            chat["id"], message_id, False, text, text, None, None, thread_id=thread_id, payload=message
        )
        return self.push_update({"message": message})

    def send_photo(self, *, chat: dict[str, Any], user: dict[str, Any]) -> int:
        """Inject a message without text (a photo), which the bot cannot read."""
        message_id = self._next_message_id(chat["id"])
        message = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": user,
            "photo": [{"file_id": "AgAD", "file_unique_id": "u1", "width": 10, "height": 10}],
        }
        return self.push_update({"message": message})

    def send_document(
        self,
        *,
        chat: dict[str, Any],
        user: dict[str, Any],
        data: bytes,
        file_name: str,
        mime_type: str | None = None,
        caption: str | None = None,
        declared_size: int | None = None,
    ) -> int:
        """Inject a document message (its bytes then served by getFile + the file route); mentions and
        commands in the caption become `caption_entities`. Returns the update_id."""
        file_id = f"BQAC{len(self.files) + 1:04d}{int(time.time() * 1000)}"
        self.files[file_id] = FakeFile(file_id, f"documents/file_{len(self.files) + 1}", data)
        document: dict[str, Any] = {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_name": file_name,
            "file_size": declared_size if declared_size is not None else len(data),
        }
        if mime_type:
            document["mime_type"] = mime_type
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat["id"]),
            "date": int(time.time()),
            "chat": chat,
            "from": user,
            "document": document,
        }
        if caption:
            message["caption"] = caption
            if entities := self.auto_entities(caption):
                message["caption_entities"] = entities
        return self.push_update({"message": message})

    def press_button(self, *, chat_id: int, message_id: int, user: dict[str, Any], data: str) -> int:
        """Inject a callback query for an inline button under one of the bot's messages."""
        stored = self.messages[(chat_id, message_id)]
        query = {
            "id": str(next(self._callback_ids)),
            "from": user,
            "chat_instance": f"ci{chat_id}",
            "message": stored.payload,
            "data": data,
        }
        return self.push_update({"callback_query": query})

    def react(
        self,
        *,
        chat_id: int,
        message_id: int,
        user: dict[str, Any],
        new: list[str],
        old: list[str] | None = None,
    ) -> int:
        """Inject a `message_reaction` update: `user` changed their emoji reactions on a message from
        `old` to `new`. Telegram sends these only when allowed_updates names message_reaction (a
        group's also only to an administrator bot): without it the update is dropped here too."""
        if self.allowed_updates is not None and "message_reaction" not in self.allowed_updates:
            return 0
        reaction = {
            "chat": self._chats[chat_id],
            "message_id": message_id,
            "user": user,
            "date": int(time.time()),
            "old_reaction": [{"type": "emoji", "emoji": e} for e in old or []],
            "new_reaction": [{"type": "emoji", "emoji": e} for e in new],
        }
        return self.push_update({"message_reaction": reaction})

    @property
    def allowed_updates(self) -> list[str] | None:
        """What the bot last asked for (getUpdates or setWebhook); None = Telegram's default set."""
        for call in reversed(self.calls):
            if call.method in ("getUpdates", "setWebhook") and "allowed_updates" in call.params:
                return list(call.params["allowed_updates"] or [])
        return None

    def push_update(self, body: dict[str, Any], update_id: int | None = None) -> int:
        """Queue an update (a redelivery when `update_id` is an old one) and wake the long-polls."""
        update = {"update_id": update_id if update_id is not None else next(self._update_ids), **body}
        self.all_updates.setdefault(update["update_id"], update)
        self._updates.append(update)
        self._updates.sort(key=lambda u: u["update_id"])
        asyncio.get_running_loop().create_task(self._notify())
        return int(update["update_id"])

    def redeliver(self, update_id: int) -> int:
        """Hand out an already delivered (and confirmed) update again, as Telegram may."""
        body = {k: v for k, v in self.all_updates[update_id].items() if k != "update_id"}
        return self.push_update(body, update_id=update_id)

    def auto_entities(self, text: str) -> list[dict[str, Any]]:
        entities: list[dict[str, Any]] = []
        command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
        if command:
            entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(command.group())})
        for mention in re.finditer(r"(?<![\w/])@[A-Za-z0-9_]{3,}", text):
            entities.append(
                {
                    "type": "mention",
                    "offset": utf16_len(text[: mention.start()]),
                    "length": utf16_len(mention.group()),
                }
            )
        return entities

    # --- failures ---------------------------------------------------------------------
    def fail_with_429(self, method: str, *, nth: int = 1, retry_after: int = 1) -> None:
        """The `nth` call of `method` from now on answers 429 Too Many Requests."""
        self._failures.append(
            _Failure(
                method,
                nth,
                429,
                f"Too Many Requests: retry after {retry_after}",
                {"retry_after": retry_after},
            )
        )

    def inject(self, fault: Fault) -> None:
        """Arm a fault: the `nth` matching call of its method from now on fails (see `Fault`)."""
        self.faults.append(fault)

    def _take_fault(self, method: str, params: dict[str, Any]) -> Fault | None:
        for fault in self.faults:
            if fault.method != method or (
                fault.chat_id is not None and _int(params.get("chat_id")) != fault.chat_id
            ):
                continue
            if fault.match is not None and not fault.match(params):
                continue
            fault.left -= 1
            if fault.left <= 0:
                self.faults.remove(fault)
                self.faults_injected.append(f"{fault.kind} {method}")
                return fault
            return None
        return None

    def reject_entities(self, method: str, *, nth: int = 1) -> None:
        """The `nth` call of `method` with a parse_mode from now on is refused as if Telegram could
        not parse its entities (real Telegram is stricter than any local check)."""
        self._failures.append(
            _Failure(
                method,
                nth,
                400,
                "Bad Request: can't parse entities: Can't find end of the entity starting at byte offset 12",
                None,
                needs_parse_mode=True,
            )
        )

    # --- inspection -------------------------------------------------------------------
    def calls_to(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (chat_id is None or _int(c.params.get("chat_id")) == chat_id)
        ]

    def bot_messages(self, chat_id: int) -> list[StoredMessage]:
        """The bot's visible messages in a chat, oldest first."""
        return [
            m
            for (cid, _), m in sorted(self.messages.items())
            if cid == chat_id and m.from_bot and not m.deleted
        ]

    def chat_calls(self, chat_id: int) -> list[Call]:
        return [c for c in self.calls if _int(c.params.get("chat_id")) == chat_id]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s; calls: {[c.method for c in self.calls]}"
            ) from None

    async def wait_for_messages(
        self, chat_id: int, count: int, timeout: float = 10.0, final: bool = False
    ) -> list[StoredMessage]:
        """Wait until the bot has `count` messages in the chat (with `final`: the last one carries
        the feedback keyboard, i.e. the answer is complete)."""

        def ready() -> bool:
            msgs = self.bot_messages(chat_id)
            return len(msgs) >= count and (not final or msgs[-1].reply_markup is not None)

        await self.wait_for(ready, timeout)
        return self.bot_messages(chat_id)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- the API ----------------------------------------------------------------------
    async def _file(self, request: web.Request) -> web.Response:
        """File download: `GET {file_base_url}{token}/{file_path}` of a document a user sent."""
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        path = request.match_info["path"]
        found = next((f for f in self.files.values() if f.file_path == path), None)
        if found is None:
            return _error(404, "Not Found")
        found.downloads += 1
        self.calls.append(Call("download", {"file_path": path}, time.monotonic()))
        await self._notify()
        return web.Response(body=found.data, content_type="application/octet-stream")

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await _read_params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        await self._notify()  # a long-poll returns much later: let waiters see the request now
        try:
            fault = self._take_fault(method, params)
            if fault is not None and fault.kind in ("429", "5xx"):
                call.status = 429 if fault.kind == "429" else 502
                if fault.kind == "429":
                    return web.json_response(
                        {
                            "ok": False,
                            "error_code": 429,
                            "description": f"Too Many Requests: retry after {fault.retry_after}",
                            "parameters": {"retry_after": fault.retry_after},
                        },
                        status=429,
                    )
                return _error(502, "Bad Gateway")
            if fault is not None:  # "reset"/"kill": the call takes effect, then the answer never arrives
                handler = getattr(self, f"_api_{method}")
                try:
                    call.result = await handler(params)
                except _ApiError as exc:
                    call.status = exc.status
                if fault.action is not None:
                    fault.action()
                call.status = 0
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("fault injected: connection reset")
            failure = self._take_failure(method, params)
            if failure is not None:
                call.status = failure.status
                body: dict[str, Any] = {
                    "ok": False,
                    "error_code": failure.status,
                    "description": failure.description,
                }
                if failure.parameters:
                    body["parameters"] = failure.parameters
                return web.json_response(body, status=failure.status)
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                call.status = 404
                return _error(404, "Not Found: method not found")
            try:
                call.result = await handler(params)
            except _ApiError as exc:
                call.status = exc.status
                return _error(exc.status, exc.description)
            return web.json_response({"ok": True, "result": call.result})
        finally:
            await self._notify()

    def _take_failure(self, method: str, params: dict[str, Any]) -> _Failure | None:
        for failure in self._failures:
            if failure.method != method or (failure.needs_parse_mode and not params.get("parse_mode")):
                continue
            failure.left -= 1
            if failure.left <= 0:
                self._failures.remove(failure)
                return failure
            return None
        return None

    async def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.bot_user

    async def _api_setMyCommands(self, params: dict[str, Any]) -> bool:
        self.commands = list(params.get("commands") or [])
        return True

    async def _api_getMyCommands(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.commands

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        return True

    async def _api_setWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = params
        return True

    async def _api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        limit = int(params.get("limit") or 100)
        if offset:
            # An offset confirms every update below it: Telegram forgets them.
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        while True:
            pending = [u for u in self._updates if u["update_id"] >= offset][:limit]
            remaining = deadline - time.monotonic()
            if pending or remaining <= 0 or self._closing:
                return pending
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def _api_getFile(self, params: dict[str, Any]) -> dict[str, Any]:
        found = self.files.get(str(params.get("file_id")))
        if found is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        if len(found.data) > FILE_DOWNLOAD_LIMIT:
            raise _ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": found.file_id,
            "file_unique_id": f"u{found.file_id}",
            "file_size": len(found.data),
            "file_path": found.file_path,
        }

    async def _api_sendChatAction(self, params: dict[str, Any]) -> bool:
        self._require_chat(params)
        return True

    async def _api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_deleteMessage(self, params: dict[str, Any]) -> bool:
        stored = self._stored(params)
        stored.deleted = True
        return True

    async def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._require_chat(params)
        raw = params.get("text")
        if not isinstance(raw, str) or not raw.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        visible = self._visible(raw, params.get("parse_mode"))
        thread_id = _int(params.get("message_thread_id"))
        message_id = self._next_message_id(chat["id"])
        payload: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": self.bot_user,
            "text": visible,
        }
        if params.get("reply_markup"):
            payload["reply_markup"] = params["reply_markup"]
        if thread_id is not None:
            payload["message_thread_id"] = thread_id
            payload["is_topic_message"] = True
        self.messages[(chat["id"], message_id)] = StoredMessage(
            chat["id"],
            message_id,
            True,
            visible,
            raw,
            params.get("parse_mode"),
            params.get("reply_markup"),
            thread_id=thread_id,
            payload=payload,
        )
        return payload

    async def _api_sendMessageDraft(self, params: dict[str, Any]) -> bool:
        if not self.drafts_supported:
            raise _ApiError(404, "Not Found: method not found")
        chat = self._require_chat(params)
        if chat["type"] != "private":
            raise _ApiError(400, "Bad Request: message drafts can be sent only to private chats")
        draft_id = _int(params.get("draft_id"))
        if not draft_id:
            raise _ApiError(400, "Bad Request: draft_id must be non-zero")
        raw = params.get("text") or ""
        if not isinstance(raw, str):
            raise _ApiError(400, "Bad Request: text must be a string")
        visible = self._visible(raw, params.get("parse_mode")) if raw else ""
        self.drafts.append(
            Draft(chat["id"], draft_id, visible, _int(params.get("message_thread_id")), time.monotonic())
        )
        return True

    async def _api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        stored = self._stored(params)
        if not stored.from_bot:
            raise _ApiError(400, "Bad Request: message can't be edited")
        raw = params.get("text")
        if not isinstance(raw, str) or not raw.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        visible = self._visible(raw, params.get("parse_mode"))
        markup = params.get("reply_markup")
        if (
            visible == stored.text
            and raw == stored.raw_text
            and params.get("parse_mode") == stored.parse_mode
            and markup == stored.reply_markup
        ):
            raise _ApiError(400, NOT_MODIFIED)
        stored.text, stored.raw_text, stored.parse_mode = visible, raw, params.get("parse_mode")
        stored.reply_markup = markup
        stored.edits += 1
        stored.payload = {**stored.payload, "text": visible, "edit_date": int(time.time())}
        if markup:
            stored.payload["reply_markup"] = markup
        else:
            stored.payload.pop("reply_markup", None)
        return stored.payload

    # --- helpers ----------------------------------------------------------------------
    def _visible(self, raw: str, parse_mode: Any) -> str:
        if parse_mode in (None, ""):
            visible = raw
        elif str(parse_mode).upper() == "HTML":
            try:
                visible = visible_html_text(raw)
            except EntityError as exc:
                raise _ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
        else:
            raise _ApiError(400, "Bad Request: unsupported parse_mode")
        if utf16_len(visible) > 4096:
            raise _ApiError(400, "Bad Request: message is too long")
        return visible

    def _require_chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _int(params.get("chat_id"))
        if chat_id is None or chat_id not in self._chats:
            raise _ApiError(400, "Bad Request: chat not found")
        return self._chats[chat_id]

    def _stored(self, params: dict[str, Any]) -> StoredMessage:
        chat = self._require_chat(params)
        stored = self.messages.get((chat["id"], _int(params.get("message_id")) or 0))
        if stored is None or stored.deleted:
            raise _ApiError(400, "Bad Request: message to edit not found")
        return stored

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)


FILE_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # the cloud Bot API's getFile limit


@dataclass
class FakeFile:
    """A document a user sent: served by getFile and the file download route."""

    file_id: str
    file_path: str
    data: bytes
    downloads: int = 0


@dataclass
class Fault:
    """One injected failure of the `nth` call of `method` (in `chat_id`, if given, and where `match` holds).

    kind "429": Too Many Requests with `retry_after`; "5xx": 502 Bad Gateway (neither takes effect);
    "reset": the call takes effect, then the connection is cut before the answer (a lost response);
    "kill": like reset, after running `action` (e.g. SIGKILL the bot: killed between delivery and commit).
    """

    method: str
    kind: str
    left: int = 1
    chat_id: int | None = None
    retry_after: int = 1
    match: Callable[[dict[str, Any]], bool] | None = None
    action: Callable[[], None] | None = None


@dataclass
class _Failure:
    method: str
    left: int  # calls of `method` until this one fails
    status: int
    description: str
    parameters: dict[str, Any] | None
    needs_parse_mode: bool = False


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status, self.description = status, description


def _error(status: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": status, "description": description}, status=status)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Decode PTB's request body: strings are sent raw, every other value is JSON-encoded."""
    if request.content_type == "application/json":
        return dict(await request.json())
    form = await request.post()
    params: dict[str, Any] = dict(request.query)
    for key, value in form.items():
        if not isinstance(value, str):
            params[key] = value  # an uploaded file
        elif key in _STRING_PARAMS:
            params[key] = value
        else:
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
    return params


__all__ = [
    "NOT_MODIFIED",
    "Call",
    "Draft",
    "EntityError",
    "FakeFile",
    "FakeTelegramAPI",
    "Fault",
    "StoredMessage",
    "utf16_len",
    "visible_html_text",
]

"""The Telegram adapter: python-telegram-bot `Application` ↔ `core.manager.ConversationManager`.

Thin on purpose: handlers turn an `Update` into `core.types.Incoming`, hand it to the manager
with a `TelegramSink`, and map 👍/👎 buttons to feedback. Conversation rules live in core.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

from telegram import (
    BotCommand,
    Message,
    MessageEntity,
    MessageReactionUpdated,
    ReactionTypeEmoji,
    Update,
    User,
)
from telegram.constants import ChatType
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    MessageReactionHandler,
    filters,
)

from bots.downloads import fetch_limited
from bots.logs import SecretRedactor
from bots.telegram.sink import FEEDBACK_DOWN, FEEDBACK_UP, DraftChats, StreamingMode, TelegramSink
from core.commands import COMMANDS
from core.manager import ConversationManager, InterruptedReply
from core.settings import Settings
from core.types import ChatKind, Incoming
from core.uploads import DownloadFailed, FileTooLarge, IncomingFile

logger = logging.getLogger(__name__)

PLATFORM = "telegram"
RATE_LIMIT_RETRIES = 5  # 429s are waited out (retry_after + 0.1 s) this many times per request
POLL_TIMEOUT_S = 10  # long-poll length; getUpdates' read timeout is this plus PTB's own
# message_reaction must be named to be delivered at all (and in groups only to an administrator bot).
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY, Update.MESSAGE_REACTION]
REACTION_RATINGS = {"👍": 1, "👎": -1}
DM_EDIT_INTERVAL_S = 1.0
GROUP_EDIT_INTERVAL_S = 3.0
NOT_TEXT_REPLY = (
    "I can only read text messages and documents (PDF, Markdown, text, HTML). Please type your question."
)
ERROR_REPLY = "Sorry, something went wrong while answering. Please try again."
_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")


def bot_commands(commands: dict[str, str]) -> list[BotCommand]:
    """core.commands.COMMANDS (name → description) as Telegram BotCommands (names as Telegram allows)."""
    out: list[BotCommand] = []
    for name, description in commands.items():
        name = name.lstrip("/").lower()
        if _COMMAND_NAME.match(name):
            out.append(BotCommand(name, (description or name)[:256]))
    return out


def _mentions(entities: dict[MessageEntity, str], username: str, bot_id: int) -> bool:
    """Whether these (text or caption) entities @mention the bot, by username or as a text mention."""
    return any(
        (entity.type == entity.MENTION and value.lower() == f"@{username}")
        or (entity.type == entity.TEXT_MENTION and entity.user is not None and entity.user.id == bot_id)
        for entity, value in entities.items()
    )


def _replies_to(message: Message, bot_id: int) -> bool:
    replied = message.reply_to_message
    return (
        replied is not None
        and replied.from_user is not None
        and replied.from_user.id == bot_id
        and not replied.forum_topic_created  # a topic's first message is "replied to" by every post
    )


def _incoming(update: Update, message: Message, user: User, text: str, *, dm: bool) -> Incoming:
    """The core's value for an addressed message (text, or a document's caption)."""
    return Incoming(
        platform=PLATFORM,
        event_id=str(update.update_id),
        chat_id=str(message.chat.id),
        chat_kind=ChatKind.DM if dm else ChatKind.GROUP,
        user_id=str(user.id),
        user_name=user.full_name or user.username or str(user.id),
        text=text,
        addressed=True,
        thread_id=str(message.message_thread_id)
        if message.is_topic_message and message.message_thread_id
        else None,
        platform_message_id=str(message.message_id),
    )


class TelegramHandlers:
    """The handler callbacks, bound to the manager they forward to."""

    def __init__(
        self,
        manager: ConversationManager,
        commands: frozenset[str],
        *,
        streaming: StreamingMode = "draft",
    ) -> None:
        self._manager = manager
        self._commands = commands  # the core's command names, without "/"
        self._streaming = streaming
        self._drafts = DraftChats()  # private chats whose Bot API refused drafts: edits there
        # Updates run concurrently, but reaction changes must apply in order (the last one wins).
        self._reactions = asyncio.Lock()

    # --- Update → Incoming --------------------------------------------------------------------
    @staticmethod
    def to_incoming(
        update: Update, bot_id: int, bot_username: str, commands: frozenset[str]
    ) -> Incoming | None:
        """The core's view of a message, or None when a group message does not address the bot."""
        message = update.message
        if message is None or message.text is None or update.effective_user is None:
            return None
        chat, user = message.chat, update.effective_user
        text = message.text
        dm = chat.type == chat.PRIVATE
        username = bot_username.lower()
        command = _command(message)
        mentioned = _mentions(message.parse_entities(), username, bot_id)
        reply_to_bot = _replies_to(message, bot_id)
        if command is not None:
            name, target = command
            if target and target.lower() != username:
                return None  # /cmd@other_bot
            # In groups a bare unknown command may belong to another bot; known ones are ours.
            addressed = dm or bool(target) or name in commands
            text = re.sub(rf"^/{re.escape(name)}@{re.escape(bot_username)}", f"/{name}", text, flags=re.I)
        else:
            addressed = dm or mentioned or reply_to_bot
        if not addressed:
            return None
        if mentioned:
            text = re.sub(rf"(?<!\w)@{re.escape(bot_username)}\b", "", text, flags=re.I)
            text = re.sub(r"[ \t]{2,}", " ", text).strip()
        return _incoming(update, message, user, text, dm=dm)

    def sink_for(self, message: Message, bot: Any) -> TelegramSink:
        dm = message.chat.type == message.chat.PRIVATE
        return TelegramSink(
            bot,
            message.chat.id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            reply_to=None if dm else message.message_id,  # in groups, show which message is answered
            # Telegram allows ~20 messages a minute in a group (edits included): stream slower there.
            min_interval=DM_EDIT_INTERVAL_S if dm else GROUP_EDIT_INTERVAL_S,
            # Drafts exist in private chats only: groups keep edit-based streaming.
            streaming="edit" if self._streaming == "draft" and not dm else self._streaming,
            drafts=self._drafts,
        )

    # --- callbacks ------------------------------------------------------------------------------
    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Text and commands: unaddressed group messages return here without an API call."""
        bot = context.bot
        incoming = self.to_incoming(update, bot.id, bot.username, self._commands)
        if incoming is None or update.message is None:
            return
        sink = self.sink_for(update.message, bot)
        try:
            await self._manager.handle(incoming, sink)
        except Exception:
            logger.exception("telegram update %s failed", update.update_id)
            await _best_effort(sink.notice(ERROR_REPLY))

    async def on_not_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo, sticker, voice note… in a DM: say politely what the bot can read (allowed users, rate-limited)."""
        message, user = update.message, update.effective_user
        if message is None or user is None:
            return
        incoming = Incoming(
            PLATFORM, str(update.update_id), str(message.chat.id), ChatKind.DM, str(user.id), "", ""
        )
        if self._manager.admits(incoming):
            await _best_effort(self.sink_for(message, context.bot).notice(NOT_TEXT_REPLY))

    # --- documents ------------------------------------------------------------------------------
    @staticmethod
    def document_incoming(update: Update, bot_id: int, bot_username: str) -> Incoming | None:
        """A document message as the core sees it, or None in a group when its caption does not address
        the bot (a caption @mention or /ask, or a reply to the bot). Mentions and commands of a caption
        live in `caption_entities`."""
        message = update.message
        if message is None or message.document is None or update.effective_user is None:
            return None
        chat, user = message.chat, update.effective_user
        dm = chat.type == chat.PRIVATE
        username = bot_username.lower()
        caption = message.caption or ""
        mentioned = _mentions(message.parse_caption_entities(), username, bot_id)
        entities = message.caption_entities or ()
        asked = False
        if entities and entities[0].type == entities[0].BOT_COMMAND and entities[0].offset == 0:
            command = message.parse_caption_entity(entities[0])
            name, _, target = command[1:].partition("@")
            if target and target.lower() != username:
                return None  # /ask@other_bot
            asked = name.lower() == "ask"
            if asked:
                caption = caption[len(command) :]
        reply_to_bot = _replies_to(message, bot_id)
        if not (dm or mentioned or asked or reply_to_bot):
            return None
        if mentioned:
            caption = re.sub(rf"(?<!\w)@{re.escape(bot_username)}\b", "", caption, flags=re.I)
        return _incoming(update, message, user, " ".join(caption.split()), dm=dm)  # a question about the file

    async def on_document(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A file: indexed into the sender's private documents (DMs, or a group caption that addresses us)."""
        bot = context.bot
        incoming = self.document_incoming(update, bot.id, bot.username)
        message = update.message
        if incoming is None or message is None or message.document is None:
            return
        document = message.document

        async def download(limit: int) -> bytes:
            if document.file_size is not None and document.file_size > limit:
                raise FileTooLarge
            try:
                file = await bot.get_file(document.file_id)
            except TelegramError as exc:  # e.g. "file is too big" (the cloud Bot API serves up to 20 MB)
                if "too big" in exc.message.lower():
                    raise FileTooLarge from None
                raise DownloadFailed(exc.message) from None
            if file.file_size is not None and file.file_size > limit:
                raise FileTooLarge
            if not file.file_path:
                raise DownloadFailed("no file path")
            if not file.file_path.startswith(("http://", "https://")):
                # A self-hosted Bot API server in --local mode answers with a path on this machine.
                return await asyncio.to_thread(_read_local_file, file.file_path, limit)
            return await fetch_limited(file.file_path, limit)

        upload = IncomingFile(
            file_name=document.file_name or "document",
            declared_mime=document.mime_type,
            declared_size=document.file_size,
            download=download,
        )
        sink = self.sink_for(message, bot)
        try:
            indexed = await self._manager.handle_document(incoming, upload, sink)
            if indexed and incoming.text and incoming.chat_kind is ChatKind.DM:
                # "Summarise this" as the caption: answer it from the document just indexed.
                question = dataclasses.replace(incoming, event_id=f"{update.update_id}:caption")
                await self._manager.handle(question, self.sink_for(message, bot))
        except Exception:
            logger.exception("telegram document update %s failed", update.update_id)
            await _best_effort(sink.notice(ERROR_REPLY))

    async def on_feedback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.message is None or query.data not in (FEEDBACK_UP, FEEDBACK_DOWN):
            return
        recorded = await self._manager.record_feedback(
            platform=PLATFORM,
            chat_id=str(query.message.chat.id),
            user_id=str(query.from_user.id),
            platform_message_id=str(query.message.message_id),
            rating=1 if query.data == FEEDBACK_UP else -1,
            chat_kind=ChatKind.DM if query.message.chat.type == ChatType.PRIVATE else ChatKind.GROUP,
        )
        await query.answer("Thanks for the feedback" if recorded else "Sorry, I no longer have that answer.")

    async def on_reaction(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """👍/👎 reactions on an answer are feedback, the same rating as the buttons (the last one
        wins). Taking the reaction away withdraws the rating; other emoji are ignored."""
        reaction = update.message_reaction
        if reaction is None or reaction.user is None:  # anonymous group admins react as the chat
            return
        rating = reaction_rating(reaction)
        if rating is None:
            return
        chat_id, user_id, message_id = str(reaction.chat.id), str(reaction.user.id), str(reaction.message_id)
        kind = ChatKind.DM if reaction.chat.type == ChatType.PRIVATE else ChatKind.GROUP
        async with self._reactions:
            await self._apply_reaction(chat_id, user_id, message_id, kind, rating)

    async def _apply_reaction(
        self, chat_id: str, user_id: str, message_id: str, kind: ChatKind, rating: int
    ) -> None:
        if rating == 0:
            await self._manager.withdraw_feedback(
                platform=PLATFORM,
                chat_id=chat_id,
                user_id=user_id,
                platform_message_id=message_id,
                chat_kind=kind,
            )
        else:
            await self._manager.record_feedback(
                platform=PLATFORM,
                chat_id=chat_id,
                user_id=user_id,
                platform_message_id=message_id,
                rating=rating,
                chat_kind=kind,
            )

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        # Only the exception type and Telegram's description: never a URL (it contains the token).
        error = context.error
        detail = error.message if isinstance(error, TelegramError) else type(error).__name__
        update_id = update.update_id if isinstance(update, Update) else None
        # A Telegram/network error is described by its message; anything else is a bug: keep the traceback
        # (the logging setup redacts secrets in it).
        logger.error(
            "telegram error (update %s): %s: %s",
            update_id,
            type(error).__name__,
            detail,
            exc_info=None if isinstance(error, TelegramError) else error,
        )


def reaction_rating(reaction: MessageReactionUpdated) -> int | None:
    """+1/-1 for a newly set 👍/👎, 0 when the user took theirs away, None when 👍/👎 did not change.

    A user may set several reactions at once: a 👍/👎 that is new in this update wins over one that
    was already there (so changing 👍 to 👎 reads as 👎)."""

    def ratings(reactions: Any) -> list[int]:
        return [
            REACTION_RATINGS[r.emoji]
            for r in reactions
            if isinstance(r, ReactionTypeEmoji) and r.emoji in REACTION_RATINGS
        ]

    old, new = ratings(reaction.old_reaction), ratings(reaction.new_reaction)
    if sorted(old) == sorted(new):
        return None  # only other emoji changed: the rating (maybe set by a button since) stands
    if not new:
        return 0 if old else None
    added = [rating for rating in new if rating not in old]
    return (added or new)[-1]


def _command(message: Message) -> tuple[str, str] | None:
    """(name, @target or "") when the message starts with a bot_command entity."""
    entities = message.entities or ()
    if not entities or entities[0].type != entities[0].BOT_COMMAND or entities[0].offset != 0:
        return None
    raw = message.parse_entity(entities[0])[1:]
    name, _, target = raw.partition("@")
    return name.lower(), target


def _read_local_file(path: str, limit: int) -> bytes:
    """A file a local-mode Bot API server stored for us, at most `limit` bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise DownloadFailed(type(exc).__name__) from None
    if len(data) > limit:
        raise FileTooLarge
    return data


async def _best_effort(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception as exc:
        logger.warning("could not send a reply: %s", type(exc).__name__)


def _keep_token_out_of_logs(token: str) -> None:
    """httpx logs request URLs at INFO and PTB logs its base URLs at DEBUG: both contain the token."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in (
        "telegram.Bot",
        "telegram.ext.ExtBot",
        "telegram.ext.Updater",
        "telegram.ext.Application",
        "httpx",
    ):
        named = logging.getLogger(name)
        if not any(isinstance(f, SecretRedactor) and f.redact(token) != token for f in named.filters):
            named.addFilter(SecretRedactor([token]))


def build_application(settings: Settings, manager: ConversationManager) -> Application:
    """The PTB Application for `settings`, forwarding to `manager`. Not started."""
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")
    _keep_token_out_of_logs(settings.telegram_bot_token.get_secret_value())
    commands = dict(COMMANDS)
    names = frozenset(command.command for command in bot_commands(commands))

    async def register_commands(application: Application) -> None:
        await application.bot.set_my_commands(bot_commands(commands))

    application = (
        ApplicationBuilder()
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(settings.telegram_api_base_url)
        .base_file_url(settings.telegram_file_base_url)
        .rate_limiter(AIORateLimiter(max_retries=RATE_LIMIT_RETRIES))
        .concurrent_updates(True)  # a long generation must not hold up other chats
        .get_updates_read_timeout(POLL_TIMEOUT_S + 5)
        .post_init(register_commands)
        .build()
    )
    handlers = TelegramHandlers(manager, names, streaming=settings.telegram_streaming)
    only_new = filters.UpdateType.MESSAGE  # edits of old messages are not new questions
    application.add_handler(CommandHandler(sorted(names), handlers.on_message, filters=only_new))
    application.add_handler(MessageHandler(only_new & filters.TEXT, handlers.on_message))
    application.add_handler(MessageHandler(only_new & filters.Document.ALL, handlers.on_document))
    application.add_handler(
        MessageHandler(
            only_new & filters.ChatType.PRIVATE & ~filters.TEXT & ~filters.StatusUpdate.ALL,
            handlers.on_not_text,
        )
    )
    application.add_handler(CallbackQueryHandler(handlers.on_feedback, pattern=r"^fb:[+-]1$"))
    application.add_handler(MessageReactionHandler(handlers.on_reaction))
    application.add_error_handler(handlers.on_error)
    return application


class TelegramAdapter:
    """Runs the Application inside the composition root: `await start()`, later `await stop()`.

    Polling by default; with TELEGRAM_WEBHOOK_URL set, python-telegram-bot's own webhook server
    (`Updater.start_webhook`, the `[webhooks]` extra) receives updates, registers the URL with
    `setWebhook` and refuses (403) every request without the secret token header.
    """

    def __init__(
        self, settings: Settings, manager: ConversationManager, *, drain_timeout: float | None = None
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.application = build_application(settings, manager)
        self._drain_timeout = (
            drain_timeout if drain_timeout is not None else settings.request_timeout_seconds + 10
        )
        self.webhook_port: int | None = None  # the bound port (useful when the setting is 0)

    async def start(self) -> None:
        app = self.application
        await app.initialize()  # getMe: the bot's id and username
        if app.post_init is not None:
            await app.post_init(app)  # setMyCommands (run_polling would do this too)
        assert app.updater is not None
        # Before taking updates: replies a killed process left half-sent are edited to say so.
        await self.manager.recover("telegram", self.repair_interrupted)
        if self.settings.telegram_webhook_url:
            await self._start_webhook()
        else:
            await app.updater.start_polling(
                poll_interval=0.0,
                timeout=POLL_TIMEOUT_S,
                allowed_updates=ALLOWED_UPDATES,
                drop_pending_updates=False,  # updates sent while we were down are still questions
            )
        await app.start()
        mode = "on a webhook" if self.webhook_port is not None else "polling"
        logger.info("telegram: @%s is %s", app.bot.username, mode)

    async def repair_interrupted(self, reply: InterruptedReply, notice: str) -> None:
        """Tell the user a reply was cut off by a crash: edit the message it had started, else send one."""
        bot = self.application.bot
        chat_id = int(reply.key.chat_id)
        for message_id in reply.message_ids[:1]:
            try:
                await bot.edit_message_text(notice, chat_id=chat_id, message_id=int(message_id))
                return
            except BadRequest as exc:  # deleted, too old to edit, or already showing it
                if "not modified" in exc.message.lower():
                    return
                logger.info("telegram: interrupted reply %s not editable (%s)", reply.id, exc.message)
        thread = int(reply.key.thread_id) if reply.key.thread_id else None
        await bot.send_message(chat_id, notice, message_thread_id=thread)

    async def stop_receiving(self) -> None:
        """Take no new updates (call before draining the worker); replies in flight continue."""
        app = self.application
        if app.updater is not None and app.updater.running:
            # Polling: its last getUpdates confirms what was fetched. Webhook: the server closes.
            await app.updater.stop()

    async def stop(self) -> None:
        """Stop receiving, let replies in flight finish (bounded), then close the HTTP clients."""
        app = self.application
        await self.stop_receiving()
        if app.running:
            try:
                await asyncio.wait_for(app.stop(), self._drain_timeout)
            except TimeoutError:
                logger.warning(
                    "telegram: replies still running after %.0f s were cancelled", self._drain_timeout
                )
        if app._initialized:
            await app.shutdown()
        logger.info("telegram: stopped")

    async def _start_webhook(self) -> None:
        settings = self.settings
        url = settings.telegram_webhook_url or ""
        secret = settings.telegram_webhook_secret
        # Telegram allows 1-256 of [A-Za-z0-9_-]; a random one still proves requests come from Telegram.
        token = secret.get_secret_value() if secret else secrets.token_urlsafe(32)
        # We bind the socket ourselves and hand it over (PTB's documented `unix=<socket>` form), so
        # the bound port is known even when TELEGRAM_WEBHOOK_PORT is 0.
        listener = socket.create_server((settings.telegram_webhook_listen, settings.telegram_webhook_port))
        listener.setblocking(False)
        self.webhook_port = listener.getsockname()[1]
        assert self.application.updater is not None
        try:
            await self.application.updater.start_webhook(
                url_path=urlsplit(url).path or "/",
                webhook_url=url,
                secret_token=token,
                allowed_updates=ALLOWED_UPDATES,
                drop_pending_updates=False,
                unix=listener,
            )
        except BaseException:
            listener.close()
            self.webhook_port = None
            raise

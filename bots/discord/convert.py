"""Discord events → `core.types.Incoming`. The only place that decides who addressed the bot."""

from __future__ import annotations

import re

import discord

from core.types import ChatKind, Incoming

PLATFORM = "discord"


def _mention_pattern(bot_id: int) -> re.Pattern[str]:
    return re.compile(rf"<@!?{bot_id}>")


def location(channel: object, guild_id: int | None) -> tuple[str, str | None, ChatKind]:
    """(chat_id, thread_id, kind) for a channel. A thread is its own conversation inside its
    parent channel, so channel allow lists name the parent and still cover its threads."""
    kind = ChatKind.DM if guild_id is None else ChatKind.GROUP
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id), kind
    channel_id = getattr(channel, "id", None)
    return str(channel_id), None, kind


def role_ids(user: discord.abc.User) -> tuple[str, ...]:
    if isinstance(user, discord.Member):
        return tuple(str(role.id) for role in user.roles if not role.is_default())
    return ()


def is_addressed(message: discord.Message, bot_user: discord.ClientUser) -> bool:
    """DMs always; in guilds only a mention of the bot or a reply to one of its messages."""
    if message.guild is None:
        return True
    if any(user.id == bot_user.id for user in message.mentions):
        return True
    reference = message.reference
    if reference is not None:
        replied = reference.resolved
        if isinstance(replied, discord.Message) and replied.author.id == bot_user.id:
            return True
    return False


def from_message(message: discord.Message, bot_user: discord.ClientUser) -> Incoming:
    chat_id, thread_id, kind = location(message.channel, message.guild.id if message.guild else None)
    text = _mention_pattern(bot_user.id).sub("", message.content).strip()
    return Incoming(
        platform=PLATFORM,
        event_id=str(message.id),
        chat_id=chat_id,
        chat_kind=kind,
        user_id=str(message.author.id),
        user_name=message.author.display_name,
        text=text,
        addressed=is_addressed(message, bot_user),
        thread_id=thread_id,
        guild_id=str(message.guild.id) if message.guild else None,
        role_ids=role_ids(message.author),
        platform_message_id=str(message.id),
    )


def from_interaction(interaction: discord.Interaction, text: str) -> Incoming:
    """A slash command: always addressed; `text` is what the core should see ("/reset", a question…)."""
    chat_id, thread_id, kind = location(interaction.channel, interaction.guild_id)
    if interaction.channel is None and interaction.channel_id is not None:
        chat_id = str(interaction.channel_id)
    return Incoming(
        platform=PLATFORM,
        event_id=str(interaction.id),
        chat_id=chat_id,
        chat_kind=kind,
        user_id=str(interaction.user.id),
        user_name=interaction.user.display_name,
        text=text,
        addressed=True,
        thread_id=thread_id,
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        role_ids=role_ids(interaction.user),
        platform_message_id=None,
    )

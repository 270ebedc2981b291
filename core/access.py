"""Who may talk to the bot: allow/block lists of users and chats, admins, Discord guild/channel/role lists.

Ids in the lists are "platform:id" (e.g. "telegram:42") or a bare id that matches on Telegram and Discord.
Web chat users live in their own namespace: only an explicit "web:<session>" entry, or "web:*" for every web
session, matches them (a web session can never be taken for "telegram:42" or a bare "42"). Admins bypass every list. A block always beats an allow.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from core.settings import Settings
from core.types import ChatKind, Incoming

REFUSAL = "Sorry, this assistant is private and not available to you here. Ask its operator for access."


# Platforms whose ids only match "platform:id" entries, never bare ids.
NAMESPACED_ONLY = frozenset({"web"})


def _matches(ids: AbstractSet[str], platform: str, value: str | None) -> bool:
    if value is None:
        return False
    if f"{platform}:{value}" in ids:
        return True
    if platform in NAMESPACED_ONLY:
        return f"{platform}:*" in ids  # "web:*": every web chat session (e.g. everyone holding HTTP_API_KEY)
    return value in ids


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""  # for the log, never shown to users


class AccessPolicy:
    def __init__(
        self,
        *,
        allowed_users: AbstractSet[str] = frozenset(),
        blocked_users: AbstractSet[str] = frozenset(),
        allowed_chats: AbstractSet[str] = frozenset(),
        blocked_chats: AbstractSet[str] = frozenset(),
        admin_users: AbstractSet[str] = frozenset(),
        discord_allowed_guilds: AbstractSet[str] = frozenset(),
        discord_allowed_channels: AbstractSet[str] = frozenset(),
        discord_allowed_roles: AbstractSet[str] = frozenset(),
    ) -> None:
        self.allowed_users = frozenset(allowed_users)
        self.blocked_users = frozenset(blocked_users)
        self.allowed_chats = frozenset(allowed_chats)
        self.blocked_chats = frozenset(blocked_chats)
        self.admin_users = frozenset(admin_users)
        self.discord_guilds = frozenset(discord_allowed_guilds)
        self.discord_channels = frozenset(discord_allowed_channels)
        self.discord_roles = frozenset(discord_allowed_roles)

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            allowed_users=settings.allowed_users,
            blocked_users=settings.blocked_users,
            allowed_chats=settings.allowed_chats,
            blocked_chats=settings.blocked_chats,
            admin_users=settings.admin_users,
            discord_allowed_guilds=settings.discord_allowed_guilds,
            discord_allowed_channels=settings.discord_allowed_channels,
            discord_allowed_roles=settings.discord_allowed_roles,
        )

    def is_admin(self, platform: str, user_id: str) -> bool:
        return _matches(self.admin_users, platform, user_id)

    def user_allowed(self, platform: str, user_id: str) -> bool:
        """The user lists alone (for actions without a chat context, e.g. feedback buttons)."""
        if self.is_admin(platform, user_id):
            return True
        if _matches(self.blocked_users, platform, user_id):
            return False
        return not self.allowed_users or _matches(self.allowed_users, platform, user_id)

    def check(self, incoming: Incoming) -> Decision:
        p = incoming.platform
        if self.is_admin(p, incoming.user_id):
            return Decision(True, "admin")
        if _matches(self.blocked_users, p, incoming.user_id):
            return Decision(False, "user blocked")
        if _matches(self.blocked_chats, p, incoming.chat_id):
            return Decision(False, "chat blocked")
        if self.allowed_users and not _matches(self.allowed_users, p, incoming.user_id):
            return Decision(False, "user not in allow list")
        # The chat allow list governs groups; a DM's chat is the user, already covered by the user lists.
        if (
            self.allowed_chats
            and incoming.chat_kind is ChatKind.GROUP
            and not _matches(self.allowed_chats, p, incoming.chat_id)
        ):
            return Decision(False, "chat not in allow list")
        if p == "discord" and incoming.chat_kind is ChatKind.GROUP:
            if self.discord_guilds and not _matches(self.discord_guilds, p, incoming.guild_id):
                return Decision(False, "guild not allowed")
            if self.discord_channels and not _matches(self.discord_channels, p, incoming.chat_id):
                return Decision(False, "channel not allowed")
            if self.discord_roles and not any(_matches(self.discord_roles, p, r) for r in incoming.role_ids):
                return Decision(False, "no allowed role")
        return Decision(True)

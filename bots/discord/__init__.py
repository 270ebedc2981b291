"""Discord adapter: slash commands, channel Q&A on mention/reply, DMs, feedback buttons."""

from bots.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]

"""Documents sent to the Discord bot: attachments in DMs (or on a message that mentions the bot), and the
optional `file` of `/ask`. The core gets an `IncomingFile`; the bytes come through a bounded download."""

from __future__ import annotations

import discord

from bots.downloads import fetch_limited
from core.uploads import FileTooLarge, IncomingFile


def attachment_upload(attachment: discord.Attachment) -> IncomingFile:
    """An attachment as the core sees it: name, declared type and size, and a download of at most N bytes."""

    async def download(limit: int) -> bytes:
        if attachment.size > limit:
            raise FileTooLarge
        return await fetch_limited(attachment.url, limit)

    return IncomingFile(
        file_name=attachment.filename,
        declared_mime=attachment.content_type,
        declared_size=attachment.size,
        download=download,
    )


class FollowupTarget:
    """A reply that lives in ephemeral follow-ups of an interaction whose original response already shows
    something else (the document confirmation of `/ask file:`): the first follow-up is the main message,
    streamed by editing it."""

    def __init__(
        self, interaction: discord.Interaction, *, followup_limit: int | None = None, used: int = 0
    ) -> None:
        self._interaction = interaction
        self._primary: discord.WebhookMessage | None = None
        self._followup_limit = followup_limit  # Discord's cap per interaction for user installs
        self._sent = used  # follow-ups already spent on this interaction (the document confirmation)

    async def set_primary(self, text: str, view: discord.ui.View | None = None) -> int:
        if self._primary is None:
            self._primary = await self._send(text, view)
        elif view is None:
            self._primary = await self._primary.edit(content=text)
        else:
            self._primary = await self._primary.edit(content=text, view=view)
        return self._primary.id

    async def add(self, text: str, view: discord.ui.View | None = None) -> int:
        return (await self._send(text, view)).id

    def room(self) -> int | None:
        """Follow-ups left after the main message (None: no cap)."""
        if self._followup_limit is None:
            return None
        return max(0, self._followup_limit - self._sent - (0 if self._primary is not None else 1))

    async def _send(self, text: str, view: discord.ui.View | None) -> discord.WebhookMessage:
        followup = self._interaction.followup
        self._sent += 1
        if view is None:
            return await followup.send(text, ephemeral=True, wait=True)
        return await followup.send(text, ephemeral=True, wait=True, view=view)

    async def private(self, text: str) -> None:
        await self._interaction.followup.send(text, ephemeral=True, wait=True)

    async def status(self, text: str) -> None:
        await self.set_primary(text)

    async def typing(self) -> None:
        """The deferred response already showed "… is thinking"."""

    async def finish(self) -> None:
        """Nothing to tidy: every message here is the user's own ephemeral one."""

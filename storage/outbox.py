"""The outbox: every reply between "accepted" and "stored" has a row, so a crash in between is found on restart.

Lifecycle of one row (see `storage.models.PendingReply`):
`open` (before the adapter sends anything) → `add_message_ids` as the adapter creates platform messages →
`record_final` (the finished answer, just before it is delivered) → deleted by
`ConversationRepository.commit_exchange(outbox_id=…)` in the transaction that stores the exchange, or by
`finish` (with the event marked processed) when no exchange is stored. After a crash, `unfinished` lists what is
left; `commit_recovered` stores a reply that was already final, `mark_interrupted` keeps an unfinished one for
/retry (`take_interrupted`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, select, update

from storage.models import REPLY_FINAL, REPLY_INTERRUPTED, REPLY_PENDING, utcnow
from storage.repositories import (
    MAX_DISPLAY_NAME,
    ConversationRepository,
    _claim_event,
    _Repository,
    _rowcount,
    clean_text,
    pending_replies,
)
from storage.values import ConversationKey, PendingReplyRow, UserRef

_COLUMNS = pending_replies.c


def _row(row: Row[Any]) -> PendingReplyRow:
    return PendingReplyRow(
        id=int(row.id),
        platform=row.platform,
        event_id=row.event_id,
        key=ConversationKey(
            platform=row.platform,
            chat_id=row.chat_id,
            user_id=row.scope_user_id or None,
            thread_id=row.thread_id or None,
        ),
        user=UserRef(row.platform, row.user_id, row.user_name),
        question=row.question,
        state=row.state,
        message_ids=[str(x) for x in row.message_ids or []],
        answer=row.answer,
    )


class OutboxRepository(_Repository):
    async def open(
        self,
        *,
        event_id: str,
        key: ConversationKey,
        user: UserRef,
        question: str,
        question_tokens: int,
        user_message_id: str | None,
        replaces: list[int] | None = None,
    ) -> int:
        """Record a reply about to be produced; returns the row id the later calls name."""
        values = {
            "platform": key.platform,
            "event_id": str(event_id),
            "chat_id": str(key.chat_id),
            "scope_user_id": str(key.user_id) if key.user_id is not None else "",
            "thread_id": str(key.thread_id) if key.thread_id is not None else "",
            "user_id": str(user.user_id),
            "user_name": clean_text(user.display_name or "")[:MAX_DISPLAY_NAME],
            "question": clean_text(question),
            "question_tokens": int(question_tokens),
            "user_message_id": str(user_message_id or ""),
            "replaces": [int(x) for x in replaces or []],
            "message_ids": [],
            "state": REPLY_PENDING,
            "answer": "",
            "answer_tokens": 0,
            "sources": [],
        }
        return await self._run.write(self._open, values)

    @staticmethod
    def _open(connection: Connection, values: dict[str, Any]) -> int:
        now = utcnow()
        stmt = (
            pending_replies.insert().values(**values, created_at=now, updated_at=now).returning(_COLUMNS.id)
        )
        return int(connection.execute(stmt).scalar_one())

    async def add_message_ids(self, reply_id: int, ids: list[str]) -> None:
        """Remember platform messages the reply created (what to edit after a crash). A gone row is ignored."""
        if ids:
            await self._run.write(self._add_ids, int(reply_id), [str(x) for x in ids])

    @staticmethod
    def _add_ids(connection: Connection, reply_id: int, ids: list[str]) -> None:
        current = connection.execute(
            select(_COLUMNS.message_ids).where(_COLUMNS.id == reply_id)
        ).scalar_one_or_none()
        if current is None:
            return
        added = [x for x in dict.fromkeys(ids) if x not in current]
        if added:
            connection.execute(
                update(pending_replies)
                .where(_COLUMNS.id == reply_id)
                .values(message_ids=list(current) + added, updated_at=utcnow())
            )

    async def record_final(
        self, reply_id: int, *, answer: str, answer_tokens: int, sources: list[dict[str, Any]]
    ) -> None:
        """The answer is finished and about to be delivered: a crash from here on is repaired by storing it."""
        await self._run.write(
            self._record_final, int(reply_id), clean_text(answer), int(answer_tokens), list(sources)
        )

    @staticmethod
    def _record_final(
        connection: Connection, reply_id: int, answer: str, tokens: int, sources: list[dict[str, Any]]
    ) -> None:
        connection.execute(
            update(pending_replies)
            .where(_COLUMNS.id == reply_id)
            .values(
                state=REPLY_FINAL, answer=answer, answer_tokens=tokens, sources=sources, updated_at=utcnow()
            )
        )

    async def finish(self, reply_id: int, platform: str, event_id: str) -> bool:
        """The reply ended without an exchange to store (cancelled, failed): delete the row and mark the event
        processed, in one transaction. False when the event was already marked."""
        return await self._run.write(self._finish, int(reply_id), platform, str(event_id))

    @staticmethod
    def _finish(connection: Connection, reply_id: int, platform: str, event_id: str) -> bool:
        connection.execute(delete(pending_replies).where(_COLUMNS.id == reply_id))
        return _claim_event(connection, platform, event_id, utcnow())

    async def unfinished(self, platform: str) -> list[PendingReplyRow]:
        """Rows a previous process left pending or final (call before this process opens new ones)."""
        return await self._run.read(self._unfinished, platform)

    @staticmethod
    def _unfinished(connection: Connection, platform: str) -> list[PendingReplyRow]:
        stmt = (
            select(pending_replies)
            .where(_COLUMNS.platform == platform, _COLUMNS.state.in_([REPLY_PENDING, REPLY_FINAL]))
            .order_by(_COLUMNS.id)
        )
        return [_row(row) for row in connection.execute(stmt).all()]

    async def commit_recovered(self, reply_id: int) -> bool:
        """Store the exchange of a reply that was final when the process died (delivered, or being delivered)."""
        return await self._run.write(self._commit_recovered, int(reply_id))

    @staticmethod
    def _commit_recovered(connection: Connection, reply_id: int) -> bool:
        row = connection.execute(select(pending_replies).where(_COLUMNS.id == reply_id)).first()
        if row is None or row.state != REPLY_FINAL:
            return False
        found = _row(row)
        return ConversationRepository._commit_exchange(
            connection,
            row.platform,
            row.event_id,
            found.key,
            found.user,
            (row.question, int(row.question_tokens), [row.user_message_id] if row.user_message_id else []),
            (row.answer, int(row.answer_tokens), found.message_ids),
            list(row.sources or []),
            reply_id,
        )

    async def mark_interrupted(self, reply_id: int) -> None:
        """The user was told the reply was cut off; the event counts as processed, the question stays for /retry."""
        await self._run.write(self._mark_interrupted, int(reply_id))

    @staticmethod
    def _mark_interrupted(connection: Connection, reply_id: int) -> None:
        row = connection.execute(
            update(pending_replies)
            .where(_COLUMNS.id == reply_id)
            .values(state=REPLY_INTERRUPTED, updated_at=utcnow())
            .returning(_COLUMNS.platform, _COLUMNS.event_id)
        ).first()
        if row is not None:
            _claim_event(connection, row.platform, row.event_id, utcnow())

    async def take_interrupted(self, key: ConversationKey, user_id: str) -> PendingReplyRow | None:
        """The user's newest reply cut off by a crash in this conversation, removed (for /retry), or None."""
        return await self._run.write(self._take_interrupted, key, str(user_id))

    @staticmethod
    def _take_interrupted(
        connection: Connection, key: ConversationKey, user_id: str
    ) -> PendingReplyRow | None:
        stmt = (
            select(pending_replies)
            .where(
                _COLUMNS.platform == key.platform,
                _COLUMNS.chat_id == str(key.chat_id),
                _COLUMNS.scope_user_id == (str(key.user_id) if key.user_id is not None else ""),
                _COLUMNS.thread_id == (str(key.thread_id) if key.thread_id is not None else ""),
                _COLUMNS.user_id == user_id,
                _COLUMNS.state == REPLY_INTERRUPTED,
            )
            .order_by(_COLUMNS.id.desc())
            .limit(1)
        )
        row = connection.execute(stmt).first()
        if row is None:
            return None
        connection.execute(delete(pending_replies).where(_COLUMNS.id == row.id))
        return _row(row)

    async def prune_interrupted(self, before: datetime) -> int:
        """Drop rows untouched since `before`: interrupted replies nobody retried, and replies of platforms no
        adapter recovers (a web request cut off by a crash). No answer in flight is that old."""
        return await self._run.write(self._prune, before)

    @staticmethod
    def _prune(connection: Connection, before: datetime) -> int:
        return _rowcount(connection.execute(delete(pending_replies).where(_COLUMNS.updated_at < before)))

    async def count(self) -> int:
        return await self._run.read(self._count)

    @staticmethod
    def _count(connection: Connection) -> int:
        return len(connection.execute(select(_COLUMNS.id)).all())

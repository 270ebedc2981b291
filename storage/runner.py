"""Run a repository operation — a plain function over a SQLAlchemy `Connection` — in one transaction.

The repositories write each operation once, synchronously, and a runner decides where it executes:
- `ThreadRunner` (file SQLite): on a blocking sqlite3 engine in a small thread pool, one thread hop per
  operation (aiosqlite needs several hops per statement, which caps a busy bot at ~100 exchanges/s);
- `AsyncRunner` (PostgreSQL, in-memory SQLite): `run_sync` on the async engine, inside the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import IMMEDIATE

P = ParamSpec("P")
T = TypeVar("T")


def _bind(fn: Callable[..., T], args: tuple[object, ...], kw: dict[str, object]) -> Callable[[Connection], T]:
    return lambda connection: fn(connection, *args, **kw)


class Runner(Protocol):
    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kw: P.kwargs
    ) -> T: ...

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kw: P.kwargs
    ) -> T: ...

    async def close(self) -> None: ...


class ThreadRunner:
    """Blocking engine + dedicated threads; sqlite3 releases the GIL while it works or waits on a lock."""

    def __init__(self, engine: Engine, threads: int = 4) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ghostbot-db")

    async def read(self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kw: P.kwargs) -> T:
        return await self._submit(self._read, _bind(fn, args, kw))

    async def write(self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kw: P.kwargs) -> T:
        return await self._submit(self._write, _bind(fn, args, kw))

    async def _submit(
        self, wrapper: Callable[[Callable[[Connection], T]], T], call: Callable[[Connection], T]
    ) -> T:
        # If the awaiting task is cancelled the thread still finishes: the transaction commits or rolls back whole.
        return await asyncio.get_running_loop().run_in_executor(self._executor, wrapper, call)

    def _read(self, call: Callable[[Connection], T]) -> T:
        with self._engine.connect() as connection:
            return call(connection)

    def _write(self, call: Callable[[Connection], T]) -> T:
        with self._engine.connect() as connection:
            connection = connection.execution_options(**{IMMEDIATE: True})
            with connection.begin():
                return call(connection)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        self._engine.dispose()


class AsyncRunner:
    """The async engine's own connections, the sync function run through `run_sync` (greenlet)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def read(self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kw: P.kwargs) -> T:
        async with self._engine.connect() as connection:
            return await connection.run_sync(_bind(fn, args, kw))

    async def write(self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kw: P.kwargs) -> T:
        async with self._engine.connect() as connection:
            connection = await connection.execution_options(**{IMMEDIATE: True})
            async with connection.begin():
                return await connection.run_sync(_bind(fn, args, kw))

    async def close(self) -> None:
        """The engine belongs to the Database, which disposes of it."""

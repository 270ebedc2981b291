"""Storage fixtures: every repository test runs on SQLite and, when a server can be started, on PostgreSQL.

PostgreSQL: a throwaway cluster (initdb + pg_ctl from Debian's `postgresql` package) in a temp dir on
127.0.0.1, started once per session and always stopped. `GHOSTBOT_TEST_POSTGRES=1` makes missing binaries a
failure instead of a skip; `GHOSTBOT_TEST_POSTGRES=0` skips PostgreSQL.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage import Database

_PG_ENV = "GHOSTBOT_TEST_POSTGRES"
# Runs beside pytest; if pytest dies without its teardown (killed, timed out), it stops the server anyway.
_WATCHDOG = """
import os, shutil, subprocess, sys, time
parent, root, *stop = sys.argv[1:]
while True:
    try:
        os.kill(int(parent), 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
subprocess.run(stop, capture_output=True, timeout=60)
shutil.rmtree(root, ignore_errors=True)
"""
_db_numbers = itertools.count()


def _pg_bindir() -> Path | None:
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found is None:
            break
    else:
        return Path(os.path.realpath(shutil.which("pg_ctl") or "")).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Cluster:
    """initdb + pg_ctl in a temp dir; as root, run as the `postgres` user (initdb refuses root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="ghostbot-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.prefix: list[str] = []
        self.watchdog: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root and `runuser` is missing")
            shutil.chown(self.root, user="postgres")
            self.prefix = [runuser, "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> str:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        # Durability off: a test cluster, thrown away afterwards; this keeps commits fast.
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c synchronous_commit=off -c full_page_writes=off"
        )
        stop = [
            *self.prefix,
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.root), *stop], start_new_session=True
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "30",
            "start",
        )
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            if self.watchdog is not None:
                self.watchdog.terminate()
                self.watchdog.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Base URL of a running throwaway PostgreSQL server (without database name)."""
    wanted = os.environ.get(_PG_ENV, "")
    if wanted == "0":
        pytest.skip(f"PostgreSQL tests disabled ({_PG_ENV}=0)")
    bindir = _pg_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        if wanted == "1":
            pytest.fail(f"{_PG_ENV}=1 but {reason}")
        pytest.skip(reason)
    cluster = _Cluster(bindir)
    try:
        base = cluster.start()
    except (subprocess.SubprocessError, OSError, RuntimeError, LookupError) as exc:
        log = cluster.root / "log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        cluster.stop()
        if wanted == "1":
            pytest.fail(f"could not start PostgreSQL: {exc}\n{detail}")
        pytest.skip(f"could not start PostgreSQL: {exc}")
    try:
        yield base
    finally:
        cluster.stop()


async def _admin(base: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base.replace("postgresql+asyncpg", "postgresql") + "/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_shared(postgres_server: str) -> str:
    """URL of one database migrated to head once per session; emptied after every test that uses it.

    Creating a database per test costs ~0.5 s on a busy machine; TRUNCATE costs milliseconds.
    """
    url = f"{postgres_server}/ghostbot_shared_{os.getpid()}"

    async def build() -> None:
        await _admin(postgres_server, f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"')
        database = await Database.open(url)
        await database.close()

    # May be first requested from inside a running event loop (an async fixture): build it on its own thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, build()).result()
    return url


async def _truncate_all(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        tables = [
            row["tablename"]
            for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if row["tablename"] != "alembic_version"
        ]
        if tables:
            await conn.execute(
                f"TRUNCATE {', '.join(chr(34) + t + chr(34) for t in tables)} RESTART IDENTITY CASCADE"
            )
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to a fresh, EMPTY database on each engine (for migration tests)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/data/ghostbot.db"
        return
    base = request.getfixturevalue("postgres_server")
    name = f"ghostbot_test_{os.getpid()}_{next(_db_numbers)}"
    await _admin(base, f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        await _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
async def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to an empty database whose schema is already at head, on each engine."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/data/ghostbot.db"
        return
    url = request.getfixturevalue("postgres_shared")
    try:
        yield url
    finally:
        await _truncate_all(url)


@pytest.fixture
async def db(migrated_url: str) -> AsyncIterator[Database]:
    database = await Database.open(migrated_url)
    try:
        yield database
    finally:
        await database.close()

"""Database engine.

Writes: `transaction()`; reads: `read()`, a plain (deferred) transaction that never takes the write lock
(with WAL it runs concurrently with writers).

**SQLite (default)**: statements run inline on the caller's event-loop thread with the stdlib driver
(`InlineSession`, the surface of `AsyncSession` the repository uses over a sync `Session`). A local
WAL database answers in microseconds, so this is cheaper than aiosqlite, which hands every statement
to a thread and back (25-30 hops per write transaction, all of them while the write lock is held).
Every write transaction starts with BEGIN IMMEDIATE, which serializes writers across processes;
inside one process writers queue on an asyncio lock. The loop never blocks on another process's
lock: BEGIN IMMEDIATE runs with a short busy timeout and, while another process holds the lock,
the transaction waits with `asyncio.sleep` and tries again.

**MySQL/MariaDB**: aiomysql through SQLAlchemy's `AsyncSession`; writers rely on row locks
(SELECT ... FOR UPDATE) taken by the queries in `models.repo`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import QueuePool
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

_BUSY_MS = 20  # the longest the loop waits inline on another process's write lock
_BUSY_RETRY = (0.005, 0.25)  # then: asyncio.sleep from 5 ms, doubling, up to 250 ms between tries
_BUSY_GIVE_UP_S = 60.0


class InlineSession:
    """`AsyncSession`'s surface (exec, add, flush, get, refresh, begin_nested, get_bind, info) over a sync
    `Session` on SQLite: each call runs at once on the calling thread, no thread hop."""

    def __init__(self, session: Session) -> None:
        self.sync_session = session

    async def exec(self, statement: Any, **kw: Any) -> Any:
        return self.sync_session.exec(statement, **kw)

    def add(self, instance: object) -> None:
        self.sync_session.add(instance)

    def add_all(self, instances: Any) -> None:
        self.sync_session.add_all(instances)

    async def flush(self, objects: Any = None) -> None:
        self.sync_session.flush(objects)

    async def get(self, entity: Any, ident: Any, **kw: Any) -> Any:
        return self.sync_session.get(entity, ident, **kw)

    async def refresh(self, instance: object, **kw: Any) -> None:
        self.sync_session.refresh(instance, **kw)

    @property
    def info(self) -> dict[Any, Any]:
        return self.sync_session.info

    def get_bind(self, *args: Any, **kw: Any) -> Any:
        return self.sync_session.get_bind(*args, **kw)

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[InlineSession]:
        with self.sync_session.begin_nested():
            yield self


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock: asyncio.Lock | None = None
        if self.is_sqlite:
            sync_url = make_url(url).set(drivername="sqlite+pysqlite")
            kw: dict[str, Any] = {
                "echo": echo,
                "poolclass": QueuePool,
                "pool_size": 4,
                "max_overflow": 60,
                "connect_args": {"timeout": _BUSY_MS / 1000, "check_same_thread": False},
            }
            self._sync_write = create_engine(sync_url, **kw)
            self._sync_read = create_engine(sync_url, **kw)
            _configure_sqlite(self._sync_write, begin="BEGIN IMMEDIATE")
            _configure_sqlite(self._sync_read, begin="BEGIN")
            return
        self.engine: AsyncEngine = create_async_engine(
            url,
            echo=echo,
            pool_size=10,
            max_overflow=20,
            pool_recycle=3600,
            pool_pre_ping=True,
            isolation_level="READ COMMITTED",
        )
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One write transaction: committed on success, rolled back on any error."""
        if not self.is_sqlite:
            async with self._sessions() as session, session.begin():
                yield session
            return
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        async with self._write_lock:
            sync = await self._begin_write()
            try:
                yield cast(AsyncSession, InlineSession(sync))
            except BaseException:
                sync.rollback()
                raise
            else:
                sync.commit()
            finally:
                sync.close()

    async def _begin_write(self) -> Session:
        """A session in BEGIN IMMEDIATE; waits for another process's write lock without blocking the loop."""
        delay, waited = _BUSY_RETRY[0], 0.0
        while True:
            session = Session(self._sync_write, expire_on_commit=False)
            try:
                session.connection()  # BEGIN IMMEDIATE
                return session
            except Exception as e:
                session.close()
                if not _is_busy(e) or waited > _BUSY_GIVE_UP_S:
                    raise
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, _BUSY_RETRY[1])

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction (a consistent snapshot); never blocks writers on SQLite."""
        if not self.is_sqlite:
            async with self._sessions() as session, session.begin():
                yield session
            return
        with self._read_session() as sync:
            yield cast(AsyncSession, InlineSession(sync))

    @contextmanager
    def _read_session(self) -> Iterator[Session]:
        sync = Session(self._sync_read, expire_on_commit=False)
        try:
            yield sync
        finally:
            sync.close()  # ends the read; loaded rows stay readable (a rollback would expire them)

    async def ping(self) -> None:
        if self.is_sqlite:
            with self._sync_read.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self.is_sqlite:
            self._sync_write.dispose()
            self._sync_read.dispose()
            return
        await self.engine.dispose()


def _is_busy(e: Exception) -> bool:
    orig = getattr(e, "orig", e)
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


def _configure_sqlite(engine: Engine, *, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

"""Database engines, the transaction boundary, and the FastAPI session dependency.

A service owns one database (SQLite through aiosqlite by default, PostgreSQL through asyncpg when
configured). Services never commit: ``Database.transaction()`` is the request/message boundary that
commits on success and rolls back on any exception, so a failed request leaves nothing half-done.

``Database.core_transaction()`` is the same boundary for hot paths that need no ORM: Core statements
or plain SQL on one connection, no session. On a SQLite file it runs them on a connection of its own in
the event loop's thread: aiosqlite hands every cursor, execute, fetch and close to a thread and back,
which costs far more than the small statements themselves (a raise's transaction: ~6 ms through the
session, ~1 ms this way). That is safe because it takes the write lock first without blocking the
loop; once it holds it, nothing in WAL mode waits on a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Request
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Dialect, Result, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlalchemy.sql.base import Executable
from sqlalchemy.util import await_only
from sqlmodel.ext.asyncio.session import AsyncSession

__all__ = [
    "READONLY_OPTION",
    "CoreTransaction",
    "Database",
    "ReadSessionDep",
    "SessionDep",
    "create_engine",
    "get_read_session",
    "get_session",
    "partial_index",
]

log = logging.getLogger(__name__)

# Connection execution option that marks a transaction as read-only. On SQLite it selects a DEFERRED
# BEGIN (no write lock), on PostgreSQL a READ ONLY transaction.
READONLY_OPTION = "lifeline_readonly"

CommitListener = Callable[[dict[Any, Any]], None]
# A core transaction (a hot path's) taking longer than this is logged with where its time went.
SLOW_TRANSACTION_S = 0.05
# WAL checkpoints. SQLite runs one inside the COMMIT that takes the WAL past 1,000 pages, and with
# synchronous=NORMAL a checkpoint syncs the database file: that COMMIT took 5 ms to 1.5 s on this kind of
# shared disk (p99 7 ms, 30 of 3,000 small commits over 5 ms), on the event loop's thread for
# core_transaction(). Commits start a passive checkpoint in a worker thread instead (at most one at a
# time, at most every CHECKPOINT_INTERVAL_S); SQLite's own stays as a backstop far out (64 MiB of WAL).
CHECKPOINT_INTERVAL_S = 0.5
_WAL_BACKSTOP_PAGES = 16_384
_WAL_RESTART_PAGES = 1_000  # SQLite's own threshold: past it, the WAL is made to start over (_checkpoint)


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> sa.Index:
    """An index of the rows where ``where`` (SQL) holds, on SQLite and on PostgreSQL alike.

    PostgreSQL's half (``postgresql_where``) is attached when the index is created on PostgreSQL, not
    when the model is declared: a ``postgresql_*`` option makes SQLAlchemy import its PostgreSQL
    dialect (~4.6 MB of RSS) at once, in every process on SQLite too. So this model's copy carries
    only SQLite's (what Alembic's autogenerate compares on PostgreSQL lacks the condition).
    """
    index = sa.Index(name, *columns, unique=unique, sqlite_where=text(where))

    @event.listens_for(index, "before_create")
    def _postgresql_where(target: sa.Index, connection: Connection, **_kw: Any) -> None:
        if connection.dialect.name == "postgresql":
            target.dialect_kwargs["postgresql_where"] = text(where)

    return index


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if url.query.get("mode") == "memory":
        return None
    return Path(database)


def create_engine(
    url: str | URL,
    *,
    echo: bool = False,
    pool_size: int = 10,
    max_overflow: int = 20,
    sqlite_busy_timeout_ms: int = 10_000,
    sqlite_foreign_keys: bool = True,
    sqlite_cache_mib: int | None = None,
    sqlite_pool_size: int | None = None,
    application_name: str | None = None,
    ping_after_idle_s: float = 1.0,
) -> AsyncEngine:
    """Create an async engine for the URL: SQLite in WAL mode with real transactions, or PostgreSQL.

    On SQLite ``sqlite_cache_mib`` sets each connection's page cache (SQLite's default: 2 MiB) and
    ``sqlite_pool_size`` caps the connections (SQLAlchemy's default pool otherwise)."""
    parsed = make_url(url)
    if _is_sqlite(parsed):
        return _create_sqlite_engine(
            parsed,
            echo=echo,
            busy_timeout_ms=sqlite_busy_timeout_ms,
            foreign_keys=sqlite_foreign_keys,
            cache_mib=sqlite_cache_mib,
            pool_size=sqlite_pool_size,
        )
    kwargs: dict[str, Any] = {
        "echo": echo,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        # No pool_recycle: it reconnected a connection in steady use every so often, on the hot path (a new
        # backend, its prepared statements and catalog caches again). What it guards against — a server or
        # firewall dropping idle connections — is what the ping after idleness (below) catches.
        # LIFO, as on SQLite: the connection just returned is handed out again, so the hot path runs on a
        # connection whose prepared statements (asyncpg's cache) and server-side catalog caches are warm;
        # FIFO rotated through every pooled connection, each paying its first prepares on a raise.
        "pool_use_lifo": True,
    }
    if application_name and parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"server_settings": {"application_name": application_name}}
    engine = create_async_engine(parsed, **kwargs)
    _ping_after_idle(engine.sync_engine, ping_after_idle_s)
    return engine


_IDLE_SINCE = "lifeline_idle_since"


def _ping_after_idle(engine: sa.Engine, idle_s: float) -> None:
    """Test a pooled connection before use when it sat idle for ``idle_s`` seconds or more.

    A restarted or failed-over PostgreSQL leaves dead connections in the pool. ``pool_pre_ping`` tests
    every checkout, a round trip on every transaction of the hot path; a connection in steady use is
    tested by its own statements instead: the first one that finds the server gone fails (its
    transaction rolls back, nothing half-done), SQLAlchemy then discards every connection of the pool
    opened before, and the next transaction connects afresh. So only a connection that sat idle (when
    a restart most likely happened unnoticed) costs a round trip.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < idle_s:
            return  # just connected, or in steady use
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            alive = False
            log.info("pooled connection idle for %.1f s is dead: %s", time.monotonic() - since, exc)
        if not alive:
            # The pool discards this connection and checks out (or opens) another one.
            raise sa.exc.DisconnectionError("pooled connection failed its ping")


def _create_sqlite_engine(
    url: URL,
    *,
    echo: bool,
    busy_timeout_ms: int,
    foreign_keys: bool,
    cache_mib: int | None = None,
    pool_size: int | None = None,
) -> AsyncEngine:
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    # LIFO: the connection just returned is handed out again, so one connection's page cache stays hot
    # and the others' (each grows to its own cache_size) stay small; FIFO rotated through all of them.
    kwargs: dict[str, Any] = {"pool_use_lifo": True}
    if pool_size is not None and path is not None:
        kwargs.update(pool_size=pool_size, max_overflow=0)
    engine = create_async_engine(url, echo=echo, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # The sqlite3 driver's legacy transaction control issues BEGIN only before DML, so SELECTs,
        # DDL and SAVEPOINTs run outside the transaction. Switch it off and emit BEGIN ourselves
        # (SQLAlchemy docs, "Enabling Non-Legacy SQLite Transactional Modes").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if path is not None:
                _enable_wal(cursor, busy_timeout_ms)
                cursor.execute(f"PRAGMA wal_autocheckpoint={_WAL_BACKSTOP_PAGES}")
            # NORMAL is durable in WAL mode except for the last commits on power loss (the usual
            # trade-off); FULL would fsync on every commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            if cache_mib is not None:
                cursor.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        # Writers take the write lock up front: a DEFERRED transaction that reads and then writes
        # fails with SQLITE_BUSY at the upgrade (busy_timeout cannot help there), whereas IMMEDIATE
        # waits its turn. Read-only transactions stay DEFERRED so they never block writers.
        mode = "DEFERRED" if options.get(READONLY_OPTION) else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _enable_wal(cursor: Any, busy_timeout_ms: int) -> None:
    """Switch the database file to WAL (readers never block the writer, nor it them)."""
    # WAL is persistent, so normally only the first connection to a new file switches it. Switching
    # needs an exclusive lock and SQLite reports "database is locked" at once, without consulting
    # busy_timeout, when connections race to do it; so wait and retry ourselves.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        # Inside SQLAlchemy's greenlet: sleep on the event loop rather than blocking it.
        await_only(asyncio.sleep(delay))
        delay = min(delay * 2, 0.2)


Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


def _log_if_slow(t0: float, t1: float, t2: float, t3: float, first: str) -> None:
    """Where a slow core transaction spent its time: getting a connection (PostgreSQL: pool exhausted or
    connecting) or the write lock (SQLite: another writer, a checkpoint), the caller's statements, COMMIT."""
    if t3 - t0 > SLOW_TRANSACTION_S:
        # Waiting its turn behind another writer (a bulk census load, say) is expected; slow statements or
        # a slow COMMIT (the disk) are worth a warning.
        log.log(
            logging.WARNING if t3 - t1 > SLOW_TRANSACTION_S else logging.INFO,
            "slow core transaction: %.0f ms (%s %.1f ms, statements %.1f ms, commit %.1f ms)",
            (t3 - t0) * 1000,
            first,
            (t1 - t0) * 1000,
            (t2 - t1) * 1000,
            (t3 - t2) * 1000,
        )


class CoreTransaction:
    """A transaction of ``Database.core_transaction()``: Core statements and plain SQL, no ORM session."""

    def __init__(self, *, sync: Connection | None = None, conn: AsyncConnection | None = None) -> None:
        self._sync = sync
        self._async = conn
        # Handed to the commit listeners after the commit, like ``AsyncSession.info``.
        self.info: dict[Any, Any] = {}
        self._at_commit: dict[sa.Table, list[dict[str, Any]]] = {}

    @property
    def dialect(self) -> Dialect:
        """The connection's dialect (``dialect.name``: ``sqlite`` or ``postgresql``), for dialect-specific SQL."""
        conn = self._sync if self._sync is not None else self._async
        assert conn is not None
        return conn.dialect

    async def execute(self, statement: Executable | str, parameters: Params = None) -> Result[Any]:
        """Run a Core statement, or plain SQL with ``:name`` parameters; many parameter sets: executemany."""
        if isinstance(statement, str):
            statement = text(statement)
        if self._sync is not None:
            return self._sync.execute(statement, parameters)
        assert self._async is not None
        return await self._async.execute(statement, parameters)

    def insert_at_commit(self, table: sa.Table, row: dict[str, Any]) -> None:
        """Insert ``row`` into ``table`` just before the commit, one multi-row insert per table."""
        self._at_commit.setdefault(table, []).append(row)

    async def flush(self) -> None:
        """Insert the rows waiting for the commit now (the commit does it anyway)."""
        pending, self._at_commit = self._at_commit, {}
        for table, rows in pending.items():
            await self.execute(sa.insert(table), rows)


class Database:
    """One service's database: the engine, a session factory and the transaction boundary."""

    def __init__(
        self, engine: AsyncEngine, *, ping_timeout: float = 2.0, engine_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        self.engine = engine
        self.ping_timeout = ping_timeout
        self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False
        )
        # How the engine was made (from_url), for the engines of dedicated connections.
        self._engine_kwargs = dict(engine_kwargs or {})
        self._dedicated: dict[str, async_sessionmaker[AsyncSession]] = {}
        self._dedicated_engines: list[AsyncEngine] = []
        self._commit_listeners: list[CommitListener] = []
        # SQLite file: core_transaction()'s own connection, used only in the event loop's thread.
        self._direct_file = _is_sqlite(engine.url) and _sqlite_file(engine.url) is not None
        self._direct_engine: sa.Engine | None = None
        self._direct: Connection | None = None
        self._direct_lock = asyncio.Lock()
        self._direct_wait_s = 10.0
        # SQLite has one writer at a time; holding this from COMMIT to the commit listeners makes the
        # listeners see the commits in the order they happened (the outbox relay publishes in that order).
        self._commit_order = asyncio.Lock()
        # SQLite file: WAL checkpoints in a worker thread after commits (see CHECKPOINT_INTERVAL_S).
        self._wal_file = _sqlite_file(engine.url) if _is_sqlite(engine.url) else None
        self.checkpoint_interval_s = CHECKPOINT_INTERVAL_S
        self._checkpoint_at = 0.0
        self._checkpointing: asyncio.Future[None] | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> Database:
        """Create a Database with an engine from ``create_engine(url, **engine_kwargs)``."""
        return cls(create_engine(url, **engine_kwargs), engine_kwargs=engine_kwargs)

    def dedicate_connection(self, name: str, *, sqlite_cache_mib: int | None = None) -> None:
        """Run ``transaction(dedicated=name)`` on a connection of its own, apart from the pool.

        For one hot writer (a consumer that writes in one transaction after another): on SQLite each
        connection has its own page cache, which the writer's inserts fill with the indexes' hot pages
        (``sqlite_cache_mib`` sizes it for this connection alone). In the shared pool any transaction
        running beside the writer's (a timer's, a readiness ping) puts a second connection into
        rotation, the writer's next transaction may get that one, and two large caches (and two
        threads' malloc arenas) exist, or the warm one goes cold. The other transactions keep the pool
        and SQLite's default cache. On PostgreSQL: a pool of one connection, with the same settings,
        ping after idleness and reconnection as the shared pool's.

        Transactions of the same name take turns on the connection (the pool's wait, 30 s at most).
        Call before the first such transaction; ``dispose()`` closes it."""
        if name in self._dedicated:
            raise ValueError(f"connection {name!r} is already dedicated")
        if _is_sqlite(self.engine.url) and _sqlite_file(self.engine.url) is None:
            # An in-memory database exists only on the engine's own connection: nothing to set apart.
            self._dedicated[name] = self.sessionmaker
            return
        kwargs: dict[str, Any] = {**self._engine_kwargs, "pool_size": 1, "max_overflow": 0, "sqlite_pool_size": 1}
        if sqlite_cache_mib is not None:
            kwargs["sqlite_cache_mib"] = sqlite_cache_mib
        engine = create_engine(self.engine.url, **kwargs)
        self._dedicated_engines.append(engine)
        self._dedicated[name] = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """The backend name: ``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def readonly_options(self) -> dict[str, Any]:
        """Execution options that make a connection's transaction read-only on this backend."""
        options: dict[str, Any] = {READONLY_OPTION: True}
        if self.dialect == "postgresql":
            options["postgresql_readonly"] = True
        return options

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False, dedicated: str | None = None) -> AsyncIterator[AsyncSession]:
        """Yield a session in a transaction that commits on success and rolls back on any exception.

        ``dedicated``: on the connection ``dedicate_connection(dedicated)`` set apart (KeyError if none)."""
        maker = self.sessionmaker if dedicated is None else self._dedicated[dedicated]
        async with maker() as session:
            if readonly:
                # Execution options apply only when the connection is first procured, so get it now.
                await session.connection(execution_options=self.readonly_options())
            try:
                yield session
                if readonly or self.dialect != "sqlite":
                    await session.commit()
                    self._committed(dict(session.info))
                else:
                    # Flushed first so that the write lock is ours (or nothing was written) before we
                    # queue for the commit order: a core transaction holds the lock while it queues.
                    await session.flush()
                    async with self._commit_order:
                        await session.commit()
                        self._committed(dict(session.info))
                    self._checkpoint_soon()
            except BaseException:
                await session.rollback()
                raise
            finally:
                session.info.clear()

    @asynccontextmanager
    async def core_transaction(self) -> AsyncIterator[CoreTransaction]:
        """Yield a CoreTransaction that commits on success and rolls back on any exception (hot paths)."""
        if not self._direct_file:
            t0 = time.perf_counter()
            async with self.engine.connect() as conn:
                t1 = time.perf_counter()
                tx = CoreTransaction(conn=conn)
                async with conn.begin():
                    yield tx
                    await tx.flush()
                    t2 = time.perf_counter()
            _log_if_slow(t0, t1, t2, time.perf_counter(), "connection")
            self._committed(tx.info)
            return
        t0 = time.perf_counter()
        async with self._direct_lock:
            direct = await self._direct_connection()
            await self._begin_immediate(direct)
            t1 = time.perf_counter()
            tx = CoreTransaction(sync=direct)
            try:
                yield tx
                await tx.flush()
                t2 = time.perf_counter()
                async with self._commit_order:
                    direct.commit()
                    self._committed(tx.info)
                self._checkpoint_soon()
            except BaseException:
                # Also when cancelled while queueing for the commit: never leave the write lock held.
                direct.rollback()
                raise
        _log_if_slow(t0, t1, t2, time.perf_counter(), "write lock")

    async def _direct_connection(self) -> Connection:
        if self._direct is None:
            # The engine's connections switched the file to WAL (persistent); copy their settings.
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(**self.readonly_options())
                foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar()
                busy_ms = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
            self._direct_wait_s = int(busy_ms or 0) / 1000
            engine = sa.create_engine(self.engine.url.set(drivername="sqlite+pysqlite"), poolclass=StaticPool)

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
                dbapi_connection.isolation_level = None  # BEGIN is ours, as on the engine's connections
                cursor = dbapi_connection.cursor()
                try:
                    # Never wait inside SQLite: that would block the event loop. _begin_immediate
                    # waits for the write lock on the loop instead; holding it, nothing else waits.
                    cursor.execute("PRAGMA busy_timeout=0")
                    cursor.execute("PRAGMA synchronous=NORMAL")
                    cursor.execute(f"PRAGMA wal_autocheckpoint={_WAL_BACKSTOP_PAGES}")
                    cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
                finally:
                    cursor.close()

            self._direct_engine = engine
            self._direct = engine.connect()
        return self._direct

    async def _begin_immediate(self, direct: Connection) -> None:
        """BEGIN IMMEDIATE on the direct connection, waiting for the write lock on the loop (not in SQLite)."""
        raw = direct.connection.dbapi_connection
        assert raw is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._direct_wait_s
        delay = 0.0002
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or loop.time() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01)
        try:
            direct.begin()  # SQLAlchemy's bookkeeping; pysqlite's begin emits nothing
        except BaseException:
            raw.rollback()
            raise

    def _committed(self, info: dict[Any, Any]) -> None:
        for listener in list(self._commit_listeners):
            try:
                listener(info)
            except Exception:
                log.exception("commit listener failed")

    def _checkpoint_soon(self) -> None:
        """After a commit to a SQLite file: a passive WAL checkpoint in a worker thread, unless one runs or
        one started less than ``checkpoint_interval_s`` ago (the next commit after that starts it)."""
        if self._wal_file is None or self._checkpointing is not None:
            return
        now = time.monotonic()
        if now - self._checkpoint_at < self.checkpoint_interval_s:
            return
        self._checkpoint_at = now
        self._checkpointing = fut = asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
        fut.add_done_callback(self._checkpoint_done)

    def _checkpoint(self) -> None:
        # Worker thread, one checkpoint at a time: the connection is never used by two threads at once.
        # PASSIVE copies what no reader still needs and waits for nobody (busy_timeout 0: another
        # process's checkpoint in progress is simply left to finish).
        conn = self._checkpoint_conn
        if conn is None:
            assert self._wal_file is not None
            conn = sqlite3.connect(self._wal_file, isolation_level=None, check_same_thread=False)
            self._checkpoint_conn = conn
        # (fetchall: a result left unread would hold a read snapshot, and no writer could restart the WAL)
        conn.execute("PRAGMA busy_timeout=0")
        [(_busy, frames, _copied)] = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if frames > _WAL_RESTART_PAGES:
            # Frames committed while the passive pass ran are not copied, and the WAL starts over only once
            # everything is: under steady writes it would grow to the backstop. RESTART, when no writer is
            # in the middle of a transaction, holds new ones back (they wait on the event loop, which runs
            # on) while it copies the few frames left, and the next writer starts the WAL from its
            # beginning; when one is, it waits for nobody (busy_timeout 0) and is one more passive pass.
            # (Waiting 200 ms for the writer held writes back that long: alerts' probes saw it.)
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def _checkpoint_done(self, fut: asyncio.Future[None]) -> None:
        self._checkpointing = None
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            log.warning("WAL checkpoint failed (the next commit tries again): %s", exc)

    def add_commit_listener(self, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener(info)`` after every commit (the session's or CoreTransaction's info); returns a remover."""
        self._commit_listeners.append(listener)

        def remove() -> None:
            if listener in self._commit_listeners:
                self._commit_listeners.remove(listener)

        return remove

    async def ping(self) -> bool:
        """True when the database answers a trivial query within ``ping_timeout`` seconds (readiness)."""
        try:
            async with asyncio.timeout(self.ping_timeout):
                async with self.engine.connect() as conn:
                    conn = await conn.execution_options(**self.readonly_options())
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:  # readiness reports, it does not raise
            log.warning("database ping failed: %s", exc)
            return False
        return True

    async def dispose(self) -> None:
        """Close all pooled connections (and core_transaction()'s own, and the checkpoints')."""
        if self._checkpointing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._checkpointing)
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._direct_engine is not None:
            self._direct_engine.dispose()
            self._direct_engine = None
        for engine in self._dedicated_engines:
            await engine.dispose()
        await self.engine.dispose()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: a session in a read-write transaction of ``request.app.state.db``."""
    db: Database = request.app.state.db
    async with db.transaction() as session:
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: a session in a read-only transaction (no SQLite write lock)."""
    db: Database = request.app.state.db
    async with db.transaction(readonly=True) as session:
        yield session


# scope="function" commits before the response is sent: with the default request scope the commit
# would run after the client already got its 2xx, and a failed commit would be lost silently.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]

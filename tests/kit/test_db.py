"""lifeline.kit.db and lifeline.kit.migrations on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from textwrap import dedent

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, HTTPException
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lifeline.kit.db import Database, ReadSessionDep, SessionDep, create_engine, partial_index
from lifeline.kit.migrations import migrate
from lifeline.kit.outbox import outbox_table
from lifeline.kit.testing.db import terminate_other_sessions


class _Base(DeclarativeBase):
    metadata = sa.MetaData()


class Thing(_Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)


things: sa.Table = Thing.__table__  # type: ignore[assignment]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database.from_url(database_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(_Base.metadata.create_all)
    yield database
    await database.dispose()


async def names(db: Database) -> list[str]:
    async with db.transaction(readonly=True) as session:
        conn = await session.connection()
        return list((await conn.scalars(sa.select(Thing.name).order_by(Thing.name))).all())


async def test_partial_index_on_either_backend(database_url: str) -> None:
    # One active row per key, any number of inactive ones: the condition reaches PostgreSQL too, though
    # the model names only SQLite's (partial_index attaches PostgreSQL's when the index is created).
    md = sa.MetaData()
    table = sa.Table(
        "partial_things",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(10)),
        sa.Column("active", sa.Boolean),
        partial_index("uq_partial_things_active", "key", unique=True, where="active"),
    )
    db = Database.from_url(database_url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(md.drop_all)
            await conn.run_sync(md.create_all)
            rows = [{"id": i, "key": "a", "active": i == 3} for i in (1, 2, 3)]
            await conn.execute(sa.insert(table), rows)
        with pytest.raises(sa.exc.IntegrityError):
            async with db.engine.begin() as conn:
                await conn.execute(sa.insert(table), {"id": 4, "key": "a", "active": True})
    finally:
        async with db.engine.begin() as conn:
            await conn.run_sync(md.drop_all)
        await db.dispose()


async def test_committed_transaction_persists(db: Database) -> None:
    async with db.transaction() as session:
        session.add(Thing(name="a"))
    assert await names(db) == ["a"]


async def test_transaction_that_raises_leaves_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as session:
            session.add(Thing(name="a"))
            await session.flush()
            await (await session.connection()).execute(things.insert().values(name="b"))
            raise RuntimeError("boom")
    assert await names(db) == []


async def test_nested_savepoints(db: Database) -> None:
    async with db.transaction() as session:
        session.add(Thing(name="outer"))
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                session.add(Thing(name="rolled-back"))
                await session.flush()
                raise RuntimeError
        async with session.begin_nested():
            session.add(Thing(name="released"))
    assert await names(db) == ["outer", "released"]


async def test_released_savepoint_rolls_back_with_its_transaction(db: Database) -> None:
    # The case the sqlite3 driver's legacy mode gets wrong: a SAVEPOINT as the first statement runs
    # outside any BEGIN, so releasing it commits and the outer rollback cannot undo it.
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            async with session.begin_nested():
                session.add(Thing(name="inside-savepoint"))
            raise RuntimeError
    assert await names(db) == []


async def test_reads_are_inside_the_transaction(db: Database) -> None:
    # Repeatable reads need the SELECT to be inside BEGIN (legacy sqlite3 mode leaves it outside).
    async with db.transaction(readonly=True) as reader:
        conn = await reader.connection()
        before = await conn.scalar(sa.select(sa.func.count()).select_from(things))
        async with db.transaction() as writer:
            writer.add(Thing(name="concurrent"))
        after = await conn.scalar(sa.select(sa.func.count()).select_from(things))
        if db.dialect == "sqlite":
            assert before == after == 0  # a snapshot (SQLite isolation is serializable)
    assert await names(db) == ["concurrent"]


async def test_concurrent_read_then_write_transactions_do_not_fail(db: Database) -> None:
    # Each transaction reads, yields to the others, then writes: with DEFERRED transactions SQLite
    # fails the upgrade to a write lock with "database is locked"; IMMEDIATE makes them queue.
    async def add(i: int) -> None:
        async with db.transaction() as session:
            await (await session.connection()).scalar(sa.select(sa.func.count()).select_from(things))
            await asyncio.sleep(0.01)
            session.add(Thing(name=f"t{i:02d}"))

    await asyncio.gather(*(add(i) for i in range(20)))
    assert len(await names(db)) == 20


async def test_readonly_transaction(db: Database) -> None:
    if db.dialect == "postgresql":
        with pytest.raises(sa.exc.DBAPIError, match="read-only"):
            async with db.transaction(readonly=True) as session:
                await (await session.connection()).execute(things.insert().values(name="x"))
    else:
        # A reader holds no write lock, so a writer proceeds while it is open.
        async with db.transaction(readonly=True) as reader:
            await (await reader.connection()).scalar(sa.select(sa.func.count()).select_from(things))
            async with asyncio.timeout(2):
                async with db.transaction() as writer:
                    writer.add(Thing(name="x"))
    assert await names(db) == ([] if db.dialect == "postgresql" else ["x"])


async def test_commit_listeners_run_only_after_commit(db: Database) -> None:
    seen: list[object] = []
    remove = db.add_commit_listener(lambda info: seen.append(info.get("mark")))
    async with db.transaction() as session:
        session.info["mark"] = 1
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            session.info["mark"] = 2
            raise RuntimeError
    remove()
    async with db.transaction() as session:
        session.info["mark"] = 3
    assert seen == [1]


# -- dedicated connections ----------------------------------------------------------------------------


async def _backend_connection_id(session: object) -> object:
    """Which connection of the database server (PostgreSQL: backend pid) or driver (SQLite) this is."""
    conn = await session.connection()  # type: ignore[attr-defined]
    if conn.dialect.name == "postgresql":
        return (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
    raw = await conn.get_raw_connection()
    return id(raw.driver_connection)


async def test_dedicated_connection_is_always_the_same_and_apart_from_the_pool(db: Database) -> None:
    # A hot writer (ingest's persisting consumer) keeps one connection, with its own SQLite page cache,
    # whatever runs beside it; the pool's transactions never get that connection.
    db.dedicate_connection("writer", sqlite_cache_mib=8)
    with pytest.raises(ValueError, match="already dedicated"):
        db.dedicate_connection("writer")
    seen: list[object] = []
    remove = db.add_commit_listener(lambda info: seen.append(info.get("mark")))
    writer_ids, pool_ids = set(), set()
    for i in range(3):
        async with db.transaction(dedicated="writer") as writer:
            writer_ids.add(await _backend_connection_id(writer))
            writer.add(Thing(name=f"w{i}"))
            writer.info["mark"] = i
            # Transactions of the pool meanwhile (a timer, a readiness ping) use other connections.
            async with db.transaction(readonly=True) as reader:
                pool_ids.add(await _backend_connection_id(reader))
            assert await db.ping()
        async with db.transaction() as other:
            pool_ids.add(await _backend_connection_id(other))
            other.add(Thing(name=f"p{i}"))
    remove()
    assert len(writer_ids) == 1
    assert not writer_ids & pool_ids
    assert [m for m in seen if m is not None] == [0, 1, 2]  # listeners hear the dedicated connection's commits
    assert await names(db) == ["p0", "p1", "p2", "w0", "w1", "w2"]
    if db.dialect == "sqlite":
        async with db.transaction(dedicated="writer") as writer:
            assert (await (await writer.connection()).exec_driver_sql("PRAGMA cache_size")).scalar() == -8 * 1024
        async with db.transaction() as other:
            assert (await (await other.connection()).exec_driver_sql("PRAGMA cache_size")).scalar() == -2000
    with pytest.raises(RuntimeError):
        async with db.transaction(dedicated="writer") as writer:
            writer.add(Thing(name="rolled back"))
            raise RuntimeError
    assert "rolled back" not in await names(db)
    with pytest.raises(KeyError):
        async with db.transaction(dedicated="nobody"):
            pytest.fail("a transaction on a connection nobody dedicated was handed out")


async def test_dedicated_connection_of_an_in_memory_database_is_the_database() -> None:
    # In memory the database lives on the engine's connection: a connection apart would be another one.
    db = Database(create_async_engine("sqlite+aiosqlite://"))
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)
        db.dedicate_connection("writer")
        async with db.transaction(dedicated="writer") as writer:
            writer.add(Thing(name="x"))
        assert await names(db) == ["x"]
    finally:
        await db.dispose()


# -- core transactions ---------------------------------------------------------------------------------


async def test_core_transaction_commits_or_rolls_back(db: Database) -> None:
    seen: list[object] = []
    remove = db.add_commit_listener(lambda info: seen.append(info.get("mark")))
    try:
        async with db.core_transaction() as tx:
            await tx.execute(things.insert(), [{"name": "core"}, {"name": "many"}])
            await tx.execute("INSERT INTO things (name) VALUES (:name)", {"name": "plain"})
            tx.insert_at_commit(things, {"name": "deferred"})
            # Reads see the transaction's own writes (the deferred row only comes with the commit).
            assert (await tx.execute(sa.select(sa.func.count()).select_from(things))).scalar() == 3
            tx.info["mark"] = 1
        with pytest.raises(RuntimeError):
            async with db.core_transaction() as tx:
                await tx.execute(things.insert().values(name="lost"))
                tx.insert_at_commit(things, {"name": "lost too"})
                tx.info["mark"] = 2
                raise RuntimeError
        # A statement that fails rolls back what came before it in the transaction.
        with pytest.raises(sa.exc.IntegrityError):
            async with db.core_transaction() as tx:
                await tx.execute(things.insert().values(name="before"))
                await tx.execute(things.insert().values(name="core"))
    finally:
        remove()
    assert await names(db) == ["core", "deferred", "many", "plain"]
    assert seen == [1]


async def test_cancelled_core_transaction_leaves_nothing_and_no_lock(db: Database) -> None:
    started = asyncio.Event()

    async def writer() -> None:
        async with db.core_transaction() as tx:
            await tx.execute(things.insert().values(name="cancelled"))
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(writer())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):  # the write lock went with the rollback
        async with db.transaction() as session:
            session.add(Thing(name="after"))
    assert await names(db) == ["after"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_core_transaction_waits_for_the_write_lock_without_blocking_the_loop(db: Database) -> None:
    ticks = 0
    async with db.transaction() as session:
        session.add(Thing(name="first"))
        await session.flush()  # holds SQLite's write lock from here to its commit

        async def core_writer() -> None:
            async with db.core_transaction() as tx:
                await tx.execute(things.insert().values(name="second"))

        writer = asyncio.create_task(core_writer())
        for _ in range(10):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not writer.done()  # still waiting for the lock, and the loop kept running meanwhile
    await asyncio.wait_for(writer, 5)
    assert ticks == 10
    assert await names(db) == ["first", "second"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_commit_listeners_see_commits_in_commit_order(db: Database) -> None:
    # Sessions commit in aiosqlite's threads, core transactions in the loop's: the listeners (the
    # outbox relay's hand-off) must still hear of the commits in the order they happened.
    heard: list[str] = []
    db.add_commit_listener(lambda info: heard.extend(info.get("names", [])))

    async def write(i: int) -> None:
        name = f"t{i:03d}"
        if i % 2:
            async with db.core_transaction() as tx:
                await tx.execute(things.insert().values(name=name))
                tx.info["names"] = [name]
        else:
            async with db.transaction() as session:
                session.add(Thing(name=name))
                session.info["names"] = [name]

    await asyncio.gather(*(write(i) for i in range(60)))
    async with db.engine.connect() as conn:
        committed = list((await conn.scalars(sa.select(Thing.name).order_by(Thing.id))).all())
    assert sorted(heard) == sorted(committed) and len(heard) == 60
    assert heard == committed  # ids are handed out under the write lock, so in commit order


async def test_dialect_and_ping(db: Database, database_url: str) -> None:
    assert db.dialect == ("postgresql" if database_url.startswith("postgresql") else "sqlite")
    assert await db.ping()


@pytest.mark.postgres
async def test_pool_recovers_from_a_restarted_postgres(postgres_url: str) -> None:
    db = Database(create_engine(postgres_url, ping_after_idle_s=0.2))
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)
        async with db.transaction() as session:
            session.add(Thing(name="before"))
        assert await terminate_other_sessions(postgres_url) >= 1

        # Idle for longer than ping_after_idle_s: the checkout's ping finds the connection dead and the
        # pool opens another one, so the transaction does not even notice.
        await asyncio.sleep(0.3)
        async with db.core_transaction() as tx:
            await tx.execute(sa.insert(things), {"name": "after idle"})

        # In steady use there is no ping: at most the first transaction fails (rolled back), and the
        # pool discards every connection it had, so the next one succeeds.
        assert await terminate_other_sessions(postgres_url) >= 1
        outcomes = []
        for name in ("right after", "next"):
            try:
                async with db.core_transaction() as tx:
                    await tx.execute(sa.insert(things), {"name": name})
                outcomes.append(name)
            except sa.exc.DBAPIError as exc:
                assert exc.connection_invalidated
        assert outcomes[-1:] == ["next"]
        async with db.engine.connect() as conn:
            names = set((await conn.scalars(sa.select(Thing.name))).all())
        assert names == {"before", "after idle", *outcomes}
    finally:
        await db.dispose()


async def test_ping_false_when_unreachable() -> None:
    db = Database.from_url("postgresql+asyncpg://postgres@127.0.0.1:1/none", pool_size=1)
    db.ping_timeout = 1.0
    assert not await db.ping()
    await db.dispose()


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "x.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout", "wal_autocheckpoint")
            }
    finally:
        await engine.dispose()
    assert path.exists()  # parent directories were created
    assert pragmas == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 1,
        "busy_timeout": 10_000,
        "wal_autocheckpoint": 16_384,  # a backstop: commits start checkpoints in a thread (below)
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_slow_core_transactions_are_logged_with_where_the_time_went(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lifeline.kit.db")
    async with db.core_transaction() as tx:  # slow in its own statements: a warning
        await tx.execute(things.insert().values(name="slow"))
        await asyncio.sleep(0.08)
    async with db.transaction() as session:  # only waiting for another writer: information
        session.add(Thing(name="holder"))
        await session.flush()

        async def core_writer() -> None:
            async with db.core_transaction() as tx:
                await tx.execute(things.insert().values(name="waiter"))

        writer = asyncio.create_task(core_writer())
        await asyncio.sleep(0.08)
    await asyncio.wait_for(writer, 5)
    slow = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("slow core")]
    assert [level for level, _ in slow] == [logging.WARNING, logging.INFO], slow
    spent = [{k: float(v) for k, v in re.findall(r"(write lock|statements|commit) ([\d.]+) ms", m)} for _, m in slow]
    assert spent[0]["statements"] >= 80  # the sleep inside the transaction
    assert spent[1]["write lock"] >= 50 and spent[1]["statements"] < 50


def _size(path: Path) -> int:
    return path.stat().st_size


def _wal_frames(path: Path) -> int:
    """Frames in the WAL now (a passive checkpoint of a reader's own reports them, changing nothing else)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_commits_leave_wal_checkpoints_to_a_worker_thread(db: Database, database_url: str) -> None:
    # SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages (and syncs the file there):
    # on the event loop's thread that stalled everything for up to seconds on a busy disk.
    main_file = Path(sa.engine.make_url(database_url).database or "")
    blob = "x" * 3000  # about a page per row
    db.checkpoint_interval_s = 3600.0  # the first commit may start one; then none for the test's length
    for i in range(0, 1500, 100):
        async with db.core_transaction() as tx:
            await tx.execute(sa.insert(things), [{"id": i + k, "name": f"{i + k}{blob}"[:50]} for k in range(100)])
        async with db.transaction() as session:
            conn = await session.connection()
            await conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS pad{i} (b BLOB)"))
            await conn.execute(sa.text(f"INSERT INTO pad{i} VALUES (zeroblob(400000))"))
    wal = main_file.with_name(main_file.name + "-wal")
    assert _size(wal) > 1_000 * 4096 * 1.2  # past SQLite's own threshold: no commit checkpointed
    before = _size(main_file)
    db.checkpoint_interval_s = 0.0
    async with db.core_transaction() as tx:  # a commit now starts one, in a thread
        await tx.execute(sa.insert(things), {"id": 99_999, "name": "last"})
    for _ in range(100):
        if _size(main_file) > before + 5_000_000:
            break
        await asyncio.sleep(0.05)
    assert _size(main_file) > before + 5_000_000  # the pages left the WAL for the database file
    # ... and the WAL starts over from its beginning (it does not grow on under steady writes).
    for i in range(100):
        async with db.core_transaction() as tx:
            await tx.execute(sa.insert(things), {"id": 100_000 + i, "name": f"more {i}"})
        if _wal_frames(main_file) < 100:
            break
        await asyncio.sleep(0.05)
    assert _wal_frames(main_file) < 100
    assert len(await names(db)) == 1502 + i


async def test_sqlite_first_connections_race_to_wal(tmp_path: Path) -> None:
    # Switching a new file to WAL fails at once with "database is locked" when connections race
    # (busy_timeout does not apply to it); the engine must wait its turn instead.
    async def connect(url: str) -> str:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
                return str((await conn.exec_driver_sql("PRAGMA journal_mode")).scalar())
        finally:
            await engine.dispose()

    for i in range(30):
        url = f"sqlite+aiosqlite:///{tmp_path / f'race{i}.db'}"
        assert await asyncio.gather(*(connect(url) for _ in range(5))) == ["wal"] * 5


def _sqlite_foreign_keys_enforced_schema() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("parent", md, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "child",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("pid", sa.ForeignKey("parent.id")),
    )
    return md


async def test_foreign_keys_enforced(database_url: str) -> None:
    db = Database.from_url(database_url)
    md = _sqlite_foreign_keys_enforced_schema()
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(md.create_all)
        with pytest.raises(sa.exc.IntegrityError):
            async with db.transaction() as session:
                await (await session.connection()).execute(md.tables["child"].insert().values(id=1, pid=42))
        # A core transaction (on SQLite: a connection of its own) enforces them too.
        with pytest.raises(sa.exc.IntegrityError):
            async with db.core_transaction() as tx:
                await tx.execute(md.tables["child"].insert().values(id=1, pid=42))
    finally:
        await db.dispose()


# -- FastAPI dependency -------------------------------------------------------------------------------


def _app(db: Database) -> FastAPI:
    app = FastAPI()
    app.state.db = db

    @app.post("/things/{name}")
    async def create(name: str, session: SessionDep, fail: bool = False) -> dict[str, str]:
        session.add(Thing(name=name))  # flushed only by the commit after the endpoint returns
        if fail:
            raise HTTPException(status_code=409, detail="refused")
        return {"name": name}

    @app.get("/things")
    async def list_things(session: ReadSessionDep) -> list[str]:
        conn = await session.connection()
        return list((await conn.scalars(sa.select(Thing.name).order_by(Thing.name))).all())

    return app


async def test_session_dependency_commits_or_rolls_back(db: Database) -> None:
    transport = httpx.ASGITransport(app=_app(db), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/things/a")).status_code == 200
        assert (await client.post("/things/b", params={"fail": True})).status_code == 409
        # The duplicate fails at commit; the commit runs before the response, so the client is told.
        assert (await client.post("/things/a")).status_code == 500
        assert (await client.get("/things")).json() == ["a"]
    assert await names(db) == ["a"]


# -- migrations ---------------------------------------------------------------------------------------


def write_migrations(root: Path, *, failing_second: bool = False) -> Path:
    """A service-style migration folder: the 3-line env.py and hand-written versions."""
    location = root / "migrations"
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text("from lifeline.kit.migrations import run_env\n\nrun_env(target_metadata=None)\n")
    (location / "versions" / "0001_initial.py").write_text(
        dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            from lifeline.kit.outbox import create_outbox_table, drop_outbox_table

            revision = "0001"
            down_revision = None
            branch_labels = None
            depends_on = None


            def upgrade() -> None:
                create_outbox_table(op)
                op.create_table("widget", sa.Column("id", sa.Integer, primary_key=True))


            def downgrade() -> None:
                op.drop_table("widget")
                drop_outbox_table(op)
            """
        )
    )
    if failing_second:
        (location / "versions" / "0002_broken.py").write_text(
            dedent(
                """
                import sqlalchemy as sa
                from alembic import op

                revision = "0002"
                down_revision = "0001"
                branch_labels = None
                depends_on = None


                def upgrade() -> None:
                    op.create_table("gadget", sa.Column("id", sa.Integer, primary_key=True))
                    with op.batch_alter_table("widget") as batch:
                        batch.add_column(sa.Column("name", sa.String(20), nullable=True))
                    raise RuntimeError("broken migration")


                def downgrade() -> None:
                    pass
                """
            )
        )
    return location


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrate_is_idempotent_and_creates_the_outbox(database_url: str, tmp_path: Path) -> None:
    location = write_migrations(tmp_path)
    await migrate(database_url, location)
    await migrate(database_url, location)
    assert {"outbox", "widget", "alembic_version"} <= await _tables(database_url)

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalars().all()
            columns = await conn.run_sync(lambda c: {col["name"] for col in sa.inspect(c).get_columns("outbox")})
            indexes = await conn.run_sync(lambda c: {ix["name"] for ix in sa.inspect(c).get_indexes("outbox")})
    finally:
        await engine.dispose()
    assert version == ["0001"]
    # The migration helper and the model the relay queries describe the same table.
    assert columns == {c.name for c in outbox_table.columns}
    assert "ix_outbox_unsent" in indexes


async def test_failed_migration_changes_nothing(database_url: str, tmp_path: Path) -> None:
    await migrate(database_url, write_migrations(tmp_path / "good"))
    broken = write_migrations(tmp_path / "broken", failing_second=True)
    with pytest.raises(RuntimeError, match="broken migration"):
        await migrate(database_url, broken)
    tables = await _tables(database_url)
    assert "gadget" not in tables
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar()
            widget_columns = await conn.run_sync(lambda c: {col["name"] for col in sa.inspect(c).get_columns("widget")})
    finally:
        await engine.dispose()
    assert version == "0001"
    assert widget_columns == {"id"}


async def test_concurrent_migrations(database_url: str, tmp_path: Path) -> None:
    # Replicas starting together: one migrates, the others wait and find the schema at head.
    location = write_migrations(tmp_path)
    await asyncio.gather(*(migrate(database_url, location) for _ in range(3)))
    assert {"outbox", "widget"} <= await _tables(database_url)


async def test_custom_version_table(database_url: str, tmp_path: Path) -> None:
    await migrate(database_url, write_migrations(tmp_path), version_table="ingest_alembic_version")
    tables = await _tables(database_url)
    assert "ingest_alembic_version" in tables
    assert "alembic_version" not in tables


_MIGRATE_AND_SAY_IF_ALEMBIC_RAN = (
    "import asyncio, sys\n"
    "from lifeline.kit.migrations import migrate\n"
    "asyncio.run(migrate(sys.argv[1], sys.argv[2]))\n"
    "print('alembic' in sys.modules)\n"
)


def test_migrate_at_heads_leaves_alembic_unimported(database_url: str, tmp_path: Path) -> None:
    # A restart finds the schema at head without Alembic (~12 MB of a service's memory); a database
    # behind the scripts still goes through it.
    location = write_migrations(tmp_path)

    def alembic_imported() -> bool:
        cmd = [sys.executable, "-c", _MIGRATE_AND_SAY_IF_ALEMBIC_RAN, database_url, str(location)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
        return out.strip().splitlines()[-1] == "True"

    assert alembic_imported()
    assert not alembic_imported()
    (location / "versions" / "0002_gadget.py").write_text(
        dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            revision: str = "0002"
            down_revision: str | None = "0001"


            def upgrade() -> None:
                op.create_table("gadget", sa.Column("id", sa.Integer, primary_key=True))


            def downgrade() -> None:
                op.drop_table("gadget")
            """
        )
    )
    assert alembic_imported()
    assert "gadget" in asyncio.run(_tables(database_url))
    assert not alembic_imported()

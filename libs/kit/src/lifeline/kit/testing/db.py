"""Database fixtures: a fresh SQLite file or a fresh PostgreSQL database per test.

``database_url`` is parametrized over both backends (ids ``sqlite`` / ``postgres``), so a test that
uses it runs on each. PostgreSQL tests are skipped, with the reason shown, only when the server
cannot be reached; set ``LIFELINE_TEST_PG_DSN`` to point at another server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.engine import URL, make_url

__all__ = ["before_database_drop", "database_url", "postgres_url", "sqlite_url", "terminate_other_sessions"]

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_CONNECT_TIMEOUT = 5.0
# Remembered per test session so an absent server costs one connect timeout, not one per test.
_unreachable: dict[str, str] = {}


# What must stop before a test's PostgreSQL database is dropped: services the test started run on it,
# and pytest tears ``service_runner`` down after a database fixture set up later than it.
_BEFORE_DROP = pytest.StashKey[list[Callable[[], Awaitable[None]]]]()


def before_database_drop(node: pytest.Item, stop: Callable[[], Awaitable[None]]) -> None:
    """Have `stop` awaited before the test's database is dropped (it may run again later: idempotent)."""
    node.stash.setdefault(_BEFORE_DROP, []).append(stop)


def _admin_dsn() -> URL:
    return make_url(os.environ.get("LIFELINE_TEST_PG_DSN", DEFAULT_PG_DSN))


def _plain(url: URL) -> str:
    """The URL as asyncpg accepts it (no SQLAlchemy driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite database file in the test's tmp_path."""
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest_asyncio.fixture
async def postgres_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """URL of a fresh PostgreSQL database ``lifeline_test_<random>``, dropped after the test."""
    admin = _admin_dsn()
    where = admin.render_as_string(hide_password=True)
    if where in _unreachable:
        pytest.skip(_unreachable[where])
    try:
        conn = await asyncpg.connect(_plain(admin), timeout=_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
        # Only an unreachable server skips; a reachable server that refuses us is a real failure.
        _unreachable[where] = f"PostgreSQL not reachable at {where}: {exc}"
        pytest.skip(_unreachable[where])
    name = f"lifeline_test_{secrets.token_hex(6)}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    finally:
        for stop in request.node.stash.get(_BEFORE_DROP, []):
            await stop()
        conn = await asyncpg.connect(_plain(admin), timeout=_CONNECT_TIMEOUT)
        try:
            # FORCE: an engine the test forgot to dispose must not keep the database alive.
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL on each backend: the test runs once on SQLite and once on PostgreSQL."""
    # Resolved lazily so the SQLite run never touches PostgreSQL (and is never skipped with it).
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def terminate_other_sessions(url: str) -> int:
    """Terminate every other session on the PostgreSQL database of ``url`` (what a server restart does to
    the pools of its clients); returns how many ended."""
    import sqlalchemy as sa

    from lifeline.kit.db import create_engine

    killer = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with killer.connect() as conn:
            killed = await conn.scalar(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        await killer.dispose()
    return int(killed or 0)

"""``migrate_in_child``: the migrations of ``lifeline run``, in a short-lived child process (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from lifeline.kit.db import create_engine
from lifeline.kit.migrations import MigrationError, migrate, migrate_in_child

from .test_db import _tables, write_migrations

_MIGRATE_IN_CHILD_AND_SAY_IF_ALEMBIC_RAN = (
    "import asyncio, sys\n"
    "from lifeline.kit.migrations import migrate_in_child\n"
    "asyncio.run(migrate_in_child([(sys.argv[1], sys.argv[2])]))\n"
    "print('alembic' in sys.modules)\n"
)


async def _versions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalars())
    finally:
        await engine.dispose()


def test_migrate_in_child_leaves_alembic_out_of_this_process(database_url: str, tmp_path: Path) -> None:
    # The caller (a serving process) never imports Alembic, even on a fresh database.
    location = write_migrations(tmp_path)
    cmd = [sys.executable, "-c", _MIGRATE_IN_CHILD_AND_SAY_IF_ALEMBIC_RAN, database_url, str(location)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
    assert {"outbox", "widget", "alembic_version"} <= asyncio.run(_tables(database_url))
    assert asyncio.run(_versions(database_url)) == ["0001"]


async def test_migrate_in_child_failure_raises_and_changes_nothing(database_url: str, tmp_path: Path) -> None:
    await migrate(database_url, write_migrations(tmp_path / "good"))
    broken = write_migrations(tmp_path / "broken", failing_second=True)
    with pytest.raises(MigrationError, match="broken migration"):
        await migrate_in_child([(database_url, broken)])
    assert "gadget" not in await _tables(database_url)
    assert await _versions(database_url) == ["0001"]
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            columns = await conn.run_sync(lambda c: {col["name"] for col in sa.inspect(c).get_columns("widget")})
    finally:
        await engine.dispose()
    assert columns == {"id"}

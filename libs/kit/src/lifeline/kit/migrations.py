"""Alembic migrations per service: ``migrate()`` at start-up and a reusable ``env.py`` body.

Each service keeps hand-written migrations in its own folder (``lifeline/<service>/migrations/`` with
``env.py`` and ``versions/``) and its own database. The service's ``env.py`` is just::

    from lifeline.kit.migrations import run_env

    run_env(target_metadata=None)

``migrate(url, script_location)`` runs ``alembic upgrade heads`` in one transaction on an async
engine, so a failing migration leaves the schema as it was (PostgreSQL and, thanks to the real
transactions set up in ``lifeline.kit.db``, SQLite too). A database already at the scripts' heads (every
restart) is recognised without Alembic, which is then never imported: it is ~10 MB of a service's RSS.
``migrate_in_child()`` runs the migrations of a fresh or older database in a short-lived child process
(``python -m lifeline.kit.migrations``) for the same reason: ``lifeline run`` migrates that way before
it serves, so a serving process never imports Alembic.
"""

from __future__ import annotations

import ast
import asyncio
import json
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from lifeline.kit.db import create_engine
from lifeline.kit.outbox import outbox_metadata

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["MigrationError", "alembic_config", "migrate", "migrate_in_child", "run_env"]

DEFAULT_VERSION_TABLE = "alembic_version"


class MigrationError(RuntimeError):
    """A migration left the database inconsistent (e.g. dangling foreign keys on SQLite)."""


def alembic_config(
    script_location: str | Path,
    *,
    url: str | None = None,
    version_table: str = DEFAULT_VERSION_TABLE,
) -> Config:
    """An in-memory Alembic Config for a service's migration folder (for ``alembic.command``)."""
    from alembic.config import Config

    config = Config()
    # ConfigParser interpolates '%', which may appear in paths and URL-encoded passwords.
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["version_table"] = version_table
    return config


async def migrate(
    url: str,
    script_location: str | Path,
    *,
    version_table: str = DEFAULT_VERSION_TABLE,
    revision: str = "heads",
) -> None:
    """Upgrade the database at ``url`` to ``revision`` with the migrations in ``script_location``.

    The default is every head: a concept inside a service (say alerts' notifications) may keep its tables
    on a branch of its own (``branch_labels``), so its migrations never race the main line's numbering.
    """
    if revision == "heads" and await _at_heads(url, Path(script_location), version_table):
        return
    config = alembic_config(script_location, url=url, version_table=version_table)
    # Schema changes on SQLite (batch mode recreates tables) need foreign keys off; integrity is
    # checked with PRAGMA foreign_key_check before commit instead, as SQLite's docs prescribe.
    engine = create_engine(url, sqlite_foreign_keys=False, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting together queue here; the later ones find the schema at head.
                key = zlib.crc32(f"lifeline.kit.migrations:{version_table}".encode())
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
            await conn.run_sync(_run_command, config, revision)
            if conn.dialect.name == "sqlite":
                violations = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if violations:
                    raise MigrationError(f"foreign key violations after migrating: {violations[:10]}")
    finally:
        await engine.dispose()


async def migrate_in_child(targets: Sequence[tuple[str, str | Path]]) -> None:
    """Upgrade each ``(url, script_location)`` to its heads in one short-lived child process.

    Databases already at their heads are recognised here, without a child. The URLs go to the child on
    its standard input, not its command line, where ``ps`` would show their passwords.
    """
    pending = [(url, str(loc)) for url, loc in targets if not await _at_heads(url, Path(loc), DEFAULT_VERSION_TABLE)]
    if not pending:
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(json.dumps(pending).encode())
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-20:]
        raise MigrationError(f"migrating in a child process failed (exit code {proc.returncode}):\n" + "\n".join(tail))


async def _migrate_all(targets: Sequence[tuple[str, str]]) -> None:
    for url, script_location in targets:
        await migrate(url, script_location)


def script_heads(script_location: Path) -> set[str]:
    """The head revisions of a migration folder, read from its scripts' ``revision`` / ``down_revision``
    assignments (empty when a script does not spell them as literals: then Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (script_location / "versions").glob("*.py"):
        found: dict[str, Any] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    found[target.id] = ast.literal_eval(value)
                except ValueError:
                    return set()
        if not isinstance(found.get("revision"), str):
            return set()
        revisions.add(found["revision"])
        down = found.get("down_revision")
        parents.update([down] if isinstance(down, str) else down or ())
    return revisions - parents


async def _at_heads(url: str, script_location: Path, version_table: str) -> bool:
    """True when the database's version table holds exactly the scripts' heads (nothing to upgrade)."""
    heads = script_heads(script_location)
    if not heads:
        return False
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda c: sa.inspect(c).has_table(version_table)):
                return False
            rows = await conn.execute(sa.text(f'SELECT version_num FROM "{version_table}"'))
            return {str(r[0]) for r in rows} == heads
    finally:
        await engine.dispose()


def _run_command(connection: Connection, config: Config, revision: str) -> None:
    from alembic import command

    config.attributes["connection"] = connection
    try:
        command.upgrade(config, revision)
    finally:
        config.attributes.pop("connection", None)


def run_env(
    target_metadata: sa.MetaData | Sequence[sa.MetaData] | None = None,
    **configure_kwargs: Any,
) -> None:
    """The body of a service's Alembic ``env.py``: run the migrations on the connection given to it."""
    from alembic import context  # only importable while Alembic runs an env.py

    config = context.config
    metadata = _with_outbox(target_metadata)
    version_table = str(config.attributes.get("version_table", DEFAULT_VERSION_TABLE))

    if context.is_offline_mode():
        url = _config_url(config)
        context.configure(
            url=url,
            target_metadata=metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            version_table=version_table,
            render_as_batch=make_url(url).get_backend_name() == "sqlite",
            **configure_kwargs,
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run_on_connection(connection, metadata, version_table, configure_kwargs)
        return

    # Invoked by alembic's own commands (e.g. `revision --autogenerate` through alembic_config()):
    # open an engine for the URL in the config and run in one transaction, like migrate().
    asyncio.run(_run_standalone(_config_url(config), metadata, version_table, configure_kwargs))


def _run_on_connection(
    connection: Connection,
    metadata: sa.MetaData | Sequence[sa.MetaData] | None,
    version_table: str,
    configure_kwargs: dict[str, Any],
) -> None:
    from alembic import context

    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        **configure_kwargs,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(
    url: str,
    metadata: sa.MetaData | Sequence[sa.MetaData] | None,
    version_table: str,
    configure_kwargs: dict[str, Any],
) -> None:
    engine = create_engine(url, sqlite_foreign_keys=False, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_on_connection, metadata, version_table, configure_kwargs)
    finally:
        await engine.dispose()


def _config_url(config: Config) -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass a connection through migrate() or set sqlalchemy.url")
    return url


def _with_outbox(
    target_metadata: sa.MetaData | Sequence[sa.MetaData] | None,
) -> sa.MetaData | Sequence[sa.MetaData] | None:
    # Every service database has the kit's outbox table; without its metadata, autogenerate would
    # propose dropping it.
    if target_metadata is None:
        return None
    if isinstance(target_metadata, sa.MetaData):
        return [target_metadata, outbox_metadata]
    return [*target_metadata, outbox_metadata]


if __name__ == "__main__":
    # The child of migrate_in_child(): a JSON list of [url, script_location] on stdin.
    asyncio.run(_migrate_all(json.load(sys.stdin)))

"""The queries of bulk import and export: many rows per statement."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from ..models import TABLES, history_table


async def current_docs(*, session: AsyncSession, entity: str, keys: list[str], lock: bool) -> dict[str, dict[str, Any]]:
    """The current documents of these keys (locked against concurrent writers when `lock`)."""
    if not keys:
        return {}
    table, key_col = TABLES[entity]
    stmt = select(table.c[key_col], table.c.doc).where(table.c[key_col].in_(keys))
    if lock:
        # PostgreSQL: nobody changes these rows between our read and our write (SQLite's IMMEDIATE
        # transaction already holds the database's write lock; the clause is not rendered there).
        stmt = stmt.with_for_update()
    rows = (await (await session.connection()).execute(stmt)).all()
    return {r[0]: dict(r[1]) for r in rows}


async def insert_current_many(*, session: AsyncSession, entity: str, rows: list[dict[str, Any]]) -> None:
    """Add new entities (the primary key refuses one that exists)."""
    if rows:
        table, _ = TABLES[entity]
        await (await session.connection()).execute(insert(table), rows)


async def update_current_many(*, session: AsyncSession, entity: str, rows: list[dict[str, Any]]) -> None:
    """Replace entities' states (rows of column values; the key column says which; they were read locked)."""
    if rows:
        table, key_col = TABLES[entity]
        # Bound names must differ from the column names in an executemany UPDATE.
        values = {name: bindparam(f"new_{name}") for name in rows[0]}
        stmt = update(table).where(table.c[key_col] == bindparam("key")).values(**values)
        params = [{"key": r[key_col], **{f"new_{k}": v for k, v in r.items()}} for r in rows]
        await (await session.connection()).execute(stmt, params)


async def insert_history_many(*, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Record versions of entities."""
    if rows:
        await (await session.connection()).execute(insert(history_table), rows)

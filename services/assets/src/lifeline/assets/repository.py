"""Every query of the assets service."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlmodel.ext.asyncio.session import AsyncSession

from .models import TABLES, history_table, sensors_table


async def get(*, session: AsyncSession, entity: str, key: str) -> Row[Any] | None:
    """The current row of one entity."""
    table, key_col = TABLES[entity]
    stmt = select(table).where(table.c[key_col] == key)
    return (await (await session.connection()).execute(stmt)).first()


async def insert_current(*, session: AsyncSession, entity: str, values: dict[str, Any]) -> None:
    """Add a new entity (the primary key refuses a second one with the same key)."""
    table, _ = TABLES[entity]
    await (await session.connection()).execute(insert(table).values(**values))


async def update_current(
    *, session: AsyncSession, entity: str, key: str, expected_version: int, values: dict[str, Any]
) -> bool:
    """Replace an entity's state if it is still at `expected_version`; False if someone got there first."""
    table, key_col = TABLES[entity]
    res = await (await session.connection()).execute(
        update(table).where(table.c[key_col] == key, table.c.version == expected_version).values(**values)
    )
    return bool(res.rowcount)


async def list_current(
    *,
    session: AsyncSession,
    entity: str,
    region_prefixes: list[str],
    equals: dict[str, Any],
    text: str | None,
    text_columns: tuple[str, ...],
    after: str | None,
    limit: int,
) -> list[Row[Any]]:
    """A page of entities by key: inside every region prefix, with these column values and text."""
    table, key_col = TABLES[entity]
    c = table.c
    conds: list[Any] = [c.region.like(f"{p}%") for p in region_prefixes if p]
    conds += [c[col] == value for col, value in equals.items()]
    if text:
        pattern = f"%{text.lower()}%"
        conds.append(or_(*(func.lower(c[col]).like(pattern) for col in text_columns)))
    if after is not None:
        conds.append(c[key_col] > after)
    stmt = select(table).where(*conds).order_by(c[key_col]).limit(limit)
    return list((await (await session.connection()).execute(stmt)).all())


async def count_active_sensors(*, session: AsyncSession, facility_code: str) -> int:
    """Sensors still active on a facility."""
    c = sensors_table.c
    stmt = select(func.count()).where(c.facility_code == facility_code, c.status == "active")
    return int((await (await session.connection()).execute(stmt)).scalar_one())


async def insert_history(*, session: AsyncSession, values: dict[str, Any]) -> None:
    """Record one version of an entity."""
    await (await session.connection()).execute(insert(history_table).values(**values))


async def history(*, session: AsyncSession, entity: str, key: str) -> list[Row[Any]]:
    """Every version of an entity, oldest first."""
    c = history_table.c
    stmt = select(history_table).where(c.entity == entity, c.entity_id == key).order_by(c.version)
    return list((await (await session.connection()).execute(stmt)).all())


async def version_at(*, session: AsyncSession, entity: str, key: str, at_ms: int) -> Row[Any] | None:
    """The latest version of an entity recorded at or before `at_ms`."""
    c = history_table.c
    stmt = (
        select(history_table)
        .where(c.entity == entity, c.entity_id == key, c.changed_ms <= at_ms)
        .order_by(c.version.desc())
        .limit(1)
    )
    return (await (await session.connection()).execute(stmt)).first()

"""Every query of the assets service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlmodel.ext.asyncio.session import AsyncSession

from .models import TABLES, history_table, links_table


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
    equals: dict[str | tuple[str, ...], Any],
    contains: dict[str, str],
    text: str | None,
    text_columns: tuple[str, ...],
    after: str | None,
    limit: int,
) -> list[Row[Any]]:
    """A page of entities by key: inside every region prefix, with these column values and text.

    An `equals` key that is a tuple of columns matches a value in any of them; a `contains` column holds
    a ",a,b," list and matches when the item is one of its members.
    """
    table, key_col = TABLES[entity]
    c = table.c
    conds: list[Any] = [c.region.like(f"{p}%") for p in region_prefixes if p]
    for cols, value in equals.items():
        conds.append(or_(*(c[col] == value for col in cols)) if isinstance(cols, tuple) else c[cols] == value)
    conds += [c[col].like(f"%,{item},%") for col, item in contains.items()]
    if text:
        pattern = f"%{text.lower()}%"
        conds.append(or_(*(func.lower(c[col]).like(pattern) for col in text_columns)))
    if after is not None:
        conds.append(c[key_col] > after)
    stmt = select(table).where(*conds).order_by(c[key_col]).limit(limit)
    return list((await (await session.connection()).execute(stmt)).all())


async def count_active(*, session: AsyncSession, entity: str, columns: tuple[str, ...], value: str) -> int:
    """Active entities with `value` in any of `columns` (sensors on a facility, links touching it)."""
    table, _ = TABLES[entity]
    c = table.c
    stmt = select(func.count()).where(or_(*(c[col] == value for col in columns)), c.status == "active")
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


async def active_link(
    *, session: AsyncSession, from_code: str, to_code: str, kind: str, other_than: str | None
) -> str | None:
    """The id of the active link of `kind` from → to, other than `other_than`, if there is one."""
    c = links_table.c
    stmt = select(c.id).where(
        c.from_code == from_code, c.to_code == to_code, c.kind == kind, c.status == "active", c.id != (other_than or "")
    )
    return (await (await session.connection()).execute(stmt)).scalar_one_or_none()


async def active_links_from(
    *, session: AsyncSession, codes: list[str], downstream: bool, kinds: Sequence[str] | None
) -> list[Row[Any]]:
    """Active links leaving `codes` downstream (from_code in codes) or upstream (to_code in codes)."""
    c = links_table.c
    near, _ = (c.from_code, c.to_code) if downstream else (c.to_code, c.from_code)
    conds: list[Any] = [near.in_(codes), c.status == "active"]
    if kinds:
        conds.append(c.kind.in_(kinds))
    stmt = select(c.id, c.from_code, c.to_code, c.kind).where(*conds).order_by(c.id)
    return list((await (await session.connection()).execute(stmt)).all())

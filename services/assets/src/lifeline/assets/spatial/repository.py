"""The spatial queries: candidates by bounding box (PostGIS GiST or SQLite R*Tree), links, docs by key."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Text, cast, column, func, select, table, text
from sqlalchemy.engine import Row
from sqlmodel.ext.asyncio.session import AsyncSession

from ..models import TABLES
from .geo import Box
from .models import SRID, geo_index_table

_rtree = table("geo_rtree", column("id"), column("min_lon"), column("max_lon"), column("min_lat"), column("max_lat"))
_CANDIDATE_COLUMNS = ("entity", "entity_id", "region", "kind", "status", "geometry")


async def has_rtree(*, session: AsyncSession) -> bool:
    """Whether this SQLite database has the R*Tree beside geo_index (the build may lack the module)."""
    conn = await session.connection()
    if conn.dialect.name != "sqlite":
        return False
    found = await conn.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'geo_rtree'"))
    return found.first() is not None


async def candidates(
    *,
    session: AsyncSession,
    box: Box,
    region_prefixes: Sequence[str],
    entities: Sequence[str],
    kind: str | None,
    status: str | None,
    use_rtree: bool,
    within: tuple[dict[str, Any], float] | None = None,
) -> list[Row[Any]]:
    """Indexed entities whose box meets `box` (a superset of the answer), with the filters applied.

    `within` (shape, metres), on PostgreSQL, also keeps only rows PostGIS finds that close (with margin).
    """
    c = geo_index_table.c
    min_lon, min_lat, max_lon, max_lat = box
    conds: list[Any] = []
    conds += [c.region.like(f"{p}%") for p in region_prefixes if p]
    if kind is not None:
        conds.append(c.kind == kind)
    conds.append(c.status != "retired" if status is None else c.status == status)
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        conds.append(c.entity.in_(entities))
        envelope = func.ST_MakeEnvelope(min_lon, min_lat, max_lon, max_lat, SRID)
        conds.append(c.geom.op("&&")(envelope))
        if within is not None:
            shape, metres = within
            target = func.ST_SetSRID(func.ST_GeomFromGeoJSON(cast(json.dumps(shape), Text)), SRID)
            conds.append(func.ST_DWithin(func.geography(c.geom), func.geography(target), metres))
    else:
        conds += [c.max_lon >= min_lon, c.min_lon <= max_lon, c.max_lat >= min_lat, c.min_lat <= max_lat]
        # An expression rather than the bare column, so that SQLite's planner does not start from the
        # primary key's entity prefix (every facility) instead of the far more selective R*Tree.
        conds.append(c.entity.concat("").in_(entities))
        if use_rtree:
            r = _rtree.c
            conds.append(
                c.rid.in_(
                    select(r.id).where(
                        r.max_lon >= min_lon, r.min_lon <= max_lon, r.max_lat >= min_lat, r.min_lat <= max_lat
                    )
                )
            )
    stmt = select(*(c[name] for name in _CANDIDATE_COLUMNS)).where(*conds)
    return list((await conn.execute(stmt)).all())


async def indexed(*, session: AsyncSession, entity: str, entity_id: str) -> Row[Any] | None:
    """One entity's row of the index."""
    c = geo_index_table.c
    stmt = select(*(c[name] for name in _CANDIDATE_COLUMNS)).where(c.entity == entity, c.entity_id == entity_id)
    return (await (await session.connection()).execute(stmt)).first()


async def docs(*, session: AsyncSession, entity: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The current docs of these entities by key (none for an entity without a table yet)."""
    keys = list(keys)
    if entity not in TABLES or not keys:
        return {}
    tbl, key_col = TABLES[entity]
    rows = await (await session.connection()).execute(select(tbl.c[key_col], tbl.c.doc).where(tbl.c[key_col].in_(keys)))
    return {k: dict(d) for k, d in rows.all()}


async def sensors_of(
    *, session: AsyncSession, facility_codes: Sequence[str], quantity: str | None, status: str | None
) -> list[dict[str, Any]]:
    """The sensors on these facilities (not retired ones unless that status is asked for)."""
    tbl, _ = TABLES["sensor"]
    c = tbl.c
    conds: list[Any] = [c.facility_code.in_(facility_codes)]
    conds.append(c.status != "retired" if status is None else c.status == status)
    if quantity is not None:
        conds.append(c.quantity == quantity)
    rows = await (await session.connection()).execute(select(c.doc).where(*conds))
    return [dict(d) for (d,) in rows.all()]

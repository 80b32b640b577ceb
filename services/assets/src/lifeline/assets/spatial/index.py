"""Keeps ``geo_index`` in step with the located entities: called by every write, in its transaction."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession

from . import geo
from .models import geo_index_table

# The entity's field that names what spatial queries filter as "kind".
KIND_FIELD = {"facility": "kind", "sensor": "quantity", "risk": "hazard"}


def shape(entity: str, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The GeoJSON Point or LineString an entity is indexed by, if it has one."""
    if entity == "sensor":
        pos = doc.get("position")
        return {"type": "Point", "coordinates": [pos["lon"], pos["lat"]]} if pos else None
    if entity in KIND_FIELD:
        geometry = doc.get("geometry")
        if geometry and geometry.get("type") in ("Point", "LineString"):
            return {"type": geometry["type"], "coordinates": geometry["coordinates"]}
    return None


def rtree_id(entity: str, entity_id: str) -> int:
    """A signed 64-bit number for the key, the same on every database and every run."""
    digest = hashlib.blake2b(f"{entity}\x00{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def index_entity(*, session: AsyncSession, entity: str, doc: dict[str, Any]) -> None:
    """Record the entity's current shape, region, kind and status (retired ones stay, with their status)."""
    await index_entities(session=session, entity=entity, docs=[doc])


async def index_entities(*, session: AsyncSession, entity: str, docs: list[dict[str, Any]]) -> None:
    """``index_entity`` for many documents of one entity: one statement for all (a bulk import's chunk)."""
    conn = await session.connection()
    postgres = conn.dialect.name == "postgresql"
    rows: list[dict[str, Any]] = []
    gone: list[str] = []
    for doc in docs:
        geometry = shape(entity, doc)
        if geometry is None:
            if entity in KIND_FIELD:  # a risk source whose location was removed is no longer found by place
                gone.append(_key(entity, doc))
            continue
        key = _key(entity, doc)
        min_lon, min_lat, max_lon, max_lat = geo.bbox(geometry)
        values: dict[str, Any] = {
            "entity": entity,
            "entity_id": key,
            "rid": rtree_id(entity, key),
            "region": doc["region"],
            "kind": str(doc.get(KIND_FIELD[entity]) or ""),
            "status": doc["status"],
            "min_lon": min_lon,
            "min_lat": min_lat,
            "max_lon": max_lon,
            "max_lat": max_lat,
            "geometry": geometry,
        }
        if postgres:
            values["geom"] = json.dumps(geometry)
        rows.append(values)
    if gone:
        c = geo_index_table.c
        await conn.execute(geo_index_table.delete().where(c.entity == entity, c.entity_id.in_(gone)))
    if rows:
        stmt = (postgresql if postgres else sqlite).insert(geo_index_table)
        changed = {k: stmt.excluded[k] for k in rows[0] if k not in ("entity", "entity_id", "rid")}
        await conn.execute(stmt.on_conflict_do_update(index_elements=["entity", "entity_id"], set_=changed), rows)


_KEY_FIELD = {"facility": "code", "sensor": "sensor_id", "risk": "id"}


def _key(entity: str, doc: dict[str, Any]) -> str:
    return str(doc[_KEY_FIELD[entity]])

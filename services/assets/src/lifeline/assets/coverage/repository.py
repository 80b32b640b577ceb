"""Coverage queries: counts over the current facilities and sensors (the history is not needed)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select

from ..models import facilities_table as f
from ..models import sensors_table as s


def _in_scope(prefix: str) -> Any:
    # Retired facilities have left the census; under repair ones are still part of it.
    return and_(f.c.status != "retired", f.c.region.startswith(prefix) if prefix else True)


async def registered(*, session: Any, prefix: str) -> list[tuple[str, str, int]]:
    """(kind, region, facilities) of the facilities in the census within ``prefix``."""
    query = select(f.c.kind, f.c.region, func.count()).where(_in_scope(prefix)).group_by(f.c.kind, f.c.region)
    return [(k, r, int(n)) for k, r, n in (await (await session.connection()).execute(query)).all()]


async def active_sensors(*, session: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    """(kind, region, facility code, sensor id) of every active sensor on a facility in the census."""
    query = (
        select(f.c.kind, f.c.region, f.c.code, s.c.sensor_id)
        .join(s, s.c.facility_code == f.c.code)
        .where(_in_scope(prefix), s.c.status == "active")
    )
    return [(k, r, c, sid) for k, r, c, sid in (await (await session.connection()).execute(query)).all()]

"""The spatial index: one row per located entity (facility, sensor, risk source), kept by ``index.py``.

``geometry`` is the entity's shape as GeoJSON (a sensor's position as a Point); the box columns index it
on SQLite (an R*Tree beside them where the build has one, see migration 0002). ``geom`` exists only on
PostgreSQL (PostGIS, SRID 4490 = CGCS2000): never select the whole table, name the columns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Float, String, Text, cast, func
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import UserDefinedType
from sqlmodel import Field, SQLModel

SRID = 4490


class PostGISGeometry(UserDefinedType[Any]):
    """A PostGIS geometry written from GeoJSON text."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return f"geometry(Geometry, {SRID})"

    def bind_expression(self, bindvalue: Any) -> ColumnElement[Any]:
        return func.ST_SetSRID(func.ST_GeomFromGeoJSON(cast(bindvalue, Text)), SRID)


class GeoIndexRow(SQLModel, table=True):
    __tablename__ = "geo_index"

    entity: str = Field(sa_column=Column(String(16), primary_key=True))
    entity_id: str = Field(sa_column=Column(String(64), primary_key=True))
    # A stable number for the key (see index.rtree_id): the R*Tree's id, which VACUUM cannot renumber.
    rid: int = Field(sa_column=Column(BigInteger, nullable=False, unique=True))
    region: str = Field(sa_column=Column(String(6), nullable=False))
    # Facility kind, sensor quantity or risk-source hazard: what spatial queries filter on.
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    min_lon: float = Field(sa_column=Column(Float, nullable=False))
    min_lat: float = Field(sa_column=Column(Float, nullable=False))
    max_lon: float = Field(sa_column=Column(Float, nullable=False))
    max_lat: float = Field(sa_column=Column(Float, nullable=False))
    geometry: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    geom: str | None = Field(default=None, sa_column=Column(PostGISGeometry, nullable=True))


geo_index_table = GeoIndexRow.__table__  # type: ignore[attr-defined]

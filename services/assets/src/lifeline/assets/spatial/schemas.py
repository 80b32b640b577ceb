"""API shapes of the spatial queries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Entity = Literal["facility", "sensor", "risk"]


class SpatialHit(BaseModel):
    entity: Entity
    id: str
    region: str
    kind: str = Field(description="Facility kind, sensor quantity or risk-source hazard")
    status: str
    geometry: dict[str, Any] = Field(description="GeoJSON Point or LineString (a sensor's position as a Point)")
    distance_m: float | None = Field(description="Metres to the point or risk source asked about (null for a box)")
    doc: dict[str, Any] | None = Field(description="The entity's current state")


class SpatialPage(BaseModel):
    items: list[SpatialHit]
    truncated: bool = Field(description="More matched than the limit; narrow the query or raise the limit")


class PathLeg(BaseModel):
    code: str
    kind: str
    name: str
    start_m: float = Field(description="Metres along the path where this facility begins")
    length_m: float


class PathSensor(BaseModel):
    along_m: float = Field(description="Metres along the path from the first facility")
    facility_code: str
    sensor: dict[str, Any]


class PathSensors(BaseModel):
    from_code: str
    to_code: str
    direction: Literal["downstream", "upstream"]
    path: list[PathLeg]
    sensors: list[PathSensor]

"""API shapes of the assets REST edge: ``XCreate`` / ``XUpdate`` / ``XPublic`` per entity.

Shapes only; the rules (code inside the region, coordinates inside China, known quantities) live in
service.py so that REST and gRPC share them and each gets a localized problem.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lifeline.kit.catalogue import Domain

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
FacilityStatus = Literal["in_service", "under_repair", "retired"]
# Retiring is its own action (POST .../retire) so that it is never a side effect of an edit.
EditableFacilityStatus = Literal["in_service", "under_repair"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Geometry(_In):
    """GeoJSON Point or LineString, CGCS2000 (EPSG:4490) longitude/latitude in degrees."""

    type: Literal["Point", "LineString"]
    coordinates: list[Any] = Field(examples=[[117.227, 31.820]])


class Position(_In):
    lon: float = Field(examples=[117.227])
    lat: float = Field(examples=[31.820])


class FacilityCreate(_In):
    code: str = Field(description="16 digits: region(6) + major class(2) + minor class(2) + serial(6)")
    kind: Domain
    name: str = Field(min_length=1, max_length=200, examples=["长江西路燃气中压管段"])
    geometry: Geometry
    attributes: dict[str, Any] = Field(default_factory=dict, examples=[{"material": "PE", "diameter_mm": 200}])
    unit_id: str | None = None
    status: EditableFacilityStatus = "in_service"
    reason: str | None = Field(default=None, max_length=500)


class FacilityUpdate(_In):
    kind: Domain | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    geometry: Geometry | None = None
    attributes: dict[str, Any] | None = None
    unit_id: str | None = None
    status: EditableFacilityStatus | None = None
    reason: str | None = Field(default=None, max_length=500)


class FacilityPublic(BaseModel):
    code: str
    kind: Domain
    name: str
    region: str
    geometry: Geometry
    attributes: dict[str, Any]
    unit_id: str | None
    status: FacilityStatus
    version: int
    updated_ms: int


class SensorCreate(_In):
    sensor_id: str = Field(pattern=ID_PATTERN, examples=["HF-GAS-CH4-0001"])
    facility_code: str
    quantity: str = Field(examples=["gas.ch4"])
    unit: str | None = Field(default=None, description="Default: the quantity's canonical unit")
    interval_s: int | None = Field(default=None, gt=0, le=7 * 86400, description="Default: the quantity's")
    position: Position | None = Field(default=None, description="Default: the facility's first point")
    range_min: float | None = None
    range_max: float | None = None
    reason: str | None = Field(default=None, max_length=500)


class SensorUpdate(_In):
    unit: str | None = None
    interval_s: int | None = Field(default=None, gt=0, le=7 * 86400)
    position: Position | None = None
    range_min: float | None = None
    range_max: float | None = None
    reason: str | None = Field(default=None, max_length=500)


class SensorPublic(BaseModel):
    sensor_id: str
    facility_code: str
    quantity: str
    unit: str
    region: str
    interval_s: int
    position: Position
    status: Literal["active", "retired"]
    range_min: float | None
    range_max: float | None
    version: int
    updated_ms: int


class Contact(_In):
    name: str = Field(min_length=1, max_length=100)
    role: str = ""
    phone: str = ""
    email: str = ""


class UnitCreate(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    name: str = Field(min_length=1, max_length=200, examples=["合肥燃气集团有限公司"])
    region: str | None = Field(default=None, description="Default: the caller's region")
    contacts: list[Contact] = Field(default_factory=list)
    domains: list[Domain] = Field(default_factory=list)
    reason: str | None = Field(default=None, max_length=500)


class UnitUpdate(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    contacts: list[Contact] | None = None
    domains: list[Domain] | None = None
    reason: str | None = Field(default=None, max_length=500)


class UnitPublic(BaseModel):
    id: str
    name: str
    region: str
    contacts: list[Contact]
    domains: list[Domain]
    status: Literal["active", "retired"]
    version: int
    updated_ms: int


class RetireIn(_In):
    reason: str | None = Field(default=None, max_length=500)


class FacilityPage(BaseModel):
    facilities: list[FacilityPublic]
    next_page_token: str | None = None


class SensorPage(BaseModel):
    sensors: list[SensorPublic]
    next_page_token: str | None = None


class UnitPage(BaseModel):
    units: list[UnitPublic]
    next_page_token: str | None = None


class VersionPublic(BaseModel):
    version: int
    change: Literal["created", "updated", "retired"]
    changed_ms: int
    changed_at: str
    actor: str
    reason: str | None
    before: dict[str, Any] | None
    after: dict[str, Any]


class HistoryPublic(BaseModel):
    entity: str
    id: str
    versions: list[VersionPublic]

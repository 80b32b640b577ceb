"""API shapes of the assets REST edge: ``XCreate`` / ``XUpdate`` / ``XPublic`` per entity.

Shapes only; the rules (code inside the region, coordinates inside China, known quantities) live in
service.py so that REST and gRPC share them and each gets a localized problem.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lifeline.kit.catalogue import Direction, Domain, Level, Measure

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
FacilityStatus = Literal["in_service", "under_repair", "retired"]
# Retiring is its own action (POST .../retire) so that it is never a side effect of an edit.
EditableFacilityStatus = Literal["in_service", "under_repair"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


Grade = Literal["I", "II", "III", "IV"]
LinkKind = Literal["flow", "feeds", "controls"]
RectificationStatus = Literal["pending", "in_progress", "done", "overdue"]
ActiveStatus = Literal["active", "retired"]


class Threshold(_In):
    """A threshold override in the quantity's canonical unit: a number per level, or a [low, high] band
    for direction "outside"; checked against the catalogue's rules for the quantity in service.py."""

    measure: Measure = Measure.VALUE
    direction: Direction
    levels: dict[Level, float | tuple[float, float]] = Field(examples=[{"IV": 4.0, "III": 8.0, "II": 20.0, "I": 40.0}])


class FacilityThreshold(Threshold):
    quantity: str = Field(examples=["gas.ch4"])


class Window(_In):
    """A maintenance or calibration window: readings inside it are expected to be odd (alerts mute them)."""

    kind: Literal["maintenance", "calibration"]
    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)
    note: str = Field(default="", max_length=200)


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
    thresholds: list[FacilityThreshold] = Field(default_factory=list)
    reason: str | None = Field(default=None, max_length=500)


class FacilityUpdate(_In):
    kind: Domain | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    geometry: Geometry | None = None
    attributes: dict[str, Any] | None = None
    unit_id: str | None = None
    status: EditableFacilityStatus | None = None
    thresholds: list[FacilityThreshold] | None = None
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
    thresholds: list[FacilityThreshold] = []
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
    thresholds: list[Threshold] = Field(default_factory=list)
    setpoint: float | None = Field(default=None, description="Canonical unit; what deviation_pct compares to")
    baseline: float | None = Field(default=None, description="Canonical unit; what drop/rise_pct compare to")
    windows: list[Window] = Field(default_factory=list)
    reason: str | None = Field(default=None, max_length=500)


class SensorUpdate(_In):
    unit: str | None = None
    interval_s: int | None = Field(default=None, gt=0, le=7 * 86400)
    position: Position | None = None
    range_min: float | None = None
    range_max: float | None = None
    thresholds: list[Threshold] | None = None
    setpoint: float | None = None
    baseline: float | None = None
    # Windows are added and removed one by one so that two people planning works do not overwrite each other.
    add_windows: list[Window] | None = None
    remove_windows: list[Window] | None = Field(default=None, description="Each must match a window exactly")
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
    thresholds: list[Threshold] = []
    setpoint: float | None = None
    baseline: float | None = None
    windows: list[Window] = []
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


class Rectification(_In):
    status: RectificationStatus = "pending"
    owner: str = Field(default="", max_length=200, examples=["合肥燃气集团 安全部"])
    deadline_ms: int | None = Field(default=None, ge=0, description="Required unless the status is done")


class RiskCreate(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    name: str = Field(min_length=1, max_length=200, examples=["长江西路燃气管道占压"])
    hazard: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", examples=["gas_leak"])
    grade: Grade
    region: str | None = Field(default=None, description="Default: the first facility's, else the caller's")
    geometry: Geometry
    facility_codes: list[str] = Field(default_factory=list, max_length=200)
    controls: list[str] = Field(default_factory=list, examples=[["每日巡检", "甲烷监测"]])
    rectification: Rectification = Field(default_factory=Rectification)
    reason: str | None = Field(default=None, max_length=500)


class RiskUpdate(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    hazard: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    grade: Grade | None = None
    geometry: Geometry | None = None
    facility_codes: list[str] | None = Field(default=None, max_length=200)
    controls: list[str] | None = None
    rectification: Rectification | None = None
    reason: str | None = Field(default=None, max_length=500)


class RiskPublic(BaseModel):
    id: str
    name: str
    hazard: str
    grade: Grade
    region: str
    geometry: Geometry
    facility_codes: list[str]
    controls: list[str]
    rectification: Rectification
    status: ActiveStatus
    version: int
    updated_ms: int


class LinkCreate(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    from_code: str = Field(description="Upstream facility")
    to_code: str = Field(description="Downstream facility")
    kind: LinkKind = "flow"
    reason: str | None = Field(default=None, max_length=500)


class LinkUpdate(_In):
    from_code: str | None = None
    to_code: str | None = None
    kind: LinkKind | None = None
    reason: str | None = Field(default=None, max_length=500)


class LinkPublic(BaseModel):
    id: str
    from_code: str
    to_code: str
    kind: LinkKind
    region: str
    status: ActiveStatus
    version: int
    updated_ms: int


class Reached(BaseModel):
    code: str
    depth: int
    path: list[str] = Field(description="Facility codes from the start to this one")
    links: list[str] = Field(description="Link ids along the path")


class Traversal(BaseModel):
    code: str
    direction: Literal["upstream", "downstream"]
    facilities: list[Reached]
    truncated: bool = Field(description="True if the depth limit stopped the walk before the network ended")


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


class RiskPage(BaseModel):
    risks: list[RiskPublic]
    next_page_token: str | None = None


class LinkPage(BaseModel):
    links: list[LinkPublic]
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


class Listing(BaseModel):
    """Query parameters every list takes."""

    region: str | None = Field(default=None, pattern=r"^\d{1,6}$", description="Region code prefix, e.g. 3401")
    q: str | None = Field(default=None, max_length=100, description="Part of the name or id")
    limit: int = Field(default=100, ge=1, le=1000)
    page_token: str | None = None


class FacilityFilters(Listing):
    kind: Domain | None = None
    status: FacilityStatus | None = None


class SensorFilters(Listing):
    facility_code: str | None = None
    quantity: str | None = None
    status: ActiveStatus | None = None


class UnitFilters(Listing):
    status: ActiveStatus | None = None


class RiskFilters(Listing):
    hazard: str | None = None
    grade: Grade | None = None
    status: ActiveStatus | None = None
    facility: str | None = Field(default=None, pattern=r"^\d{16}$", description="Risk sources naming this facility")


class LinkFilters(Listing):
    from_code: str | None = None
    to_code: str | None = None
    facility: str | None = Field(default=None, description="Links with this facility code at either end")
    kind: LinkKind | None = None
    status: ActiveStatus | None = None

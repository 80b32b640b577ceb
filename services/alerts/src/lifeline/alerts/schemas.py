"""REST models of the alerts API (Create / Update / Public)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lifeline.kit.catalogue import Level

from .engine import MEASURES
from .workflow import State

LevelValue = float | tuple[float, float]
MeasureName = Literal[MEASURES]  # type: ignore[valid-type]


class ConditionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: str = Field(max_length=64, examples=["gas.ch4"])
    measure: MeasureName = "value"  # type: ignore[valid-type]
    direction: Literal["above", "below", "outside"] = "above"
    levels: dict[Level, LevelValue] = Field(examples=[{"IV": 5.0, "III": 10.0}])
    # None: the policy's margin (a share of the lowest threshold).
    clear_margin: float | None = Field(default=None, ge=0)
    baseline_days: int = Field(default=7, ge=1, le=60)


class RuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["threshold", "no_data", "composite"] = "threshold"
    region: str = Field(default="", pattern=r"^(\d{6})?$")
    facility_kind: str = Field(default="", max_length=32)
    facility_code: str = Field(default="", pattern=r"^(\d{16})?$")
    sensor_id: str = Field(default="", max_length=64)
    conditions: list[ConditionIn] = Field(default_factory=list, max_length=8)
    for_s: int = Field(default=0, ge=0, le=30 * 86400)
    clear_for_s: int = Field(default=0, ge=0, le=30 * 86400)
    level: Level | None = None
    enabled: bool = True


class RuleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    region: str | None = Field(default=None, pattern=r"^(\d{6})?$")
    facility_kind: str | None = Field(default=None, max_length=32)
    facility_code: str | None = Field(default=None, pattern=r"^(\d{16})?$")
    sensor_id: str | None = Field(default=None, max_length=64)
    conditions: list[ConditionIn] | None = Field(default=None, max_length=8)
    for_s: int | None = Field(default=None, ge=0, le=30 * 86400)
    clear_for_s: int | None = Field(default=None, ge=0, le=30 * 86400)
    level: Level | None = None
    enabled: bool | None = None
    expected_version: int | None = None


class RulePublic(RuleCreate):
    id: str  # type: ignore[assignment]
    origin: Literal["catalogue", "assets", "api"] = "api"
    version: int = 0
    updated_ms: int = 0
    updated_by: str = ""


class RulePage(BaseModel):
    rules: list[RulePublic]
    next_page_token: str | None = None


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(min_length=1, max_length=500)
    name: str = Field(default="", max_length=200)
    media_type: str = Field(default="", max_length=100)


class TransitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_state: State
    comment: str = Field(default="", max_length=2000)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=20)
    unit_id: str | None = Field(default=None, max_length=64)
    expected_version: int | None = None


class HistoryPublic(BaseModel):
    seq: int
    kind: str
    at_ms: int
    actor: str
    from_state: str | None = None
    to_state: str | None = None
    from_level: str | None = None
    to_level: str | None = None
    comment: str | None = None
    attachments: list[AttachmentIn] = Field(default_factory=list)
    value: float | None = None
    step: str | None = None
    unit_id: str | None = None


class AlertPublic(BaseModel):
    id: str
    fingerprint: str
    rule_id: str
    sensor_id: str
    facility_code: str
    facility_kind: str
    quantity: str
    region: str
    level: str
    peak_level: str
    state: str
    resume_state: str | None = None
    condition: str
    incident_id: str
    unit_id: str | None = None
    measure: str
    first_value: float | None = None
    last_value: float | None = None
    peak_value: float | None = None
    breach_count: int
    raised_ms: int
    updated_ms: int
    cleared_ms: int | None = None
    closed_ms: int | None = None
    due_ms: int | None = None
    due_step: str | None = None
    overdue: bool
    suppressed: bool
    suppressed_by: str | None = None
    version: int


class AlertDetail(AlertPublic):
    history: list[HistoryPublic]


class AlertPage(BaseModel):
    alerts: list[AlertPublic]
    next_page_token: str | None = None


class SilenceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sensor_id: str = Field(default="", max_length=64)
    facility_code: str = Field(default="", pattern=r"^(\d{16})?$")
    facility_kind: str = Field(default="", max_length=32)
    region: str = Field(default="", pattern=r"^(\d{6})?$")
    quantity: str = Field(default="", max_length=64)
    starts_ms: int | None = None
    ends_ms: int
    comment: str = Field(min_length=1, max_length=2000)


class SilencePublic(BaseModel):
    id: str
    sensor_id: str
    facility_code: str
    facility_kind: str
    region: str
    quantity: str
    starts_ms: int
    ends_ms: int
    comment: str
    created_by: str
    created_ms: int
    expired: bool


class SilencePage(BaseModel):
    silences: list[SilencePublic]

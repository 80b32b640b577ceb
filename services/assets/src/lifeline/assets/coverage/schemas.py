"""API shapes of the coverage statistics."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Figures(BaseModel):
    registered: int = Field(description="facilities in the census (not retired)")
    monitored: int = Field(description="of those, with at least one active sensor")
    reporting: int | None = Field(description="of those, with a reading in the last day; null when unknown")
    monitored_ratio: float | None
    reporting_ratio: float | None


class RegionFigures(Figures):
    region: str


class DomainFigures(Figures):
    domain: str
    label: str = Field(description="the domain's name in the requested language (zh-CN by default, en)")
    regions: list[RegionFigures]


class Readings(BaseModel):
    known: bool
    since_ms: int | None = Field(default=None, description="start of the last day the reporting figures count")
    reason: str | None = Field(default=None, description="why the reporting figures are unknown")


class CoveragePublic(BaseModel):
    region: str
    as_of_ms: int
    readings: Readings
    total: Figures
    domains: list[DomainFigures]

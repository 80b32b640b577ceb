"""API shapes of the ingest REST edge (documentation models; the hot path decodes with msgspec)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ReadingIn(BaseModel):
    sensor_id: str = Field(examples=["HF-GAS-CH4-0001"])
    device_time_ms: int | None = Field(default=None, description="Device time, epoch milliseconds (UTC)")
    time: str | None = Field(
        default=None, description="Device time as RFC 3339 with offset (instead of device_time_ms)"
    )
    value: float
    unit: str = Field(default="", description="Empty: the sensor's catalogue unit")
    quality: Literal["good", "suspect", "bad", "maintenance"] = "good"


class ReadingsIn(BaseModel):
    readings: list[ReadingIn]


class ReadingResultPublic(BaseModel):
    index: int
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    detail: str | None = None


class IngestResultPublic(BaseModel):
    results: list[ReadingResultPublic]
    accepted: int
    duplicates: int
    rejected: int


class StoredReadingPublic(BaseModel):
    sensor_id: str
    device_time_ms: int
    time: str
    value: float
    unit: str
    quality: str
    received_ms: int


class ReadingsPage(BaseModel):
    readings: list[StoredReadingPublic]
    next_page_token: str | None = None


class LatestPublic(BaseModel):
    sensor_id: str
    reading: StoredReadingPublic
    last_seen_ms: int
    state: Literal["online", "offline", "never_seen"]


class SensorStatusPublic(BaseModel):
    sensor_id: str
    region: str
    state: Literal["online", "offline", "never_seen"]
    last_seen_ms: int | None = None
    last_device_time_ms: int | None = None
    interval_s: int


class SensorStatusPage(BaseModel):
    sensors: list[SensorStatusPublic]
    next_page_token: str | None = None

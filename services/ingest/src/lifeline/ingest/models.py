"""Ingest's tables. The hot path writes through these tables' Core objects, not the ORM."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, SmallInteger, String
from sqlmodel import Field, SQLModel

from lifeline.v1 import telemetry_pb2


class StoredReadingRow(SQLModel, table=True):
    """One reading, keyed by its natural key (sensor, device time): storing it twice is a no-op."""

    __tablename__ = "readings"

    sensor_id: str = Field(sa_column=Column(String(64), primary_key=True))
    device_time_ms: int = Field(sa_column=Column(BigInteger, primary_key=True))
    value: float = Field(sa_column=Column(Float, nullable=False))
    unit: str = Field(sa_column=Column(String(16), nullable=False))
    quality: int = Field(sa_column=Column(SmallInteger, nullable=False))
    received_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    region: str = Field(sa_column=Column(String(6), nullable=False))


class SensorLatest(SQLModel, table=True):
    """Per sensor: the reading with the greatest device time, when it was last heard, and its state."""

    __tablename__ = "sensor_latest"

    sensor_id: str = Field(sa_column=Column(String(64), primary_key=True))
    region: str = Field(sa_column=Column(String(6), nullable=False))
    device_time_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    value: float = Field(sa_column=Column(Float, nullable=False))
    unit: str = Field(sa_column=Column(String(16), nullable=False))
    quality: int = Field(sa_column=Column(SmallInteger, nullable=False))
    received_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_seen_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: int = Field(default=telemetry_pb2.SENSOR_STATE_ONLINE, sa_column=Column(SmallInteger, nullable=False))
    state_changed_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


readings_table = StoredReadingRow.__table__  # type: ignore[attr-defined]
latest_table = SensorLatest.__table__  # type: ignore[attr-defined]

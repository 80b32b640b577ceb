"""Ingest's tables. The hot path writes through these tables' Core objects, not the ORM."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Integer, SmallInteger, String
from sqlmodel import Field, SQLModel

from lifeline.v1 import telemetry_pb2


class SensorKey(SQLModel, table=True):
    """A small integer per sensor id, which readings are keyed by.

    SQLite's insert into the readings' primary key costs a quarter to a third less per row with an
    integer than with the text id (bench/README.md, "integer sensor key"). Keys are only ever added."""

    __tablename__ = "sensor_keys"

    sensor_key: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=True))
    sensor_id: str = Field(sa_column=Column(String(64), nullable=False, unique=True))


class StoredReadingRow(SQLModel, table=True):
    """One reading, keyed by its natural key (sensor, device time): storing it twice is a no-op.

    No foreign key to sensor_keys: it would cost a look-up per stored row (a trigger per row on
    PostgreSQL), and keys are never deleted."""

    __tablename__ = "readings"

    sensor_key: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
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


sensor_keys_table = SensorKey.__table__  # type: ignore[attr-defined]
readings_table = StoredReadingRow.__table__  # type: ignore[attr-defined]
latest_table = SensorLatest.__table__  # type: ignore[attr-defined]

"""The assets tables: the current state of each entity, and every version it ever had.

The current state is kept whole in ``doc`` (the entity's public JSON); the columns beside it are copies
of the fields lists filter and page on, so one shape serves reads, history and events alike.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Integer, String, Text
from sqlmodel import Field, SQLModel

from lifeline.kit.db import partial_index


class FacilityRow(SQLModel, table=True):
    __tablename__ = "facilities"

    code: str = Field(sa_column=Column(String(16), primary_key=True))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    region: str = Field(sa_column=Column(String(6), nullable=False, index=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    doc: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class SensorRow(SQLModel, table=True):
    __tablename__ = "sensors"

    sensor_id: str = Field(sa_column=Column(String(64), primary_key=True))
    facility_code: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    quantity: str = Field(sa_column=Column(String(64), nullable=False))
    region: str = Field(sa_column=Column(String(6), nullable=False, index=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    doc: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class UnitRow(SQLModel, table=True):
    __tablename__ = "units"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    region: str = Field(sa_column=Column(String(6), nullable=False, index=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    doc: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class RiskRow(SQLModel, table=True):
    __tablename__ = "risk_sources"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    hazard: str = Field(sa_column=Column(String(32), nullable=False))
    grade: str = Field(sa_column=Column(String(3), nullable=False))
    # ",code,code," so that "risks of facility X" is one LIKE on an indexed table, without a join table.
    facility_codes: str = Field(sa_column=Column(Text, nullable=False))
    region: str = Field(sa_column=Column(String(6), nullable=False, index=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    doc: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class LinkRow(SQLModel, table=True):
    """A directed edge of the network, upstream (from) → downstream (to)."""

    __tablename__ = "links"
    __table_args__ = (
        # At most one active link of a kind between two facilities; retired ones stay for the history.
        partial_index("uq_links_active", "from_code", "to_code", "kind", unique=True, where="status = 'active'"),
    )

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    from_code: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    to_code: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    region: str = Field(sa_column=Column(String(6), nullable=False, index=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    doc: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class HistoryRow(SQLModel, table=True):
    """One version of one entity: who changed it, when, why, and its state before and after."""

    __tablename__ = "asset_history"

    entity: str = Field(sa_column=Column(String(16), primary_key=True))
    entity_id: str = Field(sa_column=Column(String(64), primary_key=True))
    version: int = Field(sa_column=Column(Integer, primary_key=True))
    change: str = Field(sa_column=Column(String(16), nullable=False))
    changed_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    actor: str = Field(sa_column=Column(String(200), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    after: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


facilities_table = FacilityRow.__table__  # type: ignore[attr-defined]
sensors_table = SensorRow.__table__  # type: ignore[attr-defined]
units_table = UnitRow.__table__  # type: ignore[attr-defined]
risks_table = RiskRow.__table__  # type: ignore[attr-defined]
links_table = LinkRow.__table__  # type: ignore[attr-defined]
history_table = HistoryRow.__table__  # type: ignore[attr-defined]

# Entity name (as in subjects, message ids and history) → its table and key column.
TABLES: dict[str, tuple[Any, str]] = {
    "facility": (facilities_table, "code"),
    "sensor": (sensors_table, "sensor_id"),
    "unit": (units_table, "id"),
    "risk": (risks_table, "id"),
    "link": (links_table, "id"),
}

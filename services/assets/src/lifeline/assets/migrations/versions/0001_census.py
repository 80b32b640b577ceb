"""Facilities, sensors, responsible units, their history, outbox.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from lifeline.kit.outbox import create_outbox_table, drop_outbox_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _state_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.JSON, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "facilities",
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("region", sa.String(6), nullable=False),
        *_state_columns(),
    )
    op.create_index("ix_facilities_region", "facilities", ["region"])
    op.create_table(
        "sensors",
        sa.Column("sensor_id", sa.String(64), primary_key=True),
        sa.Column("facility_code", sa.String(16), nullable=False),
        sa.Column("quantity", sa.String(64), nullable=False),
        sa.Column("region", sa.String(6), nullable=False),
        *_state_columns(),
    )
    op.create_index("ix_sensors_facility_code", "sensors", ["facility_code"])
    op.create_index("ix_sensors_region", "sensors", ["region"])
    op.create_table(
        "units",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("region", sa.String(6), nullable=False),
        *_state_columns(),
    )
    op.create_index("ix_units_region", "units", ["region"])
    op.create_table(
        "asset_history",
        sa.Column("entity", sa.String(16), primary_key=True),
        sa.Column("entity_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("changed_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=False),
    )
    create_outbox_table(op)


def downgrade() -> None:
    drop_outbox_table(op)
    op.drop_table("asset_history")
    for table in ("units", "sensors", "facilities"):
        op.drop_index(f"ix_{table}_region", table_name=table)
    op.drop_index("ix_sensors_facility_code", table_name="sensors")
    for table in ("units", "sensors", "facilities"):
        op.drop_table(table)

"""Readings, latest value per sensor, outbox.

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


def upgrade() -> None:
    op.create_table(
        "readings",
        sa.Column("sensor_id", sa.String(64), primary_key=True),
        sa.Column("device_time_ms", sa.BigInteger, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("quality", sa.SmallInteger, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("region", sa.String(6), nullable=False),
    )
    op.create_table(
        "sensor_latest",
        sa.Column("sensor_id", sa.String(64), primary_key=True),
        sa.Column("region", sa.String(6), nullable=False),
        sa.Column("device_time_ms", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("quality", sa.SmallInteger, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("state_changed_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sensor_latest_state_seen", "sensor_latest", ["state", "last_seen_ms"])
    create_outbox_table(op)


def downgrade() -> None:
    drop_outbox_table(op)
    op.drop_index("ix_sensor_latest_state_seen", table_name="sensor_latest")
    op.drop_table("sensor_latest")
    op.drop_table("readings")

"""Drop the (state, last_seen_ms) index of sensor_latest.

Every reading batch upserts sensor_latest, and the index made each upsert rewrite an index entry;
the offline check reads the whole (thousands of rows) table anyway.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_sensor_latest_state_seen", table_name="sensor_latest")


def downgrade() -> None:
    op.create_index("ix_sensor_latest_state_seen", "sensor_latest", ["state", "last_seen_ms"])

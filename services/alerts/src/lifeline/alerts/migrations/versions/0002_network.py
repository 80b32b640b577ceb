"""The census copy of links and risk sources; why an alert is suppressed (silences, inhibition).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ctx(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("doc", sa.JSON, nullable=False),
    )


def upgrade() -> None:
    _ctx("ctx_links")
    _ctx("ctx_risks")
    op.create_table(
        "alert_suppressions",
        sa.Column("alert_id", sa.String(36), primary_key=True),
        sa.Column("source", sa.String(16), primary_key=True),
        sa.Column("source_id", sa.String(64), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("since_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_alert_suppressions_source", "alert_suppressions", ["source_id"])


def downgrade() -> None:
    op.drop_index("ix_alert_suppressions_source", "alert_suppressions")
    for name in ("alert_suppressions", "ctx_risks", "ctx_links"):
        op.drop_table(name)

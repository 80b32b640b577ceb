"""Risk sources and topology links.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _state_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("region", sa.String(6), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.JSON, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "risk_sources",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("hazard", sa.String(32), nullable=False),
        sa.Column("grade", sa.String(3), nullable=False),
        sa.Column("facility_codes", sa.Text, nullable=False),
        *_state_columns(),
    )
    op.create_index("ix_risk_sources_region", "risk_sources", ["region"])
    op.create_table(
        "links",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("from_code", sa.String(16), nullable=False),
        sa.Column("to_code", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        *_state_columns(),
    )
    op.create_index("ix_links_from_code", "links", ["from_code"])
    op.create_index("ix_links_to_code", "links", ["to_code"])
    op.create_index("ix_links_region", "links", ["region"])
    active = sa.text("status = 'active'")
    op.create_index(
        "uq_links_active",
        "links",
        ["from_code", "to_code", "kind"],
        unique=True,
        sqlite_where=active,
        postgresql_where=active,
    )


def downgrade() -> None:
    op.drop_table("links")
    op.drop_table("risk_sources")

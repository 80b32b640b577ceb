"""The spatial index: one row per located entity (facility, sensor, risk source), its bounding box and shape.

On PostgreSQL the shape is also a PostGIS geometry (SRID 4490, CGCS2000) with a GiST index; the embedded
SQLite keeps only the bounding-box columns (indexed) and the service computes exact distances itself.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "geo_index",
        sa.Column("entity", sa.String(16), primary_key=True),
        sa.Column("entity_id", sa.String(64), primary_key=True),
        sa.Column("region", sa.String(6), nullable=False),
        # Facility kind, sensor quantity or risk-source hazard: what spatial queries filter on.
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("min_lon", sa.Float, nullable=False),
        sa.Column("min_lat", sa.Float, nullable=False),
        sa.Column("max_lon", sa.Float, nullable=False),
        sa.Column("max_lat", sa.Float, nullable=False),
        sa.Column("geometry", sa.JSON, nullable=False),
    )
    op.create_index("ix_geo_index_box", "geo_index", ["min_lon", "max_lon", "min_lat", "max_lat"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        op.execute("ALTER TABLE geo_index ADD COLUMN geom geometry(Geometry, 4490)")
        op.execute("CREATE INDEX ix_geo_index_geom ON geo_index USING GIST (geom)")


def downgrade() -> None:
    op.drop_table("geo_index")

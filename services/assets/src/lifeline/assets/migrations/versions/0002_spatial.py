"""The spatial index: one row per located entity (facility, sensor, risk source), its bounding box and shape.

On PostgreSQL the shape is also a PostGIS geometry (SRID 4490, CGCS2000) with a GiST index. On the embedded
SQLite an R*Tree of the boxes (where the sqlite3 build has the module; else the box columns' index) is kept
in step by triggers. Either database only picks candidates: the service computes exact distances itself.

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
        # A stable number for the key: the R*Tree's id (a rowid may change on VACUUM).
        sa.Column("rid", sa.BigInteger, nullable=False, unique=True),
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
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        op.execute("ALTER TABLE geo_index ADD COLUMN geom geometry(Geometry, 4490)")
        op.execute("CREATE INDEX ix_geo_index_geom ON geo_index USING GIST (geom)")
    elif bind.dialect.name == "sqlite" and _has_rtree(bind):
        op.execute("CREATE VIRTUAL TABLE geo_rtree USING rtree(id, min_lon, max_lon, min_lat, max_lat)")
        for statement in _RTREE_TRIGGERS:
            op.execute(statement)


_BOX = "new.min_lon, new.max_lon, new.min_lat, new.max_lat"
_RTREE_TRIGGERS = (
    "CREATE TRIGGER geo_rtree_insert AFTER INSERT ON geo_index BEGIN "
    f"INSERT INTO geo_rtree VALUES (new.rid, {_BOX}); END",
    "CREATE TRIGGER geo_rtree_update AFTER UPDATE ON geo_index BEGIN "
    f"DELETE FROM geo_rtree WHERE id = old.rid; INSERT INTO geo_rtree VALUES (new.rid, {_BOX}); END",
    "CREATE TRIGGER geo_rtree_delete AFTER DELETE ON geo_index BEGIN DELETE FROM geo_rtree WHERE id = old.rid; END",
)


def _has_rtree(bind: sa.engine.Connection) -> bool:
    return any(row[0] == "ENABLE_RTREE" for row in bind.exec_driver_sql("PRAGMA compile_options"))


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS geo_rtree")  # its triggers go with geo_index
    op.drop_table("geo_index")

"""Rules, rule states, alerts and their history, silences, the census copy, hourly baselines, outbox.

Revision ID: 0001
Revises:
"""

from alembic import op

from lifeline.alerts import models
from lifeline.kit.outbox import create_outbox_table, drop_outbox_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The first revision creates the tables as models.py first declared them; a later schema change gets
# its own revision spelled out with op.* calls.
TABLES = (
    "ctx_sensors",
    "ctx_facilities",
    "ctx_units",
    "rules",
    "rule_history",
    "rule_states",
    "alerts",
    "alert_history",
    "silences",
    "baseline_hours",
)


def upgrade() -> None:
    bind = op.get_bind()
    models.metadata.create_all(bind, tables=[models.metadata.tables[t] for t in TABLES])
    create_outbox_table(op)


def downgrade() -> None:
    drop_outbox_table(op)
    bind = op.get_bind()
    models.metadata.drop_all(bind, tables=[models.metadata.tables[t] for t in TABLES])

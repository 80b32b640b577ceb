"""Notifications: webhook subscriptions, deliveries and their attempts (a branch of its own).

Revision ID: notify_0001
Revises:
"""

from alembic import op

from lifeline.alerts.notify import models

revision = "notify_0001"
down_revision = None
branch_labels = ("notify",)
depends_on = None

# The first revision creates the tables as models.py first declared them; a later schema change gets
# its own revision spelled out with op.* calls.
TABLES = ("webhooks", "webhook_deliveries", "webhook_attempts")


def upgrade() -> None:
    models.metadata.create_all(op.get_bind(), tables=[models.metadata.tables[t] for t in TABLES])


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)

"""The notification tables (SQLAlchemy Core, like the rest of alerts), on their own Alembic branch.

``webhooks`` the subscriptions; ``webhook_deliveries`` one row per (event, subscription), unique by
event id so a redelivered event adds nothing; ``webhook_attempts`` every POST made for a delivery.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", String(200), nullable=False),
    # Scope and matcher: events of this region or its descendants only.
    Column("region", String(6), nullable=False),
    # Matchers: an empty list matches everything.
    Column("kinds", JSON, nullable=False),
    Column("levels", JSON, nullable=False),
    Column("domains", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("webhook_id", String(36), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("alert_id", String(36), nullable=False),
    # The alert's history sequence: deliveries of one alert go out in this order.
    Column("alert_seq", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("body", JSON, nullable=False),
    # pending | delivered | dead
    Column("status", String(10), nullable=False),
    # Attempts since the delivery was (re)scheduled, and in all.
    Column("attempts", Integer, nullable=False),
    Column("total_attempts", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # When the current round began (creation or a manual redeliver): the max age counts from here.
    Column("scheduled_ms", BigInteger, nullable=False),
    # Due time of the next attempt; also a lease while an attempt is in flight.
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("delivered_ms", BigInteger, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_event"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_ms"),
    Index("ix_webhook_deliveries_alert", "webhook_id", "alert_id", "alert_seq"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("delivery_id", String(36), primary_key=True),
    Column("n", Integer, primary_key=True),
    Column("webhook_id", String(36), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    # delivered | retry | dead
    Column("outcome", String(10), nullable=False),
)

"""The alerts tables (SQLAlchemy Core: the evaluation path writes them in bulk, without the ORM).

``rule_states`` holds every rule state that is not idle (pending `for` windows, firing levels, clear
windows); ``alerts`` the alerts with their workflow position and next time limit (``due_ms``, polled by
the timer); ``alert_history`` every change of an alert; ``alert_suppressions`` the silences and
inhibiting alerts holding an alert suppressed; ``ctx_*`` alerts' own copy of the census it needs
(assets' facilities, sensors, units, links and risk sources, from the census on the bus);
``baseline_hours`` the hourly means behind rolling baselines.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from lifeline.kit.db import partial_index

metadata = MetaData()


def _ctx(name: str, key: str) -> Table:
    return Table(
        name,
        metadata,
        Column(key, String(64), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("doc", JSON, nullable=False),
    )


ctx_sensors = _ctx("ctx_sensors", "sensor_id")
ctx_facilities = _ctx("ctx_facilities", "code")
ctx_units = _ctx("ctx_units", "id")
ctx_links = _ctx("ctx_links", "id")
ctx_risks = _ctx("ctx_risks", "id")

rules = Table(
    "rules",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(200), nullable=False),
    Column("doc", JSON, nullable=False),
)

rule_history = Table(
    "rule_history",
    metadata,
    Column("rule_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("change", String(16), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("doc", JSON, nullable=False),
)

rule_states = Table(
    "rule_states",
    metadata,
    Column("fingerprint", String(200), primary_key=True),
    Column("rule_id", String(64), nullable=False),
    Column("subject", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("firing", String(4), nullable=True),
    Column("pending_since", BigInteger, nullable=True),
    Column("clear_since", BigInteger, nullable=True),
    Column("last_ms", BigInteger, nullable=False),
    Column("alert_id", String(36), nullable=True),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("fingerprint", String(200), nullable=False),
    Column("is_open", Boolean, nullable=False),
    Column("rule_id", String(64), nullable=False),
    Column("sensor_id", String(64), nullable=False),
    Column("facility_code", String(16), nullable=False),
    Column("facility_kind", String(32), nullable=False),
    Column("quantity", String(64), nullable=False),
    Column("region", String(6), nullable=False),
    Column("level", String(4), nullable=False),
    Column("peak_level", String(4), nullable=False),
    Column("state", String(16), nullable=False),
    Column("resume_state", String(16), nullable=True),
    Column("condition", String(8), nullable=False),
    Column("incident_id", String(36), nullable=False),
    Column("unit_id", String(64), nullable=True),
    Column("measure", String(32), nullable=False),
    Column("first_value", Float, nullable=True),
    Column("last_value", Float, nullable=True),
    Column("peak_value", Float, nullable=True),
    Column("breach_count", BigInteger, nullable=False),
    Column("raised_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("state_ms", BigInteger, nullable=False),
    Column("cleared_ms", BigInteger, nullable=True),
    Column("closed_ms", BigInteger, nullable=True),
    Column("due_ms", BigInteger, nullable=True),
    Column("due_step", String(16), nullable=True),
    Column("overdue", Boolean, nullable=False),
    Column("suppressed", Boolean, nullable=False),
    Column("suppressed_by", String(64), nullable=True),
    Column("version", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("first_device_time_ms", BigInteger, nullable=False),
    # One open alert per fingerprint: the database refuses a second one whatever the code does.
    partial_index("uq_alerts_open_fingerprint", "fingerprint", unique=True, where="is_open"),
    Index("ix_alerts_region_raised", "region", "raised_ms"),
    Index("ix_alerts_due", "due_ms"),
    Index("ix_alerts_facility", "facility_code", "is_open"),
)

alert_history = Table(
    "alert_history",
    metadata,
    Column("alert_id", String(36), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("from_state", String(16), nullable=True),
    Column("to_state", String(16), nullable=True),
    Column("from_level", String(4), nullable=True),
    Column("to_level", String(4), nullable=True),
    Column("comment", Text, nullable=True),
    Column("attachments", JSON, nullable=False),
    Column("value", Float, nullable=True),
    Column("step", String(16), nullable=True),
    Column("unit_id", String(64), nullable=True),
)

# Why an alert is suppressed: every silence and every inhibiting alert that holds it now (the alert's
# ``suppressed`` / ``suppressed_by`` summarise these rows; the history keeps what came and went).
alert_suppressions = Table(
    "alert_suppressions",
    metadata,
    Column("alert_id", String(36), primary_key=True),
    Column("source", String(16), primary_key=True),  # silence | inhibition
    Column("source_id", String(64), primary_key=True),  # the silence's id or the inhibiting alert's id
    Column("reason", Text, nullable=False),
    Column("since_ms", BigInteger, nullable=False),
    Index("ix_alert_suppressions_source", "source_id"),
)

silences = Table(
    "silences",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("sensor_id", String(64), nullable=False),
    Column("facility_code", String(16), nullable=False),
    Column("facility_kind", String(32), nullable=False),
    Column("region", String(6), nullable=False),
    Column("quantity", String(64), nullable=False),
    Column("starts_ms", BigInteger, nullable=False),
    Column("ends_ms", BigInteger, nullable=False),
    Column("comment", Text, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

baseline_hours = Table(
    "baseline_hours",
    metadata,
    Column("sensor_id", String(64), primary_key=True),
    Column("hour", BigInteger, primary_key=True),
    Column("mean", Float, nullable=False),
)

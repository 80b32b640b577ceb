"""Every query of the alerts service."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from lifeline.kit.db import CoreTransaction

from . import models as m

# Every query runs in a session's transaction (requests) or a core transaction (evaluation's hot path).
Tx = AsyncSession | CoreTransaction


async def _conn(session: Tx) -> Any:
    return session if isinstance(session, CoreTransaction) else await session.connection()


def _upsert(conn: Any, table: Any) -> Any:
    """The dialect's INSERT with ``ON CONFLICT`` (PostgreSQL's or SQLite's)."""
    # Imported here: a process on SQLite never loads SQLAlchemy's PostgreSQL dialect (~4.6 MB of RSS).
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


# Upserts built once per dialect and reused (statements are immutable). Built per call, each one's
# `excluded` alias proxied every column of its table into objects that refer to each other: tens of
# thousands of objects of cyclic garbage per second under load, and full collections of 100+ ms.
_STATEMENTS: dict[tuple[str, str], Any] = {}


def _statement(conn: Any, name: str, build: Callable[[Any], Any]) -> Any:
    key = (conn.dialect.name, name)
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build(conn)
    return stmt


# --- census copy -----------------------------------------------------------------------------------

CTX = {
    "sensor": (m.ctx_sensors, "sensor_id"),
    "facility": (m.ctx_facilities, "code"),
    "unit": (m.ctx_units, "id"),
    "link": (m.ctx_links, "id"),
    "risk": (m.ctx_risks, "id"),
}


async def upsert_ctx(*, session: Tx, entity: str, rows: Sequence[tuple[str, int, Any]]) -> set[str]:
    """Keep the newer versions of census entities ((key, version, doc), one per key); returns the keys
    stored. One stored as new or newer is left as it is (a redelivery, or another writer got there first)."""
    if not rows:
        return set()
    table, key_col = CTX[entity]
    conn = await _conn(session)

    def build(conn: Any) -> Any:
        ins = _upsert(conn, table)
        # Conditional in the statement: replicas sharing the census consumer may write the same entity at once.
        return ins.on_conflict_do_update(
            index_elements=[key_col],
            set_={"version": ins.excluded.version, "doc": ins.excluded.doc},
            where=table.c.version < ins.excluded.version,
        ).returning(table.c[key_col])

    stmt = _statement(conn, f"upsert_ctx:{entity}", build)
    # Executemany with RETURNING: SQLAlchemy sends multi-row VALUES pages of a statement compiled once.
    values = [{key_col: key, "version": version, "doc": doc} for key, version, doc in rows]
    return set((await conn.execute(stmt, values)).scalars())


async def all_ctx(*, session: Tx, entity: str) -> list[dict[str, Any]]:
    table, _ = CTX[entity]
    return [dict(r.doc) for r in (await (await _conn(session)).execute(select(table.c.doc))).all()]


async def get_ctx(*, session: Tx, entity: str, key: str) -> dict[str, Any] | None:
    table, key_col = CTX[entity]
    doc = (await (await _conn(session)).execute(select(table.c.doc).where(table.c[key_col] == key))).scalar()
    return dict(doc) if doc is not None else None


# --- rule states -----------------------------------------------------------------------------------


async def all_states(*, session: Tx) -> list[Row[Any]]:
    return list((await (await _conn(session)).execute(select(m.rule_states))).all())


async def save_states(*, session: Tx, rows: Sequence[dict[str, Any]]) -> None:
    """Replace the given states (one per fingerprint) with an upsert.

    One statement, not a delete and an insert: on PostgreSQL every statement is a round trip, and this one
    is in every evaluation transaction that changes a state (a raise's included)."""
    if not rows:
        return
    conn = await _conn(session)
    await conn.execute(_statement(conn, "save_states", _build_save_states), list(rows))


def _build_save_states(conn: Any) -> Any:
    table = m.rule_states
    ins = _upsert(conn, table)
    return ins.on_conflict_do_update(
        index_elements=[table.c.fingerprint],
        set_={c.name: ins.excluded[c.name] for c in table.c if c.name != "fingerprint"},
    )


async def delete_states(*, session: Tx, subjects: Iterable[str]) -> None:
    """Forget the rule states of these subjects (sensors or facilities assets retired)."""
    await (await _conn(session)).execute(delete(m.rule_states).where(m.rule_states.c.subject.in_(list(subjects))))


# --- alerts ----------------------------------------------------------------------------------------


async def get_alert(*, session: Tx, alert_id: str) -> Row[Any] | None:
    return (await (await _conn(session)).execute(select(m.alerts).where(m.alerts.c.id == alert_id))).first()


def _insert_alert_statement() -> Any:
    c = m.alerts.c
    # The incident of an open alert on the same facility, else a new one: looked up by the INSERT itself
    # (on PostgreSQL a round trip less for every alert raised) and returned.
    open_incident = (
        select(c.incident_id).where(c.facility_code == bindparam("of_facility"), c.is_open).limit(1).scalar_subquery()
    )
    return (
        insert(m.alerts)
        .values(incident_id=func.coalesce(open_incident, bindparam("new_incident")))
        .returning(c.incident_id)
    )


_INSERT_ALERT = _insert_alert_statement()


async def insert_alert(*, session: Tx, values: dict[str, Any]) -> str:
    """Insert a new alert, grouped with the open alerts of its facility: returns its incident id.

    ``values["incident_id"]`` is the incident to open when the facility has no open alert."""
    # Values as parameters, not in the statement: the statement stays one cached compilation, whereas
    # .values(**values) builds (and cache-keys) a new statement of 30-odd bound literals every time.
    params = {k: v for k, v in values.items() if k != "incident_id"}
    params.update(of_facility=values["facility_code"], new_incident=values["incident_id"])
    incident: str = (await (await _conn(session)).execute(_INSERT_ALERT, params)).scalar_one()
    return incident


async def update_alert(
    *, session: Tx, alert_id: str, values: dict[str, Any], expected_version: int | None = None
) -> bool:
    c = m.alerts.c
    conds = [c.id == alert_id]
    if expected_version is not None:
        conds.append(c.version == expected_version)
    res = await (await _conn(session)).execute(update(m.alerts).where(*conds).values(**values))
    return bool(res.rowcount)


async def add_breaches(
    *, session: Tx, alert_id: str, count: int, last: float, peak: float, higher_is_worse: bool, at_ms: int
) -> None:
    """Count repeated breaches of an open alert; keep the last value and the worst one."""
    c = m.alerts.c
    worse = c.peak_value < peak if higher_is_worse else c.peak_value > peak
    await (await _conn(session)).execute(
        update(m.alerts)
        .where(c.id == alert_id, c.is_open)
        .values(
            breach_count=c.breach_count + count,
            last_value=last,
            peak_value=case((or_(c.peak_value.is_(None), worse), peak), else_=c.peak_value),
            updated_ms=at_ms,
        )
    )


async def open_alerts(
    *, session: Tx, facility_codes: Iterable[str] | None = None, quantities: Iterable[str] | None = None
) -> list[Row[Any]]:
    """Open alerts, optionally only on these facilities and of these quantities."""
    c = m.alerts.c
    conds: list[Any] = [c.is_open]
    if facility_codes is not None:
        conds.append(c.facility_code.in_(list(facility_codes)))
    if quantities is not None:
        conds.append(c.quantity.in_(list(quantities)))
    return list((await (await _conn(session)).execute(select(m.alerts).where(*conds))).all())


async def open_alerts_of(*, session: Tx, sensor_ids: Iterable[str], facility_codes: Iterable[str]) -> list[Row[Any]]:
    """Open alerts of any of these sensors or on any of these facilities."""
    c = m.alerts.c
    of = or_(c.sensor_id.in_(list(sensor_ids)), c.facility_code.in_(list(facility_codes)))
    return list((await (await _conn(session)).execute(select(m.alerts).where(c.is_open, of))).all())


async def alerts_by_ids(*, session: Tx, ids: Iterable[str]) -> list[Row[Any]]:
    return list((await (await _conn(session)).execute(select(m.alerts).where(m.alerts.c.id.in_(list(ids))))).all())


# --- suppressions ----------------------------------------------------------------------------------


async def suppressions(*, session: Tx, alert_ids: Iterable[str]) -> list[Row[Any]]:
    c = m.alert_suppressions.c
    stmt = select(m.alert_suppressions).where(c.alert_id.in_(list(alert_ids))).order_by(c.since_ms, c.source_id)
    return list((await (await _conn(session)).execute(stmt)).all())


async def suppressed_by(*, session: Tx, source_ids: Iterable[str]) -> list[str]:
    """Ids of the alerts these silences or inhibiting alerts hold suppressed."""
    c = m.alert_suppressions.c
    stmt = select(c.alert_id).where(c.source_id.in_(list(source_ids))).distinct()
    return list((await (await _conn(session)).execute(stmt)).scalars().all())


async def suppression_sources(*, session: Tx, source: str) -> set[str]:
    """Ids of the silences (or inhibiting alerts) that hold at least one alert suppressed."""
    c = m.alert_suppressions.c
    stmt = select(c.source_id).where(c.source == source).distinct()
    return set((await (await _conn(session)).execute(stmt)).scalars().all())


async def add_suppressions(*, session: Tx, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await (await _conn(session)).execute(insert(m.alert_suppressions), list(rows))


async def remove_suppression(*, session: Tx, alert_id: str, source: str, source_id: str) -> None:
    c = m.alert_suppressions.c
    await (await _conn(session)).execute(
        delete(m.alert_suppressions).where(c.alert_id == alert_id, c.source == source, c.source_id == source_id)
    )


async def insert_history(*, session: Tx, values: dict[str, Any]) -> None:
    await (await _conn(session)).execute(insert(m.alert_history), values)


async def history(*, session: Tx, alert_id: str) -> list[Row[Any]]:
    c = m.alert_history.c
    stmt = select(m.alert_history).where(c.alert_id == alert_id).order_by(c.seq)
    return list((await (await _conn(session)).execute(stmt)).all())


async def list_alerts(
    *,
    session: Tx,
    region_prefixes: list[str],
    equals: dict[str, Any],
    include_closed: bool,
    overdue: bool,
    from_ms: int | None,
    to_ms: int | None,
    after: tuple[int, str] | None,
    limit: int,
) -> list[Row[Any]]:
    """Newest first, paged by (raised_ms, id)."""
    c = m.alerts.c
    conds: list[Any] = [c.region.like(f"{p}%") for p in region_prefixes if p]
    conds += [c[col] == v for col, v in equals.items() if v is not None]
    if not include_closed:
        conds.append(c.is_open)
    if overdue:
        conds.append(c.overdue)
    if from_ms is not None:
        conds.append(c.raised_ms >= from_ms)
    if to_ms is not None:
        conds.append(c.raised_ms < to_ms)
    if after is not None:
        conds.append(or_(c.raised_ms < after[0], and_(c.raised_ms == after[0], c.id < after[1])))
    stmt = select(m.alerts).where(*conds).order_by(c.raised_ms.desc(), c.id.desc()).limit(limit)
    return list((await (await _conn(session)).execute(stmt)).all())


async def due_alerts(*, session: Tx, now_ms: int, limit: int = 500) -> list[Row[Any]]:
    """Open alerts whose current step is past its time limit and not yet marked overdue."""
    c = m.alerts.c
    stmt = select(m.alerts).where(c.due_ms <= now_ms, c.is_open, ~c.overdue).order_by(c.due_ms).limit(limit)
    return list((await (await _conn(session)).execute(stmt)).all())


# --- rules, silences, baselines ------------------------------------------------------------------


async def get_rule(*, session: Tx, rule_id: str) -> Row[Any] | None:
    return (await (await _conn(session)).execute(select(m.rules).where(m.rules.c.id == rule_id))).first()


async def live_rules(*, session: Tx) -> list[Row[Any]]:
    return list((await (await _conn(session)).execute(select(m.rules).where(~m.rules.c.deleted))).all())


async def save_rule(*, session: Tx, values: dict[str, Any], expected_version: int | None) -> bool:
    conn = await _conn(session)
    if expected_version is None:
        await conn.execute(insert(m.rules).values(**values))
        return True
    c = m.rules.c
    res = await conn.execute(
        update(m.rules).where(c.id == values["id"], c.version == expected_version).values(**values)
    )
    return bool(res.rowcount)


async def insert_rule_history(*, session: Tx, values: dict[str, Any]) -> None:
    await (await _conn(session)).execute(insert(m.rule_history).values(**values))


async def rule_history(*, session: Tx, rule_id: str) -> list[Row[Any]]:
    c = m.rule_history.c
    stmt = select(m.rule_history).where(c.rule_id == rule_id).order_by(c.version)
    return list((await (await _conn(session)).execute(stmt)).all())


async def insert_silence(*, session: Tx, values: dict[str, Any]) -> None:
    await (await _conn(session)).execute(insert(m.silences).values(**values))


async def get_silence(*, session: Tx, silence_id: str) -> Row[Any] | None:
    return (await (await _conn(session)).execute(select(m.silences).where(m.silences.c.id == silence_id))).first()


async def end_silence(*, session: Tx, silence_id: str, ends_ms: int) -> None:
    await (await _conn(session)).execute(
        update(m.silences).where(m.silences.c.id == silence_id).values(ends_ms=ends_ms)
    )


async def silences(*, session: Tx, active_at: int | None = None) -> list[Row[Any]]:
    c = m.silences.c
    stmt = select(m.silences).order_by(c.created_ms.desc(), c.id)
    if active_at is not None:
        stmt = stmt.where(c.ends_ms > active_at)
    return list((await (await _conn(session)).execute(stmt)).all())


async def baseline_hours(*, session: Tx, since_hour: int) -> list[Row[Any]]:
    c = m.baseline_hours.c
    stmt = select(m.baseline_hours).where(c.hour >= since_hour).order_by(c.sensor_id, c.hour)
    return list((await (await _conn(session)).execute(stmt)).all())


async def save_hours(*, session: Tx, rows: Iterable[tuple[str, int, float]]) -> None:
    values = [{"sensor_id": s, "hour": h, "mean": v} for s, h, v in rows]
    if not values:
        return
    conn = await _conn(session)
    c = m.baseline_hours.c
    for v in values:  # a redelivered batch may finish the same hour again
        await conn.execute(delete(m.baseline_hours).where(c.sensor_id == v["sensor_id"], c.hour == v["hour"]))
    await conn.execute(insert(m.baseline_hours), values)

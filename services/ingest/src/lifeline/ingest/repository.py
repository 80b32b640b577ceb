"""Every query of the ingest service."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import and_, func, select, tuple_, update
from sqlalchemy.engine import Row
from sqlmodel.ext.asyncio.session import AsyncSession

from lifeline.v1 import telemetry_pb2

from .models import latest_table, readings_table, sensor_keys_table

ONLINE = telemetry_pb2.SENSOR_STATE_ONLINE
OFFLINE = telemetry_pb2.SENSOR_STATE_OFFLINE


# Readings are keyed by the sensor's integer key (table sensor_keys), not its text id: see models.SensorKey.
READING_COLUMNS = ("sensor_key", "device_time_ms", "value", "unit", "quality", "received_ms", "region")
_SQLITE_INSERT = (
    f"INSERT INTO readings ({', '.join(READING_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (sensor_key, device_time_ms) DO NOTHING"
)
# One statement for the whole batch: arrays unnested server-side (several times faster than executemany).
_PG_INSERT = (
    f"INSERT INTO readings ({', '.join(READING_COLUMNS)}) "
    "SELECT * FROM unnest($1::integer[], $2::bigint[], $3::float8[], $4::varchar[], $5::smallint[], "
    "$6::bigint[], $7::varchar[]) ON CONFLICT (sensor_key, device_time_ms) DO NOTHING"
)
_SQLITE_NEW_KEY = "INSERT INTO sensor_keys (sensor_id) VALUES (?) ON CONFLICT (sensor_id) DO NOTHING"
_PG_NEW_KEYS = (
    "INSERT INTO sensor_keys (sensor_id) SELECT * FROM unnest($1::varchar[]) ON CONFLICT (sensor_id) DO NOTHING"
)
# Sensor ids bound per look-up statement (SQLite allows 32,766 parameters; PostgreSQL 65,535).
_KEY_LOOKUP_CHUNK = 1_000


async def sensor_keys(*, session: AsyncSession, sensor_ids: Collection[str], create: bool) -> dict[str, int]:
    """The integer keys of these sensors (those that have one); with `create`, the others get one
    in this transaction.

    Another transaction (another storage process or replica) may be creating the same keys: the unique
    sensor id decides, and the keys are read back after the insert skipped those that exist. On
    PostgreSQL the insert waits for the other transaction's outcome; ids are inserted in sorted order
    so that two transactions creating overlapping sets cannot deadlock."""
    if not sensor_ids:
        return {}
    conn = await session.connection()
    if create:
        ordered = sorted(sensor_ids)
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql(_PG_NEW_KEYS, (ordered,))
        else:
            await conn.exec_driver_sql(_SQLITE_NEW_KEY, [(sid,) for sid in ordered])
    c = sensor_keys_table.c
    ids = list(sensor_ids)
    found: dict[str, int] = {}
    for i in range(0, len(ids), _KEY_LOOKUP_CHUNK):
        res = await conn.execute(
            select(c.sensor_id, c.sensor_key).where(c.sensor_id.in_(ids[i : i + _KEY_LOOKUP_CHUNK]))
        )
        found.update((r[0], r[1]) for r in res)
    return found


async def insert_readings(*, session: AsyncSession, rows: Sequence[tuple[Any, ...]]) -> None:
    """Store readings (tuples in READING_COLUMNS order: the sensor's key, see `sensor_keys`); one
    already stored under the same (sensor, device time) is left as it was.

    The hot path of ingest: straight to the driver, no per-row SQLAlchemy processing."""
    if not rows:
        return
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        await _pg_insert_readings(conn, rows)
    else:
        await conn.exec_driver_sql(_SQLITE_INSERT, list(rows))


async def _pg_insert_readings(conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    # Nearly every reading is new (the front door answered repeats itself), and COPY costs PostgreSQL
    # about half the CPU per row of INSERT ... ON CONFLICT (and us a sixth). But COPY cannot skip
    # rows already stored, so it runs inside a savepoint: a redelivered message (or a reading
    # republished after a lost ack) fails it with a unique violation, and then the rows are inserted
    # skipping the stored ones. Either way the surrounding transaction is intact.
    import asyncpg  # only here: a SQLite process has no reason to load the PostgreSQL driver

    # Through SQLAlchemy, not the driver: its asyncpg adapter begins the transaction with its first
    # statement, and anything sent to the driver before that would run (and commit) on its own.
    await conn.exec_driver_sql("SAVEPOINT ingest_copy")
    driver = (await conn.get_raw_connection()).driver_connection
    try:
        await driver.copy_records_to_table("readings", records=rows, columns=READING_COLUMNS)
    except asyncpg.UniqueViolationError:
        await conn.exec_driver_sql("ROLLBACK TO SAVEPOINT ingest_copy")
        await conn.exec_driver_sql(_PG_INSERT, tuple(list(c) for c in zip(*rows, strict=True)))
    await conn.exec_driver_sql("RELEASE SAVEPOINT ingest_copy")


LATEST_COLUMNS = (
    "sensor_id",
    "region",
    "device_time_ms",
    "value",
    "unit",
    "quality",
    "received_ms",
    "last_seen_ms",
    "state",
    "state_changed_ms",
)


def _latest_upsert_sql(greatest: str) -> str:
    # The reading moves forward by device time only; last seen moves forward by arrival; a sensor that
    # was offline comes back online as of this arrival. (SET expressions see the row as it was.)
    def newer(col: str) -> str:
        return (
            f"{col} = CASE WHEN excluded.device_time_ms > sensor_latest.device_time_ms "
            f"THEN excluded.{col} ELSE sensor_latest.{col} END"
        )

    return (
        "ON CONFLICT (sensor_id) DO UPDATE SET "
        + ", ".join(newer(c) for c in ("device_time_ms", "value", "unit", "quality", "received_ms"))
        + f", last_seen_ms = {greatest}(excluded.last_seen_ms, sensor_latest.last_seen_ms), state = {ONLINE}, "
        f"state_changed_ms = CASE WHEN sensor_latest.state = {ONLINE} THEN sensor_latest.state_changed_ms "
        "ELSE excluded.state_changed_ms END"
    )


_SQLITE_UPSERT_LATEST = (
    f"INSERT INTO sensor_latest ({', '.join(LATEST_COLUMNS)}) VALUES ({', '.join('?' * len(LATEST_COLUMNS))}) "
    + _latest_upsert_sql("max")
)
_PG_UPSERT_LATEST = (
    f"INSERT INTO sensor_latest ({', '.join(LATEST_COLUMNS)}) "
    "SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::bigint[], $4::float8[], $5::varchar[], $6::smallint[], "
    "$7::bigint[], $8::bigint[], $9::smallint[], $10::bigint[]) " + _latest_upsert_sql("GREATEST")
)


async def upsert_latest(*, session: AsyncSession, rows: Sequence[tuple[Any, ...]]) -> None:
    """Move each sensor's latest value forward by device time (never back) and its last-seen time.

    Rows are tuples in LATEST_COLUMNS order, one per sensor. Like `insert_readings`, straight to the
    driver's statement: through SQLAlchemy's executemany, the per-row parameter processing cost more
    than the readings' own insert."""
    if not rows:
        return
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(_PG_UPSERT_LATEST, tuple(list(c) for c in zip(*rows, strict=True)))
    else:
        await conn.exec_driver_sql(_SQLITE_UPSERT_LATEST, list(rows))


async def offline_among(*, session: AsyncSession, sensor_ids: Iterable[str]) -> set[str]:
    """Which of these sensors are marked offline now."""
    # Offline sensors are few; asking for all of them beats binding thousands of ids per batch.
    res = await (await session.connection()).execute(
        select(latest_table.c.sensor_id).where(latest_table.c.state == OFFLINE)
    )
    offline = {r[0] for r in res}
    return offline.intersection(sensor_ids) if offline else set()


async def lookup_values(*, session: AsyncSession, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], float]:
    """Stored values for these (sensor, device time) keys, where they exist."""
    if not keys:
        return {}
    # Sensor ids to keys first, then readings by their primary key: a join with the condition on
    # (sensor id, device time) spans both tables and could not use the readings' key directly.
    key_of = await sensor_keys(session=session, sensor_ids={sid for sid, _ in keys}, create=False)
    wanted = [(key_of[sid], ts) for sid, ts in keys if sid in key_of]
    if not wanted:
        return {}
    id_of = {key: sid for sid, key in key_of.items()}
    c = readings_table.c
    res = await (await session.connection()).execute(
        select(c.sensor_key, c.device_time_ms, c.value).where(tuple_(c.sensor_key, c.device_time_ms).in_(wanted))
    )
    return {(id_of[r[0]], r[1]): r[2] for r in res}


async def latest_device_times(*, session: AsyncSession) -> dict[str, int]:
    """Greatest stored device time per sensor (seeds the front door's dedup index)."""
    res = await (await session.connection()).execute(select(latest_table.c.sensor_id, latest_table.c.device_time_ms))
    return {r[0]: r[1] for r in res}


async def list_readings(
    *, session: AsyncSession, sensor_id: str, from_ms: int | None, to_ms: int | None, after_ms: int | None, limit: int
) -> list[Row[Any]]:
    """A page of a sensor's readings in device-time order (rows with the sensor's id, not its key)."""
    c, k = readings_table.c, sensor_keys_table.c
    conds = [k.sensor_id == sensor_id]
    if from_ms is not None:
        conds.append(c.device_time_ms >= from_ms)
    if to_ms is not None:
        conds.append(c.device_time_ms < to_ms)
    if after_ms is not None:
        conds.append(c.device_time_ms > after_ms)
    stmt = (
        select(k.sensor_id, *(getattr(c, name) for name in READING_COLUMNS[1:]))
        .select_from(readings_table.join(sensor_keys_table, c.sensor_key == k.sensor_key))
        .where(and_(*conds))
        .order_by(c.device_time_ms)
        .limit(limit)
    )
    return list((await (await session.connection()).execute(stmt)).all())


async def get_latest(*, session: AsyncSession, sensor_id: str) -> Row[Any] | None:
    """A sensor's latest reading and state."""
    stmt = select(latest_table).where(latest_table.c.sensor_id == sensor_id)
    return (await (await session.connection()).execute(stmt)).first()


async def all_latest(*, session: AsyncSession) -> list[Row[Any]]:
    """Every sensor's latest row (a city has thousands of sensors, not millions)."""
    return list((await (await session.connection()).execute(select(latest_table))).all())


async def mark_offline(*, session: AsyncSession, sensor_ids: Sequence[str], now_ms: int) -> list[str]:
    """Mark online sensors offline; returns those that changed (another replica may have done it)."""
    if not sensor_ids:
        return []
    c = latest_table.c
    res = await (await session.connection()).execute(
        update(latest_table)
        .where(c.sensor_id.in_(list(sensor_ids)), c.state == ONLINE)
        .values(state=OFFLINE, state_changed_ms=now_ms)
        .returning(c.sensor_id)
    )
    return [r[0] for r in res]


async def count_readings(*, session: AsyncSession) -> int:
    """Number of stored readings."""
    return int(
        (await (await session.connection()).execute(select(func.count()).select_from(readings_table))).scalar_one()
    )

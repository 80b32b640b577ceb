"""Migration 0003 (readings keyed by an integer sensor key): readings stored before it are read and
deduplicated after it, on both backends; it downgrades with the readings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lifeline.ingest.app import MIGRATIONS, IngestApp
from lifeline.ingest.settings import IngestSettings
from lifeline.kit.db import create_engine
from lifeline.kit.migrations import alembic_config, migrate

from .helpers import count_rows, now_ms, stored_rows
from .test_persist import accepted


def old_readings(t: int) -> list[tuple[str, int, float]]:
    return [("GAS-CH4-1", t, 1.0), ("GAS-CH4-1", t + 60_000, 2.0), ("WATER-P-1", t, 0.5)]


async def store_under_0002(url: str, t: int) -> None:
    """A database at 0002 holding readings (and the latest of each sensor) keyed by sensor id."""
    await migrate(url, MIGRATIONS, revision="0002")
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO readings (sensor_id, device_time_ms, value, unit, quality, received_ms, region) "
                    "VALUES (:s, :t, :v, '%LEL', 1, :t, '340100')"
                ),
                [{"s": s, "t": ts, "v": v} for s, ts, v in old_readings(t)],
            )
            latest = {s: (ts, v) for s, ts, v in sorted(old_readings(t), key=lambda r: r[1])}
            await conn.execute(
                sa.text(
                    "INSERT INTO sensor_latest (sensor_id, region, device_time_ms, value, unit, quality, received_ms, "
                    "last_seen_ms, state, state_changed_ms) VALUES (:s, '340100', :t, :v, '%LEL', 1, :t, :t, 1, :t)"
                ),
                [{"s": s, "t": ts, "v": v} for s, (ts, v) in latest.items()],
            )
    finally:
        await engine.dispose()


async def test_readings_stored_under_0002_are_read_and_deduplicated_after_0003(
    service_runner, database_url: str, sensors_file: Path, writer_token: str
):
    t = now_ms() - 3_600_000
    await store_under_0002(database_url, t)
    settings = IngestSettings(
        database_url=database_url, http_port=0, grpc_port=0, sensors_file=sensors_file, status_check_interval_s=3600
    )
    ingest: IngestApp = await service_runner(IngestApp, settings)  # migrates to the head
    assert await stored_rows(ingest) == sorted(old_readings(t))

    assert ingest.http is not None
    async with httpx.AsyncClient(
        base_url=ingest.http.url, headers={"Authorization": f"Bearer {writer_token}"}, timeout=30
    ) as client:
        page = (await client.get("/v1/sensors/GAS-CH4-1/readings")).json()
        assert [(x["device_time_ms"], x["value"]) for x in page["readings"]] == [(t, 1.0), (t + 60_000, 2.0)]
        # Below the floor seeded from storage: judged by the migrated rows.
        again = [
            {"sensor_id": "GAS-CH4-1", "device_time_ms": t, "value": 1.0},
            {"sensor_id": "WATER-P-1", "device_time_ms": t, "value": 0.9, "unit": "MPa"},
        ]
        results = (await client.post("/v1/readings", json={"readings": again})).json()["results"]
    assert results[0]["status"] == "duplicate"
    assert results[1]["status"] == "rejected" and results[1]["reason"] == "conflict"

    # The storing side: a redelivered old reading is stored once, a new one under the migrated key.
    await ingest.service.persist([accepted(t + 1000, ("GAS-CH4-1", t, 1.0), ("GAS-CH4-1", t + 120_000, 3.0))])
    assert await count_rows(ingest) == 4
    assert await stored_rows(ingest) == sorted([*old_readings(t), ("GAS-CH4-1", t + 120_000, 3.0)])


def _downgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    config = alembic_config(MIGRATIONS)
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def test_0003_downgrades_with_the_readings(database_url: str):
    t = now_ms() - 3_600_000
    await store_under_0002(database_url, t)
    await migrate(database_url, MIGRATIONS)
    engine = create_engine(database_url, sqlite_foreign_keys=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_downgrade, "0002")
        async with engine.connect() as conn:
            rows: list[Any] = (
                await conn.exec_driver_sql("SELECT sensor_id, device_time_ms, value FROM readings")
            ).all()
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert sorted(tuple(r) for r in rows) == sorted(old_readings(t))
    assert "sensor_keys" not in tables
    # And up again.
    await migrate(database_url, MIGRATIONS)

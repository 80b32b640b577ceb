"""Helpers shared by the ingest tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import func, select

from lifeline.ingest.app import IngestApp
from lifeline.ingest.models import latest_table, readings_table, sensor_keys_table


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def reading(sensor: str = "GAS-CH4-1", ts: int | None = None, value: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"sensor_id": sensor, "device_time_ms": ts if ts is not None else now_ms(), "value": value, **extra}


async def stored_rows(app: IngestApp) -> list[tuple[str, int, float]]:
    r, k = readings_table.c, sensor_keys_table.c
    async with app.db.transaction() as s:
        res = await (await s.connection()).execute(
            select(k.sensor_id, r.device_time_ms, r.value)
            .join_from(readings_table, sensor_keys_table, r.sensor_key == k.sensor_key)
            .order_by(k.sensor_id, r.device_time_ms)
        )
        return [tuple(row) for row in res]  # type: ignore[misc]


async def count_rows(app: IngestApp) -> int:
    async with app.db.transaction() as s:
        return int(
            (await (await s.connection()).execute(select(func.count()).select_from(readings_table))).scalar_one()
        )


async def latest_of(app: IngestApp, sensor: str) -> tuple[int, float] | None:
    async with app.db.transaction() as s:
        row = (
            await (await s.connection()).execute(
                select(latest_table.c.device_time_ms, latest_table.c.value).where(latest_table.c.sensor_id == sensor)
            )
        ).first()
        return (row[0], row[1]) if row else None


async def wait_stored(app: IngestApp, n: int, timeout: float = 20.0) -> None:
    """Wait until the persisting consumer has stored `n` readings (and no more appear)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await count_rows(app) >= n:
            # Give stragglers (duplicates that should not exist) a moment to show up.
            await asyncio.sleep(0.3)
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {await count_rows(app)} of {n} readings stored in {timeout}s")

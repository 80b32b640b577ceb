"""The storing consumer's transaction: idempotent rows, latest value by device time, last seen by arrival."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from lifeline.ingest import repository
from lifeline.ingest.app import IngestApp
from lifeline.ingest.models import latest_table, sensor_keys_table
from lifeline.kit.db import Database
from lifeline.kit.readings import MalformedReadings, message_from_rows
from lifeline.v1 import common_pb2
from lifeline.v1 import telemetry_pb2 as T

from .helpers import count_rows, now_ms, stored_rows


def accepted(received_ms: int, *readings: tuple[str, int, float]) -> T.ReadingsAccepted:
    """A message as the front door publishes it: readings in columns."""
    good = common_pb2.QUALITY_GOOD
    return message_from_rows("340100", [(s, ts, v, "%LEL", good) for s, ts, v in readings], received_ms)


def accepted_per_reading(received_ms: int, *readings: tuple[str, int, float]) -> T.ReadingsAccepted:
    """The same in the per-reading form (an earlier front door's messages still in the stream)."""
    msg = T.ReadingsAccepted(region="340100", received_time_ms=received_ms)
    for sensor, ts, value in readings:
        msg.readings.add(sensor_id=sensor, device_time_ms=ts, value=value, unit="%LEL", quality=common_pb2.QUALITY_GOOD)
    return msg


async def latest_row(app: IngestApp, sensor: str) -> tuple[int, float, int, int]:
    c = latest_table.c
    async with app.db.transaction() as s:
        row = (
            await (await s.connection()).execute(
                select(c.device_time_ms, c.value, c.received_ms, c.last_seen_ms).where(c.sensor_id == sensor)
            )
        ).one()
    return (row[0], row[1], row[2], row[3])


async def test_batches_out_of_order_and_redelivered_store_once_and_keep_the_newest(ingest: IngestApp):
    t = now_ms() - 3_600_000
    a, b = "GAS-CH4-1", "GAS-CH4-2"
    first = accepted(t + 2000, (a, t + 10, 1.0), (b, t, 5.0))
    # Arrived earlier but fetched after: carries the newest reading of `a` and an older one.
    second = accepted(t + 1000, (a, t + 20, 2.0), (a, t + 5, 0.5))
    await ingest.service.persist([first, second])
    # Newest by device time (from the earlier arrival), last seen at the latest arrival.
    assert await latest_row(ingest, a) == (t + 20, 2.0, t + 1000, t + 2000)
    assert await latest_row(ingest, b) == (t, 5.0, t + 2000, t + 2000)

    # A late reading and a redelivery of a whole message: stored once; the latest never goes back.
    await ingest.service.persist([accepted(t + 3000, (a, t + 1, 9.0)), first])
    assert await count_rows(ingest) == 5
    assert sorted(await stored_rows(ingest)) == [
        (a, t + 1, 9.0),
        (a, t + 5, 0.5),
        (a, t + 10, 1.0),
        (a, t + 20, 2.0),
        (b, t, 5.0),
    ]
    assert await latest_row(ingest, a) == (t + 20, 2.0, t + 1000, t + 3000)
    assert await latest_row(ingest, b) == (t, 5.0, t + 2000, t + 2000)


async def test_messages_in_the_per_reading_form_are_stored_alike(ingest: IngestApp):
    # New sensors (keyed on the way) in both forms, one message of each in one transaction.
    t = now_ms() - 3_600_000
    a, b = "GAS-CH4-1", "GAS-CH4-2"
    await ingest.service.persist(
        [accepted_per_reading(t + 1000, (a, t + 10, 1.0), (b, t, 5.0)), accepted(t + 2000, (a, t + 20, 2.0))]
    )
    assert sorted(await stored_rows(ingest)) == [(a, t + 10, 1.0), (a, t + 20, 2.0), (b, t, 5.0)]
    assert await latest_row(ingest, a) == (t + 20, 2.0, t + 2000, t + 2000)
    assert await latest_row(ingest, b) == (t, 5.0, t + 1000, t + 1000)


async def test_a_message_with_columns_of_different_lengths_fails_its_transaction(ingest: IngestApp):
    # The consumer then retries the fetch one message at a time and dead-letters this one (kit.bus).
    t = now_ms() - 3_600_000
    good = accepted(t, ("GAS-CH4-1", t, 1.0))
    bad = accepted(t, ("GAS-CH4-2", t, 2.0), ("GAS-CH4-2", t + 1, 3.0))
    del bad.values[1]
    with pytest.raises(MalformedReadings):
        await ingest.service.persist([good, bad])
    assert await count_rows(ingest) == 0
    await ingest.service.persist([good])
    assert await stored_rows(ingest) == [("GAS-CH4-1", t, 1.0)]


async def test_readings_are_written_inside_the_callers_transaction(ingest: IngestApp):
    t = now_ms() - 3_600_000
    async with ingest.db.transaction() as session:
        key = (await repository.sensor_keys(session=session, sensor_ids={"GAS-CH4-1"}, create=True))["GAS-CH4-1"]

    def row(ts: int) -> tuple[object, ...]:
        return (key, ts, 1.0, "%LEL", common_pb2.QUALITY_GOOD, t, "340100")

    async with ingest.db.transaction() as session:
        await repository.insert_readings(session=session, rows=[row(t)])
    # A transaction that fails after writing keeps nothing of it, whether its rows were all new or
    # some were stored already (PostgreSQL takes a different path for those).
    for rows in ([row(t + 1)], [row(t), row(t + 2)]):
        with pytest.raises(RuntimeError):
            async with ingest.db.transaction() as session:
                await repository.insert_readings(session=session, rows=rows)
                raise RuntimeError("after the insert")
    assert await stored_rows(ingest) == [("GAS-CH4-1", t, 1.0)]


async def sensor_key_rows(app: IngestApp, sensor: str) -> list[int]:
    c = sensor_keys_table.c
    async with app.db.transaction() as s:
        return list((await (await s.connection()).execute(select(c.sensor_key).where(c.sensor_id == sensor))).scalars())


async def test_a_rolled_back_transaction_leaves_no_sensor_key_behind(ingest: IngestApp, monkeypatch):
    # Keys are created in the storing transaction; one that is rolled back must not leave its keys in
    # the process's map, or the next readings of the sensor would be stored under a key that is not.
    t = now_ms() - 3_600_000
    sensor = "GAS-CH4-1"

    async def failing_upsert(**_kwargs: object) -> None:
        raise RuntimeError("the transaction fails after its readings")

    with monkeypatch.context() as patch:
        patch.setattr(repository, "upsert_latest", failing_upsert)
        with pytest.raises(RuntimeError):
            await ingest.service.persist([accepted(t, (sensor, t, 1.0))])
    assert sensor not in ingest.service.sensor_keys
    assert await sensor_key_rows(ingest, sensor) == []

    await ingest.service.persist([accepted(t, (sensor, t, 1.0))])
    assert ingest.service.sensor_keys[sensor] in await sensor_key_rows(ingest, sensor)
    assert await stored_rows(ingest) == [(sensor, t, 1.0)]


async def test_two_transactions_creating_the_same_sensor_key_both_succeed_with_one_key(
    ingest: IngestApp, database_url: str
):
    # Two storage processes (here: two connection pools) meet a new sensor at once. The second waits
    # for the first's outcome (PostgreSQL: the unique index; SQLite: the write lock) and reads its key.
    other = Database.from_url(database_url)
    sensor = "NEW-SENSOR-1"

    async def create_key(db: Database) -> dict[str, int]:
        async with db.transaction() as s:
            return await repository.sensor_keys(session=s, sensor_ids={sensor, "GAS-CH4-2"}, create=True)

    try:
        async with ingest.db.transaction() as s:
            first = await repository.sensor_keys(session=s, sensor_ids={sensor}, create=True)
            second = asyncio.create_task(create_key(other))
            await asyncio.sleep(0.3)
            assert not second.done()
        keys = await second
    finally:
        await other.dispose()
    assert keys[sensor] == first[sensor]
    assert await sensor_key_rows(ingest, sensor) == [first[sensor]]
    assert keys["GAS-CH4-2"] != first[sensor]

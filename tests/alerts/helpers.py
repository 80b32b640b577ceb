"""Helpers shared by the alerts tests: census events, readings, reading alert events back."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import nats.errors
from sqlalchemy import func, select

from lifeline.alerts.app import AlertsApp
from lifeline.alerts.context import entity_doc
from lifeline.alerts.service import AlertsService
from lifeline.kit.auth import Principal
from lifeline.kit.bus import Bus
from lifeline.kit.outbox import outbox_table
from lifeline.kit.readings import message_from_rows
from lifeline.kit.testing.census import publish_census_entry
from lifeline.v1 import alerts_pb2, assets_pb2, telemetry_pb2

REGION = "340104"
OPERATOR = Principal(
    subject="op-1", client_id="operator-340100", roles=frozenset({"operator", "viewer"}), region="340100"
)
VIEWER = Principal(subject="v-1", client_id="viewer", roles=frozenset({"viewer"}), region="340100")
OTHER_CITY = Principal(subject="op-2", client_id="operator-340200", roles=frozenset({"operator"}), region="340200")


class Clock:
    """A controllable wall clock (epoch ms) for the workflow's time limits."""

    def __init__(self) -> None:
        self.now = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


def fresh_ids() -> tuple[str, str]:
    """A facility code and a serial no earlier test published (JetStream remembers message ids)."""
    serial = f"{secrets.randbelow(10**6):06d}"
    return f"3401041102{serial}", serial


async def publish_census(
    app: AlertsApp,
    code: str,
    sensors: dict[str, str],
    *,
    unit_id: str = "unit-gas-1",
    version: int = 1,
    **sensor_extra: Any,
) -> None:
    """Publish the census entries of a gas facility and its sensors ({sensor id: quantity}); wait for them."""
    fac = assets_pb2.Facility(
        code=code, kind=assets_pb2.FACILITY_KIND_GAS, name="燃气管段", region=REGION, unit_id=unit_id, version=version
    )
    await publish_census_entry(
        app.bus,
        "facility",
        REGION,
        code,
        assets_pb2.FacilityChanged(change=assets_pb2.CHANGE_KIND_CREATED, facility=fac).SerializeToString(),
    )
    for sid, quantity in sensors.items():
        s = assets_pb2.AssetSensor(
            sensor_id=sid,
            facility_code=code,
            quantity=quantity,
            region=REGION,
            interval_s=60,
            version=version,
            **sensor_extra,
        )
        await publish_census_entry(
            app.bus,
            "sensor",
            REGION,
            sid,
            assets_pb2.SensorChanged(change=assets_pb2.CHANGE_KIND_CREATED, sensor=s).SerializeToString(),
        )
    for _ in range(200):
        if all(sid in app.service.engine.sensors for sid in sensors) and code in app.service.engine.facilities:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("census events not applied")


async def publish_readings(app: AlertsApp, readings: list[tuple[str, int, float]], *, quality: int = 0) -> None:
    # As ingest's front door publishes them: in columns.
    batch = message_from_rows("340100", [(s, t, v, "", quality) for s, t, v in readings])
    await app.bus.publish("readings.340100", batch.SerializeToString(), msg_id=secrets.token_hex(8))


class EventReader:
    """Reads alert events from the EVENTS stream in order (an ephemeral ordered view per test)."""

    def __init__(self, app: AlertsApp) -> None:
        self.app = app
        self.sub: Any = None

    async def next(self, n: int = 1, timeout: float = 10.0) -> list[tuple[str, alerts_pb2.AlertEvent]]:
        if self.sub is None:
            self.sub = await self.app.bus.js.pull_subscribe(
                "events.alerts.>", durable=f"t-{secrets.token_hex(4)}", stream="EVENTS"
            )
        got: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < n and asyncio.get_running_loop().time() < deadline:
            try:
                msgs = await self.sub.fetch(n - len(got), timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            got += msgs
        assert len(got) == n, f"{len(got)} of {n} alert events"
        return [(m.subject, alerts_pb2.AlertEvent.FromString(m.data)) for m in got]

    async def close(self) -> None:
        """Unsubscribe (an open pull subscription would hold up the bus's drain at shutdown)."""
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None

    async def none(self, wait: float = 0.5) -> None:
        if self.sub is None:
            self.sub = await self.app.bus.js.pull_subscribe(
                "events.alerts.>", durable=f"t-{secrets.token_hex(4)}", stream="EVENTS"
            )
        try:
            msgs = await self.sub.fetch(1, timeout=wait)
        except nats.errors.TimeoutError:
            return
        raise AssertionError(f"unexpected alert event on {msgs[0].subject}")


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def publish_entries(bus: Bus, entries: list[tuple[str, bytes]]) -> None:
    """Census entries ((entity, change event) pairs, e.g. from census_payloads) on the bus, as assets writes them."""
    for entity, payload in entries:
        parsed = entity_doc(entity, payload)
        assert parsed is not None, entity
        key, _, doc = parsed
        await publish_census_entry(bus, entity, doc.get("region") or REGION, key, payload)


def census_payloads(
    code: str, sensors: dict[str, str], *, unit_id: str = "unit-gas-1", **sensor_extra: Any
) -> list[tuple[str, bytes]]:
    """Assets' change events of a gas facility and its sensors, as (entity, payload) pairs."""
    fac = assets_pb2.Facility(
        code=code, kind=assets_pb2.FACILITY_KIND_GAS, name="燃气管段", region=REGION, unit_id=unit_id, version=1
    )
    out = [
        (
            "facility",
            assets_pb2.FacilityChanged(change=assets_pb2.CHANGE_KIND_CREATED, facility=fac).SerializeToString(),
        )
    ]
    for sid, quantity in sensors.items():
        s = assets_pb2.AssetSensor(
            sensor_id=sid,
            facility_code=code,
            quantity=quantity,
            region=REGION,
            interval_s=60,
            version=1,
            **sensor_extra,
        )
        out.append(
            ("sensor", assets_pb2.SensorChanged(change=assets_pb2.CHANGE_KIND_CREATED, sensor=s).SerializeToString())
        )
    return out


def batch(readings: list[tuple[str, int, float]], quality: int = 0) -> telemetry_pb2.ReadingsAccepted:
    """Readings in the per-reading form (publish_readings sends columns: both forms are evaluated)."""
    return telemetry_pb2.ReadingsAccepted(
        region="340100",
        readings=[
            telemetry_pb2.Reading(sensor_id=s, device_time_ms=t, value=v, quality=quality) for s, t, v in readings
        ],
    )


async def raise_alert(service: AlertsService, *, value: float = 6.0, unit_id: str = "unit-gas-1") -> str:
    """A gas facility with one CH4 sensor whose readings raise an alert; its id."""
    code, serial = fresh_ids()
    sid = f"CH4-{serial}"
    await service.apply_assets(census_payloads(code, {sid: "gas.ch4"}, unit_id=unit_id))
    t0 = 1_760_000_000_000
    await service.evaluate([batch([(sid, t0, value), (sid, t0 + 30_000, value)])])
    fp = f"catalogue:gas.ch4:value/{sid}"
    alert_id = service.engine.states[fp].alert_id
    assert alert_id is not None
    return alert_id


async def outbox_subjects(service: AlertsService) -> list[str]:
    """Subjects of the events the service put in its outbox, in order."""
    async with service.db.transaction(readonly=True) as s:
        rows = (await (await s.connection()).execute(select(outbox_table.c.subject).order_by(outbox_table.c.seq))).all()
    return [r.subject for r in rows]


async def count(service: AlertsService, table: Any) -> int:
    async with service.db.transaction(readonly=True) as s:
        return int((await (await s.connection()).execute(select(func.count()).select_from(table))).scalar_one())

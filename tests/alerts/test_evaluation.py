"""Evaluation on a real database: idempotent under redelivery, restart-safe, quality-aware, grouped, silenced."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, event, select

from lifeline.alerts import models
from lifeline.alerts.service import AlertsService
from lifeline.kit.db import Database
from lifeline.kit.outbox import outbox_table
from lifeline.v1 import alerts_pb2, common_pb2, telemetry_pb2

from .helpers import OPERATOR, VIEWER, Clock, batch, census_payloads, count, fresh_ids, outbox_subjects

T0 = 1_760_000_000_000
S = 1000


async def gas_sensor(service: AlertsService, *quantities: str) -> tuple[str, list[str]]:
    code, serial = fresh_ids()
    ids = {f"{q.split('.')[1].upper()}-{serial}-{i}": q for i, q in enumerate(quantities or ("gas.ch4",))}
    await service.apply_assets(census_payloads(code, ids))
    return code, list(ids)


async def test_redelivered_batches_raise_no_duplicate(service: AlertsService) -> None:
    _, [sid] = await gas_sensor(service)
    readings = batch([(sid, T0, 7.0), (sid, T0 + 30 * S, 7.0), (sid, T0 + 40 * S, 8.0)])
    for _ in range(3):  # the consumer's batch delivered three times
        await service.evaluate([readings])
    assert await count(service, models.alerts) == 1
    assert await outbox_subjects(service) == ["events.alerts.raised.340104"]
    [alert], _ = await service.list_alerts(principal=VIEWER)
    assert alert["breach_count"] == 2 and alert["last_value"] == 8.0 and alert["peak_value"] == 8.0


async def test_restart_in_the_middle_of_a_for_window(service: AlertsService, clock: Clock) -> None:
    _, [sid] = await gas_sensor(service)
    await service.evaluate([batch([(sid, T0, 7.0), (sid, T0 + 10 * S, 7.0)])])
    assert await count(service, models.alerts) == 0
    # A new process on the same database: the window that started at T0 is remembered.
    db = Database.from_url(service.db.engine.url.render_as_string(hide_password=False))
    try:
        fresh = AlertsService(region="340100", catalogue=service.catalogue, policy=service.policy, db=db, clock=clock)
        await fresh.load()
        # The unacknowledged batch comes again, then the next one: fires at T0 + 30 s, once.
        await fresh.evaluate([batch([(sid, T0, 7.0), (sid, T0 + 10 * S, 7.0)])])
        await fresh.evaluate([batch([(sid, T0 + 20 * S, 7.0), (sid, T0 + 30 * S, 7.0)])])
        items, _ = await fresh.list_alerts(principal=VIEWER)
    finally:
        await db.dispose()
    assert len(items) == 1 and items[0]["first_value"] == 7.0
    assert await outbox_subjects(service) == ["events.alerts.raised.340104"]


async def test_bad_quality_and_out_of_order_readings_change_nothing(service: AlertsService) -> None:
    _, [sid] = await gas_sensor(service)
    await service.evaluate([batch([(sid, T0, 70.0), (sid, T0 + 60 * S, 70.0)], quality=common_pb2.QUALITY_BAD)])
    await service.evaluate(
        [batch([(sid, T0 + 70 * S, 70.0), (sid, T0 + 80 * S, 70.0)], quality=common_pb2.QUALITY_MAINTENANCE)]
    )
    assert await count(service, models.alerts) == 0
    await service.evaluate([batch([(sid, T0 + 100 * S, 70.0), (sid, T0 + 130 * S, 70.0)])])
    # An old normal reading arrives late: it must not start clearing the alert.
    await service.evaluate([batch([(sid, T0 + 90 * S, 0.0)])])
    await service.evaluate([batch([(sid, T0 + 400 * S, 70.0)])])
    [alert], _ = await service.list_alerts(principal=VIEWER)
    assert alert["condition"] == "active" and alert["level"] == "I"
    assert await outbox_subjects(service) == ["events.alerts.raised.340104"]


async def test_alerts_on_one_facility_share_an_incident(service: AlertsService) -> None:
    code, [gas, pressure] = await gas_sensor(service, "gas.ch4", "utility_tunnel.ch4")
    await service.evaluate(
        [batch([(gas, T0, 30.0), (pressure, T0, 30.0), (gas, T0 + 60 * S, 30.0), (pressure, T0 + 60 * S, 30.0)])]
    )
    items, _ = await service.list_alerts(principal=VIEWER, facility_code=code)
    assert len(items) == 2 and len({a["incident_id"] for a in items}) == 1
    # The raised events say so too (the second alert's incident is the one the insert found).
    async with service.db.transaction(readonly=True) as s:
        payloads = (await (await s.connection()).execute(select(outbox_table.c.payload))).scalars().all()
    assert {alerts_pb2.AlertEvent.FromString(p).alert.incident_id for p in payloads} == {items[0]["incident_id"]}
    other_code, [other] = await gas_sensor(service)
    await service.evaluate([batch([(other, T0, 30.0), (other, T0 + 60 * S, 30.0)])])
    [third], _ = await service.list_alerts(principal=VIEWER, facility_code=other_code)
    assert third["incident_id"] != items[0]["incident_id"]


async def test_a_silence_marks_alerts_then_expires(service: AlertsService, clock: Clock) -> None:
    code, [a, b] = await gas_sensor(service, "gas.ch4", "gas.ch4")
    silence = await service.create_silence(
        silence_in={"facility_code": code, "ends_ms": clock.now + 3_600_000, "comment": "管线维修 maintenance"},
        principal=OPERATOR,
    )
    await service.evaluate([batch([(a, T0, 30.0), (a, T0 + 60 * S, 30.0)])])
    [suppressed], _ = await service.list_alerts(principal=VIEWER, facility_code=code)
    assert suppressed["suppressed"] and suppressed["suppressed_by"] == silence["id"]  # kept and marked
    await service.expire_silence(silence_id=silence["id"], principal=OPERATOR)
    clock.advance(1)
    await service.evaluate([batch([(b, T0, 30.0), (b, T0 + 60 * S, 30.0)])])
    items, _ = await service.list_alerts(principal=VIEWER, facility_code=code)
    assert [x["suppressed"] for x in items if x["sensor_id"] == b] == [False]
    assert [s["expired"] for s in await service.list_silences(principal=VIEWER, include_expired=True)] == [True]


async def test_composite_rule_from_the_api(service: AlertsService) -> None:
    code, [gas, pressure] = await gas_sensor(service, "gas.ch4", "gas.pressure")
    await service.create_rule(
        rule_in={
            "id": f"leak-{code}",
            "name": "燃气泄漏：浓度高且压力下降",
            "kind": "composite",
            "facility_code": code,
            "conditions": [
                {"quantity": "gas.ch4", "measure": "value", "direction": "above", "levels": {"IV": 3.0}},
                {"quantity": "gas.pressure", "measure": "value", "direction": "below", "levels": {"IV": 200.0}},
            ],
            "level": "I",
            "region": "",
            "facility_kind": "",
            "sensor_id": "",
            "for_s": 0,
            "clear_for_s": 0,
            "enabled": True,
        },
        principal=OPERATOR,
    )
    await service.evaluate([batch([(pressure, T0, 150.0), (gas, T0 + S, 4.0)])])
    items, _ = await service.list_alerts(principal=VIEWER, facility_code=code)
    leak = [a for a in items if a["rule_id"] == f"leak-{code}"]
    assert len(leak) == 1 and leak[0]["level"] == "I" and leak[0]["fingerprint"] == f"leak-{code}/{code}"
    await service.evaluate([batch([(pressure, T0 + 2 * S, 300.0)])])
    detail = await service.get_alert(alert_id=leak[0]["id"], principal=VIEWER)
    assert detail["condition"] == "cleared"


async def test_concurrent_readings_and_status_batches_both_persist_their_rule_states(
    service: AlertsService, clock: Clock
) -> None:
    """The readings and status consumers run side by side; neither may drop the other's state changes."""
    _, [a] = await gas_sensor(service)
    _, [b] = await gas_sensor(service)
    offline = telemetry_pb2.SensorStatusChanged(
        sensor_id=b, state=telemetry_pb2.SENSOR_STATE_OFFLINE, changed_ms=T0, last_seen_ms=T0 - 600 * S
    )
    # A opens its `for` window (a rule state, no alert yet) while B goes offline (a no-data alert).
    await asyncio.gather(
        service.evaluate([batch([(a, T0, 7.0), (a, T0 + 10 * S, 7.0)])]),
        service.apply_status([offline]),
    )
    db = Database.from_url(service.db.engine.url.render_as_string(hide_password=False))
    try:
        fresh = AlertsService(region="340100", catalogue=service.catalogue, policy=service.policy, db=db, clock=clock)
        await fresh.load()
        # After a restart A's window is still open from T0: the reading at T0 + 30 s raises.
        await fresh.evaluate([batch([(a, T0 + 30 * S, 7.0)])])
        items, _ = await fresh.list_alerts(principal=VIEWER)
    finally:
        await db.dispose()
    assert sorted(i["sensor_id"] for i in items) == sorted([a, b])


async def test_warm_up_runs_the_writes_of_an_alert_and_keeps_none_of_them(service: AlertsService) -> None:
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()[:3]).upper())

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        await service.warm_up()
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    # What the first real alert of the process would otherwise compile: raise, escalate, clear.
    for written in ("INSERT INTO ALERTS", "INSERT INTO ALERT_HISTORY", "UPDATE ALERTS SET", "INSERT INTO RULE_STATES"):
        assert written in statements, (written, statements)
    assert any(s.startswith("INSERT INTO OUTBOX") for s in statements)
    # ... all rolled back: no alert, history, rule state or event, and the engine forgot the made-up state.
    for table in (models.alerts, models.alert_history, models.rule_states):
        assert await count(service, table) == 0
    assert await outbox_subjects(service) == []
    assert not service.engine.states and not service.engine.dirty
    # The service raises as usual afterwards.
    _, [sid] = await gas_sensor(service)
    await service.evaluate([batch([(sid, T0, 70.0), (sid, T0 + 60 * S, 70.0)])])
    assert await outbox_subjects(service) == ["events.alerts.raised.340104"]


async def test_the_loop_runs_between_the_messages_of_a_fetch(service: AlertsService) -> None:
    # An alert committed for one message is published by the outbox relay (another task) while the rest
    # of the fetch waits, not after it; and nothing else in the process waits for a whole fetch.
    _, [sid] = await gas_sensor(service)
    order: list[str] = []

    async def other_task() -> None:
        order.append("other task ran")

    def fetch() -> Any:
        yield batch([(sid, T0, 1.0)])  # normal readings: nothing to write, so no write's await either
        order.append("second message")
        yield batch([(sid, T0 + S, 1.0)])

    other = asyncio.create_task(other_task())
    await service.evaluate(fetch())
    await other
    assert order == ["other task ran", "second message"]

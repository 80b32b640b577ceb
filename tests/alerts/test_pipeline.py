"""End to end through NATS and the database: census events and readings in, alert events out."""

from __future__ import annotations

from lifeline.alerts.app import AlertsApp
from lifeline.alerts.settings import AlertsSettings
from lifeline.kit.bus import Bus
from lifeline.kit.testing.census import mark_census_complete
from lifeline.kit.testing.service import reset_streams
from lifeline.v1 import alerts_pb2 as P
from lifeline.v1 import common_pb2, telemetry_pb2

from .helpers import (
    OPERATOR,
    EventReader,
    batch,
    census_payloads,
    fresh_ids,
    publish_census,
    publish_entries,
    publish_readings,
    wait_until,
)

S = 1000


async def test_a_reading_raises_escalates_and_clears_one_alert(alerts: AlertsApp, events: EventReader) -> None:
    code, serial = fresh_ids()
    sid = f"CH4-{serial}"
    await publish_census(alerts, code, {sid: "gas.ch4"})
    t0 = 1_760_000_000_000
    # gas: `for` 30 s. 6 %LEL for 30 s → IV; then 60 → I at once; then back to 0 for the clear window (120 s).
    await publish_readings(alerts, [(sid, t0, 6.0), (sid, t0 + 10 * S, 6.0)])
    await publish_readings(alerts, [(sid, t0 + 30 * S, 6.5)])
    [(subject, raised)] = await events.next()
    assert subject == "events.alerts.raised.340104"
    assert raised.kind == P.ALERT_EVENT_KIND_RAISED
    a = raised.alert
    assert (a.sensor_id, a.facility_code, a.level, a.state) == (
        sid,
        code,
        common_pb2.WARNING_LEVEL_IV_BLUE,
        P.ALERT_STATE_RAISED,
    )
    assert a.facility_kind and a.due_step == P.WORKFLOW_STEP_VERIFY and raised.reading_time_ms == t0 + 30 * S
    await publish_readings(alerts, [(sid, t0 + 40 * S, 60.0), (sid, t0 + 50 * S, 61.0)])
    [(subject, up)] = await events.next()
    assert subject == "events.alerts.level_changed.340104"
    assert up.alert.id == a.id and up.alert.level == common_pb2.WARNING_LEVEL_I_RED
    assert up.alert.due_ms < a.due_ms  # level I is verified sooner
    await publish_readings(alerts, [(sid, t0 + 60 * S, 0.0), (sid, t0 + 180 * S, 0.0)])
    [(subject, cleared)] = await events.next()
    assert subject == "events.alerts.cleared.340104"
    assert cleared.alert.id == a.id and cleared.alert.condition == P.ALERT_CONDITION_CLEARED
    assert cleared.alert.state == P.ALERT_STATE_RAISED  # the workflow is people's to finish
    detail = await alerts.service.get_alert(alert_id=a.id, principal=OPERATOR)
    assert [h["kind"] for h in detail["history"]] == ["raised", "level_changed", "cleared"]
    assert detail["breach_count"] >= 2 and detail["peak_value"] == 61.0
    # Ingest says the sensor went offline: the no-data rule raises its own alert, and clears when it is back.
    offline = telemetry_pb2.SensorStatusChanged(
        sensor_id=sid, region="340100", state=telemetry_pb2.SENSOR_STATE_OFFLINE, changed_ms=t0 + 900 * S
    )
    await alerts.bus.publish("events.ingest.sensor_status.340100", offline.SerializeToString(), msg_id=f"st-{serial}-1")
    [(subject, nodata)] = await events.next()
    assert subject == "events.alerts.raised.340104" and nodata.alert.rule_id == "no_data"
    assert nodata.alert.fingerprint == f"no_data/{sid}" and nodata.alert.id != a.id
    online = telemetry_pb2.SensorStatusChanged(
        sensor_id=sid, region="340100", state=telemetry_pb2.SENSOR_STATE_ONLINE, changed_ms=t0 + 960 * S
    )
    await alerts.bus.publish("events.ingest.sensor_status.340100", online.SerializeToString(), msg_id=f"st-{serial}-2")
    [(subject, back)] = await events.next()
    assert subject == "events.alerts.cleared.340104" and back.alert.id == nodata.alert.id
    # The same readings again (a redelivery after a crash before the ack): nothing new.
    await publish_readings(alerts, [(sid, t0 + 30 * S, 6.5), (sid, t0 + 40 * S, 60.0)])
    await events.none()


async def test_readings_waiting_on_the_stream_at_start_are_evaluated_after_the_census(
    service_runner, nats_server, alerts_settings: AlertsSettings
) -> None:
    # Everything is on the streams before alerts starts: the sensor's event and, after it, its readings.
    if not nats_server.running:
        nats_server.start()
    bus = Bus(nats_server.url, name="alerts-test-feed")
    await bus.start()
    try:
        await bus.wait_ready(10)
        await reset_streams(bus)
        code, serial = fresh_ids()
        sid = f"CH4-{serial}"
        await publish_entries(bus, census_payloads(code, {sid: "gas.ch4"}))
        await mark_census_complete(bus)
        t0 = 1_760_000_000_000
        await bus.publish("readings.340100", batch([(sid, t0, 60.0), (sid, t0 + 30 * S, 60.0)]).SerializeToString())
    finally:
        await bus.close()
    alerts: AlertsApp = await service_runner(AlertsApp, alerts_settings, reset=False)

    async def raised() -> bool:
        items, _ = await alerts.service.list_alerts(principal=OPERATOR)
        return any(a["sensor_id"] == sid and a["level"] == "I" for a in items)

    await wait_until(raised)

"""Alerts' copy of the census: batches stored in one go (newest version wins, also against another writer
of the same database), and retired sensors and facilities clearing their alerts.

SQLite and PostgreSQL (the ``database_url`` fixture); the service without servers, except the last test:
assets and alerts running for real on NATS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from lifeline.alerts import repository
from lifeline.alerts.app import AlertsApp
from lifeline.alerts.service import AlertsService
from lifeline.alerts.settings import AlertsSettings
from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings
from lifeline.v1 import assets_pb2

from .helpers import (
    REGION,
    VIEWER,
    EventReader,
    batch,
    census_payloads,
    fresh_ids,
    outbox_subjects,
    publish_readings,
    wait_until,
)

T0 = 1_760_000_000_000
S = 1000


def facility_event(
    code: str, unit_id: str, version: int, change: int = assets_pb2.CHANGE_KIND_UPDATED
) -> tuple[str, bytes]:
    fac = assets_pb2.Facility(
        code=code, kind=assets_pb2.FACILITY_KIND_GAS, region=REGION, unit_id=unit_id, version=version
    )
    return "facility", assets_pb2.FacilityChanged(change=change, facility=fac).SerializeToString()


async def stored_doc(service: AlertsService, entity: str, key: str) -> dict[str, Any] | None:
    async with service.db.transaction(readonly=True) as session:
        return await repository.get_ctx(session=session, entity=entity, key=key)


async def test_a_batch_keeps_the_newest_version_of_each_entity(service: AlertsService) -> None:
    code, _ = fresh_ids()
    other, _ = fresh_ids()
    batch = [facility_event(code, "unit-v2", 2), facility_event(code, "unit-v3", 3), facility_event(code, "unit-v1", 1)]
    batch.append(facility_event(other, "unit-a", 1))
    assert await service.apply_assets(batch) == 2
    assert service.engine.facilities[code].unit_id == "unit-v3"
    doc = await stored_doc(service, "facility", code)
    assert doc is not None and doc["unit_id"] == "unit-v3" and doc["version"] == "3"
    # The same batch again (a redelivery) changes nothing.
    assert await service.apply_assets(batch) == 0


async def test_an_older_version_never_overwrites_what_another_writer_stored(service: AlertsService) -> None:
    """Two writers of one database (e.g. replicas): the version check is in the statement, not only in memory."""
    other = AlertsService(
        region="340100", catalogue=service.catalogue, policy=service.policy, db=service.db, clock=service.clock
    )
    await other.load()  # before the first writer stored anything: its copy knows no version of the facility
    code, _ = fresh_ids()
    assert await service.apply_assets([facility_event(code, "unit-v3", 3)]) == 1
    assert await other.apply_assets([facility_event(code, "unit-v2", 2)]) == 0
    assert code not in other.engine.facilities
    doc = await stored_doc(service, "facility", code)
    assert doc is not None and doc["unit_id"] == "unit-v3"
    assert await other.apply_assets([facility_event(code, "unit-v4", 4)]) == 1
    doc = await stored_doc(service, "facility", code)
    assert doc is not None and doc["unit_id"] == "unit-v4"


def retired_sensor(sid: str, code: str, version: int = 2) -> assets_pb2.AssetSensor:
    return assets_pb2.AssetSensor(
        sensor_id=sid,
        facility_code=code,
        quantity="gas.ch4",
        region=REGION,
        interval_s=60,
        status=assets_pb2.ASSET_SENSOR_STATUS_RETIRED,
        version=version,
    )


async def firing_sensor(service: AlertsService) -> tuple[str, str, str]:
    """A gas facility whose methane sensor raised an alert: (facility code, sensor id, alert id)."""
    code, serial = fresh_ids()
    sid = f"CH4-{serial}"
    await service.apply_assets(census_payloads(code, {sid: "gas.ch4"}))
    await service.evaluate([batch([(sid, T0, 60.0), (sid, T0 + 30 * S, 60.0)])])
    alert_id = service.engine.states[f"catalogue:gas.ch4:value/{sid}"].alert_id
    assert alert_id is not None
    return code, sid, alert_id


async def stored_states(service: AlertsService, subject: str) -> int:
    async with service.db.transaction(readonly=True) as session:
        return sum(1 for r in await repository.all_states(session=session) if r.subject == subject)


async def test_a_retired_sensor_clears_its_alert_and_its_state_goes(service: AlertsService) -> None:
    code, sid, alert_id = await firing_sensor(service)
    assert await stored_states(service, sid) == 1
    event = assets_pb2.SensorChanged(change=assets_pb2.CHANGE_KIND_RETIRED, sensor=retired_sensor(sid, code))
    assert await service.apply_assets([("sensor", event.SerializeToString())]) == 1
    alert = await service.get_alert(alert_id=alert_id, principal=VIEWER)
    # Cleared by condition, still open for the people handling it.
    assert alert["condition"] == "cleared" and alert["state"] == "raised" and alert["cleared_ms"] is not None
    assert [(h["kind"], h["comment"]) for h in alert["history"]] == [("raised", None), ("cleared", "sensor retired")]
    assert await outbox_subjects(service) == [f"events.alerts.raised.{REGION}", f"events.alerts.cleared.{REGION}"]
    assert not [st for st in service.engine.states.values() if st.subject == sid]
    assert sid not in service.engine.last_ms
    assert await stored_states(service, sid) == 0
    # Its readings are not evaluated any more, and a redelivered retirement changes nothing.
    assert await service.evaluate([batch([(sid, T0 + 60 * S, 70.0), (sid, T0 + 120 * S, 70.0)])]) == 0
    assert await service.apply_assets([("sensor", event.SerializeToString())]) == 0
    assert len(await outbox_subjects(service)) == 2
    # After a restart nothing of it comes back.
    fresh = AlertsService(
        region="340100", catalogue=service.catalogue, policy=service.policy, db=service.db, clock=service.clock
    )
    await fresh.load()
    assert not [st for st in fresh.engine.states.values() if st.subject == sid]
    assert not fresh.engine.sensors[sid].active


async def test_a_retired_facility_clears_the_alerts_on_it(service: AlertsService) -> None:
    """Also when its census entry says retired by status only (change kind updated, e.g. read anew)."""
    code, sid, alert_id = await firing_sensor(service)
    _, other_sid, other_alert = await firing_sensor(service)
    facility = assets_pb2.Facility(
        code=code,
        kind=assets_pb2.FACILITY_KIND_GAS,
        region=REGION,
        unit_id="unit-gas-1",
        status=assets_pb2.FACILITY_STATUS_RETIRED,
        version=2,
    )
    event = assets_pb2.FacilityChanged(change=assets_pb2.CHANGE_KIND_UPDATED, facility=facility)
    assert await service.apply_assets([("facility", event.SerializeToString())]) == 1
    alert = await service.get_alert(alert_id=alert_id, principal=VIEWER)
    assert alert["condition"] == "cleared"
    assert alert["history"][-1]["kind"] == "cleared" and alert["history"][-1]["comment"] == "facility retired"
    assert not [st for st in service.engine.states.values() if st.subject == sid]
    # The alert of another facility is left as it was.
    other = await service.get_alert(alert_id=other_alert, principal=VIEWER)
    assert other["condition"] == "active" and len(other["history"]) == 1
    assert service.engine.states[f"catalogue:gas.ch4:value/{other_sid}"].firing is not None
    assert await stored_states(service, other_sid) == 1


async def test_retiring_a_sensor_in_assets_clears_its_alert_end_to_end(
    service_runner: Any, database_url: str, tmp_path: Path, oidc_provider: Any, token_factory: Any
) -> None:
    """Assets for real: its retirement event reaches alerts over NATS and the cleared alert's event goes out."""
    await oidc_provider.register_client(
        "lifeline-services", roles=["service"], region="340100", client_secret="dev-secret"
    )
    assets: AssetsApp = await service_runner(
        AssetsApp,
        AssetsSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'assets.db'}", http_port=0, grpc_port=0),
    )
    assert assets.http is not None and assets.grpc is not None
    alerts: AlertsApp = await service_runner(
        AlertsApp,
        AlertsSettings(
            database_url=database_url,
            http_port=0,
            grpc_port=0,
            timer_interval_s=3600,
        ),
    )
    code, serial = fresh_ids()
    sid = f"CH4-{serial}"
    headers = {"Authorization": f"Bearer {await token_factory('svc')}"}
    async with httpx.AsyncClient(base_url=assets.http.url, headers=headers, timeout=30) as http:
        for path, body in (
            ("units", {"id": f"unit-gas-{serial}", "name": "合肥燃气集团", "domains": ["gas"]}),
            (
                "facilities",
                {
                    "code": code,
                    "kind": "gas",
                    "name": "燃气管段",
                    "unit_id": f"unit-gas-{serial}",
                    "geometry": {"type": "Point", "coordinates": [117.2, 31.8]},
                },
            ),
            ("sensors", {"sensor_id": sid, "facility_code": code, "quantity": "gas.ch4"}),
        ):
            r = await http.post(f"/v1/{path}", json=body)
            assert r.status_code == 201, r.text

        async def known() -> bool:
            return sid in alerts.service.engine.sensors

        await wait_until(known)
        reader = EventReader(alerts)
        try:
            await publish_readings(alerts, [(sid, T0, 60.0), (sid, T0 + 30 * S, 60.0)])
            [(subject, raised)] = await reader.next()
            assert subject.startswith("events.alerts.raised.")
            r = await http.post(f"/v1/sensors/{sid}/retire", json={"reason": "拆除"})
            assert r.status_code == 200, r.text
            [(subject, cleared)] = await reader.next()
        finally:
            await reader.close()
    assert subject.startswith("events.alerts.cleared.")
    assert cleared.alert.id == raised.alert.id and cleared.entry.comment == "sensor retired"
    assert not [st for st in alerts.service.engine.states.values() if st.subject == sid]

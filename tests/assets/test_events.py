"""Change events go out through the outbox on events.assets.<entity>.<region>, one per version."""

from __future__ import annotations

import secrets

import httpx
import nats.errors

from lifeline.assets.app import AssetsApp
from lifeline.v1 import assets_pb2 as A
from lifeline.v1 import common_pb2 as C

from .helpers import facility, sensor


def fresh_ids() -> tuple[str, str]:
    """A facility code and sensor id no earlier test published: JetStream drops a message id it saw in
    its duplicate window (two hours) even after the stream is purged, and the ids are deterministic."""
    serial = f"{secrets.randbelow(10**6):06d}"
    return f"3401041102{serial}", f"HF-GAS-CH4-{serial}"


async def fetch_events(app: AssetsApp, subject: str, n: int, attempts: int = 20) -> list:
    sub = await app.bus.js.pull_subscribe(subject, durable="t-assets-events", stream="EVENTS")
    got: list = []
    for _ in range(attempts):
        try:
            msgs = await sub.fetch(n - len(got), timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            await m.ack()
        got += msgs
        if len(got) >= n:
            break
    assert len(got) == n, f"{len(got)} of {n} events"
    return got


async def test_change_events_arrive_on_the_bus(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    code, sensor_id = fresh_ids()
    await client.post("/v1/facilities", json=facility(code))
    await client.patch(f"/v1/facilities/{code}", json={"status": "under_repair", "reason": "抢修"})
    await client.post("/v1/sensors", json=sensor(sensor_id, code, range_min=0, range_max=100))
    await client.post(f"/v1/sensors/{sensor_id}/retire")

    msgs = await fetch_events(assets, "events.assets.>", 4)
    by_subject = [(m.subject, m.header.get("Nats-Msg-Id")) for m in msgs]
    assert by_subject == [
        ("events.assets.facility.340104", f"facility:{code}:1"),
        ("events.assets.facility.340104", f"facility:{code}:2"),
        ("events.assets.sensor.340104", f"sensor:{sensor_id}:1"),
        ("events.assets.sensor.340104", f"sensor:{sensor_id}:2"),
    ]
    created = A.FacilityChanged.FromString(msgs[0].data)
    assert created.change == A.CHANGE_KIND_CREATED
    f = created.facility
    assert (f.code, f.kind, f.region, f.version) == (code, A.FACILITY_KIND_GAS, "340104", 1)
    assert f.geometry.type == A.GEOMETRY_TYPE_LINE_STRING and len(f.geometry.coordinates) == 2
    assert f.attributes["material"] == "PE"
    updated = A.FacilityChanged.FromString(msgs[1].data)
    assert updated.change == A.CHANGE_KIND_UPDATED and updated.reason == "抢修"
    assert updated.facility.status == A.FACILITY_STATUS_UNDER_REPAIR and updated.actor
    s = A.SensorChanged.FromString(msgs[2].data).sensor
    assert (s.sensor_id, s.quantity, s.unit, s.range_max, s.version) == (sensor_id, "gas.ch4", "%LEL", 100, 1)
    retired = A.SensorChanged.FromString(msgs[3].data)
    assert retired.change == A.CHANGE_KIND_RETIRED and retired.sensor.status == A.ASSET_SENSOR_STATUS_RETIRED


async def test_risk_link_and_override_events(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    code, sensor_id = fresh_ids()
    downstream = f"{code[:-6]}{(int(code[-6:]) + 1) % 10**6:06d}"
    serial = code[-6:]
    await client.post("/v1/facilities", json=facility(code))
    await client.post("/v1/facilities", json=facility(downstream))
    threshold = {"measure": "value", "direction": "above", "levels": {"IV": 4, "I": 40}}
    window = {"kind": "maintenance", "start_ms": 1_800_000_000_000, "end_ms": 1_800_000_360_000, "note": "检修"}
    await client.post("/v1/sensors", json=sensor(sensor_id, code, thresholds=[threshold], windows=[window]))
    await client.patch(f"/v1/facilities/{code}", json={"thresholds": [{"quantity": "gas.ch4", **threshold}]})
    r = await client.post("/v1/links", json={"id": f"L-{serial}", "from_code": code, "to_code": downstream})
    assert r.status_code == 201, r.text
    risk = {
        "id": f"R-{serial}",
        "name": "管道占压",
        "hazard": "gas_leak",
        "grade": "III",
        "geometry": {"type": "Point", "coordinates": [117.2, 31.82]},
        "facility_codes": [code],
        "rectification": {"status": "overdue", "owner": "燃气集团", "deadline_ms": 1_700_000_000_000},
    }
    assert (await client.post("/v1/risks", json=risk)).status_code == 201

    msgs = await fetch_events(assets, "events.assets.>", 6)
    assert [(m.subject, m.header.get("Nats-Msg-Id")) for m in msgs][3:] == [
        ("events.assets.facility.340104", f"facility:{code}:2"),
        ("events.assets.link.340104", f"link:L-{serial}:1"),
        ("events.assets.risk.340104", f"risk:R-{serial}:1"),
    ]
    s = A.SensorChanged.FromString(msgs[2].data).sensor
    assert [(x.measure, x.direction, [(lv.level, lv.value) for lv in x.levels]) for x in s.thresholds] == [
        ("value", "above", [(C.WARNING_LEVEL_IV_BLUE, 4), (C.WARNING_LEVEL_I_RED, 40)])
    ]
    assert [(w.kind, w.start_ms, w.end_ms, w.note) for w in s.windows] == [("maintenance", *list(window.values())[1:])]
    f = A.FacilityChanged.FromString(msgs[3].data).facility
    assert [x.quantity for x in f.thresholds] == ["gas.ch4"]
    link = A.LinkChanged.FromString(msgs[4].data)
    assert (link.change, link.link.from_code, link.link.to_code, link.link.kind) == (
        A.CHANGE_KIND_CREATED,
        code,
        downstream,
        A.LINK_KIND_FLOW,
    )
    changed = A.RiskSourceChanged.FromString(msgs[5].data)
    assert (changed.risk.grade, list(changed.risk.facility_codes), changed.risk.rectification.status) == (
        C.WARNING_LEVEL_III_YELLOW,
        [code],
        "overdue",
    )
    assert changed.risk.geometry.type == A.GEOMETRY_TYPE_POINT and changed.actor

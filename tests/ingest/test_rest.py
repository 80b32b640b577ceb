"""Ingest over REST: results per reading, bad input, idempotence, reads."""

from __future__ import annotations

import httpx

from lifeline.ingest.app import IngestApp
from lifeline.ingest.validation import Rejection
from lifeline.kit.auth import Principal
from lifeline.v1 import telemetry_pb2 as R

from .helpers import count_rows, latest_of, now_ms, reading, stored_rows, wait_stored


async def test_batch_is_accepted_stored_and_latest_is_by_device_time(client: httpx.AsyncClient, ingest: IngestApp):
    t = now_ms() - 60_000
    batch = [reading(ts=t + 2000, value=3.0), reading(ts=t, value=1.0), reading(ts=t + 1000, value=2.0)]
    r = await client.post("/v1/readings", json={"readings": batch})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 3 and body["rejected"] == 0
    assert [x["status"] for x in body["results"]] == ["accepted"] * 3
    await wait_stored(ingest, 3)
    # A late reading (older device time) arrives after: stored, but the latest stays the newest.
    r = await client.post("/v1/readings", json={"readings": [reading(ts=t - 5000, value=9.0)]})
    assert r.json()["accepted"] == 1
    await wait_stored(ingest, 4)
    assert await latest_of(ingest, "GAS-CH4-1") == (t + 2000, 3.0)
    page = (await client.get("/v1/sensors/GAS-CH4-1/readings", params={"limit": 2})).json()
    assert [x["value"] for x in page["readings"]] == [9.0, 1.0]
    rest = (await client.get("/v1/sensors/GAS-CH4-1/readings", params={"page_token": page["next_page_token"]})).json()
    assert [x["value"] for x in rest["readings"]] == [2.0, 3.0] and rest["next_page_token"] is None
    latest = (await client.get("/v1/sensors/GAS-CH4-1/latest")).json()
    assert latest["reading"]["value"] == 3.0 and latest["state"] == "online"


async def test_unit_conversion_to_canonical(client: httpx.AsyncClient, ingest: IngestApp):
    r = await client.post("/v1/readings", json={"readings": [reading(value=1.0, unit="%vol")]})
    assert r.json()["accepted"] == 1
    await wait_stored(ingest, 1)
    [(_, _, value)] = await stored_rows(ingest)
    assert value == 20.0  # 1 %vol CH4 = 20 %LEL


async def test_each_bad_reading_is_rejected_with_its_reason_and_the_rest_counts(
    client: httpx.AsyncClient, ingest: IngestApp
):
    t = now_ms()
    batch = [
        reading(ts=t - 1000, value=5.0),  # good
        reading(sensor="NOPE"),
        reading(sensor="OLD-1"),
        reading(value="Infinity"),
        reading(value=-5.0),
        reading(value=1.0, unit="furlong"),
        reading(ts=t + 3_600_000),
        reading(ts=t - 500 * 86_400_000),
        reading(quality="dubious"),
        {"sensor_id": "GAS-CH4-1", "value": 1.0},
        {"sensor_id": "GAS-CH4-1", "device_time_ms": t, "value": "high"},
        "not an object",
        reading(ts=t - 2000, time="2020-01-01T00:00:00"),  # device_time_ms wins; still valid
    ]
    r = await client.post("/v1/readings", json={"readings": batch}, headers={"Accept-Language": "en"})
    assert r.status_code == 200
    results = r.json()["results"]
    reasons = [x.get("reason") for x in results]
    assert reasons == [
        None,
        "unknown_sensor",
        "sensor_retired",
        "not_finite",
        "out_of_range",
        "unit_mismatch",
        "time_in_future",
        "time_too_old",
        "bad_quality_flag",
        "malformed",
        "malformed",
        "malformed",
        None,
    ]
    assert "furlong" in results[5]["detail"]
    await wait_stored(ingest, 2)
    assert await count_rows(ingest) == 2


async def test_problem_details_for_whole_request_errors_change_nothing(client: httpx.AsyncClient, ingest: IngestApp):
    r = await client.post("/v1/readings", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "JSON" in r.json()["detail"]
    r = await client.post("/v1/readings", json={"readings": []})
    assert r.status_code == 400
    r = await client.post("/v1/readings", json={"readings": [reading(ts=i) for i in range(5001)]})
    assert r.status_code == 413
    assert "5000" in r.json()["detail"]
    big = b'{"readings": [' + b" " * (5 * 1024 * 1024) + b"]}"
    r = await client.post("/v1/readings", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert await count_rows(ingest) == 0


async def test_chinese_by_default(client: httpx.AsyncClient):
    r = await client.post("/v1/readings", json={"readings": [reading(sensor="NOPE")]})
    assert r.json()["results"][0]["detail"] == "未登记的传感器 NOPE"


async def test_duplicate_and_conflict(client: httpx.AsyncClient, ingest: IngestApp):
    t = now_ms() - 10_000
    first = await client.post("/v1/readings", json={"readings": [reading(ts=t, value=4.0)]})
    assert first.json()["accepted"] == 1
    again = await client.post("/v1/readings", json={"readings": [reading(ts=t, value=4.0), reading(ts=t, value=7.0)]})
    res = again.json()["results"]
    assert res[0]["status"] == "duplicate"
    assert res[1]["status"] == "rejected" and res[1]["reason"] == "conflict"
    await wait_stored(ingest, 1)
    assert await stored_rows(ingest) == [("GAS-CH4-1", t, 4.0)]


async def test_reads_are_scoped_by_region(client: httpx.AsyncClient, ingest: IngestApp, token_factory):
    t = now_ms() - 1000
    await client.post("/v1/readings", json={"readings": [reading(ts=t), reading("WATER-P-1", ts=t, value=0.3)]})
    await wait_stored(ingest, 2)
    partner = await token_factory("partner-340100")
    other = await token_factory("viewer-340200")
    district = await token_factory.client(roles=["viewer"], region="340111")
    async with httpx.AsyncClient(base_url=ingest.http.url) as c:
        ok = await c.get("/v1/sensors/GAS-CH4-1/latest", headers={"Authorization": f"Bearer {partner}"})
        assert ok.status_code == 200
        denied = await c.get("/v1/sensors/GAS-CH4-1/latest", headers={"Authorization": f"Bearer {other}"})
        assert denied.status_code == 403
        assert denied.headers["content-type"].startswith("application/problem+json")
        statuses = await c.get("/v1/sensors/status", headers={"Authorization": f"Bearer {district}"})
        assert {s["sensor_id"] for s in statuses.json()["sensors"]} == {"WATER-P-1", "WATER-P-2"}
        # A partner may read but not write.
        w = await c.post("/v1/readings", json={"readings": [reading()]}, headers={"Authorization": f"Bearer {partner}"})
        assert w.status_code == 403
        # Writing another region's sensor: rejected per reading, nothing stored.
        wuhu = await token_factory.client(roles=["device"], region="340200")
        w = await c.post(
            "/v1/readings", json={"readings": [reading(ts=t + 5)]}, headers={"Authorization": f"Bearer {wuhu}"}
        )
        assert w.json()["results"][0]["reason"] == "forbidden_region"
    assert await count_rows(ingest) == 2


async def test_region_checks_follow_each_callers_region_in_any_order(ingest: IngestApp):
    # The validator remembers region checks by the caller's region: callers of two districts taking
    # turns (as devices' MQTT messages do) each see their own district's sensors and not the other's.
    t = now_ms() - 1000
    gas_district = Principal(subject="a", client_id="a", roles=frozenset({"device"}), region="340104")
    water_district = Principal(subject="b", client_id="b", roles=frozenset({"device"}), region="340111")
    items = [("GAS-CH4-1", t, 1.0, "", 1), ("WATER-P-1", t, 0.3, "", 1)]

    def forbidden(principal: Principal) -> list[bool]:
        judged = ingest.service.validator.check_all(items, principal, t)
        return [isinstance(j, Rejection) and j.reason == R.REJECT_REASON_FORBIDDEN_REGION for j in judged]

    for _ in range(2):
        assert forbidden(gas_district) == [False, True]
        assert forbidden(water_district) == [True, False]
        assert forbidden(Principal(subject="c", client_id="c", roles=frozenset({"device"}), region="340100")) == [
            False,
            False,
        ]


async def test_sensor_status_offline_and_back(client: httpx.AsyncClient, ingest: IngestApp):
    t = now_ms()
    await client.post("/v1/readings", json={"readings": [reading(ts=t - 1000)]})
    await wait_stored(ingest, 1)
    # 3 missed intervals of 60 s later the sensor is offline; GAS-CH4-2 was never seen.
    changed = await ingest.service.check_offline(offline_factor=3, at_ms=t + 181_000)
    assert changed == ["GAS-CH4-1"]
    assert await ingest.service.check_offline(offline_factor=3, at_ms=t + 200_000) == []
    status = {s["sensor_id"]: s["state"] for s in (await client.get("/v1/sensors/status")).json()["sensors"]}
    assert status["GAS-CH4-1"] == "offline" and status["GAS-CH4-2"] == "never_seen"
    await client.post("/v1/readings", json={"readings": [reading(ts=t)]})
    await wait_stored(ingest, 2)
    status = {s["sensor_id"]: s["state"] for s in (await client.get("/v1/sensors/status")).json()["sensors"]}
    assert status["GAS-CH4-1"] == "online"
    # Both transitions were announced on the bus through the outbox.
    sub = await ingest.bus.js.pull_subscribe("events.ingest.sensor_status.>", durable="t-status", stream="EVENTS")
    from lifeline.v1 import telemetry_pb2

    states = []
    for _ in range(20):
        try:
            msgs = await sub.fetch(10, timeout=1)
        except Exception:
            continue
        for m in msgs:
            ev = telemetry_pb2.SensorStatusChanged.FromString(m.data)
            states.append((ev.sensor_id, ev.state))
            await m.ack()
        if len(states) >= 2:
            break
    assert states == [
        ("GAS-CH4-1", telemetry_pb2.SENSOR_STATE_OFFLINE),
        ("GAS-CH4-1", telemetry_pb2.SENSOR_STATE_ONLINE),
    ]


async def test_writes_and_cross_region_reads_are_audited(
    client: httpx.AsyncClient, ingest: IngestApp, token_factory, caplog
):
    import logging

    caplog.set_level(logging.INFO, logger="lifeline.audit")
    t = now_ms() - 1000
    await client.post("/v1/readings", json={"readings": [reading(ts=t)]})
    await wait_stored(ingest, 1)
    province = await token_factory("viewer-340000")
    other = await token_factory("viewer-340200")
    async with httpx.AsyncClient(base_url=ingest.http.url) as c:
        await c.get("/v1/sensors/GAS-CH4-1/latest", headers={"Authorization": f"Bearer {province}"})
        await c.get("/v1/sensors/GAS-CH4-1/latest", headers={"Authorization": f"Bearer {other}"})
    records = [r for r in caplog.records if r.name == "lifeline.audit"]
    seen = [(r.action, r.client_id, r.outcome) for r in records]
    assert ("readings.write", "svc", "ok") in seen
    assert ("latest.read", "viewer-340000", "ok") in seen
    assert ("latest.read", "viewer-340200", "forbidden") in seen
    write = next(r for r in records if r.action == "readings.write")
    assert write.source.startswith("127.0.0.1:") and write.count == 1


async def test_metrics_expose_ingest_rate_outbox_depth_and_consumer_lag(client: httpx.AsyncClient, ingest: IngestApp):
    await client.post("/v1/readings", json={"readings": [reading(ts=now_ms() - 100), reading(sensor="NOPE")]})
    await wait_stored(ingest, 1)
    await ingest.sample_metrics()
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, s.labels.get("outcome") or s.labels.get("consumer") or s.labels.get("service")): s.value
        for family in text_string_to_metric_families((await client.get("/metrics")).text)
        for s in family.samples
    }
    # Counters are process-wide (other tests in this worker add to them): at least ours.
    assert samples[("lifeline_ingest_readings_total", "accepted")] >= 1
    assert samples[("lifeline_ingest_readings_total", "rejected")] >= 1
    assert samples[("lifeline_outbox_depth", "ingest")] == 0
    assert samples[("lifeline_consumer_pending", "ingest-persist-340100")] == 0

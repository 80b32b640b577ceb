"""Storms of retries and duplicates, NATS restarting mid-stream, auth, one trace end to end."""

from __future__ import annotations

import asyncio
import json
import random
import time

import grpc
import httpx
import paho.mqtt.client as mqtt
import pytest

from lifeline.ingest.app import IngestApp
from lifeline.kit.natsserver import NatsServer
from lifeline.v1 import telemetry_pb2 as T
from lifeline.v1 import telemetry_pb2_grpc

from .helpers import count_rows, latest_of, now_ms, reading, stored_rows, wait_stored

SENSORS = ["GAS-CH4-1", "GAS-CH4-2", "WATER-P-1", "WATER-P-2"]


@pytest.mark.slow
async def test_retry_and_duplicate_storm_over_every_way_in(
    ingest: IngestApp, client: httpx.AsyncClient, writer_token: str, nats_server: NatsServer
):
    rng = random.Random(7)
    t0 = now_ms() - 3_600_000
    distinct = [reading(s, ts=t0 + i * 1000, value=round(rng.uniform(0.1, 0.9), 3)) for s in SENSORS for i in range(75)]
    copies = [dict(r) for r in distinct for _ in range(3)]
    rng.shuffle(copies)
    chunks = [copies[i : i + 45] for i in range(0, len(copies), 45)]
    statuses: list[str] = []

    async def via_rest(chunk):
        r = await client.post("/v1/readings", json={"readings": chunk})
        statuses.extend(x["status"] for x in r.json()["results"])

    async def via_grpc(chunk, stub):
        req = T.IngestBatchRequest(
            readings=[
                T.Reading(sensor_id=c["sensor_id"], device_time_ms=c["device_time_ms"], value=c["value"]) for c in chunk
            ]
        )
        resp = await stub.IngestBatch(req, metadata=(("authorization", f"Bearer {writer_token}"),))
        statuses.extend(T.ReadingStatus.Name(x.status).removeprefix("READING_STATUS_").lower() for x in resp.results)

    mq = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="storm")
    mq.connect("127.0.0.1", nats_server.mqtt_port)
    mq.loop_start()
    mqtt_chunks = chunks[::3]
    async with ingest.grpc_channel() as channel:
        stub = telemetry_pb2_grpc.TelemetryIngestStub(channel)
        tasks = []
        for i, chunk in enumerate(chunks):
            if i % 3 == 0:
                info = mq.publish("devices/340100/storm/readings", json.dumps({"readings": chunk}), qos=1)
                await asyncio.to_thread(info.wait_for_publish, 10)
            elif i % 3 == 1:
                tasks.append(via_rest(chunk))
            else:
                tasks.append(via_grpc(chunk, stub))
        await asyncio.gather(*tasks)
    mq.loop_stop()
    mq.disconnect()

    await wait_stored(ingest, len(distinct), timeout=30)
    assert await count_rows(ingest) == len(distinct)
    assert sorted(await stored_rows(ingest)) == sorted(
        (r["sensor_id"], r["device_time_ms"], r["value"]) for r in distinct
    )
    for s in SENSORS:
        last = max((r for r in distinct if r["sensor_id"] == s), key=lambda r: r["device_time_ms"])
        assert await latest_of(ingest, s) == (last["device_time_ms"], last["value"])
    # REST and gRPC saw no conflicts: every repeat was recognised as a duplicate.
    assert "rejected" not in statuses
    assert statuses.count("accepted") <= len(distinct)
    del mqtt_chunks


@pytest.mark.slow
async def test_nats_restart_mid_stream_loses_and_duplicates_nothing(
    ingest: IngestApp, client: httpx.AsyncClient, nats_server: NatsServer
):
    t0 = now_ms() - 600_000
    batches = [[reading(s, ts=t0 + b * 100 + i, value=b / 100) for s in SENSORS for i in range(10)] for b in range(30)]
    first_answer: dict[int, int] = {}
    final: dict[int, dict] = {}
    refused = 0

    async def restart_later():
        await asyncio.sleep(0.3)
        nats_server.stop()
        await asyncio.sleep(2.0)
        nats_server.start()

    restarter = asyncio.create_task(restart_later())
    for b, batch in enumerate(batches):
        deadline = time.monotonic() + 60
        while True:
            r = await client.post("/v1/readings", json={"readings": batch})
            first_answer.setdefault(b, r.status_code)
            if r.status_code == 200:
                final[b] = r.json()
                break
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            refused += 1
            assert time.monotonic() < deadline
            await asyncio.sleep(float(r.headers["Retry-After"]))
        await asyncio.sleep(0.05)
    await restarter
    assert refused > 0, "the outage did not hit any batch; the test proved nothing"
    # A refused batch kept nothing: its retry was accepted in full, not answered 'duplicate'.
    for b, body in final.items():
        assert body["accepted"] == len(batches[b]), (b, body)
    total = sum(len(b) for b in batches)
    await wait_stored(ingest, total, timeout=60)
    assert await count_rows(ingest) == total


async def test_auth_refusals(ingest: IngestApp, oidc_provider, token_factory):
    import base64

    base = ingest.http.url
    expired_src = await token_factory("short-ttl")
    wrong_iss = await token_factory("svc", realm="other")
    wrong_aud = await token_factory("wrong-aud")
    good = await token_factory("svc")
    _header, payload, _ = good.split(".")
    none_alg = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=") + "." + payload + "."
    body = {"readings": [reading()]}
    async with httpx.AsyncClient(base_url=base) as c:
        assert (await c.post("/v1/readings", json=body)).status_code == 401
        for token in (wrong_iss, wrong_aud, none_alg, "garbage"):
            r = await c.post("/v1/readings", json=body, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, (token[:20], r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "WWW-Authenticate" in r.headers
    # Expired: verify with no leeway after the 2 s lifetime has passed.
    ingest.verifier.leeway = 0
    try:
        await asyncio.sleep(3)
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.post("/v1/readings", json=body, headers={"Authorization": f"Bearer {expired_src}"})
            assert r.status_code == 401 and "expired" in r.text
    finally:
        ingest.verifier.leeway = 30
    async with ingest.grpc_channel() as channel:
        stub = telemetry_pb2_grpc.TelemetryIngestStub(channel)
        for token in (wrong_iss, none_alg):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IngestBatch(
                    T.IngestBatchRequest(readings=[T.Reading(sensor_id="GAS-CH4-1", device_time_ms=now_ms(), value=1)]),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await count_rows(ingest) == 0


async def test_one_trace_from_request_to_database_write(ingest: IngestApp, client: httpx.AsyncClient, span_exporter):
    r = await client.post("/v1/readings", json={"readings": [reading(ts=now_ms() - 10)]})
    assert r.status_code == 200
    await wait_stored(ingest, 1)
    await asyncio.sleep(0.2)
    spans = span_exporter.get_finished_spans()
    from opentelemetry.trace import SpanKind

    server = [s for s in spans if s.name == "POST /v1/readings" and s.kind == SpanKind.SERVER]
    assert server, [s.name for s in spans]
    trace_id = server[0].context.trace_id
    names = {s.name for s in spans if s.context.trace_id == trace_id}
    assert "publish readings.340100" in names
    assert any(n.startswith("consume READINGS") for n in names)
    assert "ingest.persist" in names
    assert any(n.startswith("INSERT") for n in names) or "ingest.persist" in names

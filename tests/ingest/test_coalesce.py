"""Group commit: concurrent one-reading requests share JetStream messages (real NATS, real database)."""

from __future__ import annotations

import asyncio

import httpx

from lifeline.ingest.app import IngestApp
from lifeline.kit.natsserver import NatsServer

from .helpers import count_rows, now_ms, reading, stored_rows, wait_stored

SENSORS = ["GAS-CH4-1", "GAS-CH4-2"]
REQUESTS = 64


def singles(t0: int) -> list[dict]:
    """REQUESTS distinct readings, one per request."""
    return [reading(SENSORS[i % 2], ts=t0 + i, value=0.5 + i % 7) for i in range(REQUESTS)]


async def readings_messages(app: IngestApp) -> int:
    info = await app.bus.js.stream_info("READINGS")
    return int(info.state.messages)


async def post_each(base_url: str, token: str, items: list[dict]) -> list[httpx.Response]:
    """Every reading in a request of its own, all at once, each on its own connection."""
    limits = httpx.Limits(max_connections=len(items), max_keepalive_connections=len(items))
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as c:
        return list(await asyncio.gather(*(c.post("/v1/readings", json={"readings": [x]}) for x in items)))


async def test_concurrent_single_requests_share_messages_and_each_is_answered(
    ingest: IngestApp, writer_token: str
) -> None:
    assert ingest.http is not None
    before_msgs, before_groups = await readings_messages(ingest), ingest.service.publisher.groups
    items = singles(now_ms() - 60_000)
    answers = await post_each(ingest.http.url, writer_token, items)
    assert [r.status_code for r in answers] == [200] * REQUESTS
    assert all(r.json()["accepted"] == 1 and r.json()["results"][0]["status"] == "accepted" for r in answers)
    groups = ingest.service.publisher.groups - before_groups
    messages = await readings_messages(ingest) - before_msgs
    # Fewer messages than requests (requests waited together for a shared ack), one per group.
    assert messages == groups < REQUESTS, (messages, groups)
    await wait_stored(ingest, REQUESTS)
    stored = await stored_rows(ingest)
    assert sorted(stored) == sorted((x["sensor_id"], x["device_time_ms"], x["value"]) for x in items)

    # Retries of every request, concurrently: answered duplicate, nothing published, nothing stored twice.
    again = await post_each(ingest.http.url, writer_token, items)
    assert all(r.status_code == 200 and r.json()["duplicates"] == 1 for r in again)
    assert await readings_messages(ingest) - before_msgs == messages
    # A changed value for the same time is a conflict, also within concurrent requests.
    changed = [{**x, "value": x["value"] + 1} for x in items[:8]]
    conflicts = await post_each(ingest.http.url, writer_token, changed)
    assert all(r.json()["results"][0]["reason"] == "conflict" for r in conflicts)
    await asyncio.sleep(0.5)
    assert await count_rows(ingest) == REQUESTS


async def test_bus_down_every_waiting_request_gets_503_and_nothing_is_kept(
    ingest: IngestApp, writer_token: str, nats_server: NatsServer
) -> None:
    assert ingest.http is not None
    items = singles(now_ms() - 120_000)
    nats_server.stop()
    try:
        for _ in range(200):  # until the client noticed (up to 10 s)
            if not ingest.bus.connected:
                break
            await asyncio.sleep(0.05)
        answers = await post_each(ingest.http.url, writer_token, items)
        assert [r.status_code for r in answers] == [503] * REQUESTS
        for r in answers:
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.headers["Retry-After"] == "1"
            assert "未保存任何读数" in r.json()["detail"]
    finally:
        nats_server.start()
    await ingest.bus.wait_ready(30)
    # Nothing was kept: each retry is accepted (not a duplicate), and each reading is stored once.
    retried: list[httpx.Response] = []
    for _ in range(60):
        retried = await post_each(ingest.http.url, writer_token, items)
        if all(r.status_code == 200 for r in retried):
            break
        assert all(r.status_code in (200, 503) for r in retried)
        items = [x for x, r in zip(items, retried, strict=True) if r.status_code == 503] or items
        await asyncio.sleep(0.5)
    assert all(r.status_code == 200 and r.json()["accepted"] == 1 for r in retried)
    await wait_stored(ingest, REQUESTS)
    assert await count_rows(ingest) == REQUESTS


async def test_a_request_larger_than_a_message_is_published_alone(ingest: IngestApp, client: httpx.AsyncClient):
    service = ingest.service
    publisher = service.publisher
    limit, publisher.max_items = publisher.max_items, 3
    try:
        t0 = now_ms() - 30_000
        before = publisher.groups
        small = [reading("GAS-CH4-1", ts=t0 + i) for i in range(2)]
        large = [reading("GAS-CH4-2", ts=t0 + i) for i in range(5)]
        answers = await asyncio.gather(
            client.post("/v1/readings", json={"readings": small}),
            client.post("/v1/readings", json={"readings": large}),
        )
        assert [r.json()["accepted"] for r in answers] == [2, 5]
        # 2 + 5 readings exceed a message of 3: two messages, the large one whole in its own.
        assert publisher.groups - before == 2
    finally:
        publisher.max_items = limit
    await wait_stored(ingest, 7)

"""Webhook notifications on a real alerts service (SQLite and PostgreSQL, real NATS, real OIDC) and a real
HTTP receiver started by the test: down, then up; retries in the log; dead and redelivered; validation.

Alert events are put in the alerts outbox exactly as the core does (its AlertEvent builder, subject and
event id), so these tests do not depend on rule evaluation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from lifeline.alerts.app import AlertsApp
from lifeline.alerts.messages import alert_event
from lifeline.alerts.settings import AlertsSettings
from lifeline.kit.http import HttpServer, serve_http
from lifeline.kit.outbox import enqueue

from .helpers import wait_until

SECRET = "s3cret-of-the-sms-gateway"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A partner's webhook endpoint: records every request; can answer 500 to chosen first tries."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_once: set[str] = set()
        self.server: HttpServer | None = None
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append((headers, body))
            event_id = headers.get("lifeline-event-id", "")
            if event_id in self.fail_once:
                self.fail_once.discard(event_id)
                return Response("busy", status_code=500)
            return Response(status_code=204)

        self.app = app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        self.server = await serve_http(self.app, "127.0.0.1", self.port, graceful_timeout=1)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    yield r
    await r.stop()


async def start_alerts(service_runner, database_url: str, monkeypatch: pytest.MonkeyPatch) -> AlertsApp:
    """An alerts service whose webhook retries are fast, so "down for a while" is a second, not an hour."""
    for name, value in {
        "BACKOFF_INITIAL_S": "0.1",
        "BACKOFF_MAX_S": "0.4",
        "POLL_INTERVAL_S": "0.05",
        "TIMEOUT_S": "2",
    }.items():
        monkeypatch.setenv(f"LIFELINE_ALERTS_NOTIFY_{name}", value)
    settings = AlertsSettings(database_url=database_url, http_port=0, grpc_port=0, timer_interval_s=3600)
    app: AlertsApp = await service_runner(AlertsApp, settings)
    return app


@pytest.fixture
async def app(service_runner, database_url: str, monkeypatch: pytest.MonkeyPatch) -> AlertsApp:
    return await start_alerts(service_runner, database_url, monkeypatch)


@pytest.fixture
async def client(app: AlertsApp, token_factory) -> AsyncIterator[httpx.AsyncClient]:
    assert app.http is not None
    token = await token_factory("operator-340100")
    async with httpx.AsyncClient(base_url=app.http.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        yield c


def alert_doc(alert_id: str, *, region: str = "340104", level: str = "II", **extra: Any) -> dict[str, Any]:
    return {
        "id": alert_id,
        "fingerprint": f"gas.ch4/{alert_id}",
        "rule_id": "gas.ch4",
        "sensor_id": f"S-{alert_id[:8]}",
        "facility_code": "3401041102000001",
        "facility_kind": "gas",
        "quantity": "gas.ch4",
        "region": region,
        "level": level,
        "peak_level": level,
        "state": "raised",
        "condition": "active",
        "incident_id": "inc-1",
        "measure": "value",
        "first_value": 12.0,
        "last_value": 12.0,
        "peak_value": 12.0,
        "breach_count": 1,
        "raised_ms": 1_700_000_000_000,
        "updated_ms": 1_700_000_000_000,
        "overdue": False,
        "suppressed": False,
        "version": 1,
        **extra,
    }


async def publish(app: AlertsApp, events: list[tuple[str, int, dict[str, Any]]]) -> list[str]:
    """Put (kind, seq, alert) events in the alerts outbox as the core does; return their event ids."""
    ids = []
    async with app.db.transaction() as session:
        for kind, seq, alert in events:
            entry = {"seq": seq, "kind": kind, "at_ms": 1_700_000_000_000 + seq, "actor": "engine"}
            ids.append(
                enqueue(
                    session,
                    subject=f"events.alerts.{kind}.{alert['region']}",
                    payload=alert_event(kind, alert, entry, 0),
                    event_id=f"alert:{alert['id']}:{seq}",
                )
            )
    return ids


async def create_hook(client: httpx.AsyncClient, url: str, **extra: Any) -> dict[str, Any]:
    r = await client.post("/v1/webhooks", json={"name": "短信网关", "url": url, "secret": SECRET, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def deliveries(client: httpx.AsyncClient, hook_id: str, **params: Any) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/webhooks/{hook_id}/deliveries", params=params)
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]


def fresh(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def test_receiver_down_then_up_delivers_each_once_in_order(
    app: AlertsApp, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    # The worker makes its HTTP client (a TLS context with the CA bundle: ~1.4 MB) on the first delivery.
    assert app.notify.worker._client is None
    hook = await create_hook(client, receiver.url)
    # The secret is shown once, at creation.
    assert hook["secret"] == SECRET
    assert (await client.get(f"/v1/webhooks/{hook['id']}")).json()["secret"] is None
    a, b, other, quiet = fresh(4)
    events = [
        ("raised", 1, alert_doc(a)),
        ("raised", 1, alert_doc(b, level="IV")),
        ("level_changed", 2, alert_doc(a, level="I")),
        ("transitioned", 3, alert_doc(a, level="I", state="verifying")),
        ("transitioned", 2, alert_doc(b, level="IV", state="verifying")),
    ]
    wanted = await publish(app, events)
    # Not for this subscription: another city's alert, and a silenced one.
    await publish(
        app, [("raised", 1, alert_doc(other, region="340204")), ("raised", 1, alert_doc(quiet, suppressed=True))]
    )

    async def retried_while_down() -> bool:
        log = {d["event_id"]: d for d in await deliveries(client, hook["id"])}
        return len(log) == 5 and all(log[f"alert:{x}:1"]["total_attempts"] >= 3 for x in (a, b))

    await wait_until(retried_while_down, timeout=20)
    assert app.notify.worker._client is not None
    log = {d["event_id"]: d for d in await deliveries(client, hook["id"])}
    # Later events of an alert wait for the first: never tried while it is not delivered.
    for later in (f"alert:{a}:2", f"alert:{a}:3", f"alert:{b}:2"):
        assert log[later]["status"] == "pending" and log[later]["total_attempts"] == 0
    first = log[f"alert:{a}:1"]
    assert first["status"] == "pending" and first["last_status_code"] is None
    assert all(x["outcome"] == "retry" and x["error"] and x["status_code"] is None for x in first["attempt_log"])
    # The delay between attempts grows (exponential backoff, capped).
    times = [x["at_ms"] for x in first["attempt_log"]]
    assert times == sorted(times)

    # The same events delivered again by NATS (a batch whose ack was lost) record nothing twice.
    again = [
        (eid, alert_event(kind, alert, {"seq": seq, "kind": kind, "at_ms": 1, "actor": "engine"}, 0))
        for eid, (kind, seq, alert) in zip(wanted, events, strict=True)
    ]
    assert await app.notify.notifications.record(again) == 0
    assert len(await deliveries(client, hook["id"])) == 5

    receiver.fail_once.add(f"alert:{a}:2")
    await receiver.start()

    async def all_delivered() -> bool:
        return all(d["status"] == "delivered" for d in await deliveries(client, hook["id"]))

    await wait_until(all_delivered, timeout=20)
    ok = [(h, body) for h, body in receiver.requests]
    delivered_ids = [json.loads(body)["id"] for h, body in ok]
    # Exactly once each (the one 500 answer aside), nothing of another region or a silenced alert.
    assert sorted(set(delivered_ids)) == sorted(wanted)
    assert delivered_ids.count(f"alert:{a}:2") == 2
    assert all(delivered_ids.count(e) == 1 for e in wanted if e != f"alert:{a}:2")
    # In order per alert.
    for x in (a, b):
        seqs = [int(e.rsplit(":", 1)[1]) for e in dict.fromkeys(delivered_ids) if e.startswith(f"alert:{x}:")]
        assert seqs == sorted(seqs)
    # Signature verifies with the subscription's secret; the body carries the event.
    for headers, body in ok:
        expected = hmac.new(SECRET.encode(), headers["lifeline-timestamp"].encode() + b"." + body, hashlib.sha256)
        assert headers["lifeline-signature"] == "sha256=" + expected.hexdigest()
        doc = json.loads(body)
        assert headers["lifeline-event-id"] == doc["id"] and doc["event"]["alert"]["id"] == doc["alert_id"]
    assert json.loads(ok[0][1])["event"]["alert"]["region"] == "340104"

    log = {d["event_id"]: d for d in await deliveries(client, hook["id"])}
    retried = log[f"alert:{a}:2"]["attempt_log"]
    assert [(x["status_code"], x["outcome"]) for x in retried] == [(500, "retry"), (204, "delivered")]
    assert log[f"alert:{a}:1"]["attempt_log"][-1]["status_code"] == 204
    counts = (await client.get(f"/v1/webhooks/{hook['id']}")).json()["deliveries"]
    assert counts == {"delivered": 5}


async def test_dead_after_max_attempts_then_redelivered(
    app: AlertsApp, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    app.notify.settings.max_attempts = 2
    hook = await create_hook(client, receiver.url, levels=["I", "II"])
    a = fresh(1)[0]
    first, second = await publish(app, [("raised", 1, alert_doc(a)), ("cleared", 2, alert_doc(a, condition="cleared"))])

    async def both_dead() -> bool:
        return len(await deliveries(client, hook["id"], status="dead")) == 2

    # The first is given up after two attempts; then the second goes (and is given up too).
    await wait_until(both_dead, timeout=20)
    for d in await deliveries(client, hook["id"]):
        assert d["status"] == "dead" and d["attempts"] == 2 and d["next_attempt_ms"] is None
        assert [x["outcome"] for x in d["attempt_log"]] == ["retry", "dead"]

    await receiver.start()
    dead = {d["event_id"]: d for d in await deliveries(client, hook["id"])}
    r = await client.post(f"/v1/webhooks/{hook['id']}/deliveries/{dead[first]['id']}/redeliver")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"

    async def first_delivered() -> bool:
        log = {d["event_id"]: d for d in await deliveries(client, hook["id"])}
        return log[first]["status"] == "delivered"

    await wait_until(first_delivered, timeout=10)
    log = {d["event_id"]: d for d in await deliveries(client, hook["id"])}
    assert [x["outcome"] for x in log[first]["attempt_log"]] == ["retry", "dead", "delivered"]
    assert log[second]["status"] == "dead"  # only what was asked for is redelivered
    assert [json.loads(b)["id"] for _, b in receiver.requests] == [first]

    # Only a dead delivery can be redelivered.
    r = await client.post(
        f"/v1/webhooks/{hook['id']}/deliveries/{log[first]['id']}/redeliver", headers={"Accept-Language": "en"}
    )
    assert r.status_code == 409 and "only given-up" in r.json()["detail"]
    r = await client.post(f"/v1/webhooks/{hook['id']}/deliveries/nope/redeliver")
    assert r.status_code == 404


async def test_dead_after_max_age(app: AlertsApp, client: httpx.AsyncClient, receiver: Receiver) -> None:
    app.notify.settings.max_age_s = 0.5
    hook = await create_hook(client, receiver.url)
    (event_id,) = await publish(app, [("raised", 1, alert_doc(fresh(1)[0]))])

    async def dead() -> bool:
        return len(await deliveries(client, hook["id"], status="dead")) == 1

    await wait_until(dead, timeout=10)
    (d,) = await deliveries(client, hook["id"])
    assert d["event_id"] == event_id and 1 < d["attempts"] < app.notify.settings.max_attempts
    assert d["attempt_log"][-1]["outcome"] == "dead" and "Connect" in d["last_error"]


async def test_disabled_or_unmatched_subscriptions_get_nothing(
    app: AlertsApp, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await receiver.start()
    off = await create_hook(client, receiver.url, enabled=False)
    red_gas = await create_hook(client, receiver.url, levels=["I"], domains=["gas"], kinds=["raised"])
    a, b = fresh(2)
    await publish(app, [("raised", 1, alert_doc(a, level="I")), ("raised", 1, alert_doc(b, level="III"))])
    await publish(app, [("closed", 2, alert_doc(a, level="I", state="closed"))])

    async def one_delivered() -> bool:
        return len(await deliveries(client, red_gas["id"], status="delivered")) == 1

    await wait_until(one_delivered, timeout=10)
    await asyncio.sleep(0.5)
    assert [d["event_id"] for d in await deliveries(client, red_gas["id"])] == [f"alert:{a}:1"]
    assert await deliveries(client, off["id"]) == []
    assert len(receiver.requests) == 1


async def test_subscription_validation_roles_and_scope(
    app: AlertsApp, client: httpx.AsyncClient, token_factory
) -> None:
    bad = [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://user:pw@example.com/x"}, "url"),
        ({"url": "https://example.com", "domains": ["lava"]}, "domains"),
        ({"url": "https://example.com", "kinds": ["exploded"]}, "kinds[0]"),
        ({"url": "https://example.com", "levels": ["V"]}, "levels[0]"),
        ({"url": "https://example.com", "region": "34"}, "region"),
        ({"url": "https://example.com", "secret": "short"}, "secret"),
        ({"url": "https://example.com", "colour": "red"}, "colour"),
    ]
    for extra, field in bad:
        r = await client.post("/v1/webhooks", json={"name": "x", **extra})
        assert r.status_code == 422, (extra, r.text)
        body = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert field in [e["field"].removeprefix("body.") for e in body["errors"]], (extra, body)
    r = await client.post("/v1/webhooks", json={"name": "x", "url": "ftp://example.com/x"})
    assert "http 或 https" in r.json()["errors"][0]["reason"]
    r = await client.post(
        "/v1/webhooks", json={"name": "x", "url": "ftp://example.com/x"}, headers={"Accept-Language": "en"}
    )
    assert "http or https URL" in r.json()["errors"][0]["reason"]
    # Another city's region: forbidden; nothing was created by any of it.
    r = await client.post("/v1/webhooks", json={"name": "x", "url": "https://example.com", "region": "340200"})
    assert r.status_code == 403
    assert (await client.get("/v1/webhooks")).json() == {"webhooks": []}

    # Viewers read alerts but do not manage webhooks; another city does not see ours.
    hook = await create_hook(client, "https://partner.example.com/in", region="340104")
    assert hook["secret"] == SECRET and hook["region"] == "340104" and hook["version"] == 1
    for client_id, status in (("viewer-340200", 403), ("viewer-340000", 403)):
        token = await token_factory(client_id)
        r = await client.get("/v1/webhooks", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == status
    svc = await token_factory("svc")
    r = await client.get(f"/v1/webhooks/{hook['id']}", headers={"Authorization": f"Bearer {svc}"})
    assert r.status_code == 200 and r.json()["secret"] is None

    # Update with optimistic concurrency, then delete.
    r = await client.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": False, "expected_version": 1})
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["version"] == 2
    r = await client.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True, "expected_version": 1})
    assert r.status_code == 409
    r = await client.patch(f"/v1/webhooks/{hook['id']}", json={"url": "gopher://x"})
    assert r.status_code == 422
    assert (await client.get(f"/v1/webhooks/{hook['id']}")).json()["url"] == "https://partner.example.com/in"
    assert (await client.delete(f"/v1/webhooks/{hook['id']}")).status_code == 204
    assert (await client.get(f"/v1/webhooks/{hook['id']}")).status_code == 404

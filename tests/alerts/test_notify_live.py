"""Live alert streams on a real alerts service: Server-Sent Events and gRPC Watch deliver the events of
the caller's region (and nothing of another), honour the filters, resume after Last-Event-ID, beat.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from lifeline.alerts.app import AlertsApp
from lifeline.v1 import alerts_pb2, alerts_pb2_grpc, common_pb2

from .test_notify_webhooks import alert_doc, fresh, publish, start_alerts


@pytest.fixture
async def app(service_runner, database_url: str, monkeypatch: pytest.MonkeyPatch) -> AlertsApp:
    monkeypatch.setenv("LIFELINE_ALERTS_NOTIFY_HEARTBEAT_S", "0.3")
    return await start_alerts(service_runner, database_url, monkeypatch)


class Sse:
    """A Server-Sent Events reader over a real HTTP connection."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = 10.0) -> dict[str, str]:
        """The next event (its fields), skipping comments (kept in `comments`)."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if not line:
                    if fields:
                        return fields
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        raise AssertionError("stream ended")

    async def next_alert(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        fields = await self.next(timeout)
        assert "id" in fields, fields
        return fields["id"], json.loads(fields["data"])


@pytest.fixture
async def sse(app: AlertsApp, token_factory) -> AsyncIterator[Any]:
    assert app.http is not None
    base = app.http.url
    opened: list[Any] = []

    async def open_stream(client_id: str, params: Any = None, headers: Any = None) -> Sse:
        token = await token_factory(client_id)
        client = httpx.AsyncClient(base_url=base, timeout=30)
        ctx = client.stream(
            "GET",
            "/v1/alerts/stream",
            params=params,
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
        )
        response = await ctx.__aenter__()
        opened.append((client, ctx))
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Sse(response)
        fields = await stream.next()  # the retry line: the watcher is registered
        assert fields == {"retry": "3000"}
        return stream

    yield open_stream
    for client, ctx in opened:
        await ctx.__aexit__(None, None, None)
        await client.aclose()


async def test_sse_in_scope_filtered_resumable(app: AlertsApp, sse, token_factory) -> None:
    hefei = await sse("operator-340100")
    red_raised = await sse("operator-340100", params={"min_level": "II", "kind": "raised"})
    wuhu = await sse("viewer-340200")
    a, b, c, d = fresh(4)
    ids = await publish(
        app,
        [
            ("raised", 1, alert_doc(a, level="II")),
            ("raised", 1, alert_doc(b, region="340204")),
            ("raised", 1, alert_doc(c, level="IV")),
            ("level_changed", 2, alert_doc(a, level="I")),
            ("raised", 1, alert_doc(d, level="I")),
        ],
    )
    a1, b1, c1, a2, d1 = ids
    # The Hefei operator gets Hefei's events in order, and Wuhu's never (the stream is ordered).
    got = [await hefei.next_alert() for _ in range(4)]
    assert [i for i, _ in got] == [a1, c1, a2, d1]
    assert got[0][1]["kind"] == "raised" and got[0][1]["event"]["alert"]["region"] == "340104"
    assert [i for i, _ in [await red_raised.next_alert() for _ in range(2)]] == [a1, d1]
    assert (await wuhu.next_alert())[0] == b1
    # Heartbeats keep an idle stream open.
    await asyncio.sleep(0.7)
    e = fresh(1)[0]
    (e1,) = await publish(app, [("raised", 1, alert_doc(e, region="340204"))])
    assert (await wuhu.next_alert())[0] == e1
    assert "heartbeat" in wuhu.comments

    # Resume after Last-Event-ID: what came after it, then live.
    resumed = await sse("operator-340100", headers={"Last-Event-ID": c1})
    assert [(await resumed.next_alert())[0] for _ in range(2)] == [a2, d1]
    f = fresh(1)[0]
    (f1,) = await publish(app, [("raised", 1, alert_doc(f))])
    assert (await resumed.next_alert())[0] == f1
    # An unknown resume point: the client is told to reload.
    lost = await sse("operator-340100", headers={"Last-Event-ID": "alert:gone:1"})
    assert (await lost.next())["event"] == "reset"


async def test_sse_refuses_bad_requests(app: AlertsApp, token_factory) -> None:
    assert app.http is not None
    token = await token_factory("operator-340100")
    async with httpx.AsyncClient(base_url=app.http.url, timeout=10) as c:
        r = await c.get("/v1/alerts/stream")
        assert r.status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        for params, field in (
            ({"domain": "lava"}, "domain"),
            ({"min_level": "V"}, "min_level"),
            ({"kind": "x"}, "kind"),
        ):
            r = await c.get("/v1/alerts/stream", params=params, headers=auth)
            assert r.status_code == 422, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert any(field in e["field"] for e in r.json()["errors"])
        r = await c.get("/v1/alerts/stream", params={"domain": "lava"}, headers=auth)
        assert "未知的设施类别" in r.json()["errors"][0]["reason"]
        r = await c.get("/v1/alerts/stream", params={"domain": "lava"}, headers={**auth, "Accept-Language": "en"})
        assert "unknown facility kind" in r.json()["errors"][0]["reason"]


async def test_grpc_watch_in_scope_and_filtered(app: AlertsApp, token_factory) -> None:
    channel = app.grpc_channel()
    stub = alerts_pb2_grpc.AlertServiceStub(channel)

    async def watch(client_id: str, **request: Any) -> Any:
        token = await token_factory(client_id)
        call = stub.Watch(alerts_pb2.WatchRequest(**request), metadata=[("authorization", f"Bearer {token}")])
        await asyncio.wait_for(call.initial_metadata(), 10)  # registered: events from now on reach it
        return call

    async def read(call: Any) -> str:
        response = await asyncio.wait_for(call.read(), 10)
        assert response is not grpc.aio.EOF
        return f"alert:{response.event.alert.id}:{response.event.entry.seq}"

    try:
        wuhu = await watch("viewer-340200")
        hefei_red = await watch(
            "operator-340100",
            min_level=common_pb2.WARNING_LEVEL_I_RED,
            kinds=[alerts_pb2.ALERT_EVENT_KIND_RAISED, alerts_pb2.ALERT_EVENT_KIND_CLOSED],
        )
        a, b, c, d = fresh(4)
        a1, b1, _, d1 = await publish(
            app,
            [
                ("raised", 1, alert_doc(a, level="I")),
                ("raised", 1, alert_doc(b, region="340204")),
                ("raised", 1, alert_doc(c, level="II")),
                ("raised", 1, alert_doc(d, level="I", region="340204")),
            ],
        )
        assert [await read(wuhu), await read(wuhu)] == [b1, d1]
        (_, a3) = await publish(
            app,
            [("level_changed", 2, alert_doc(a, level="I")), ("closed", 3, alert_doc(a, level="I", state="closed"))],
        )
        assert [await read(hefei_red), await read(hefei_red)] == [a1, a3]

        # A bad filter is refused with a status; no token, no stream.
        token = await token_factory("operator-340100")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            call = stub.Watch(
                alerts_pb2.WatchRequest(region_prefix="34x"), metadata=[("authorization", f"Bearer {token}")]
            )
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Watch(alerts_pb2.WatchRequest()).read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wuhu.cancel()
        hefei_red.cancel()
    finally:
        await channel.close()
    # Cancelled watchers are gone from the feed.
    await asyncio.sleep(0.2)
    assert not app.notify.feed.watchers

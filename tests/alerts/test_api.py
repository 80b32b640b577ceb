"""REST and gRPC edges: region- and role-scoped reads, workflow steps, rules, problems in zh-CN and en."""

from __future__ import annotations

import grpc
import httpx
import pytest

from lifeline.alerts.app import AlertsApp
from lifeline.v1 import alerts_pb2 as P
from lifeline.v1 import alerts_pb2_grpc

from .helpers import raise_alert


async def test_rest_list_get_transition_and_refusals(
    alerts: AlertsApp, client: httpx.AsyncClient, token_factory
) -> None:
    alert_id = await raise_alert(alerts.service)
    page = (await client.get("/v1/alerts", params={"level": "IV", "state": "raised", "domain": "gas"})).json()
    assert [a["id"] for a in page["alerts"]] == [alert_id]
    assert (await client.get("/v1/alerts", params={"level": "I"})).json()["alerts"] == []
    r = await client.post(f"/v1/alerts/{alert_id}/transitions", json={"to_state": "verifying", "comment": "研判中"})
    assert r.status_code == 200 and r.json()["state"] == "verifying"
    detail = (await client.get(f"/v1/alerts/{alert_id}")).json()
    assert [h["kind"] for h in detail["history"]] == ["raised", "transitioned"]
    assert detail["history"][1]["comment"] == "研判中"
    await _problems_in_chinese_and_english(client, await raise_alert(alerts.service))
    await _viewers_read_and_cannot_act(alerts, token_factory, alert_id)


async def _problems_in_chinese_and_english(client: httpx.AsyncClient, alert_id: str) -> None:
    r = await client.post(f"/v1/alerts/{alert_id}/transitions", json={"to_state": "closed"})
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    assert "不能转为" in r.json()["detail"]
    r = await client.post(
        f"/v1/alerts/{alert_id}/transitions", json={"to_state": "closed"}, headers={"Accept-Language": "en"}
    )
    assert r.json()["detail"] == "the alert is raised and cannot move to closed (allowed: verifying)"
    r = await client.post(f"/v1/alerts/{alert_id}/transitions", json={"to_state": "nowhere"})
    assert r.status_code == 422
    r = await client.get("/v1/alerts/no-such-alert", headers={"Accept-Language": "en"})
    assert r.status_code == 404 and r.json()["detail"] == "alert no-such-alert does not exist"
    detail = (await client.get(f"/v1/alerts/{alert_id}")).json()
    assert detail["state"] == "raised" and len(detail["history"]) == 1  # refusals changed nothing


async def _viewers_read_and_cannot_act(alerts: AlertsApp, token_factory, alert_id: str) -> None:
    assert alerts.http is not None
    for client_id, can_see in (("viewer-340000", True), ("viewer-340200", False), ("partner-340100", True)):
        token = await token_factory(client_id)
        async with httpx.AsyncClient(base_url=alerts.http.url, headers={"Authorization": f"Bearer {token}"}) as c:
            page = (await c.get("/v1/alerts")).json()
            assert (alert_id in [a["id"] for a in page["alerts"]]) is can_see
            r = await c.post(f"/v1/alerts/{alert_id}/transitions", json={"to_state": "confirmed"})
            assert r.status_code == 403


async def test_rules_crud_with_validation_and_history(alerts: AlertsApp, client: httpx.AsyncClient) -> None:
    defaults = (await client.get("/v1/rules", params={"quantity": "gas.ch4", "origin": "catalogue"})).json()
    [ch4] = defaults["rules"]
    assert ch4["id"] == "catalogue:gas.ch4:value" and ch4["conditions"][0]["levels"]["I"] == 50.0
    assert ch4["for_s"] == 30  # the policy's gas duration
    bad = {
        "name": "x",
        "conditions": [{"quantity": "gas.ch4", "direction": "above", "levels": {"IV": 10.0, "III": 5.0}}],
    }
    r = await client.post("/v1/rules", json=bad, headers={"Accept-Language": "en"})
    assert r.status_code == 422 and "increase from IV to I" in r.json()["detail"]
    r = await client.post("/v1/rules", json={**bad, "conditions": [{**bad["conditions"][0], "quantity": "gas.nope"}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "conditions[0].quantity"
    good = {
        "id": "tunnel-ch4",
        "name": "综合管廊燃气舱甲烷",
        "facility_kind": "utility_tunnel",
        "conditions": [{"quantity": "gas.ch4", "levels": {"II": 20.0, "I": 25.0}}],
        "for_s": 10,
    }
    r = await client.post("/v1/rules", json=good)
    assert r.status_code == 201 and r.json()["version"] == 1
    assert (await client.post("/v1/rules", json=good)).status_code == 409
    r = await client.patch("/v1/rules/tunnel-ch4", json={"for_s": 20, "expected_version": 1})
    assert r.status_code == 200 and r.json()["version"] == 2
    r = await client.patch("/v1/rules/tunnel-ch4", json={"for_s": 30, "expected_version": 1})
    assert r.status_code == 409
    assert (await client.patch("/v1/rules/catalogue:gas.ch4:value", json={"for_s": 1})).status_code == 409
    assert (await client.delete("/v1/rules/tunnel-ch4")).status_code == 204
    assert (await client.get("/v1/rules/tunnel-ch4")).status_code == 404
    assert "tunnel-ch4" not in alerts.service.engine.api_rules


@pytest.fixture
async def stub(alerts: AlertsApp):
    async with alerts.grpc_channel() as channel:
        yield alerts_pb2_grpc.AlertServiceStub(channel)


async def test_grpc_reads_transitions_and_refusals(alerts: AlertsApp, stub, operator_token: str) -> None:
    alert_id = await raise_alert(alerts.service)
    md = (("authorization", f"Bearer {operator_token}"),)
    page = await stub.ListAlerts(P.ListAlertsRequest(), metadata=md)
    assert [a.id for a in page.alerts] == [alert_id]
    moved = await stub.Transition(P.TransitionRequest(id=alert_id, to_state=P.ALERT_STATE_VERIFYING), metadata=md)
    assert moved.alert.state == P.ALERT_STATE_VERIFYING and moved.entry.to_state == P.ALERT_STATE_VERIFYING
    got = await stub.GetAlert(P.GetAlertRequest(id=alert_id), metadata=md)
    assert [h.kind for h in got.history] == [P.ALERT_EVENT_KIND_RAISED, P.ALERT_EVENT_KIND_TRANSITIONED]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Transition(P.TransitionRequest(id=alert_id, to_state=P.ALERT_STATE_CLOSED), metadata=md)
    # The kit maps 409 to ALREADY_EXISTS; the problem says what is wrong.
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "不能转为" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRule(P.CreateRuleRequest(rule=P.Rule(name="", kind=P.RULE_KIND_THRESHOLD)), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rules = await stub.ListRules(P.ListRulesRequest(quantity="gas.ch4"), metadata=md)
    assert rules.rules[0].origin == P.RULE_ORIGIN_CATALOGUE

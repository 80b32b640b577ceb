"""Every change versioned: the history of a facility and its state at any past time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from .helpers import PIPE, facility, risk, sensor


async def test_history_and_as_of(client: httpx.AsyncClient) -> None:
    created = (await client.post("/v1/facilities", json=facility(reason="普查录入"))).json()
    states = [created]
    for change in ({"name": "长江西路燃气管段（改）"}, {"status": "under_repair"}, {"attributes": {"material": "钢"}}):
        await asyncio.sleep(0.01)
        r = await client.patch(f"/v1/facilities/{PIPE}", json={**change, "reason": "巡检更正"})
        assert r.status_code == 200, r.text
        states.append(r.json())
    assert [s["version"] for s in states] == [1, 2, 3, 4]

    history = (await client.get(f"/v1/facilities/{PIPE}/history")).json()
    versions = history["versions"]
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    assert [v["change"] for v in versions] == ["created", "updated", "updated", "updated"]
    assert versions[0]["before"] is None and versions[0]["reason"] == "普查录入"
    assert versions[2]["before"]["status"] == "in_service" and versions[2]["after"]["status"] == "under_repair"
    assert all(v["actor"] for v in versions)

    for state in states:
        at = state["updated_ms"]
        as_ms = (await client.get(f"/v1/facilities/{PIPE}", params={"as_of": str(at)})).json()
        assert as_ms == state
        rfc = datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="milliseconds")
        assert (await client.get(f"/v1/facilities/{PIPE}", params={"as_of": rfc})).json() == state
    # Between two changes: the earlier one holds.
    mid = (await client.get(f"/v1/facilities/{PIPE}", params={"as_of": str(states[3]["updated_ms"] - 1)})).json()
    assert mid["version"] == 3
    r = await client.get(f"/v1/facilities/{PIPE}", params={"as_of": str(created["updated_ms"] - 1)})
    assert r.status_code == 404
    r = await client.get(f"/v1/facilities/{PIPE}", params={"as_of": "2026-01-01T00:00:00"})  # no offset
    assert r.status_code == 400


async def test_every_entity_has_history_and_as_of(client: httpx.AsyncClient) -> None:
    """Sensors, units, links and risk sources are versioned the same way as facilities."""
    await client.post("/v1/facilities", json=facility())
    await client.post("/v1/facilities", json=facility("3401041102000002"))
    creations = {
        "sensors/HF-GAS-CH4-0001": ("/v1/sensors", sensor(), {"interval_s": 30}),
        "units/hf-gas": ("/v1/units", {"id": "hf-gas", "name": "合肥燃气集团"}, {"name": "合肥燃气集团有限公司"}),
        "links/L-1": ("/v1/links", {"id": "L-1", "from_code": PIPE, "to_code": "3401041102000002"}, {"kind": "feeds"}),
        "risks/R-1": ("/v1/risks", risk("R-1"), {"grade": "I"}),
    }
    for path, (collection, body, change) in creations.items():
        first = await client.post(collection, json=body)
        assert first.status_code == 201, first.text
        await asyncio.sleep(0.01)
        second = await client.patch(f"/v1/{path}", json={**change, "reason": "更正"})
        assert second.status_code == 200, second.text
        await asyncio.sleep(0.01)
        retired = await client.post(f"/v1/{path}/retire", json={"reason": "停用"})
        assert retired.status_code == 200, retired.text
        states = [first.json(), second.json(), retired.json()]

        versions = (await client.get(f"/v1/{path}/history")).json()["versions"]
        assert [(v["version"], v["change"]) for v in versions] == [(1, "created"), (2, "updated"), (3, "retired")]
        assert versions[1]["before"] == states[0] and versions[1]["after"] == states[1], path
        for state in states:
            r = await client.get(f"/v1/{path}", params={"as_of": str(state["updated_ms"])})
            assert r.json() == state, path
        r = await client.get(f"/v1/{path}", params={"as_of": str(states[0]["updated_ms"] - 1)})
        assert r.status_code == 404, path

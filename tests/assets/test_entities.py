"""Risk sources, topology links (and walks along them), sensor and facility threshold overrides."""

from __future__ import annotations

import httpx
import pytest

from lifeline.assets.app import AssetsApp

from .helpers import PIPE, auth, counts, facility, point, risk, sensor

BRIDGE = "3401110501000001"  # another district of Hefei
# A small gas network: station → A → B → C → A (a ring main) and B → D; the valve controls B.
STATION, A, B, C, D, VALVE = (f"34010411{n:02d}000001" for n in (1, 2, 3, 4, 5, 6))


async def test_risk_crud(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    await client.post("/v1/facilities", json=facility())
    await client.post("/v1/facilities", json=point(BRIDGE, kind="bridge", name="南淝河大桥"))
    r = await client.post("/v1/risks", json=risk())
    assert r.status_code == 201, r.text
    created = r.json()
    # The region comes from the first facility; the rest is kept as given.
    assert (created["region"], created["grade"], created["status"], created["version"]) == ("340104", "II", "active", 1)
    assert created["rectification"]["status"] == "in_progress" and created["controls"] == ["每日巡检", "甲烷监测"]
    assert (await client.get("/v1/risks/R-0001")).json() == created

    await client.post("/v1/risks", json=risk("R-0002", (BRIDGE,), name="桥梁超载", hazard="overload", grade="I"))
    await client.post("/v1/risks", json=risk("R-0003", (PIPE, BRIDGE), name="施工破坏", hazard="excavation"))

    async def listed(**params: str) -> list[str]:
        body = (await client.get("/v1/risks", params=params)).json()
        return [x["id"] for x in body["risks"]]

    assert await listed() == ["R-0001", "R-0002", "R-0003"]
    assert await listed(grade="I") == ["R-0002"]
    assert await listed(hazard="gas_leak") == ["R-0001"]
    assert await listed(facility=BRIDGE) == ["R-0002", "R-0003"]
    assert (await client.get("/v1/risks", params={"facility": PIPE[:-1]})).status_code == 422  # a whole code
    assert await listed(region="340111") == ["R-0002"]
    assert await listed(q="桥梁") == ["R-0002"]
    page = (await client.get("/v1/risks", params={"limit": 2})).json()
    assert len(page["risks"]) == 2 and page["next_page_token"]

    r = await client.patch(
        "/v1/risks/R-0001",
        json={"grade": "III", "rectification": {"status": "done", "owner": "合肥燃气集团"}, "reason": "整改完成"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["grade"], r.json()["rectification"]["status"], r.json()["version"]) == ("III", "done", 2)
    r = await client.post("/v1/risks/R-0001/retire", json={"reason": "已消除"})
    assert r.json()["status"] == "retired"
    assert await listed(status="active") == ["R-0002", "R-0003"]
    assert (await client.patch("/v1/risks/R-0001", json={"grade": "I"})).status_code == 409


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"grade": "V"}, 422, "body.grade"),
        ({"facility_codes": ["3401049999999999"]}, 422, "facility_codes[0]"),
        ({"geometry": {"type": "Point", "coordinates": [31.8, 117.2]}}, 422, "geometry.coordinates"),
        ({"rectification": {"status": "pending"}}, 422, "rectification.deadline_ms"),
        ({"rectification": {"status": "forgotten", "deadline_ms": 1}}, 422, "body.rectification.status"),
        ({"region": "340201", "facility_codes": []}, 422, "region"),  # Wuhu: not this instance
        ({"hazard": "Gas Leak"}, 422, "body.hazard"),
    ],
)
async def test_bad_risk_is_a_problem_and_changes_nothing(
    client: httpx.AsyncClient, assets: AssetsApp, change: dict, status: int, field: str
) -> None:
    await client.post("/v1/facilities", json=facility())
    before = await counts(assets)
    r = await client.post("/v1/risks", json=risk(**change), headers={"Accept-Language": "en"})
    assert r.status_code == status, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert await counts(assets) == before


async def network(client: httpx.AsyncClient) -> dict[tuple[str, str], str]:
    for code in (STATION, A, B, C, D, VALVE):
        assert (await client.post("/v1/facilities", json=point(code))).status_code == 201
    ids = {}
    for frm, to, kind in [
        (STATION, A, "feeds"),
        (A, B, "flow"),
        (B, C, "flow"),
        (C, A, "flow"),
        (B, D, "flow"),
        (VALVE, B, "controls"),
    ]:
        r = await client.post("/v1/links", json={"from_code": frm, "to_code": to, "kind": kind})
        assert r.status_code == 201, r.text
        ids[(frm, to)] = r.json()["id"]
    return ids


async def test_links_and_walks(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    ids = await network(client)
    link = (await client.get(f"/v1/links/{ids[(A, B)]}")).json()
    assert (link["from_code"], link["to_code"], link["kind"], link["region"]) == (A, B, "flow", "340104")

    async def listed(**params: str) -> list[tuple[str, str]]:
        body = (await client.get("/v1/links", params=params)).json()
        return sorted((x["from_code"], x["to_code"]) for x in body["links"])

    assert await listed(facility=B) == sorted([(A, B), (B, C), (B, D), (VALVE, B)])
    assert await listed(from_code=B) == sorted([(B, C), (B, D)])
    assert await listed(to_code=A, kind="flow") == [(C, A)]

    down = (await client.get(f"/v1/facilities/{STATION}/downstream")).json()
    reached = {f["code"]: (f["depth"], f["path"]) for f in down["facilities"]}
    # The ring A → B → C → A ends the walk instead of looping; each facility once, at its shortest depth.
    assert reached == {
        A: (1, [STATION, A]),
        B: (2, [STATION, A, B]),
        C: (3, [STATION, A, B, C]),
        D: (3, [STATION, A, B, D]),
    }
    assert down["facilities"][1]["links"] == [ids[(STATION, A)], ids[(A, B)]]
    assert down["truncated"] is False
    up = (await client.get(f"/v1/facilities/{D}/upstream")).json()
    assert {f["code"]: f["depth"] for f in up["facilities"]} == {B: 1, A: 2, VALVE: 2, C: 3, STATION: 3}
    only_flow = (await client.get(f"/v1/facilities/{D}/upstream", params={"kind": "flow"})).json()
    assert {f["code"] for f in only_flow["facilities"]} == {B, A, C}
    short = (await client.get(f"/v1/facilities/{STATION}/downstream", params={"depth": 2})).json()
    assert [f["code"] for f in short["facilities"]] == [A, B] and short["truncated"] is True
    assert (await client.get(f"/v1/facilities/{STATION}/downstream", params={"depth": 0})).status_code == 422
    assert (await client.get("/v1/facilities/3401049999999999/downstream")).status_code == 404

    # Retiring a link cuts the walk; the facility cannot be retired while links touch it.
    assert (await client.post(f"/v1/facilities/{D}/retire")).status_code == 409
    assert (await client.post(f"/v1/links/{ids[(B, D)]}/retire")).json()["status"] == "retired"
    down = (await client.get(f"/v1/facilities/{STATION}/downstream")).json()
    assert D not in {f["code"] for f in down["facilities"]}
    assert (await client.post(f"/v1/facilities/{D}/retire")).status_code == 200
    # A retired link does not block a new one alike, but a retired end does.
    assert (await client.post("/v1/links", json={"from_code": B, "to_code": D})).status_code == 409
    r = await client.patch(f"/v1/links/{ids[(C, A)]}", json={"kind": "feeds", "reason": "更正"})
    assert r.status_code == 200 and (r.json()["kind"], r.json()["version"]) == ("feeds", 2)


async def test_bad_links_change_nothing(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    ids = await network(client)
    before = await counts(assets)
    bad = [
        ({"from_code": A, "to_code": A}, 422, "to_code"),
        ({"from_code": A, "to_code": "3401049999999999"}, 422, "to_code"),
        ({"from_code": "3401049999999998", "to_code": A}, 422, "from_code"),
        ({"from_code": A, "to_code": B}, 409, None),  # the same active flow link again
        ({"from_code": A, "to_code": B, "kind": "pumps"}, 422, "body.kind"),
    ]
    for body, status, field in bad:
        r = await client.post("/v1/links", json=body, headers={"Accept-Language": "zh-CN"})
        assert r.status_code == status, (body, r.text)
        if field:
            assert [e["field"] for e in r.json()["errors"]] == [field]
    r = await client.patch(f"/v1/links/{ids[(B, C)]}", json={"to_code": D})  # would duplicate B → D
    assert r.status_code == 409 and "已有" in r.json()["detail"]
    # The same ends with another kind are a different link.
    assert (await client.post("/v1/links", json={"from_code": A, "to_code": B, "kind": "controls"})).status_code == 201
    after = await counts(assets)
    assert after["link"] == before["link"] + 1 and after["history"] == before["history"] + 1


async def test_region_scope_of_risks_and_links(client: httpx.AsyncClient, assets: AssetsApp, token_factory) -> None:
    ids = await network(client)
    await client.post("/v1/risks", json=risk(codes=(A,)))
    await client.post("/v1/sensors", json=sensor(facility_code=A))
    wuhu = await token_factory.client(roles=["admin"], region="340200")
    county = await token_factory.client(roles=["operator"], region="340111")
    assert assets.http is not None
    link = ids[(A, B)]
    async with httpx.AsyncClient(base_url=assets.http.url, timeout=30) as c:
        before = await counts(assets)
        for path in ("/v1/risks/R-0001", f"/v1/links/{link}", "/v1/sensors/HF-GAS-CH4-0001", f"/v1/facilities/{A}"):
            assert (await c.get(path, headers=auth(wuhu))).status_code == 403, path
            assert (await c.get(f"{path}/history", headers=auth(wuhu))).status_code == 403, path
            assert (await c.post(f"{path}/retire", headers=auth(wuhu))).status_code == 403, path
        assert (await c.patch("/v1/risks/R-0001", json={"grade": "I"}, headers=auth(wuhu))).status_code == 403
        assert (await c.patch(f"/v1/links/{link}", json={"kind": "feeds"}, headers=auth(wuhu))).status_code == 403
        r = await c.patch("/v1/sensors/HF-GAS-CH4-0001", json={"setpoint": 1}, headers=auth(wuhu))
        assert r.status_code == 403
        assert (await c.get(f"/v1/facilities/{A}/downstream", headers=auth(wuhu))).status_code == 403
        for plural in ("risks", "links", "sensors", "facilities"):
            assert (await c.get(f"/v1/{plural}", headers=auth(wuhu))).json()[plural] == []
        # A Wuhu admin cannot tie a Hefei facility to a risk source or link it.
        r = await c.post("/v1/risks", json=risk("R-9", (A,), region="340202"), headers=auth(wuhu))
        assert r.status_code in (403, 422)
        r = await c.post("/v1/links", json={"from_code": A, "to_code": D, "kind": "controls"}, headers=auth(wuhu))
        assert r.status_code == 403
        # A county operator of 340111 may not link two facilities of 340104 either.
        r = await c.post("/v1/links", json={"from_code": A, "to_code": D, "kind": "controls"}, headers=auth(county))
        assert r.status_code == 403
        assert await counts(assets) == before


async def test_sensor_overrides_and_windows(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    await client.post("/v1/facilities", json=facility())
    overrides = [{"measure": "value", "direction": "above", "levels": {"IV": 4, "III": 8, "II": 20, "I": 40}}]
    window = {"kind": "maintenance", "start_ms": 1_800_000_000_000, "end_ms": 1_800_000_360_000, "note": "阀井检修"}
    r = await client.post("/v1/sensors", json=sensor(thresholds=overrides, windows=[window]))
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["thresholds"] == [
        {"measure": "value", "direction": "above", "levels": {"IV": 4, "III": 8, "II": 20, "I": 40}}
    ]
    assert s["windows"] == [window] and s["setpoint"] is None

    calibration = {"kind": "calibration", "start_ms": 1_700_000_000_000, "end_ms": 1_700_000_060_000, "note": ""}
    r = await client.patch("/v1/sensors/HF-GAS-CH4-0001", json={"add_windows": [calibration]})
    assert r.status_code == 200, r.text
    assert r.json()["windows"] == [calibration, window]  # ordered by start
    r = await client.patch("/v1/sensors/HF-GAS-CH4-0001", json={"remove_windows": [window]})
    assert r.json()["windows"] == [calibration] and r.json()["version"] == 3

    before = await counts(assets)
    bad = [
        {"thresholds": [{"direction": "above", "levels": {"IV": 8, "III": 4}}]},  # not increasing
        {"thresholds": [{"direction": "below", "levels": {"IV": 8}}]},  # no such rule for gas.ch4
        {"thresholds": [{"measure": "deviation_pct", "direction": "above", "levels": {"IV": 8}}]},
        {"thresholds": [{"direction": "above", "levels": {"IV": 101}}]},  # beyond 100 %LEL
        {"thresholds": [{"direction": "above", "levels": {"IV": 4}}, {"direction": "above", "levels": {"IV": 5}}]},
        {"setpoint": 150},
        {"add_windows": [{**window, "end_ms": window["start_ms"]}]},
        {"remove_windows": [window]},  # already removed
    ]
    for body in bad:
        r = await client.patch("/v1/sensors/HF-GAS-CH4-0001", json=body, headers={"Accept-Language": "en"})
        assert r.status_code == 422, (body, r.text)
        assert r.json()["errors"], r.text
    assert await counts(assets) == before

    # A quantity whose catalogue rule is a deviation from a setpoint.
    r = await client.post(
        "/v1/sensors",
        json=sensor(
            "HF-GAS-P-0001",
            quantity="gas.pressure",
            setpoint=200,
            thresholds=[{"measure": "deviation_pct", "direction": "above", "levels": {"IV": 5, "I": 25}}],
        ),
    )
    assert r.status_code == 201, r.text
    assert r.json()["setpoint"] == 200 and r.json()["thresholds"][0]["levels"] == {"IV": 5, "I": 25}


async def test_facility_thresholds(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    ch4 = {"quantity": "gas.ch4", "direction": "above", "levels": {"III": 6, "I": 30}}
    r = await client.post("/v1/facilities", json=facility(thresholds=[ch4]))
    assert r.status_code == 201, r.text
    assert r.json()["thresholds"] == [
        {"quantity": "gas.ch4", "measure": "value", "direction": "above", "levels": {"III": 6, "I": 30}}
    ]
    chlorine = {"quantity": "water.chlorine", "direction": "outside", "levels": {"III": [0.1, 1.5], "I": [0.05, 3]}}
    r = await client.patch(f"/v1/facilities/{PIPE}", json={"thresholds": [ch4, chlorine]})
    assert r.status_code == 200, r.text
    assert r.json()["thresholds"][1]["levels"] == {"III": [0.1, 1.5], "I": [0.05, 3]}
    for bad, field in [
        ([{**ch4, "quantity": "gas.unobtainium"}], "thresholds[0].quantity"),
        ([ch4, chlorine, ch4], "thresholds[2]"),
        ([{**chlorine, "levels": {"III": [0.1, 1.5], "I": [0.2, 1.0]}}], "thresholds[0].levels"),  # narrows
        ([{**chlorine, "levels": {"III": 1.0}}], "thresholds[0].levels"),  # outside needs a band
    ]:
        r = await client.patch(f"/v1/facilities/{PIPE}", json={"thresholds": bad})
        assert r.status_code == 422, (bad, r.text)
        assert [e["field"] for e in r.json()["errors"]] == [field], r.text
    assert (await client.get(f"/v1/facilities/{PIPE}")).json()["version"] == 2

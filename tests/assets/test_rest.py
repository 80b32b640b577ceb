"""Assets over REST: CRUD of facilities, sensors and units; bad input; region scope; roles."""

from __future__ import annotations

import httpx
import pytest

from lifeline.assets.app import AssetsApp

from .helpers import PIPE, counts, facility, sensor


async def test_facility_crud(client: httpx.AsyncClient) -> None:
    unit = await client.post(
        "/v1/units",
        json={
            "name": "合肥燃气集团有限公司",
            "contacts": [{"name": "张工", "role": "值班", "phone": "0551-12345678"}],
            "domains": ["gas"],
        },
    )
    assert unit.status_code == 201, unit.text
    unit_id = unit.json()["id"]
    assert unit.json()["region"] == "340100"

    r = await client.post("/v1/facilities", json=facility(unit_id=unit_id))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["region"] == "340104" and body["version"] == 1 and body["status"] == "in_service"
    assert body["attributes"]["diameter_mm"] == 200 and body["unit_id"] == unit_id

    got = (await client.get(f"/v1/facilities/{PIPE}")).json()
    assert got == body

    r = await client.patch(f"/v1/facilities/{PIPE}", json={"status": "under_repair", "reason": "泄漏抢修"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "under_repair" and r.json()["version"] == 2
    assert r.json()["name"] == body["name"]  # fields not sent stay as they were
    # The same values again: nothing changes, no new version.
    r = await client.patch(f"/v1/facilities/{PIPE}", json={"status": "under_repair"})
    assert r.json()["version"] == 2

    r = await client.post(f"/v1/facilities/{PIPE}/retire", json={"reason": "管段废弃"})
    assert r.status_code == 200 and r.json()["status"] == "retired" and r.json()["version"] == 3
    r = await client.patch(f"/v1/facilities/{PIPE}", json={"name": "x"})
    assert r.status_code == 409


async def test_facility_list_filters_and_paging(client: httpx.AsyncClient) -> None:
    await client.post("/v1/facilities", json=facility("3401041102000001"))
    await client.post("/v1/facilities", json=facility("3401041102000002", name="金寨路燃气管段"))
    await client.post(
        "/v1/facilities",
        json=facility(
            "3401110501000001",
            kind="bridge",
            name="南淝河大桥",
            geometry={"type": "Point", "coordinates": [117.30, 31.86]},
        ),
    )
    page = (await client.get("/v1/facilities", params={"limit": 2})).json()
    assert [f["code"] for f in page["facilities"]] == ["3401041102000001", "3401041102000002"]
    rest = (await client.get("/v1/facilities", params={"limit": 2, "page_token": page["next_page_token"]})).json()
    assert [f["code"] for f in rest["facilities"]] == ["3401110501000001"] and rest["next_page_token"] is None
    assert [
        f["code"] for f in (await client.get("/v1/facilities", params={"kind": "bridge"})).json()["facilities"]
    ] == ["3401110501000001"]
    by_region = (await client.get("/v1/facilities", params={"region": "340111"})).json()["facilities"]
    assert [f["code"] for f in by_region] == ["3401110501000001"]
    by_name = (await client.get("/v1/facilities", params={"q": "金寨"})).json()["facilities"]
    assert [f["code"] for f in by_name] == ["3401041102000002"]
    by_code = (await client.get("/v1/facilities", params={"q": "110200000"})).json()["facilities"]
    assert len(by_code) == 2
    assert (await client.get("/v1/facilities", params={"status": "retired"})).json()["facilities"] == []


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"code": "34010411020001"}, 422, "code"),  # 14 digits
        ({"code": "34010411020000AB"}, 422, "code"),
        ({"code": "3402021102000001"}, 422, "region"),  # Wuhu: not this instance
        ({"geometry": {"type": "Point", "coordinates": [31.82, 117.2]}}, 422, "geometry.coordinates"),  # swapped
        ({"geometry": {"type": "Point", "coordinates": [117.2]}}, 422, "geometry.coordinates"),
        ({"geometry": {"type": "LineString", "coordinates": [[117.2, 31.8]]}}, 422, "geometry.coordinates"),
        ({"geometry": {"type": "Polygon", "coordinates": []}}, 422, None),
        ({"kind": "spaceport"}, 422, None),
        ({"unit_id": "no-such-unit"}, 422, "unit_id"),
    ],
)
async def test_bad_facility_is_a_problem_and_changes_nothing(
    client: httpx.AsyncClient, assets: AssetsApp, change: dict, status: int, field: str | None
) -> None:
    before = await counts(assets)
    r = await client.post("/v1/facilities", json=facility(**change), headers={"Accept-Language": "zh-CN"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    if field is not None:
        assert [e["field"] for e in problem["errors"]] == [field]
    assert await counts(assets) == before
    assert (await assets.relay.depth()) == 0


async def test_duplicate_code_is_a_conflict(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    assert (await client.post("/v1/facilities", json=facility())).status_code == 201
    before = await counts(assets)
    r = await client.post("/v1/facilities", json=facility(name="另一个"), headers={"Accept-Language": "en"})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert await counts(assets) == before
    assert (await client.get(f"/v1/facilities/{PIPE}")).json()["name"] == facility()["name"]


async def test_sensor_crud_and_validation(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    await client.post("/v1/facilities", json=facility())
    r = await client.post("/v1/sensors", json=sensor())
    assert r.status_code == 201, r.text
    s = r.json()
    # Unit and interval from the catalogue, position from the facility, region from its code.
    assert (s["unit"], s["region"], s["status"]) == ("%LEL", "340104", "active")
    assert s["position"] == {"lon": 117.20, "lat": 31.82} and s["interval_s"] > 0

    before = await counts(assets)
    bad = [
        (sensor("S2", quantity="gas.unobtainium"), 422),
        (sensor("S2", unit="furlong"), 422),
        (sensor("S2", position={"lon": 0.0, "lat": 0.0}), 422),
        (sensor("S2", range_min=5.0), 422),
        (sensor("S2", facility_code="3401049999999999"), 404),
        (sensor(), 409),
        (sensor("bad id with spaces"), 422),
    ]
    for body, status in bad:
        r = await client.post("/v1/sensors", json=body)
        assert r.status_code == status, (body, r.text)
    assert await counts(assets) == before

    r = await client.patch("/v1/sensors/HF-GAS-CH4-0001", json={"interval_s": 30, "range_min": 0, "range_max": 80})
    assert r.status_code == 200, r.text
    assert (r.json()["interval_s"], r.json()["range_max"], r.json()["version"]) == (30, 80, 2)
    r = await client.patch("/v1/sensors/HF-GAS-CH4-0001", json={"range_min": 90})
    assert r.status_code == 422
    listed = (await client.get("/v1/sensors", params={"facility_code": PIPE})).json()["sensors"]
    assert [x["sensor_id"] for x in listed] == ["HF-GAS-CH4-0001"]

    # A facility with active sensors cannot be retired; after retiring the sensor it can.
    assert (await client.post(f"/v1/facilities/{PIPE}/retire")).status_code == 409
    assert (await client.post("/v1/sensors/HF-GAS-CH4-0001/retire")).json()["status"] == "retired"
    assert (await client.post(f"/v1/facilities/{PIPE}/retire")).status_code == 200
    assert (await client.post("/v1/sensors", json=sensor("S3"))).status_code == 409


async def test_unit_crud(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/units", json={"id": "hf-water", "name": "合肥供水集团", "domains": ["water"]})
    assert r.status_code == 201, r.text
    r = await client.patch("/v1/units/hf-water", json={"contacts": [{"name": "李工", "phone": "110"}]})
    assert r.json()["contacts"][0]["name"] == "李工" and r.json()["domains"] == ["water"]
    assert [u["id"] for u in (await client.get("/v1/units", params={"q": "供水"})).json()["units"]] == ["hf-water"]
    assert (await client.post("/v1/units", json={"id": "hf-water", "name": "x"})).status_code == 409
    assert (await client.post("/v1/units", json={"name": "x", "region": "3401"})).status_code == 422
    assert (await client.post("/v1/units/hf-water/retire")).json()["status"] == "retired"


async def test_region_scope(client: httpx.AsyncClient, assets: AssetsApp, token_factory) -> None:
    await client.post("/v1/facilities", json=facility())
    wuhu = await token_factory.client(roles=["admin"], region="340200")
    county = await token_factory.client(roles=["operator"], region="340111")
    province = await token_factory.client(roles=["viewer"], region="340000")
    assert assets.http is not None
    async with httpx.AsyncClient(base_url=assets.http.url, timeout=30) as c:

        def auth(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        before = await counts(assets)
        assert (await c.get(f"/v1/facilities/{PIPE}", headers=auth(wuhu))).status_code == 403
        assert (await c.get(f"/v1/facilities/{PIPE}/history", headers=auth(wuhu))).status_code == 403
        assert (await c.get("/v1/facilities", headers=auth(wuhu))).json()["facilities"] == []
        assert (await c.patch(f"/v1/facilities/{PIPE}", json={"name": "x"}, headers=auth(wuhu))).status_code == 403
        assert (await c.post(f"/v1/facilities/{PIPE}/retire", headers=auth(wuhu))).status_code == 403
        # A county operator may not register a facility of a neighbouring county.
        r = await c.post("/v1/facilities", json=facility("3401041102000002"), headers=auth(county))
        assert r.status_code == 403
        assert (await c.get("/v1/facilities", headers=auth(county))).json()["facilities"] == []
        # A reader cannot write.
        r = await c.patch(f"/v1/facilities/{PIPE}", json={"name": "x"}, headers=auth(province))
        assert r.status_code == 403
        assert await counts(assets) == before
        # The province sees its city's facilities.
        assert (await c.get(f"/v1/facilities/{PIPE}", headers=auth(province))).status_code == 200
        assert len((await c.get("/v1/facilities", headers=auth(province))).json()["facilities"]) == 1
        assert (await c.get("/v1/facilities")).status_code == 401

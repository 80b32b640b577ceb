"""Bulk import and export: all or nothing, idempotent by key, streamed, round trip (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
from sqlalchemy import func, select

from lifeline.assets.app import AssetsApp
from lifeline.kit.outbox import outbox_table

from .helpers import counts, facility, sensor

GEOJSON = {"Content-Type": "application/geo+json"}
CSV = {"Content-Type": "text/csv"}


def code(i: int, county: str = "340104") -> str:
    return f"{county}1102{i:06d}"


def feature(c: str, **props: Any) -> dict[str, Any]:
    geometry = props.pop("geometry", {"type": "Point", "coordinates": [117.2 + int(c[-4:]) * 1e-4, 31.8]})
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {"code": c, "kind": "gas", "name": f"燃气阀门 {c[-6:]}", **props},
    }


def collection(*features: dict[str, Any]) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": list(features)}, ensure_ascii=False).encode()


async def outbox_count(app: AssetsApp, prefix: str = "events.assets.") -> int:
    """Change events in the outbox (each has its census entry beside it: prefix "$KV.census.")."""
    query = select(func.count()).select_from(outbox_table).where(outbox_table.c.subject.startswith(prefix))
    async with app.db.transaction() as s:
        return int((await (await s.connection()).execute(query)).scalar_one())


async def state(app: AssetsApp) -> tuple[dict[str, int], int]:
    return await counts(app), await outbox_count(app)


def fields_of(problem: httpx.Response) -> list[str]:
    assert problem.status_code == 422, problem.text
    assert problem.headers["content-type"].startswith("application/problem+json")
    return [e["field"] for e in problem.json()["errors"]]


async def test_geojson_import_is_idempotent_and_versions_changes(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    line = {"type": "LineString", "coordinates": [[117.20, 31.82], [117.21, 31.83]]}
    body = collection(
        feature(code(1)), feature(code(2), geometry=line, attributes={"material": "PE"}), feature(code(3))
    )
    r = await client.post("/v1/import/facility", content=body, headers=GEOJSON, params={"name": "hf.geojson"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "entity": "facility",
        "name": "hf.geojson",
        "dry_run": False,
        "total": 3,
        "created": 3,
        "updated": 0,
        "unchanged": 0,
    }
    got = (await client.get(f"/v1/facilities/{code(2)}")).json()
    assert got["geometry"] == line and got["attributes"] == {"material": "PE"} and got["region"] == "340104"
    after_first = await state(assets)
    assert (after_first[0]["facility"], after_first[0]["history"], after_first[1]) == (3, 3, 3)

    # The same file again: nothing changes, no version, no event.
    r = await client.post("/v1/import/facility", content=body, headers=GEOJSON, params={"name": "hf.geojson"})
    assert r.json()["unchanged"] == 3 and r.json()["created"] == r.json()["updated"] == 0
    assert await state(assets) == after_first

    # One changed record: one new version, with the file named as the reason.
    changed = collection(feature(code(1)), feature(code(2), geometry=line, attributes={"material": "钢"}))
    r = await client.post("/v1/import/facility", content=changed, headers=GEOJSON, params={"name": "hf-2.geojson"})
    assert (r.json()["updated"], r.json()["unchanged"]) == (1, 1)
    versions = (await client.get(f"/v1/facilities/{code(2)}/history")).json()["versions"]
    assert [(v["version"], v["reason"]) for v in versions] == [(1, "import hf.geojson"), (2, "import hf-2.geojson")]
    assert versions[1]["after"]["attributes"] == {"material": "钢"} and versions[1]["actor"]
    assert await outbox_count(assets) == 4
    assert await outbox_count(assets, "$KV.census.facility.") == 4  # each version's census entry too


async def test_dry_run_counts_without_writing(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    await client.post("/v1/facilities", json=facility(code(1)))
    before = await state(assets)
    body = collection(feature(code(1), name="改名"), feature(code(2)))
    r = await client.post("/v1/import/facility", content=body, headers=GEOJSON, params={"dry_run": "true"})
    assert r.status_code == 200, r.text
    assert (r.json()["created"], r.json()["updated"], r.json()["dry_run"]) == (1, 1, True)
    assert await state(assets) == before


async def test_one_bad_record_imports_nothing_and_is_named(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    before = await state(assets)
    body = collection(feature(code(1)), feature(code(2), name=""), feature(code(3), kind="nuclear"))
    r = await client.post("/v1/import/facility", content=body, headers=GEOJSON)
    assert fields_of(r) == ["features[1].properties.name", "features[2].properties.kind"]
    assert r.json()["rejected"] == 2 and r.json()["total"] == 3
    assert "未写入" in r.json()["detail"]
    en = await client.post("/v1/import/facility", content=body, headers={**GEOJSON, "Accept-Language": "en"})
    assert "nothing was written" in en.json()["detail"]
    assert await state(assets) == before


async def test_coordinates_out_of_range_are_refused(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    swapped = {"type": "Point", "coordinates": [31.8, 117.2]}
    line = {"type": "LineString", "coordinates": [[117.2, 31.8], [217.2, 31.8]]}
    body = collection(feature(code(1), geometry=swapped), feature(code(2), geometry=line), feature(code(3)))
    r = await client.post("/v1/import/facility", content=body, headers=GEOJSON)
    assert fields_of(r) == ["features[0].geometry.coordinates", "features[1].geometry.coordinates[1]"]
    assert "超出范围" in r.json()["errors"][0]["reason"]
    assert (await counts(assets))["facility"] == 0


async def test_duplicate_codes_in_one_file_name_both_records(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    body = collection(feature(code(1)), feature(code(2)), feature(code(1), name="另一个"))
    r = await client.post("/v1/import/facility", content=body, headers={**GEOJSON, "Accept-Language": "en"})
    assert fields_of(r) == ["features[2].properties.code"]
    reason = r.json()["errors"][0]["reason"]
    assert "features[0]" in reason and "features[2]" in reason and code(1) in reason
    assert (await counts(assets))["facility"] == 0


async def test_malformed_geojson_is_refused(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    whole = collection(feature(code(1)), feature(code(2)))
    cases = {
        whole[:-5]: "body",  # cut short
        b'{"type": "FeatureCollection", "features": [{"type": "Feature",,}]}': "body",
        json.dumps({"type": "Feature", "features": []}).encode(): "body",
        collection(feature(code(1)), {"type": "Point", "coordinates": [117.2, 31.8]}): "features[1]",
        collection(feature(code(1), geometry=None) | {"geometry": "POINT (1 2)"}): "features[0]",
        collection(): "",
    }
    for body, where in cases.items():
        r = await client.post("/v1/import/facility", content=body, headers=GEOJSON)
        assert r.status_code == 422, (body, r.text)
        assert [e["field"] for e in r.json().get("errors", [])] == ([where] if where else []), r.text
    r = await client.post("/v1/import/facility", content=whole, headers={"Content-Type": "application/xml"})
    assert r.status_code == 415
    assert (await counts(assets))["facility"] == 0


FACILITY_CSV = """code,kind,name,geometry,lon,lat,attributes,status
{c1},gas,合肥阀门一,,117.21,31.81,"{{""material"":""钢""}}",in_service
{c2},gas,"管段, 二","LINESTRING (117.2 31.82, 117.21 31.83)",,,,under_repair
"""


async def test_csv_import_round_trip_and_errors(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    text = FACILITY_CSV.format(c1=code(1), c2=code(2))
    r = await client.post("/v1/import/facility", content=("\ufeff" + text).encode(), headers=CSV)
    assert r.status_code == 200 and r.json()["created"] == 2, r.text
    one = (await client.get(f"/v1/facilities/{code(1)}")).json()
    assert (
        one["geometry"] == {"type": "Point", "coordinates": [117.21, 31.81]} and one["attributes"]["material"] == "钢"
    )
    two = (await client.get(f"/v1/facilities/{code(2)}")).json()
    assert two["name"] == "管段, 二" and two["status"] == "under_repair" and two["geometry"]["type"] == "LineString"
    before = await state(assets)
    r = await client.post("/v1/import/facility", content=text.encode(), headers=CSV)
    assert r.json()["unchanged"] == 2 and await state(assets) == before

    bad = text + f"{code(3)},gas,,,117.3,31.9,,\n{code(4)},gas,越界,,117.3,95,,\n{code(1)},gas,重复,,117.3,31.9,,\n"
    bad += f"{code(5)},gas,少列\n{code(6)},gas,坏几何,POINT 117 31,,,,\n"
    r = await client.post("/v1/import/facility", content=bad.encode(), headers=CSV)
    assert fields_of(r) == [
        "lines[4].name",
        "lines[5].geometry.coordinates",
        "lines[6].code",
        "lines[7]",
        "lines[8].geometry",
    ]
    assert "lines[2]" in r.json()["errors"][2]["reason"]
    assert await state(assets) == before


async def test_sensors_import_and_export_round_trip(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    unit = (await client.post("/v1/units", json={"name": "合肥燃气集团"})).json()["id"]
    assert (await client.post("/v1/facilities", json=facility(code(1), unit_id=unit))).status_code == 201
    await client.post(
        "/v1/facilities", json=facility(code(2), geometry={"type": "Point", "coordinates": [117.3, 31.9]})
    )
    await client.post("/v1/facilities/" + code(2) + "/retire", json={"reason": "废弃"})
    rows = "sensor_id,facility_code,quantity,interval_s,lon,lat,range_min,range_max\n"
    rows += f"S-1,{code(1)},gas.ch4,,,,0,100\nS-2,{code(1)},gas.ch4,30,117.205,31.825,,\n"
    r = await client.post("/v1/import/sensor", content=rows.encode(), headers=CSV)
    assert r.status_code == 200 and r.json()["created"] == 2, r.text
    s1 = (await client.get("/v1/sensors/S-1")).json()
    assert s1["position"] == {"lon": 117.2, "lat": 31.82} and s1["unit"] == "%LEL" and s1["range_max"] == 100
    assert (await client.get("/v1/sensors/S-2")).json()["interval_s"] == 30
    await client.post("/v1/sensors", json=sensor("S-3", code(1), range_min=0, range_max=50))

    bad = f"sensor_id,facility_code,quantity\nS-9,{code(2)},gas.ch4\nS-8,{code(1)},no.such\nS-1,{code(2)},gas.ch4\n"
    r = await client.post("/v1/import/sensor", content=bad.encode(), headers=CSV)
    assert fields_of(r) == ["lines[2].facility_code", "lines[3].quantity", "lines[4].facility_code"]

    far = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [117.2, 60.0]}, "properties": {}}
    far["properties"] = {"sensor_id": "S-7", "facility_code": code(1), "quantity": "gas.ch4"}
    line = {"geometry": {"type": "LineString", "coordinates": [[117.2, 31.8], [117.3, 31.9]]}}
    line = far | line | {"properties": far["properties"] | {"sensor_id": "S-6"}}
    r = await client.post("/v1/import/sensor", content=collection(far, line), headers=GEOJSON)
    assert fields_of(r) == ["features[0].geometry", "features[1].geometry"]

    before = await state(assets)
    for entity in ("facility", "sensor"):
        for fmt, media in (("geojson", GEOJSON), ("csv", CSV)):
            exported = await client.get(f"/v1/export/{entity}", params={"format": fmt})
            assert exported.status_code == 200, exported.text
            r = await client.post(f"/v1/import/{entity}", content=exported.content, headers=media)
            assert r.status_code == 200, (entity, fmt, r.text)
            assert r.json()["unchanged"] == r.json()["total"] == {"facility": 2, "sensor": 3}[entity]
    assert await state(assets) == before
    geo = (await client.get("/v1/export/sensor", params={"facility_code": code(1)})).json()
    assert [f["id"] for f in geo["features"]] == ["S-1", "S-2", "S-3"]
    assert geo["features"][1]["geometry"] == {"type": "Point", "coordinates": [117.205, 31.825]}
    only_gas = (await client.get("/v1/export/facility", params={"format": "csv", "status": "retired"})).text
    assert only_gas.splitlines()[0].startswith("code,") and len(only_gas.splitlines()) == 2 and code(2) in only_gas


async def test_outside_the_instance_or_scope_is_refused(
    client: httpx.AsyncClient, assets: AssetsApp, token_factory
) -> None:
    body = collection(feature(code(1, county="340202")))
    r = await client.post("/v1/import/facility", content=body, headers=GEOJSON)
    assert fields_of(r) == ["features[0].properties.region"]
    # A county operator may import its own county only; a viewer nothing.
    county = await token_factory.client(roles=["operator"], region="340111")
    body = collection(feature(code(1)), feature(code(2, county="340111")))
    r = await client.post("/v1/import/facility", content=body, headers={**GEOJSON, "Authorization": f"Bearer {county}"})
    assert fields_of(r) == ["features[0].properties.code"] and "340104" in r.json()["errors"][0]["reason"]
    viewer = await token_factory.client(roles=["viewer"], region="340100")
    r = await client.post("/v1/import/facility", content=body, headers={**GEOJSON, "Authorization": f"Bearer {viewer}"})
    assert r.status_code == 403
    assert (await counts(assets))["facility"] == 0


async def test_a_large_file_streams_in(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    n = 20_000

    async def body() -> AsyncIterator[bytes]:
        yield b'{"type": "FeatureCollection", "features": ['
        for start in range(0, n, 1000):
            part = [json.dumps(feature(code(i)), ensure_ascii=False) for i in range(start, start + 1000)]
            yield ("," if start else "").encode() + ",".join(part).encode()
        yield b"]}"

    rss = psutil.Process(os.getpid()).memory_info().rss
    r = await client.post("/v1/import/facility", content=body(), headers=GEOJSON, timeout=110)
    assert r.status_code == 200, r.text[:2000]
    assert r.json()["created"] == n
    assert (await counts(assets))["facility"] == n and await outbox_count(assets) == n
    # Streamed and written in chunks: the process does not grow by anything like the file times its objects.
    assert psutil.Process(os.getpid()).memory_info().rss - rss < 300 * 1024 * 1024


async def test_units_risks_and_links_round_trip(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    units = 'id,name,domains,contacts\nU-GAS,合肥燃气集团,"[""gas""]","[{""name"":""张工"",""phone"":""0551-1""}]"\n'
    r = await client.post("/v1/import/unit", content=units.encode(), headers=CSV)
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    unit = (await client.get("/v1/units/U-GAS")).json()
    assert unit["region"] == "340100" and unit["domains"] == ["gas"] and unit["contacts"][0]["name"] == "张工"
    # The contact's unset email is the same default on re-import, not a change.
    r = await client.post("/v1/import/unit", content=units.encode(), headers=CSV)
    assert r.status_code == 200 and r.json()["unchanged"] == 1 and r.json()["updated"] == 0, r.text
    await client.post("/v1/import/facility", content=collection(feature(code(1)), feature(code(2))), headers=GEOJSON)

    links = "id,from_code,to_code,kind\n"
    links += f"L-1,{code(1)},{code(2)},flow\nL-2,{code(1)},{code(9)},flow\n,{code(2)},{code(1)},feeds\n"
    r = await client.post("/v1/import/link", content=links.encode(), headers=CSV)
    assert fields_of(r) == ["lines[3].to_code", "lines[4].id"], r.text
    r = await client.post("/v1/import/link", content="\n".join(links.splitlines()[:2]).encode(), headers=CSV)
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    assert (await client.get("/v1/links/L-1")).json()["region"] == "340104"

    props = {"id": "R-1", "name": "燃气管道占压", "hazard": "gas_leak", "grade": "II", "facility_codes": [code(1)]}
    point = {"type": "Point", "coordinates": [117.205, 31.825]}
    risk = {"type": "Feature", "geometry": point, "properties": props | {"rectification": {"status": "done"}}}
    r = await client.post("/v1/import/risk", content=collection(risk), headers=GEOJSON)
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    assert (await client.get("/v1/risks/R-1")).json()["region"] == "340104"

    before = await state(assets)
    for entity in ("unit", "risk", "link"):
        for fmt, media in (("geojson", GEOJSON), ("csv", CSV)):
            exported = await client.get(f"/v1/export/{entity}", params={"format": fmt})
            assert exported.status_code == 200, exported.text
            r = await client.post(f"/v1/import/{entity}", content=exported.content, headers=media)
            assert r.status_code == 200 and r.json()["unchanged"] == r.json()["total"] == 1, (entity, fmt, r.text)
    assert await state(assets) == before

"""The sample census: deterministic, valid, the simulator's sensors, and loadable into a running assets service."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings
from lifeline.kit.catalogue import Domain, QuantityCatalogue, load_quantities
from lifeline.launcher.census import (
    CITIES,
    ENTITIES,
    CensusLoadError,
    census_files,
    generate,
    load_census,
    main,
    packaged_dir,
    read_census,
    render,
)
from lifeline.launcher.simulator import sample_sensors


@pytest.fixture(scope="module")
def cat() -> QuantityCatalogue:
    return load_quantities()


def test_generation_is_deterministic_and_the_packaged_files_are_current(tmp_path: Path) -> None:
    for region in CITIES:
        assert render(generate(region)) == render(generate(region))
        assert render(generate(region, seed=7)) != render(generate(region))
    assert main(["--check"]) == 0, "run `lifeline census` to regenerate the packaged census"
    assert main(["--out", str(tmp_path), "--region", "340200"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in census_files(tmp_path, "340200").values())
    (tmp_path / "links-340200.csv").write_text("id,from_code,to_code,kind\n", encoding="utf-8")
    assert main(["--check", "--out", str(tmp_path), "--region", "340200"]) == 1


@pytest.mark.parametrize("region", list(CITIES))
def test_census_is_valid(region: str, cat: QuantityCatalogue) -> None:
    city = CITIES[region]
    census = read_census(packaged_dir(), region)
    lon_min, lat_min, lon_max, lat_max = city.bbox

    def inside(lon: float, lat: float) -> bool:
        return lon_min <= lon <= lon_max and lat_min <= lat <= lat_max

    units = {u["id"] for u in census["units"]}
    assert all(u["region"] == region and u["contacts"] for u in census["units"])
    facilities = {f["code"]: f for f in census["facilities"]}
    assert len(facilities) == len(census["facilities"]) >= 150
    for code, f in facilities.items():
        assert re.fullmatch(r"\d{16}", code), code
        assert code[:6] in {*city.districts, region}, code
        assert f["kind"] in set(Domain)
        assert f["unit_id"] in units
        coords = f["geometry"]["coordinates"]
        points = [coords] if f["geometry"]["type"] == "Point" else coords
        assert all(inside(lon, lat) for lon, lat in points), (code, points)
    # Every lifeline domain the brief names is in each city, pipes drawn as lines.
    assert {f["kind"] for f in facilities.values()} == set(Domain)
    types = {f["attributes"]["facility_type"] for f in facilities.values()}
    for needed in ("燃气管段", "燃气场站", "燃气调压设施", "燃气阀门", "供水管段", "供水泵站", "供水阀门", "排水管段"):
        assert needed in types, needed
    for needed in ("排水检查井", "排水口", "易涝积水点", "供热管段", "供热换热站", "桥梁", "隧道", "综合管廊舱段"):
        assert needed in types, needed
    pipes = [f for f in facilities.values() if f["attributes"]["facility_type"] == "燃气管段"]
    assert all(f["geometry"]["type"] == "LineString" for f in pipes)
    assert all({"material", "diameter_mm", "pressure_class", "build_year"} <= set(f["attributes"]) for f in pipes)
    bridges = [f for f in facilities.values() if f["kind"] == "bridge"]
    assert all("design_deflection_limit_mm" in f["attributes"] for f in bridges)

    ids = [s["sensor_id"] for s in census["sensors"]]
    assert len(ids) == len(set(ids)) >= 150
    for s in census["sensors"]:
        q = cat.get(s["quantity"])  # raises for a quantity outside the catalogue
        assert q.accepts(s["unit"])
        assert s["facility_code"] in facilities
        assert inside(s["position"]["lon"], s["position"]["lat"])
    monitored_kinds = {facilities[s["facility_code"]]["kind"] for s in census["sensors"]}
    assert monitored_kinds == set(Domain)

    link_ids = {link["id"] for link in census["links"]}
    assert len(link_ids) == len(census["links"]) > 50
    for link in census["links"]:
        assert link["from_code"] in facilities and link["to_code"] in facilities
        assert link["from_code"] != link["to_code"]
        assert link["kind"] in {"flow", "feeds", "controls"}
    kinds = {(facilities[link["from_code"]]["attributes"]["facility_type"], link["kind"]) for link in census["links"]}
    assert {("燃气阀门", "controls"), ("燃气管段", "flow"), ("燃气场站", "feeds"), ("排水管段", "flow")} <= kinds

    assert len(census["risks"]) >= 10
    for risk in census["risks"]:
        assert risk["grade"] in {"I", "II", "III", "IV"}
        assert risk["facility_codes"] and all(c in facilities for c in risk["facility_codes"])
        assert inside(*risk["geometry"]["coordinates"])
        assert risk["controls"] and risk["rectification"]["owner"]
        assert risk["rectification"]["status"] in {"pending", "in_progress", "done"}
        assert risk["rectification"]["deadline_ms"] > 0
    hazards = {r["hazard"] for r in census["risks"]}
    assert {"gas_leak", "pipe_burst", "structural_damage"} <= hazards


def test_hefei_census_holds_exactly_the_sensors_the_simulator_drives(cat: QuantityCatalogue) -> None:
    census = read_census(packaged_dir(), "340100")
    simulated = sample_sensors(cat)
    assert {s["sensor_id"] for s in census["sensors"]} == set(simulated)
    assert "HF-GS-CH4-001" in simulated and len(simulated) == 292
    retired = {s["sensor_id"] for s in census["sensors"] if s["status"] == "retired"}
    assert retired == {sid for sid, s in simulated.items() if not s.active}


async def _count(client: httpx.AsyncClient, path: str, page: str, **params: str) -> int:
    total, token = 0, None
    while True:
        query: dict[str, Any] = {"limit": 1000, **params, **({"page_token": token} if token else {})}
        body = (await client.get(path, params=query)).json()
        total += len(body[page])
        token = body.get("next_page_token")
        if not token:
            return total


async def test_census_loads_into_assets_once(
    service_runner: Any, database_url: str, token_factory: Any, tmp_path: Path
) -> None:
    app = await service_runner(AssetsApp, AssetsSettings(database_url=database_url, http_port=0, grpc_port=0))
    assert app.http is not None
    census = read_census(packaged_dir(), "340100")
    sizes = {e: len(census[e]) for e in ENTITIES}
    retired = {s["sensor_id"] for s in census["sensors"] if s["status"] == "retired"}
    token = await token_factory("svc")

    async def authorization() -> str:
        return f"Bearer {token}"

    started = time.monotonic()
    stats = await load_census(app.http.url, authorization, packaged_dir(), "340100")
    elapsed = time.monotonic() - started
    assert (stats.created, stats.updated, stats.unchanged) == (sizes, dict.fromkeys(sizes, 0), dict.fromkeys(sizes, 0))
    assert stats.retired == len(retired) == 3
    async with httpx.AsyncClient(base_url=app.http.url, headers={"Authorization": await authorization()}) as c:
        for entity in ENTITIES:
            assert await _count(c, f"/v1/{entity}", entity) == sizes[entity], entity
        listed = (await c.get("/v1/sensors", params={"status": "retired"})).json()["sensors"]
        assert {s["sensor_id"] for s in listed} == retired
        gone = sorted(retired)[0]
        changes = [v["change"] for v in (await c.get(f"/v1/sensors/{gone}/history")).json()["versions"]]
        assert sorted(changes) == ["created", "retired"]
        gas = (await c.get("/v1/facilities/3401041101000001")).json()
        assert gas["kind"] == "gas" and gas["unit_id"] == "HF-GAS" and gas["geometry"]["type"] == "LineString"
        unit = (await c.get("/v1/units/HF-GAS")).json()
        assert unit["contacts"][0]["name"] == "调度值班室" and unit["domains"] == ["gas"]
        sensor = (await c.get("/v1/sensors/HF-GS-CH4-001")).json()
        assert sensor["facility_code"] == "3401041102000001" and sensor["region"] == "340104"
        # Pressure sensors arrive with what alerts' relative rules compare with (canonical units).
        by_id = {s["sensor_id"]: s for s in census["sensors"]}
        for sid in ("HF-GS-PRESSURE-001", "HF-WS-PRESSURE-001"):
            got = (await c.get(f"/v1/sensors/{sid}")).json()
            assert (got["setpoint"], got["baseline"]) == (by_id[sid].get("setpoint"), by_id[sid].get("baseline"))
        link = (await c.get(f"/v1/links/{census['links'][0]['id']}")).json()
        assert (link["from_code"], link["to_code"]) == (census["links"][0]["from_code"], census["links"][0]["to_code"])
        risk = (await c.get(f"/v1/risks/{census['risks'][0]['id']}")).json()
        assert risk["facility_codes"] == census["risks"][0]["facility_codes"]
        history = {
            path: (await c.get(path)).json()["versions"]
            for path in ("/v1/facilities/3401041101000001/history", f"/v1/sensors/{gone}/history")
        }

    # A second load (the demo started again) changes nothing.
    again = await load_census(app.http.url, authorization, packaged_dir(), "340100")
    assert (again.created, again.updated, again.unchanged) == (dict.fromkeys(sizes, 0), dict.fromkeys(sizes, 0), sizes)
    assert again.retired == 0
    async with httpx.AsyncClient(base_url=app.http.url, headers={"Authorization": await authorization()}) as c:
        for path, versions in history.items():
            assert (await c.get(path)).json()["versions"] == versions

    # A census changed since: only what changed gets a new version.
    changed = tmp_path / "changed"
    shutil.copytree(packaged_dir(), changed)
    fc_path = census_files(changed, "340100")["facilities"]
    fc = json.loads(fc_path.read_text(encoding="utf-8"))
    fc["features"][0]["properties"]["name"] += "（改线）"
    fc_path.write_text(json.dumps(fc, ensure_ascii=False), encoding="utf-8")
    third = await load_census(app.http.url, authorization, changed, "340100")
    assert third.updated["facilities"] == 1 and third.unchanged["facilities"] == sizes["facilities"] - 1
    assert sum(third.created.values()) == 0 and sum(third.updated.values()) == 1

    # A file assets refuses: an error naming the record, and nothing of that file kept.
    links_path = census_files(changed, "340100")["links"]
    text = links_path.read_text(encoding="utf-8")
    links_path.write_text(text + "LK-340100-9999,3401041101000001,3401049999999999,flow\n", encoding="utf-8")
    with pytest.raises(CensusLoadError, match=rf"links-340100.csv: HTTP 422 .*lines\[{text.count(chr(10)) + 1}\]"):
        await load_census(app.http.url, authorization, changed, "340100")
    async with httpx.AsyncClient(base_url=app.http.url, headers={"Authorization": await authorization()}) as c:
        assert (await c.get("/v1/links/LK-340100-9999")).status_code == 404
        assert await _count(c, "/v1/links", "links") == sizes["links"]
    print(f"census of {sum(sizes.values())} items loaded in {elapsed:.1f} s ({stats.summary()})")


def test_pressure_sensors_have_what_their_default_rules_compare_with() -> None:
    # gas.pressure's default rule is a deviation from the setpoint, water.pressure's a drop below the
    # baseline: without them a new city's pressure sensors would raise nothing for days (same-hour
    # baselines need history). Plausible values, in the canonical unit, and nothing on other quantities.
    cat = load_quantities()
    for region in CITIES:
        sensors = read_census(packaged_dir(), region)["sensors"]
        for s in sensors:
            if s["quantity"] == "gas.pressure":
                assert s.get("setpoint") in (100.0, 200.0, 300.0, 350.0) and "baseline" not in s, s
                assert cat.get("gas.pressure").range[0] < s["setpoint"] < cat.get("gas.pressure").range[1]
            elif s["quantity"] == "water.pressure":
                assert 0.28 <= s.get("baseline", 0) <= 0.45 and "setpoint" not in s, s
            else:
                assert "setpoint" not in s and "baseline" not in s, s


def test_census_files_are_what_the_import_reads() -> None:
    paths = census_files(packaged_dir(), "340100")
    assert [p.suffix for p in paths.values()] == [".geojson", ".geojson", ".csv", ".csv", ".geojson"]
    for entity, key in (("units", "id"), ("facilities", "code"), ("risks", "id")):
        fc = json.loads(paths[entity].read_text(encoding="utf-8"))
        assert fc["type"] == "FeatureCollection"
        assert all(f["type"] == "Feature" and f["id"] == f["properties"][key] for f in fc["features"])
    units = json.loads(paths["units"].read_text(encoding="utf-8"))["features"]
    assert all(f["geometry"] is None for f in units)
    header = paths["sensors"].read_text(encoding="utf-8").splitlines()[0]
    # Only columns the sensor import knows (region is derived from the facility, so it is ignored).
    assert header == (
        "sensor_id,quantity,unit,region,facility_code,interval_s,lat,lon,status,range_min,range_max,setpoint,baseline"
    )

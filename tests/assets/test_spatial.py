"""Spatial queries of assets: the same cases on SQLite and on PostgreSQL/PostGIS give the same answers.

A small Hefei scene around a centre point C, laid out in metres east/north of it:
  A bridge (point) 100 m east · B gas main (line) passing 150 m north, its ends 2 km away · W water valve
  (point, another district) 400 m west · E drainage outfall (point) 1.5 km south · G gas main (diagonal
  line) whose bounding box overlaps the test box but whose line does not · X a retired bridge 50 m east ·
  R a risk source (line) 80 m north of E.
"""

from __future__ import annotations

import math
import random
from typing import Any

import grpc
import httpx
import pytest
from sqlalchemy import text

from lifeline.assets.app import AssetsApp
from lifeline.assets.spatial import geo
from lifeline.assets.spatial.index import index_entities
from lifeline.v1 import assets_pb2 as pb
from lifeline.v1 import assets_pb2_grpc

C = (117.25, 31.85)
M_PER_DEG_LAT = math.pi * geo.EARTH_RADIUS_M / 180


def at(east_m: float, north_m: float) -> list[float]:
    """The position so many metres east and north of C."""
    return [
        round(C[0] + east_m / (M_PER_DEG_LAT * math.cos(math.radians(C[1]))), 7),
        round(C[1] + north_m / M_PER_DEG_LAT, 7),
    ]


def point(east_m: float, north_m: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": at(east_m, north_m)}


def line(*pts: tuple[float, float]) -> dict[str, Any]:
    return {"type": "LineString", "coordinates": [at(e, n) for e, n in pts]}


A = "3401040501000001"  # bridge, district 340104
B = "3401041102000001"  # gas main
W = "3401112101000001"  # water valve, district 340111
E = "3401043101000001"  # drainage outfall
G = "3401041102000002"  # diagonal gas main
X = "3401040501000002"  # retired bridge
SCENE = {
    A: ("bridge", "南淝河桥", point(100, 0)),
    B: ("gas", "长江中路燃气中压管", line((-2000, 150), (2000, 150))),
    W: ("water", "蜀山区供水阀门", point(-400, 0)),
    E: ("drainage", "包河区排水口", point(0, -1500)),
    G: ("gas", "斜向燃气管", line((300, -1000), (1000, -300))),
    X: ("bridge", "已拆除人行桥", point(50, 0)),
}
BOX_500 = ",".join(str(v) for v in (*at(-500, -500), *at(500, 500)))
NEAR_C = f"{C[0]},{C[1]}"


async def _facility(client: httpx.AsyncClient, code: str, kind: str, name: str, geometry: dict[str, Any]) -> None:
    r = await client.post("/v1/facilities", json={"code": code, "kind": kind, "name": name, "geometry": geometry})
    assert r.status_code == 201, r.text


@pytest.fixture
async def scene(client: httpx.AsyncClient) -> str:
    for code, (kind, name, geometry) in SCENE.items():
        await _facility(client, code, kind, name, geometry)
    r = await client.post(f"/v1/facilities/{X}/retire", json={"reason": "拆除"})
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/risks",
        json={
            "id": "R1",
            "name": "排水口旁施工围挡",
            "hazard": "construction",
            "grade": "III",
            "geometry": line((-1000, -1420), (1000, -1420)),
            "facility_codes": [E],
            "rectification": {"status": "in_progress", "owner": "包河区建设局", "deadline_ms": 1_900_000_000_000},
        },
    )
    assert r.status_code == 201, r.text
    return "R1"


def ids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in body["items"]]


async def test_bbox_radius_nearest(client: httpx.AsyncClient, scene: str) -> None:
    # Box: A and W inside, B's line crosses it; G's box overlaps but its line does not; X retired.
    r = await client.get("/v1/spatial/features", params={"bbox": BOX_500})
    assert r.status_code == 200, r.text
    assert ids(r.json()) == [A, B, W] and r.json()["truncated"] is False
    assert r.json()["items"][0]["doc"]["name"] == "南淝河桥" and r.json()["items"][0]["distance_m"] is None
    assert ids((await client.get("/v1/spatial/features", params={"bbox": BOX_500, "kind": "gas"})).json()) == [B]
    retired = await client.get("/v1/spatial/features", params={"bbox": BOX_500, "status": "retired"})
    assert ids(retired.json()) == [X]

    # Radius 300 m: A at 100 m, and B whose ends are 2 km away but whose line passes 150 m from C.
    r = await client.get("/v1/spatial/features", params={"near": NEAR_C, "radius_m": 300})
    body = r.json()
    assert ids(body) == [A, B], body
    assert body["items"][0]["distance_m"] == pytest.approx(100, abs=0.5)
    assert body["items"][1]["distance_m"] == pytest.approx(150, abs=0.5)
    r = await client.get("/v1/spatial/features", params={"near": NEAR_C, "radius_m": 450, "limit": 2})
    assert ids(r.json()) == [A, B] and r.json()["truncated"] is True
    assert ids((await client.get("/v1/spatial/features", params={"near": NEAR_C, "radius_m": 99})).json()) == []

    # Nearest k, nearest first, with distances; the retired bridge 50 m away is not among them.
    r = await client.get("/v1/spatial/nearest", params={"lon": C[0], "lat": C[1], "k": 4})
    body = r.json()
    assert ids(body) == [A, B, W, G], body
    distances = [item["distance_m"] for item in body["items"]]
    assert distances == sorted(distances) and distances[2] == pytest.approx(400, abs=0.5)
    one = await client.get("/v1/spatial/nearest", params={"lon": C[0], "lat": C[1], "k": 1, "kind": "drainage"})
    assert ids(one.json()) == [E]


async def test_within_distance_of_risk_source(client: httpx.AsyncClient, scene: str) -> None:
    r = await client.get(f"/v1/spatial/risks/{scene}/nearby", params={"distance_m": 100})
    assert r.status_code == 200, r.text
    assert ids(r.json()) == [E] and r.json()["items"][0]["distance_m"] == pytest.approx(80, abs=0.5)
    # 700 m of the line reaches G's nearest end (300 m east, 1000 m south: 420 m from the line).
    r = await client.get(f"/v1/spatial/risks/{scene}/nearby", params={"distance_m": 700})
    assert ids(r.json()) == [E, G]
    r = await client.get(f"/v1/spatial/risks/{scene}/nearby", params={"distance_m": 1500})
    assert ids(r.json())[:2] == [E, G] and set(ids(r.json())) == {E, G, A, W}
    missing = await client.get("/v1/spatial/risks/nope/nearby", params={"distance_m": 100})
    assert missing.status_code == 404


async def test_index_follows_changes(client: httpx.AsyncClient, scene: str) -> None:
    """A moved facility is found where it is now; a sensor is indexed at its position; retired stay indexed."""
    r = await client.patch(f"/v1/facilities/{A}", json={"geometry": point(5000, 5000)})
    assert r.status_code == 200, r.text
    assert A not in ids((await client.get("/v1/spatial/features", params={"bbox": BOX_500})).json())
    far = ",".join(str(v) for v in at(5000, 5000))
    assert ids((await client.get("/v1/spatial/features", params={"near": far, "radius_m": 10})).json()) == [A]

    r = await client.post(
        "/v1/sensors",
        json={
            "sensor_id": "S-B-1",
            "facility_code": B,
            "quantity": "gas.ch4",
            "position": dict(zip(("lon", "lat"), at(0, 150), strict=True)),
        },
    )
    assert r.status_code == 201, r.text
    near = await client.get(
        "/v1/spatial/features", params={"near": NEAR_C, "radius_m": 200, "entity": ["sensor", "facility"]}
    )
    assert ids(near.json()) == [B, "S-B-1"] or ids(near.json()) == ["S-B-1", B]
    sensor = next(item for item in near.json()["items"] if item["entity"] == "sensor")
    assert sensor["kind"] == "gas.ch4" and sensor["doc"]["facility_code"] == B
    await client.post("/v1/sensors/S-B-1/retire", json={})
    gone = await client.get("/v1/spatial/features", params={"near": NEAR_C, "radius_m": 200, "entity": "sensor"})
    assert ids(gone.json()) == []
    kept = await client.get(
        "/v1/spatial/features", params={"near": NEAR_C, "radius_m": 200, "entity": "sensor", "status": "retired"}
    )
    assert ids(kept.json()) == ["S-B-1"]


# --- sensors along a path -------------------------------------------------------------------------------

V1 = "3401041103000001"  # valve at the start
P2 = "3401041102000011"  # segment drawn upstream → downstream
P3 = "3401041102000012"  # segment drawn the other way round
V4 = "3401041103000002"  # valve at the end
Q = "3401041102000013"  # a branch off P2, not on the path


async def test_sensors_along_path(client: httpx.AsyncClient) -> None:
    await _facility(client, V1, "gas", "起点阀门", point(0, 0))
    await _facility(client, P2, "gas", "一号管段", line((0, 0), (1000, 0)))
    await _facility(client, P3, "gas", "二号管段", line((1000, 800), (1000, 0)))
    await _facility(client, V4, "gas", "终点阀门", point(1000, 800))
    await _facility(client, Q, "gas", "支管", line((1000, 0), (1800, 0)))
    for up, down in ((V1, P2), (P2, P3), (P3, V4), (P2, Q)):
        r = await client.post("/v1/links", json={"from_code": up, "to_code": down, "kind": "flow"})
        assert r.status_code == 201, r.text
    sensors = {  # created out of order on purpose
        "S-P2-far": (P2, (900, 0)),
        "S-P2-near": (P2, (100, 0)),
        "S-P3": (P3, (1000, 300)),
        "S-V4": (V4, (1000, 800)),
        "S-Q": (Q, (1500, 0)),
    }
    for sensor_id, (code, (east, north)) in sensors.items():
        r = await client.post(
            "/v1/sensors",
            json={
                "sensor_id": sensor_id,
                "facility_code": code,
                "quantity": "gas.ch4",
                "position": dict(zip(("lon", "lat"), at(east, north), strict=True)),
            },
        )
        assert r.status_code == 201, r.text

    r = await client.get("/v1/spatial/path/sensors", params={"from": V1, "to": V4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["direction"] == "downstream"
    assert [leg["code"] for leg in body["path"]] == [V1, P2, P3, V4]
    assert [s["sensor"]["sensor_id"] for s in body["sensors"]] == ["S-P2-near", "S-P2-far", "S-P3", "S-V4"]
    assert [s["along_m"] for s in body["sensors"]] == pytest.approx([100, 900, 1300, 1800], abs=1)

    back = (await client.get("/v1/spatial/path/sensors", params={"from": V4, "to": V1})).json()
    assert back["direction"] == "upstream"
    assert [s["sensor"]["sensor_id"] for s in back["sensors"]] == ["S-V4", "S-P3", "S-P2-far", "S-P2-near"]
    assert [s["along_m"] for s in back["sensors"]] == pytest.approx([0, 500, 900, 1700], abs=1)

    assert (await client.get("/v1/spatial/path/sensors", params={"from": Q, "to": V4})).status_code == 404
    unknown = await client.get("/v1/spatial/path/sensors", params={"from": V1, "to": "3401049999000001"})
    assert unknown.status_code == 404


# --- bad parameters and region scope --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/spatial/features", {"bbox": "117.3,31.8,117.2,31.9"}, "bbox"),  # min lon > max lon
        ("/v1/spatial/features", {"bbox": "117.2,31.9,117.3,31.8"}, "bbox"),  # min lat > max lat
        ("/v1/spatial/features", {"bbox": "117.2,31.8,117.3"}, "bbox"),
        ("/v1/spatial/features", {"bbox": "117.2,95,117.3,96"}, "bbox"),
        ("/v1/spatial/features", {"near": NEAR_C, "radius_m": 0}, "radius_m"),
        ("/v1/spatial/features", {"near": NEAR_C, "radius_m": -5}, "radius_m"),
        ("/v1/spatial/features", {"near": NEAR_C, "radius_m": 1e9}, "radius_m"),
        ("/v1/spatial/features", {"near": "200,31.8", "radius_m": 100}, "near"),
        ("/v1/spatial/features", {"near": "117.2", "radius_m": 100}, "near"),
        ("/v1/spatial/features", {"radius_m": 100}, "bbox"),  # neither box nor centre
        ("/v1/spatial/features", {"bbox": BOX_500, "near": NEAR_C, "radius_m": 100}, "bbox"),
        ("/v1/spatial/features", {"bbox": BOX_500, "limit": 0}, "limit"),
        ("/v1/spatial/nearest", {"lon": 117.2, "lat": -91}, "lon,lat"),
        ("/v1/spatial/nearest", {"lon": 117.2, "lat": 31.8, "k": 0}, "k"),
        ("/v1/spatial/nearest", {"lon": 117.2, "lat": 31.8, "k": 1000}, "k"),
        ("/v1/spatial/risks/R1/nearby", {"distance_m": -1}, "distance_m"),
    ],
)
async def test_bad_parameters(client: httpx.AsyncClient, path: str, params: dict[str, Any], field: str) -> None:
    r = await client.get(path, params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in r.json()["errors"]]


async def test_bad_parameters_in_both_languages(client: httpx.AsyncClient) -> None:
    params = {"bbox": "117.3,31.8,117.2,31.9"}
    zh = (await client.get("/v1/spatial/features", params=params)).json()
    en = (await client.get("/v1/spatial/features", params=params, headers={"Accept-Language": "en"})).json()
    assert "最小值大于最大值" in zh["detail"] and "minimum exceeds its maximum" in en["detail"]
    unknown = await client.get("/v1/spatial/features", params={"bbox": BOX_500, "entity": "unit"})
    assert unknown.status_code == 422


async def test_region_scope(assets: AssetsApp, client: httpx.AsyncClient, scene: str, token_factory) -> None:
    district = {"Authorization": f"Bearer {await token_factory.client(['viewer'], '340104')}"}
    other_city = {"Authorization": f"Bearer {await token_factory('viewer-340200')}"}
    province = {"Authorization": f"Bearer {await token_factory('viewer-340000')}"}
    box = {"bbox": BOX_500}
    assert ids((await client.get("/v1/spatial/features", params=box, headers=district)).json()) == [A, B]
    assert ids((await client.get("/v1/spatial/features", params=box, headers=other_city)).json()) == []
    assert ids((await client.get("/v1/spatial/features", params=box, headers=province)).json()) == [A, B, W]
    near = {"near": NEAR_C, "radius_m": 500}
    assert ids((await client.get("/v1/spatial/features", params=near, headers=district)).json()) == [A, B]
    nearest = {"lon": C[0], "lat": C[1], "k": 3}
    assert ids((await client.get("/v1/spatial/nearest", params=nearest, headers=district)).json()) == [A, B, G]
    assert ids((await client.get("/v1/spatial/nearest", params=nearest, headers=other_city)).json()) == []
    # Asking about the neighbour district's box explicitly changes nothing.
    narrowed = {**box, "region": "340111"}
    assert ids((await client.get("/v1/spatial/features", params=narrowed, headers=district)).json()) == []
    w_district = {"Authorization": f"Bearer {await token_factory.client(['viewer'], '340111')}"}
    r = await client.get(f"/v1/spatial/risks/{scene}/nearby", params={"distance_m": 100}, headers=w_district)
    assert r.status_code == 403
    r = await client.get("/v1/spatial/path/sensors", params={"from": A, "to": B}, headers=other_city)
    assert r.status_code == 403


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
async def test_postgis_geometry_kept(assets: AssetsApp, client: httpx.AsyncClient, scene: str) -> None:
    """On PostgreSQL the index carries the PostGIS shape, and PostGIS measures what we measure."""
    assert assets.db.dialect == "postgresql"
    body = (await client.get("/v1/spatial/features", params={"near": NEAR_C, "radius_m": 3000})).json()
    async with assets.db.transaction(readonly=True) as session:
        conn = await session.connection()
        for item in body["items"]:
            row = (
                await conn.execute(
                    text(
                        "SELECT ST_SRID(geom), ST_Distance(geom::geography, "
                        "ST_SetSRID(ST_MakePoint(:lon, :lat), 4490)::geography, false) "
                        "FROM geo_index WHERE entity = 'facility' AND entity_id = :id"
                    ),
                    {"lon": C[0], "lat": C[1], "id": item["id"]},
                )
            ).one()
            assert row[0] == 4490
            assert item["distance_m"] == pytest.approx(row[1], abs=0.01)


def test_geo_measures() -> None:
    one_degree = geo.distance_m(
        {"type": "Point", "coordinates": [117, 31]}, {"type": "Point", "coordinates": [117, 32]}
    )
    assert one_degree == pytest.approx(M_PER_DEG_LAT, rel=1e-9)
    crossing = geo.distance_m(line((-100, -100), (100, 100)), line((-100, 100), (100, -100)))
    assert crossing == 0.0
    assert geo.intersects_box(line((-100, 0), (100, 0)), (*at(-10, -10), *at(10, 10)))
    assert not geo.intersects_box(line((300, -1000), (1000, -300)), (*at(-500, -500), *at(500, 500)))


# --- gRPC ----------------------------------------------------------------------------------------------


async def test_grpc_spatial(assets: AssetsApp, scene: str, writer_token: str, token_factory) -> None:
    md = (("authorization", f"Bearer {writer_token}"),)
    box = pb.BoundingBox(
        min_lon=at(-500, -500)[0], min_lat=at(-500, -500)[1], max_lon=at(500, 500)[0], max_lat=at(500, 500)[1]
    )
    async with assets.grpc_channel() as channel:
        stub = assets_pb2_grpc.AssetRegistryStub(channel)
        found = await stub.SearchArea(pb.SearchAreaRequest(bbox=box), metadata=md)
        assert [h.id for h in found.hits] == [A, B, W] and not found.truncated
        assert found.hits[0].facility.name == "南淝河桥" and not found.hits[0].HasField("distance_m")
        circle = pb.Circle(center=pb.LonLat(lon=C[0], lat=C[1]), radius_m=300)
        found = await stub.SearchArea(pb.SearchAreaRequest(circle=circle), metadata=md)
        assert [h.id for h in found.hits] == [A, B] and found.hits[1].distance_m == pytest.approx(150, abs=0.5)
        nearest = await stub.FindNearest(pb.FindNearestRequest(point=pb.LonLat(lon=C[0], lat=C[1]), k=4), metadata=md)
        assert [h.id for h in nearest.hits] == [A, B, W, G]
        risky = await stub.FindNearRiskSource(
            pb.FindNearRiskSourceRequest(risk_source_id=scene, distance_m=100), metadata=md
        )
        assert [h.id for h in risky.hits] == [E]
        risks = await stub.SearchArea(
            pb.SearchAreaRequest(
                circle=pb.Circle(center=pb.LonLat(lon=C[0], lat=C[1]), radius_m=2000),
                filter=pb.SpatialFilter(entities=[pb.ASSET_ENTITY_RISK_SOURCE]),
            ),
            metadata=md,
        )
        assert [(h.entity, h.id, h.risk_source.name) for h in risks.hits] == [
            (pb.ASSET_ENTITY_RISK_SOURCE, scene, "排水口旁施工围挡")
        ]

        inverted = pb.BoundingBox(min_lon=box.max_lon, min_lat=box.min_lat, max_lon=box.min_lon, max_lat=box.max_lat)
        for bad in (pb.SearchAreaRequest(bbox=inverted), pb.SearchAreaRequest()):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SearchArea(bad, metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SensorsAlongPath(pb.SensorsAlongPathRequest(from_code=A, to_code=E), metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # no links between them

        other = (("authorization", f"Bearer {await token_factory('viewer-340200')}"),)
        assert not (await stub.SearchArea(pb.SearchAreaRequest(bbox=box), metadata=other)).hits


async def test_candidates_never_miss(assets: AssetsApp, client: httpx.AsyncClient) -> None:
    """Whatever picks candidates (R*Tree, box index, GiST and ST_DWithin) keeps every answer the exact measure
    gives, also one lying exactly on the radius: checked against a brute force over random shapes."""
    rng = random.Random(20261122)
    shapes: dict[str, dict[str, Any]] = {}
    for i in range(300):
        start = (rng.uniform(-3000, 3000), rng.uniform(-3000, 3000))
        if i % 3:
            shapes[f"3401041102{i:06d}"] = point(*start)
        else:
            bends = [
                (start[0] + rng.uniform(-900, 900), start[1] + rng.uniform(-900, 900)) for _ in range(rng.randint(1, 3))
            ]
            shapes[f"3401041102{i:06d}"] = line(start, *bends)
    docs = [
        {"code": code, "kind": "gas", "region": "340104", "status": "in_service", "geometry": g}
        for code, g in shapes.items()
    ]
    async with assets.db.transaction() as session:
        await index_entities(session=session, entity="facility", docs=docs)

    for _ in range(12):
        centre = point(rng.uniform(-3000, 3000), rng.uniform(-3000, 3000))
        measured = sorted((geo.distance_m(centre, g), code) for code, g in shapes.items())
        on_edge = measured[rng.randint(0, 40)][0]  # a radius exactly at some shape's distance
        near = ",".join(str(v) for v in centre["coordinates"])
        for radius in (on_edge, rng.uniform(10, 1500)):
            r = await client.get("/v1/spatial/features", params={"near": near, "radius_m": radius, "limit": 1000})
            assert r.status_code == 200, r.text
            assert ids(r.json()) == [code for d, code in measured if d <= radius]
        lon, lat = centre["coordinates"]
        k = rng.randint(1, 20)
        nearest = await client.get("/v1/spatial/nearest", params={"lon": lon, "lat": lat, "k": k})
        assert ids(nearest.json()) == [code for _, code in measured[:k]]
        corner = (rng.uniform(-3000, 2000), rng.uniform(-3000, 2000))
        box = (*at(*corner), *at(corner[0] + rng.uniform(50, 1000), corner[1] + rng.uniform(50, 1000)))
        r = await client.get("/v1/spatial/features", params={"bbox": ",".join(map(str, box)), "limit": 1000})
        assert ids(r.json()) == sorted(code for code, g in shapes.items() if geo.intersects_box(g, box))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_without_rtree(assets: AssetsApp, client: httpx.AsyncClient, scene: str) -> None:
    """A sqlite3 build without the R*Tree module has only the box columns' index: the same answers."""
    assert assets.db.dialect == "sqlite"
    async with assets.db.transaction() as session:
        conn = await session.connection()
        for trigger in ("geo_rtree_insert", "geo_rtree_update", "geo_rtree_delete"):
            await conn.execute(text(f"DROP TRIGGER {trigger}"))
        await conn.execute(text("DROP TABLE geo_rtree"))
    assert ids((await client.get("/v1/spatial/features", params={"bbox": BOX_500})).json()) == [A, B, W]
    near = {"near": NEAR_C, "radius_m": 300}
    assert ids((await client.get("/v1/spatial/features", params=near)).json()) == [A, B]
    r = await client.patch(f"/v1/facilities/{W}", json={"geometry": point(0, 200)})
    assert r.status_code == 200, r.text
    assert ids((await client.get("/v1/spatial/features", params=near)).json()) == [A, B, W]

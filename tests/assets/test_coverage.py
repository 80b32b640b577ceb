"""Census coverage statistics over a small known census, with a real ingest service answering last_seen."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings
from lifeline.ingest.app import IngestApp
from lifeline.ingest.settings import IngestSettings
from lifeline.kit.natsserver import free_port

from .helpers import facility, sensor

DAY_MS = 86_400_000
G1, G2, G3, G4 = "3401041101000001", "3401041101000002", "3401111101000001", "3401111101000002"
W1, W2 = "3401111201000001", "3401031201000001"
B1 = "3401042101000001"
# (sensor id, facility, quantity, active?, reports?)
SENSORS = [
    ("S1", G1, "gas.pressure", True, True),
    ("S2", G1, "gas.ch4", True, False),
    ("S3", G2, "gas.pressure", True, False),
    ("S4", W1, "water.pressure", False, True),  # retired: its readings count for nothing
    ("S5", W2, "water.pressure", True, True),
    ("B-1", B1, "bridge.strain", True, True),
    ("B-2", B1, "bridge.deflection", True, True),
]
# quantity → (unit, a plausible value)
QUANTITIES = {
    "gas.pressure": ("kPa", 200.0),
    "gas.ch4": ("%LEL", 0.5),
    "water.pressure": ("MPa", 0.35),
    "bridge.strain": ("µε", 80.0),
    "bridge.deflection": ("mm", 9.0),
}
KINDS = {G1: "gas", G2: "gas", G3: "gas", G4: "gas", W1: "water", W2: "water", B1: "bridge"}


@pytest.fixture(autouse=True)
def service_client(monkeypatch: pytest.MonkeyPatch, oidc_provider: Any) -> None:
    # The instance's own service client, as assets uses it to ask ingest (the test provider's "svc").
    monkeypatch.setenv("LIFELINE_OIDC_CLIENT_ID", "svc")
    monkeypatch.setenv("LIFELINE_OIDC_CLIENT_SECRET", oidc_provider.secret("svc"))


def _registry(tmp_path: Path) -> Path:
    lines = ["sensor_id,quantity,unit,region,facility_code,interval_s,lat,lon,status"]
    # All active for ingest, S4 too: assets retiring it is what the figures must notice, not a refusal.
    for sid, code, qty, _, _ in SENSORS:
        lines.append(f"{sid},{qty},{QUANTITIES[qty][0]},{code[:6]},{code},60,31.82,117.22,active")
    path = tmp_path / "sensors.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def _census(client: httpx.AsyncClient) -> None:
    for code, kind in KINDS.items():
        geometry = {"type": "Point", "coordinates": [117.22, 31.82]}
        resp = await client.post("/v1/facilities", json=facility(code, kind=kind, geometry=geometry))
        assert resp.status_code == 201, resp.text
    for sid, code, qty, _, _ in SENSORS:
        resp = await client.post("/v1/sensors", json=sensor(sid, code, quantity=qty, unit=QUANTITIES[qty][0]))
        assert resp.status_code == 201, resp.text
    for path in ("/v1/sensors/S4/retire", "/v1/facilities/3401111101000002/retire"):
        assert (await client.post(path, json={"reason": "test"})).status_code == 200
    assert (await client.patch(f"/v1/facilities/{W2}", json={"status": "under_repair"})).status_code == 200


def _client(app: AssetsApp | IngestApp, token: str | None = None) -> httpx.AsyncClient:
    assert app.http is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=app.http.url, headers=headers, timeout=30)


async def _assets(service_runner: Any, database_url: str, ingest_grpc: str, token: str) -> AssetsApp:
    """An assets service holding the small census, asking ingest at ``ingest_grpc``."""
    app = await service_runner(
        AssetsApp, AssetsSettings(database_url=database_url, http_port=0, grpc_port=0, ingest_grpc=ingest_grpc)
    )
    async with _client(app, token) as client:
        await _census(client)
    return app


def _figures(d: dict[str, Any]) -> tuple[int, int, int | None]:
    return d["registered"], d["monitored"], d["reporting"]


async def test_coverage_counts_registered_monitored_and_reporting_facilities(
    service_runner: Any, database_url: str, token_factory: Any, tmp_path: Path
) -> None:
    token = await token_factory("svc")
    ingest = await service_runner(
        IngestApp,
        IngestSettings(http_port=0, grpc_port=0, sensors_file=_registry(tmp_path), status_check_interval_s=3600),
    )
    assets = await _assets(service_runner, database_url, ingest.grpc_channel_target, token)
    async with _client(assets, token) as client, _client(ingest, token) as ingest_client:
        # Before any reading: every figure but "reporting", which is known and zero.
        body = (await client.get("/v1/coverage")).json()
        assert body["readings"]["known"] is True
        assert _figures(body["total"]) == (6, 4, 0)

        now = int(time.time() * 1000)
        readings = [
            {"sensor_id": sid, "device_time_ms": now - 1000, "value": QUANTITIES[qty][1], "unit": QUANTITIES[qty][0]}
            for sid, _, qty, _, reports in SENSORS
            if reports
        ]
        resp = await ingest_client.post("/v1/readings", json={"readings": readings})
        assert resp.status_code == 200 and resp.json()["accepted"] == len(readings), resp.text
        body = {}
        for _ in range(100):  # the storing consumer records last_seen a moment after acceptance
            body = (await client.get("/v1/coverage")).json()
            if body["total"]["reporting"] == 3:
                break
            await asyncio.sleep(0.1)

    # gas: G1 (S1 reports, S2 silent), G2 (S3 silent), G3 (no sensor); G4 retired is not in the census.
    # water: W1's only sensor is retired; W2 is under repair but still in the census and reporting.
    # bridge: B1 has two reporting sensors and counts once.
    assert _figures(body["total"]) == (6, 4, 3)
    assert body["total"]["monitored_ratio"] == round(4 / 6, 4)
    domains = {d["domain"]: d for d in body["domains"]}
    assert [d["domain"] for d in body["domains"]] == ["gas", "water", "bridge"]
    assert _figures(domains["gas"]) == (3, 2, 1)
    assert _figures(domains["water"]) == (2, 1, 1)
    assert _figures(domains["bridge"]) == (1, 1, 1)
    assert domains["gas"]["label"] == "燃气"
    gas_regions = {r["region"]: _figures(r) for r in domains["gas"]["regions"]}
    assert gas_regions == {"340104": (2, 2, 1), "340111": (1, 0, 0)}

    # English labels on request; a district's scope holds only its own facilities.
    async with _client(assets, token) as c:
        en = (await c.get("/v1/coverage", headers={"Accept-Language": "en"})).json()
        assert {d["domain"]: d["label"] for d in en["domains"]}["water"] == "water supply"
        district = (await c.get("/v1/coverage", params={"region": "340111"})).json()
        assert [(d["domain"], _figures(d)) for d in district["domains"]] == [("gas", (1, 0, 0)), ("water", (1, 0, 0))]

    # A day later nothing has reported within the window.
    real_now = assets.coverage.now_ms
    assets.coverage.now_ms = lambda: real_now() + DAY_MS + 60_000
    async with _client(assets, token) as c:
        later = (await c.get("/v1/coverage")).json()
    assert _figures(later["total"]) == (6, 4, 0)


async def test_coverage_without_ingest_answers_the_rest_and_says_why(
    service_runner: Any, database_url: str, token_factory: Any
) -> None:
    token = await token_factory("svc")
    nobody = f"127.0.0.1:{free_port('127.0.0.1')}"
    assets = await _assets(service_runner, database_url, nobody, token)
    async with _client(assets, token) as client:
        resp = await client.get("/v1/coverage")
        en = (await client.get("/v1/coverage", headers={"Accept-Language": "en"})).json()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["readings"]["known"] is False
    assert "ingest" in body["readings"]["reason"] and "未知" in body["readings"]["reason"]
    assert "unknown" in en["readings"]["reason"]
    assert _figures(body["total"]) == (6, 4, None)
    assert body["total"]["reporting_ratio"] is None
    assert {d["domain"]: _figures(d) for d in body["domains"]}["gas"] == (3, 2, None)


async def test_coverage_is_region_scoped(service_runner: Any, database_url: str, token_factory: Any) -> None:
    token = await token_factory("svc")
    nobody = f"127.0.0.1:{free_port('127.0.0.1')}"
    assets = await _assets(service_runner, database_url, nobody, token)
    async with _client(assets) as c:
        wuhu = {"Authorization": f"Bearer {await token_factory('viewer-340200')}"}
        resp = await c.get("/v1/coverage", params={"region": "340100"}, headers=wuhu)
        assert resp.status_code == 403
        assert "340100" in resp.json()["detail"]
        # Its own region holds nothing of Hefei's.
        own = (await c.get("/v1/coverage", headers=wuhu)).json()
        assert own["region"] == "340200" and own["domains"] == [] and own["total"]["registered"] == 0
        province = {"Authorization": f"Bearer {await token_factory('viewer-340000')}"}
        body = (await c.get("/v1/coverage", headers=province)).json()
        assert body["region"] == "340000" and body["total"]["registered"] == 6
        assert (await c.get("/v1/coverage")).status_code == 401
        bad = await c.get("/v1/coverage", params={"region": "34"}, headers=province)
        assert bad.status_code == 422

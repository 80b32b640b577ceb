"""The census snapshot: a fresh alerts fills its copy of assets through AssetRegistry's list calls, even
when the change events are no longer on the EVENTS stream; snapshot and events interleave (newest version
wins); with assets unreachable alerts keeps running on what it has and /readyz says so.

Assets runs for real beside alerts (its own SQLite file); alerts' database is SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifeline.alerts.app import AlertsApp
from lifeline.alerts.service import AlertsService
from lifeline.alerts.settings import AlertsSettings
from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings
from lifeline.kit.natsserver import free_port
from lifeline.v1 import assets_pb2

from .helpers import REGION, census_payloads, fresh_ids, publish_census, wait_until


@pytest.fixture(autouse=True)
async def service_account(oidc_provider: Any) -> None:
    """The instance's service client (InstanceSettings defaults), which alerts uses to read assets."""
    await oidc_provider.register_client(
        "lifeline-services", roles=["service"], region="340100", client_secret="dev-secret"
    )


@pytest.fixture
async def http(token_factory: Any) -> Any:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {await token_factory('svc')}"}, timeout=30) as c:
        yield c


async def start_alerts(service_runner: Any, database_url: str, assets_grpc: str) -> AlertsApp:
    settings = AlertsSettings(
        database_url=database_url, http_port=0, grpc_port=0, timer_interval_s=3600, assets_grpc=assets_grpc
    )
    app: AlertsApp = await service_runner(AlertsApp, settings)
    return app


async def register_census(http: httpx.AsyncClient, assets: AssetsApp) -> dict[str, str]:
    """A unit, two water mains linked upstream → downstream, a pressure sensor and a risk source."""
    assert assets.http is not None
    base = assets.http.url
    serial = f"{secrets.randbelow(10**5):05d}"
    ids = {
        "unit": f"unit-water-{serial}",
        "up": f"34010412010{serial}",
        "down": f"34010412020{serial}",
        "sensor": f"HF-WP-{serial}",
        "link": f"link-{serial}",
        "risk": f"risk-{serial}",
    }

    async def post(path: str, body: dict[str, Any]) -> None:
        r = await http.post(f"{base}/v1/{path}", json=body)
        assert r.status_code == 201, r.text

    await post("units", {"id": ids["unit"], "name": "合肥供水集团", "domains": ["water"]})
    for key, lon in (("up", 117.20), ("down", 117.21)):
        await post(
            "facilities",
            {
                "code": ids[key],
                "kind": "water",
                "name": "长江西路供水干管",
                "unit_id": ids["unit"],
                "geometry": {"type": "LineString", "coordinates": [[lon, 31.82], [lon + 0.01, 31.82]]},
            },
        )
    await post("sensors", {"sensor_id": ids["sensor"], "facility_code": ids["down"], "quantity": "water.pressure"})
    await post("links", {"id": ids["link"], "from_code": ids["up"], "to_code": ids["down"]})
    await post(
        "risks",
        {
            "id": ids["risk"],
            "name": "施工开挖",
            "hazard": "excavation",
            "grade": "II",
            "geometry": {"type": "Point", "coordinates": [117.215, 31.82]},
            "facility_codes": [ids["down"]],
            "rectification": {"status": "done"},
        },
    )
    return ids


async def purge_census_events(assets: AssetsApp, risk_id: str) -> None:
    """Wait until assets' outbox published the census, then drop it from EVENTS (as after 30 days)."""
    js = assets.bus.js
    for _ in range(200):
        try:
            await js.get_last_msg("EVENTS", f"events.assets.risk.{REGION}")
            break
        except Exception:
            await asyncio.sleep(0.05)
    await js.purge_stream("EVENTS", subject="events.assets.>")


def held(service: AlertsService, ids: dict[str, str]) -> bool:
    return (
        ids["sensor"] in service.engine.sensors
        and ids["up"] in service.engine.facilities
        and ids["down"] in service.engine.facilities
        and ids["unit"] in service.units
        and ids["link"] in service.network.links
        and ids["risk"] in service.risks.risks
    )


async def test_a_fresh_alerts_fills_its_copy_from_a_running_assets(
    service_runner: Any, database_url: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    assets: AssetsApp = await service_runner(
        AssetsApp,
        AssetsSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'assets.db'}", http_port=0, grpc_port=0),
    )
    ids = await register_census(http, assets)
    await purge_census_events(assets, ids["risk"])
    assert assets.grpc is not None
    alerts = await start_alerts(service_runner, database_url, assets.grpc.address)

    async def filled() -> bool:
        return alerts.snapshot is not None and alerts.snapshot.ready

    await wait_until(filled)
    svc = alerts.service
    assert held(svc, ids)
    assert svc.network.downstream(ids["up"], 1) == {ids["down"]: 1}
    assert svc.engine.facilities[ids["down"]].unit_id == ids["unit"]
    assert alerts.http is not None
    r = await http.get(f"{alerts.http.url}/readyz")
    assert r.status_code == 200, r.text
    # Changes after the snapshot still arrive as events; a later snapshot does not roll them back.
    r = await http.post(f"{assets.http.url}/v1/links/{ids['link']}/retire", json={"reason": "改线"})  # type: ignore[union-attr]
    assert r.status_code == 200, r.text

    async def retired() -> bool:
        return ids["link"] not in svc.network.links

    await wait_until(retired)
    assert alerts.snapshot is not None
    assert await alerts.snapshot.read() == 0  # nothing newer than what the events brought
    assert ids["link"] not in svc.network.links


async def test_snapshot_and_events_interleave_newest_version_wins(service: AlertsService) -> None:
    code, serial = fresh_ids()
    sid = f"CH4-{serial}"
    await service.apply_assets(census_payloads(code, {sid: "gas.ch4"}, unit_id="unit-v1"))

    def facility(unit_id: str, version: int) -> assets_pb2.Facility:
        kind = assets_pb2.FACILITY_KIND_GAS
        return assets_pb2.Facility(code=code, kind=kind, region=REGION, unit_id=unit_id, version=version)

    newer = facility("unit-v3", 3)
    await service.apply_assets([("facility", assets_pb2.FacilityChanged(change=2, facility=newer).SerializeToString())])
    older = facility("unit-v2", 2)
    assert await service.apply_snapshot("facility", [older]) == 0
    assert service.engine.facilities[code].unit_id == "unit-v3"
    newest = assets_pb2.Facility(
        code=code, kind=assets_pb2.FACILITY_KIND_GAS, region=REGION, unit_id="unit-v4", version=4
    )
    assert await service.apply_snapshot("facility", [newest]) == 1
    assert service.engine.facilities[code].unit_id == "unit-v4"
    # After a restart the versions held come from the database: the old snapshot item still loses.
    again = AlertsService(
        region="340100", catalogue=service.catalogue, policy=service.policy, db=service.db, clock=service.clock
    )
    await again.load()
    assert await again.apply_snapshot("facility", [older]) == 0
    assert again.engine.facilities[code].unit_id == "unit-v4"


async def test_with_assets_unreachable_alerts_runs_on_events_and_readyz_says_so(
    service_runner: Any, database_url: str
) -> None:
    alerts = await start_alerts(service_runner, database_url, f"127.0.0.1:{free_port()}")
    assert alerts.http is not None
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.get(f"{alerts.http.url}/readyz")
    assert r.status_code == 503 and "census_snapshot" in r.json()["failing"]
    # The census events still reach it.
    code, serial = fresh_ids()
    await publish_census(alerts, code, {f"CH4-{serial}": "gas.ch4"})

    async def failed_once() -> bool:
        return alerts.snapshot is not None and alerts.snapshot.last_error is not None

    await wait_until(failed_once)
    assert alerts.snapshot is not None and not alerts.snapshot.ready

"""Alerts' copy of the census comes from the census on the bus (KV_census), which assets keeps whole.

A fresh alerts fills its copy from the bus alone — with assets' change events gone from EVENTS and assets
itself stopped; later changes follow, newest version wins, also across a restart; without a census
marked complete /readyz says so (alerts keeps what entries come meanwhile).

Assets runs for real beside alerts (its own SQLite file); alerts' database is SQLite and PostgreSQL.
"""

from __future__ import annotations

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
from lifeline.kit.census import census_complete
from lifeline.kit.testing.census import mark_census_complete
from lifeline.v1 import assets_pb2

from .helpers import REGION, census_payloads, fresh_ids, publish_census, wait_until


@pytest.fixture
async def http(token_factory: Any) -> Any:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {await token_factory('svc')}"}, timeout=30) as c:
        yield c


async def start_alerts(service_runner: Any, database_url: str) -> AlertsApp:
    settings = AlertsSettings(database_url=database_url, http_port=0, grpc_port=0, timer_interval_s=3600)
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


def held(service: AlertsService, ids: dict[str, str]) -> bool:
    return (
        ids["sensor"] in service.engine.sensors
        and ids["up"] in service.engine.facilities
        and ids["down"] in service.engine.facilities
        and ids["unit"] in service.units
        and ids["link"] in service.network.links
        and ids["risk"] in service.risks.risks
    )


async def test_a_fresh_alerts_fills_its_copy_from_the_bus_with_assets_stopped(
    service_runner: Any, database_url: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    assets_settings = AssetsSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'assets.db'}", http_port=0, grpc_port=0
    )
    assets: AssetsApp = await service_runner(AssetsApp, assets_settings)
    ids = await register_census(http, assets)

    async def on_the_bus() -> bool:
        # The keeper marked the census complete at start; the entries written since follow it.
        if not await census_complete(assets.bus, "340100"):
            return False
        info = await assets.bus.js.stream_info("KV_census", subjects_filter=f"$KV.census.risk.{REGION}.>")
        return bool(info.state.subjects)

    await wait_until(on_the_bus)
    # The change events are gone from EVENTS (as after 30 days) and assets is down: the census is not.
    await assets.bus.js.purge_stream("EVENTS", subject="events.assets.>")
    await assets.stop()
    alerts = await start_alerts(service_runner, database_url)

    async def filled() -> bool:
        return alerts.gate.complete

    await wait_until(filled)
    svc = alerts.service
    assert held(svc, ids)
    assert svc.network.downstream(ids["up"], 1) == {ids["down"]: 1}
    assert svc.engine.facilities[ids["down"]].unit_id == ids["unit"]
    assert alerts.http is not None
    r = await http.get(f"{alerts.http.url}/readyz")
    assert r.status_code == 200, r.text

    # Assets back (the same database): a change reaches alerts through the census.
    assets = await service_runner(AssetsApp, assets_settings, reset=False)
    assert assets.http is not None
    r = await http.post(f"{assets.http.url}/v1/links/{ids['link']}/retire", json={"reason": "改线"})
    assert r.status_code == 200, r.text

    async def retired() -> bool:
        return ids["link"] not in svc.network.links

    await wait_until(retired)


async def test_census_entries_newest_version_wins_also_after_a_restart(service: AlertsService) -> None:
    code, serial = fresh_ids()
    sid = f"CH4-{serial}"
    await service.apply_assets(census_payloads(code, {sid: "gas.ch4"}, unit_id="unit-v1"))

    def facility(unit_id: str, version: int) -> tuple[str, bytes]:
        kind = assets_pb2.FACILITY_KIND_GAS
        fac = assets_pb2.Facility(code=code, kind=kind, region=REGION, unit_id=unit_id, version=version)
        return "facility", assets_pb2.FacilityChanged(change=2, facility=fac).SerializeToString()

    assert await service.apply_assets([facility("unit-v3", 3)]) == 1
    assert await service.apply_assets([facility("unit-v2", 2)]) == 0
    assert service.engine.facilities[code].unit_id == "unit-v3"
    # After a restart the versions held come from the database: an older entry (a durable read anew)
    # still loses.
    again = AlertsService(
        region="340100", catalogue=service.catalogue, policy=service.policy, db=service.db, clock=service.clock
    )
    await again.load()
    assert await again.apply_assets([facility("unit-v2", 2)]) == 0
    assert again.engine.facilities[code].unit_id == "unit-v3"


async def test_without_a_complete_census_readyz_says_so_until_assets_marks_it(
    service_runner: Any, database_url: str
) -> None:
    alerts = await start_alerts(service_runner, database_url)
    assert alerts.http is not None
    # Entries reach it all the same ...
    code, serial = fresh_ids()
    await publish_census(alerts, code, {f"CH4-{serial}": "gas.ch4"})
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.get(f"{alerts.http.url}/readyz")
        assert r.status_code == 503 and "census" in r.json()["failing"]
        assert not alerts.gate.complete
        # ... and once assets marks the census complete, alerts is ready.
        await mark_census_complete(alerts.bus)

        async def ready() -> bool:
            return (await c.get(f"{alerts.http.url}/readyz")).status_code == 200

        await wait_until(ready, timeout=15)

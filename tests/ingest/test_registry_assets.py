"""Ingest's sensor registry follows the assets service through the census on the bus: a sensor registered
there is accepted within seconds, a retired one refused; the whole census at start (also with assets
down), each change after; ready only once the census marked complete is read.

Both services run for real (service_runner: real NATS, dev OpenID provider); ingest's database is SQLite
and PostgreSQL, assets keeps its own SQLite file (its PostgreSQL path is tested in tests/assets).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats.js.errors
import pytest
from pydantic import ValidationError

from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings
from lifeline.ingest.app import IngestApp
from lifeline.ingest.settings import IngestSettings
from lifeline.kit.census import CENSUS_STREAM, census_subject
from lifeline.kit.testing.census import publish_census_entry
from lifeline.v1 import assets_pb2, telemetry_pb2, telemetry_pb2_grpc

from .helpers import now_ms


@pytest.fixture
async def token(token_factory: Any) -> str:
    return str(await token_factory("svc"))


def fresh_ids() -> tuple[str, str]:
    """A facility code and a sensor id no other test published (JetStream drops a message id it saw in
    its duplicate window even after the stream was purged)."""
    serial = f"{secrets.randbelow(10**6):06d}"
    return f"3401041102{serial}", f"HF-GAS-CH4-{serial}"


async def start_assets(service_runner: Any, tmp_path: Path) -> AssetsApp:
    settings = AssetsSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'assets.db'}", http_port=0, grpc_port=0)
    app: AssetsApp = await service_runner(AssetsApp, settings)
    return app


async def start_ingest(service_runner: Any, database_url: str, *, reset: bool = True) -> IngestApp:
    settings = IngestSettings(
        database_url=database_url,
        http_port=0,
        grpc_port=0,
        registry="assets",
        status_check_interval_s=3600,
        retry_after_s=1,
    )
    app: IngestApp = await service_runner(IngestApp, settings, reset=reset)
    return app


@pytest.fixture
async def http(token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        yield c


async def register(http: httpx.AsyncClient, assets: AssetsApp, code: str, *sensor_ids: str) -> None:
    assert assets.http is not None
    base = assets.http.url
    facility = {
        "code": code,
        "kind": "gas",
        "name": "长江西路燃气中压管段",
        "geometry": {"type": "LineString", "coordinates": [[117.20, 31.82], [117.21, 31.83]]},
    }
    r = await http.post(f"{base}/v1/facilities", json=facility)
    assert r.status_code == 201, r.text
    for sensor_id in sensor_ids:
        r = await http.post(
            f"{base}/v1/sensors", json={"sensor_id": sensor_id, "facility_code": code, "quantity": "gas.ch4"}
        )
        assert r.status_code == 201, r.text


async def retire(http: httpx.AsyncClient, assets: AssetsApp, sensor_id: str) -> None:
    assert assets.http is not None
    r = await http.post(f"{assets.http.url}/v1/sensors/{sensor_id}/retire", json={"reason": "拆除"})
    assert r.status_code == 200, r.text


async def post_reading(http: httpx.AsyncClient, ingest: IngestApp, sensor_id: str, **headers: str) -> httpx.Response:
    assert ingest.http is not None
    body = {"readings": [{"sensor_id": sensor_id, "device_time_ms": now_ms(), "value": 1.0, "unit": "%LEL"}]}
    return await http.post(f"{ingest.http.url}/v1/readings", json=body, headers=headers)


async def outcome(http: httpx.AsyncClient, ingest: IngestApp, sensor_id: str) -> str:
    """``accepted``, or the rejection reason of one fresh reading of the sensor."""
    r = await post_reading(http, ingest, sensor_id)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    return str(result.get("reason") or result["status"])


async def eventually(http: httpx.AsyncClient, ingest: IngestApp, sensor_id: str, want: str, within: float) -> float:
    """Seconds until a fresh reading of the sensor gets ``want``; fails after ``within`` seconds."""
    started = time.monotonic()
    got = ""
    while time.monotonic() - started < within:
        got = await outcome(http, ingest, sensor_id)
        if got == want:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sensor_id}: still {got!r}, not {want!r}, after {within}s")


async def wait_ready(http: httpx.AsyncClient, app: IngestApp, within: float) -> dict[str, Any]:
    assert app.http is not None
    deadline = time.monotonic() + within
    while True:
        r = await http.get(f"{app.http.url}/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body
        await asyncio.sleep(0.1)


async def test_registered_sensor_accepted_within_seconds_and_refused_once_retired(
    service_runner: Any, database_url: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    assets = await start_assets(service_runner, tmp_path)
    ingest = await start_ingest(service_runner, database_url)
    assert (await wait_ready(http, ingest, 20))["checks"]["registry"] == "ok"
    code, sensor_id = fresh_ids()
    assert await outcome(http, ingest, sensor_id) == "unknown_sensor"

    await register(http, assets, code, sensor_id)
    assert await eventually(http, ingest, sensor_id, "accepted", within=5) < 5
    assert ingest.registry.get(sensor_id) is not None

    await retire(http, assets, sensor_id)
    await eventually(http, ingest, sensor_id, "sensor_retired", within=5)


async def test_ingest_started_later_with_assets_down_loads_the_census_from_the_bus(
    service_runner: Any, database_url: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    assets = await start_assets(service_runner, tmp_path)
    code, active = fresh_ids()
    others = [f"{active}-{n}" for n in range(3)]
    await register(http, assets, code, active, *others)
    await retire(http, assets, others[0])
    # Wait until the relay put the census on the bus (the retirement is the last change), then stop
    # assets and drop its change events from EVENTS: ingest has only the census to go by.
    retired = census_subject("sensor", code[:6], others[0])
    for _ in range(200):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            last = await assets.bus.js.get_last_msg(CENSUS_STREAM, retired)
            if assets_pb2.SensorChanged.FromString(last.data).sensor.version == 2:
                break
        await asyncio.sleep(0.05)
    await assets.bus.js.purge_stream("EVENTS")
    await assets.stop()
    ingest = await start_ingest(service_runner, database_url, reset=False)
    await wait_ready(http, ingest, 20)
    assert await outcome(http, ingest, active) == "accepted"
    assert await outcome(http, ingest, others[2]) == "accepted"
    assert await outcome(http, ingest, others[0]) == "sensor_retired"
    assert len(ingest.registry) == 4
    # One entry per sensor: the last version of each, not its history.
    assert ingest.census.applied == 4 and ingest.census.stale == 0


async def test_duplicated_or_late_events_do_not_roll_a_sensor_back(
    service_runner: Any, database_url: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    assets = await start_assets(service_runner, tmp_path)
    ingest = await start_ingest(service_runner, database_url)
    await wait_ready(http, ingest, 20)
    code, sensor_id = fresh_ids()
    await register(http, assets, code, sensor_id)
    await retire(http, assets, sensor_id)
    await eventually(http, ingest, sensor_id, "sensor_retired", within=5)

    # The version-1 entry (sensor active) again, after version 2 — as a replay would.
    sub = await assets.bus.js.pull_subscribe(f"events.assets.sensor.{code[:6]}", stream="EVENTS")
    msgs = await sub.fetch(10, timeout=5)
    events = [assets_pb2.SensorChanged.FromString(m.data) for m in msgs]
    (v1,) = [e for e in events if e.sensor.sensor_id == sensor_id and e.sensor.version == 1]
    assert v1.sensor.status == assets_pb2.ASSET_SENSOR_STATUS_ACTIVE
    stale_before = ingest.census.stale
    for _ in range(2):
        await publish_census_entry(assets.bus, "sensor", code[:6], sensor_id, v1.SerializeToString())
    deadline = time.monotonic() + 5
    while ingest.census.stale < stale_before + 2:
        assert time.monotonic() < deadline, "the replayed events never reached ingest"
        await asyncio.sleep(0.05)
    assert await outcome(http, ingest, sensor_id) == "sensor_retired"


async def test_ingest_started_while_assets_is_down_becomes_ready_once_it_is_up(
    service_runner: Any, database_url: str, tmp_path: Path, http: httpx.AsyncClient, token: str
) -> None:
    ingest = await start_ingest(service_runner, database_url)
    assert ingest.http is not None and ingest.grpc is not None
    r = await http.get(f"{ingest.http.url}/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["registry"] == "failing"

    # Readings are not judged against an empty registry: 503, retry later, nothing kept.
    code, sensor_id = fresh_ids()
    r = await post_reading(http, ingest, sensor_id)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "传感器登记册" in r.json()["detail"]
    r = await post_reading(http, ingest, sensor_id, **{"Accept-Language": "en"})
    assert "sensor registry is not loaded" in r.json()["detail"]
    async with grpc.aio.insecure_channel(ingest.grpc.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await telemetry_pb2_grpc.TelemetryIngestStub(channel).IngestBatch(
                telemetry_pb2.IngestBatchRequest(
                    readings=[telemetry_pb2.Reading(sensor_id=sensor_id, device_time_ms=now_ms(), value=1.0)]
                ),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    assets = await start_assets(service_runner, tmp_path)
    await register(http, assets, code, sensor_id)
    # Ingest looks for the census marker with a capped backoff (15 s at most between tries).
    await wait_ready(http, ingest, 30)
    await eventually(http, ingest, sensor_id, "accepted", within=5)


def test_registry_source_setting() -> None:
    assert IngestSettings().registry == "assets"
    assert IngestSettings(sensors_file=Path("s.csv")).registry == "file"
    with pytest.raises(ValidationError, match="needs sensors_file"):
        IngestSettings(registry="file")
    with pytest.raises(ValidationError, match="takes no sensors_file"):
        IngestSettings(registry="assets", sensors_file=Path("s.csv"))

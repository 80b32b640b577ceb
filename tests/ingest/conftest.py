"""An ingest service of a city instance (Hefei, 340100) on real NATS, a real database and real OIDC."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats.js.errors
import pytest

from lifeline.ingest.app import IngestApp
from lifeline.ingest.settings import IngestSettings
from lifeline.kit.auth import TokenVerifier
from lifeline.kit.bus import Bus
from lifeline.kit.config import InstanceSettings
from lifeline.kit.natsserver import NatsServer

SENSORS_CSV = """sensor_id,quantity,unit,region,facility_code,interval_s,lat,lon,status
GAS-CH4-1,gas.ch4,%LEL,340104,3401041102000001,60,31.85,117.16,active
GAS-CH4-2,gas.ch4,%LEL,340104,3401041102000002,60,31.85,117.17,active
WATER-P-1,water.pressure,MPa,340111,3401111201000001,60,31.80,117.30,active
WATER-P-2,water.pressure,MPa,340111,3401111201000002,60,31.80,117.31,active
OLD-1,gas.ch4,%LEL,340104,3401041102000009,60,31.85,117.16,retired
"""


@pytest.fixture
def sensors_file(tmp_path: Path) -> Path:
    path = tmp_path / "sensors.csv"
    path.write_text(SENSORS_CSV)
    return path


async def reset_streams(bus: Bus) -> None:
    """Each test starts with empty streams and no durable consumers, so no test sees another's data."""
    for stream in ("READINGS", "DEVICES", "EVENTS"):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            for info in await bus.js.consumers_info(stream):
                await bus.js.delete_consumer(stream, info.name)
            await bus.js.purge_stream(stream)


@pytest.fixture
async def ingest(
    nats_server: NatsServer, database_url: str, oidc_provider, sensors_file: Path, tmp_path: Path
) -> AsyncIterator[IngestApp]:
    if not nats_server.running:
        nats_server.start()
    instance = InstanceSettings(
        region="340100", nats_url=nats_server.url, oidc_issuer=oidc_provider.issuer, data_dir=tmp_path
    )
    settings = IngestSettings(
        database_url=database_url,
        http_port=0,
        grpc_port=0,
        sensors_file=sensors_file,
        status_check_interval_s=3600,
        retry_after_s=1,
    )
    bus = Bus(instance.nats_url, name="ingest-test")
    await bus.start()
    await bus.wait_ready(10)
    await reset_streams(bus)
    verifier = TokenVerifier(instance.oidc_issuer, instance.oidc_audience)
    app = IngestApp(instance=instance, settings=settings, bus=bus, verifier=verifier)
    await app.start()
    yield app
    await app.stop()
    await bus.close()
    await verifier.aclose()


@pytest.fixture
async def writer_token(token_factory) -> str:
    return await token_factory("svc")


@pytest.fixture
async def client(ingest: IngestApp, writer_token: str) -> AsyncIterator[httpx.AsyncClient]:
    assert ingest.http is not None
    async with httpx.AsyncClient(
        base_url=ingest.http.url, headers={"Authorization": f"Bearer {writer_token}"}, timeout=30
    ) as c:
        yield c

"""An ingest service of a city instance (Hefei, 340100) on real NATS, a real database and real OIDC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from lifeline.ingest.app import IngestApp
from lifeline.ingest.settings import IngestSettings

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


@pytest.fixture
async def ingest(service_runner, database_url: str, sensors_file: Path) -> IngestApp:
    settings = IngestSettings(
        database_url=database_url,
        http_port=0,
        grpc_port=0,
        sensors_file=sensors_file,
        status_check_interval_s=3600,
        retry_after_s=1,
    )
    return await service_runner(IngestApp, settings)


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

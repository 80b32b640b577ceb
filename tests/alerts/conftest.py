"""An alerts service of a city instance (Hefei, 340100) on real NATS, a real database and real OIDC.

The census arrives as assets' change events on the bus (as in production), readings as ingest's
ReadingsAccepted batches; alert events are read back from the EVENTS stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from lifeline.alerts.app import MIGRATIONS, AlertsApp
from lifeline.alerts.policy import load_policy
from lifeline.alerts.service import AlertsService
from lifeline.alerts.settings import AlertsSettings
from lifeline.kit.catalogue import load_quantities
from lifeline.kit.db import Database
from lifeline.kit.migrations import migrate
from lifeline.kit.testing.census import mark_census_complete

from .helpers import Clock, EventReader


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alerts_settings(database_url: str) -> AlertsSettings:
    # The timer is driven by the tests (check_overdue with a controllable clock), not by wall time.
    return AlertsSettings(database_url=database_url, http_port=0, grpc_port=0, timer_interval_s=3600)


@pytest.fixture
async def alerts(service_runner, alerts_settings: AlertsSettings, clock: Clock) -> AlertsApp:
    app: AlertsApp = await service_runner(AlertsApp, alerts_settings)
    app.service.clock = clock
    # As assets would once the census is whole: the tests then publish the entries they need.
    await mark_census_complete(app.bus)
    return app


@pytest.fixture
async def service(database_url: str, clock: Clock) -> AsyncIterator[AlertsService]:
    """The alerts logic on a migrated real database, without servers or consumers (fast)."""
    await migrate(database_url, MIGRATIONS)
    db = Database.from_url(database_url)
    svc = AlertsService(region="340100", catalogue=load_quantities(), policy=load_policy(), db=db, clock=clock)
    await svc.load()
    try:
        yield svc
    finally:
        await db.dispose()


@pytest.fixture
async def events(alerts: AlertsApp) -> AsyncIterator[EventReader]:
    reader = EventReader(alerts)
    try:
        yield reader
    finally:
        await reader.close()


@pytest.fixture
async def operator_token(token_factory) -> str:
    return await token_factory("operator-340100")


@pytest.fixture
async def client(alerts: AlertsApp, operator_token: str) -> AsyncIterator[httpx.AsyncClient]:
    assert alerts.http is not None
    async with httpx.AsyncClient(
        base_url=alerts.http.url, headers={"Authorization": f"Bearer {operator_token}"}, timeout=30
    ) as c:
        yield c

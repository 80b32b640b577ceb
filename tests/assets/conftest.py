"""An assets service of a city instance (Hefei, 340100) on real NATS, a real database and real OIDC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings
from lifeline.kit.census import census_complete


@pytest.fixture
async def assets(service_runner, database_url: str) -> AssetsApp:
    app: AssetsApp = await service_runner(
        AssetsApp, AssetsSettings(database_url=database_url, http_port=0, grpc_port=0)
    )
    # At start the census keeper writes the (empty) census and its marker through the outbox: tests see
    # the service once that is on the bus, so the outbox holds what they did and nothing else.
    await wait_for_census(app)
    return app


async def wait_for_census(app: AssetsApp, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (await census_complete(app.bus, "340100") and await app.relay.depth() == 0):
        assert asyncio.get_running_loop().time() < deadline, "the census keeper's marker never reached the bus"
        await asyncio.sleep(0.02)


@pytest.fixture
async def writer_token(token_factory) -> str:
    return await token_factory("svc")


@pytest.fixture
async def client(assets: AssetsApp, writer_token: str) -> AsyncIterator[httpx.AsyncClient]:
    assert assets.http is not None
    async with httpx.AsyncClient(
        base_url=assets.http.url, headers={"Authorization": f"Bearer {writer_token}"}, timeout=30
    ) as c:
        yield c

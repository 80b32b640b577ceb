"""An assets service of a city instance (Hefei, 340100) on real NATS, a real database and real OIDC."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings


@pytest.fixture
async def assets(service_runner, database_url: str) -> AssetsApp:
    return await service_runner(AssetsApp, AssetsSettings(database_url=database_url, http_port=0, grpc_port=0))


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
